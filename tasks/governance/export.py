"""Export an approved model version for serving outside MLflow.

    loragate export MODEL VERSION|@ALIAS [--format adapter|merged] [--out DIR]

- adapter: the PEFT adapter folder as vLLM (`--enable-lora --lora-modules name=DIR`) and Ollama
  (`ADAPTER DIR`) load it, with a README naming the exact base model and its weights' sha256 (a
  different base loads without complaint and answers wrongly);
- merged: the adapter merged into the full-precision base (merge_and_unload), a plain Hugging Face
  folder in safetensors; for a QLoRA version the merge is into the 16-bit base, not the 4-bit one it
  was scored on, and the README says so. The export checks that the merged model's greedy answers
  equal base + adapter on up to 20 hold-out prompts, and refuses otherwise.

Only approved versions leave (anything else is refused in one line); the folder is written beside
DIR and renamed into place whole; each export is an audit entry with the sha256 of every file.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.config import Config
from tasks.governance import gate
from tasks.governance.records import weights_sha256
from tasks.tracking import client_for, initiator

FORMATS = ("adapter", "merged")
CHECK_PROMPTS = 20


class ExportError(RuntimeError):
    """An export that cannot be made; one line."""


@dataclass(frozen=True)
class Exported:
    model: str
    version: str
    format: str
    out: str
    files: dict[str, str]  # relative path -> sha256
    checked_prompts: int = 0  # merged: hold-out prompts whose answers matched base + adapter


def approved_version(cfg: Config, root: Path, model: str, ref: str):
    """VERSION or @ALIAS -> the model version, if its approval is recorded; else ExportError."""
    client = client_for(cfg, root)
    try:
        mv = client.get_model_version_by_alias(model, ref[1:]) if ref.startswith("@") else client.get_model_version(model, ref)
    except Exception:
        raise ExportError(f"{model} {ref}: no such registered model version or alias") from None
    state = mv.tags.get(gate.APPROVAL_TAG, "unknown")
    if state != gate.APPROVED or not gate._approved_in_log(cfg, root, model, str(mv.version)):
        raise ExportError(f"{model} version {mv.version} is {state}: only approved versions are exported "
                          "(`loragate approve` first)")
    return mv


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _readme(mv, config: dict, fmt: str, base_dir: str) -> str:
    quant = config.get("quantization")
    lines = [f"# {mv.name} version {mv.version} ({fmt})", "",
             f"Base model: `{config['base_model']}` (weights sha256 `{weights_sha256(base_dir)}`).",
             f"Approved by {mv.tags.get('loragate.reviewer', '?')}; run {mv.run_id}.", ""]
    if fmt == "adapter":
        lines += ["Load it on exactly this base: another base loads without error and answers wrongly.",
                  "vLLM: `vllm serve BASE --enable-lora --lora-modules loragate=THIS_DIR`",
                  "Ollama Modelfile: `FROM BASE` and `ADAPTER THIS_DIR`."]
    else:
        lines += ["The adapter merged into the full-precision base: a standard Hugging Face folder."]
    if quant:
        lines += ["", f"Scored and approved on the {quant['quant_type']} 4-bit base (QLoRA); "
                  + ("this merge is into the 16-bit base, so its answers can differ slightly from the approved ones."
                     if fmt == "merged" else "serve it on that 4-bit base to reproduce the approved answers.")]
    return "\n".join(lines) + "\n"


def _merge(base_dir: str, adapter_dir: Path, dst: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir))
    model.merge_and_unload().save_pretrained(dst, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(dst)


def _check_merged(base_dir: str, adapter_dir: Path, merged: Path, holdout: Path) -> int:
    """Greedy answers of the merged folder against base + adapter on hold-out prompts; the count checked."""
    from tasks.evaluation.holdout import generate, load_for_inference
    from tasks.io import read_jsonl

    rows = read_jsonl(holdout)[:CHECK_PROMPTS] if holdout.exists() else []
    prompts = [r["messages"][:-1] for r in rows]
    if not prompts:
        raise ExportError(f"{holdout}: no hold-out prompts to check the merged model against")
    want = generate(*load_for_inference(base_dir, str(adapter_dir)), prompts, 40, 8, "check base+adapter")
    got = generate(*load_for_inference(str(merged)), prompts, 40, 8, "check merged")
    differ = sum(a != b for a, b in zip(want, got))
    if differ:
        raise ExportError(f"merged model answers {differ} of {len(prompts)} hold-out prompts differently from "
                          "base + adapter: not exported")
    return len(prompts)


def export(cfg: Config, root: str | Path, model: str, ref: str, fmt: str = "adapter", out: str | Path | None = None,
           holdout: str | Path | None = None) -> Exported:
    import mlflow.artifacts

    from tasks.data.split import HOLDOUT
    from tasks.training.models import resolve_model

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: not one of {', '.join(FORMATS)}")
    root = Path(root).resolve()
    mv = approved_version(cfg, root, model, ref)
    out = Path(out or root / "exports" / f"{model}-v{mv.version}-{fmt}").resolve()
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: exists and is not empty; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:  # same disk: the move is a rename
        pyfunc = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model}/{mv.version}", dst_path=tmp))
        config = yaml.safe_load((pyfunc / "MLmodel").read_text())["flavors"]["python_function"]["config"]
        adapter, base = pyfunc / "artifacts" / "adapter", resolve_model(config["base_model"], cfg.model.cache_dir)
        staging, checked = Path(tmp) / "out", 0
        if fmt == "adapter":
            shutil.copytree(adapter, staging)
        else:
            _merge(base, adapter, staging)
            checked = _check_merged(base, adapter, staging, Path(holdout or root / HOLDOUT))
        (staging / "README.md").write_text(_readme(mv, config, fmt, base))
        files = {str(p.relative_to(staging)): _sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        if out.exists():
            out.rmdir()  # empty, checked above
        shutil.move(str(staging), str(out))
    client = client_for(cfg, root)
    gate._record(cfg, root, client, "exported", model=model, version=str(mv.version), format=fmt, out=str(out),
                 files=files, actor=initiator())
    return Exported(model, str(mv.version), fmt, str(out), files, checked)
