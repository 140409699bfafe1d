"""Export an approved model version for serving outside MLflow.

    loragate export MODEL VERSION|@ALIAS [--format adapter|merged|gguf] [--out DIR]

- adapter: the PEFT adapter folder as vLLM (`--enable-lora --lora-modules name=DIR`) and Ollama
  (`ADAPTER DIR`) load it, with a README naming the exact base model and its weights' sha256 (a
  different base loads without complaint and answers wrongly);
- merged: the adapter merged into the full-precision base (merge_and_unload), a plain Hugging Face
  folder in safetensors; for a QLoRA version the merge is into the 16-bit base, not the 4-bit one it
  was scored on, and the README says so. The export checks that the merged model's greedy answers
  equal base + adapter on up to 20 hold-out prompts, and refuses otherwise;
- gguf: the merged model as one float32 GGUF file for llama.cpp / Ollama (`FROM ./model.gguf`),
  written with the `gguf` package for Llama-architecture models (SmolLM2 among them; any other
  architecture is refused in one line), read back with transformers and checked to answer the
  hold-out prompts as the merged model does.

Only approved versions leave (anything else is refused in one line); the folder is written beside
DIR and renamed into place whole; each export is an audit entry with the sha256 of every file.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.config import Config
from tasks.governance import gate
from tasks.governance.records import weights_sha256
from tasks.io import file_sha256
from tasks.tracking import client_for, initiator

FORMATS = ("adapter", "merged", "gguf")
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


def _readme(mv, config: dict, fmt: str, base_dir: str) -> str:
    quant = config.get("quantization")
    lines = [f"# {mv.name} version {mv.version} ({fmt})", "",
             f"Base model: `{config['base_model']}` (weights sha256 `{weights_sha256(base_dir)}`).",
             f"Approved by {mv.tags.get('loragate.reviewer', '?')}; run {mv.run_id}.", ""]
    if fmt == "adapter":
        lines += ["Load it on exactly this base: another base loads without error and answers wrongly.",
                  "vLLM: `vllm serve BASE --enable-lora --lora-modules loragate=THIS_DIR`",
                  "Ollama Modelfile: `FROM BASE` and `ADAPTER THIS_DIR`."]
    elif fmt == "merged":
        lines += ["The adapter merged into the full-precision base: a standard Hugging Face folder."]
    else:
        lines += ["The adapter merged into the full-precision base, as one float32 GGUF file.",
                  "Ollama: `ollama create NAME -f Modelfile`; llama.cpp: `llama-cli -m model.gguf`."]
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


def _same_answers(reference, candidate, holdout: Path, what: str) -> int:
    """Greedy answers of two (model, tokenizer) pairs on hold-out prompts; ExportError when any differs."""
    from tasks.evaluation.holdout import generate
    from tasks.io import read_jsonl

    prompts = [r["messages"][:-1] for r in (read_jsonl(holdout)[:CHECK_PROMPTS] if holdout.exists() else [])]
    if not prompts:
        raise ExportError(f"{holdout}: no hold-out prompts to check the {what} against")
    want = generate(*reference, prompts, 40, 8, "check reference")
    differ = sum(a != b for a, b in zip(want, generate(*candidate, prompts, 40, 8, f"check {what}")))
    if differ:
        raise ExportError(f"the {what} answers {differ} of {len(prompts)} hold-out prompts differently: not exported")
    return len(prompts)


def _permute(w, n_head: int, n_kv: int):
    """q/k rows in llama.cpp's rotary layout (transformers reverses it when it reads a GGUF)."""
    n = n_kv if n_kv and n_head != n_kv else n_head
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(merged: Path, dst: Path) -> None:
    """A float32 GGUF of a Llama-architecture Hugging Face folder: hyper-parameters, the BPE
    tokenizer (tokens, types, merges, special ids, chat template) and every tensor by GGUF name."""
    import gguf
    import numpy as np
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(merged)
    if cfg.model_type != "llama":
        raise ExportError(f"--format gguf: {cfg.model_type} models cannot be mapped here (Llama-architecture models "
                          "only); export --format merged and convert with llama.cpp")
    tok, writer = AutoTokenizer.from_pretrained(merged), gguf.GGUFWriter(str(dst), "llama")
    _gguf_header(writer, cfg, tok)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, t in AutoModelForCausalLM.from_pretrained(merged, dtype="float32").state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            a = _permute(a, cfg.num_attention_heads, cfg.num_key_value_heads if "k_proj" in name else cfg.num_attention_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(a))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gguf_header(writer, cfg, tok) -> None:
    import json

    import gguf

    theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(theta))
    writer.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab, special = {i: t for t, i in tok.get_vocab().items()}, set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([vocab.get(i, f"[PAD{i}]") for i in range(cfg.vocab_size)])
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(cfg.vocab_size)])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for kind in ("bos", "eos", "pad"):
        if getattr(tok, f"{kind}_token_id") is not None:
            getattr(writer, f"add_{kind}_token_id")(getattr(tok, f"{kind}_token_id"))
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32").eval(), tok


def export(cfg: Config, root: str | Path, model: str, ref: str, fmt: str = "adapter", out: str | Path | None = None,
           holdout: str | Path | None = None) -> Exported:
    import mlflow.artifacts

    from tasks.data.split import HOLDOUT
    from tasks.evaluation.holdout import load_for_inference
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
        staging, checked, holdout = Path(tmp) / "out", 0, Path(holdout or root / HOLDOUT)
        if fmt == "adapter":
            shutil.copytree(adapter, staging)
        else:
            merged = Path(tmp) / "merged" if fmt == "gguf" else staging
            _merge(base, adapter, merged)
            checked = _same_answers(load_for_inference(base, str(adapter)), load_for_inference(str(merged)), holdout,
                                    "merged model")
        if fmt == "gguf":
            staging.mkdir()
            write_gguf(merged, staging / "model.gguf")
            checked = _same_answers(load_for_inference(str(merged)), _load_gguf(staging / "model.gguf"), holdout,
                                    "GGUF file read back")
            (staging / "Modelfile").write_text("FROM ./model.gguf\n")
        (staging / "README.md").write_text(_readme(mv, config, fmt, base))
        files = {str(p.relative_to(staging)): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        if out.exists():
            out.rmdir()  # empty, checked above
        shutil.move(str(staging), str(out))
    client = client_for(cfg, root)
    gate._record(cfg, root, client, "exported", model=model, version=str(mv.version), format=fmt, out=str(out),
                 files=files, actor=initiator())
    return Exported(model, str(mv.version), fmt, str(out), files, checked)
