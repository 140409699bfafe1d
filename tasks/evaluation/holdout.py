"""Hold-out evaluation: batched greedy generation (left padding, KV cache, stop at EOS) of the
base model or base + adapter, then ROUGE/BERTScore against the references.

    python -m tasks.evaluation.holdout MODEL_DIR HOLDOUT.jsonl OUT_DIR [ADAPTER_DIR]

Writes OUT_DIR/predictions.jsonl (id, slice, prompt, reference, prediction, every per-row score) and
OUT_DIR/metrics.json. The hold-out is already anonymized, so nothing here holds raw personal data.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tasks.config import Config, load_config
from tasks.io import read_json, read_jsonl, write_json, write_jsonl
from tasks.evaluation.scoring import metric_config, score
from tasks.training.train import bnb_config
from tasks.data.split import HOLDOUT as HOLDOUT_PATH
from tasks.orchestration import stage_task


@dataclass(frozen=True)
class EvalReport:
    examples: int
    metrics: dict[str, float]
    metric_config: dict[str, str]
    seconds: float
    reused: bool = False  # taken from the baseline cache, not generated again


def load_for_inference(model_dir: str, adapter_dir: str | None = None, quantization=None):
    """Model (base, or base + LoRA adapter) in eval mode, and its tokenizer padding on the left. With
    a BitsAndBytesConfig the base is the 4-bit one a QLoRA adapter was trained on and is served on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    tokenizer.padding_side = "left"  # decoder-only batches must end at the prompt's last token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device_map = "auto" if torch.cuda.is_available() else ("cpu" if quantization else None)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization, device_map=device_map)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.eval(), tokenizer


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int,
             desc: str = "generate") -> list[str]:
    """Greedy answers for chat prompts, in input order; batches group prompts of similar length."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: dict[int, str] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch.to(model.device), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, use_cache=True)
        new = out[:, batch["input_ids"].shape[1]:]
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            answers[i] = text.strip()
    return [answers[i] for i in range(len(texts))]


def evaluate_holdout(cfg: Config, model_dir: str, holdout: str | Path, out_dir: str | Path,
                     adapter_dir: str | None = None, label: str = "model") -> EvalReport:
    rows = read_jsonl(holdout)
    if cfg.eval.max_examples:
        rows = rows[: cfg.eval.max_examples]
    started = time.perf_counter()
    # a QLoRA adapter is scored on the 4-bit base it was trained on, the base it is served on
    model, tokenizer = load_for_inference(model_dir, adapter_dir, bnb_config(cfg.quantization))
    prompts = [r["messages"][:-1] for r in rows]
    references = [r["messages"][-1]["content"] for r in rows]
    predictions = generate(model, tokenizer, prompts, cfg.eval.max_new_tokens, cfg.eval.batch_size, f"eval {label}")
    means, per_row = score(cfg, predictions, references)
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "predictions.jsonl", (
        {"id": r["id"], "slice": r.get("slice", ""), "prompt": p[-1]["content"], "reference": ref, "prediction": pred}
        | {k: v[i] for k, v in per_row.items()}
        for i, (r, p, ref, pred) in enumerate(zip(rows, prompts, references, predictions))))
    report = EvalReport(len(rows), means, metric_config(cfg), round(time.perf_counter() - started, 2))
    write_json(out_dir / "metrics.json", asdict(report))
    return report


def baseline_cached(cfg: Config, root: str | Path, model_dir: str, holdout_md5: str, out_dir: str | Path) -> EvalReport:
    """The base model's hold-out evaluation, reused from an earlier run when the base, quantization,
    eval params, hold-out (DVC hash) and code are the same: a run that changes only train.* does
    not score the base model again. Cached under runs/.cache/baseline/<key>/."""
    import hashlib
    import json
    import shutil

    from tasks.tracking import code_digest

    inputs = {"model": cfg.model.base, "quantization": cfg.to_dict()["quantization"], "eval": cfg.to_dict()["eval"],
              "holdout": holdout_md5, "code": code_digest()}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    cache, out_dir = Path(root) / "runs" / ".cache" / "baseline" / key, Path(out_dir)
    if (cache / "metrics.json").exists():
        shutil.copytree(cache, out_dir, dirs_exist_ok=True)
        return EvalReport(**{**read_json(cache / "metrics.json"), "seconds": 0.0, "reused": True})
    report = evaluate_holdout(cfg, model_dir, Path(root) / HOLDOUT_PATH, out_dir, label="baseline")
    staging = cache.with_name(f"{key}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(out_dir, staging)
    staging.replace(cache)  # whole or absent: a crash mid-copy leaves only the .partial folder
    return report


evaluate_task = stage_task(evaluate_holdout, "evaluate")
baseline_task = stage_task(baseline_cached, "evaluate-baseline")


if __name__ == "__main__":
    a = sys.argv[1:]
    print(evaluate_holdout(load_config(), a[0], a[1], a[2], a[3] if len(a) > 3 else None).metrics)
