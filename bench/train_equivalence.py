"""Does loragate's fast training path learn the same thing as the common recipe? Real SmolLM2
weights, the real (anonymized) training split, the same rows in the same order, same LoRA init:
the recipe pads every row to max_length; loragate's path (tasks.training.train.make_trainer) concatenates
rows padding-free with per-sequence positions and scores only the answer tokens in chunks.

    python bench/train_equivalence.py [--steps 12]     # CPU is enough; writes bench/results/train_equivalence.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (offline defaults)
from bench.train_throughput import recipe_trainer  # noqa: E402


def tokenized_rows(tokenizer, path: Path, max_len: int, n: int) -> list[dict]:
    """prompt (chat template, generation prompt) + answer + end-of-turn; the loss counts the answer."""
    from tasks.io import read_jsonl

    out = []
    for r in read_jsonl(path)[:n]:
        prompt = tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(r["messages"][-1]["content"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = (p_ids + a_ids)[:max_len]
        out.append({"input_ids": ids, "completion_mask": ([0] * len(p_ids) + [1] * len(a_ids))[:max_len]})
    return out


def losses(trainer) -> list[float]:
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def main() -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.config import config_from_dict
    from tasks.training.models import resolve_model
    from tasks.training.train import make_trainer

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-len", type=int, default=256)
    a = p.parse_args()
    model_dir = resolve_model("smollm2-135m-instruct", "~/.cache/loragate/models")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = tokenized_rows(tokenizer, ROOT / "data/splits/train.jsonl", a.max_len, a.batch * a.steps)
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")  # noqa: E731
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    with tempfile.TemporaryDirectory() as out:
        # dropout 0 in both: dropout masks depend on tensor shapes, which padding changes
        recipe = recipe_trainer(load(), data, targets, a.batch, a.steps, a.max_len, tokenizer.pad_token_id, out,
                                dropout=0.0, optim="adamw_torch", gradient_checkpointing=False)
        base = losses(recipe)
        cfg = config_from_dict({"lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": targets},
                                "train": {"batch_size": a.batch, "max_steps": a.steps, "logging_steps": 1,
                                          "learning_rate": 2e-4, "seed": 42}})
        torch.manual_seed(0)
        ours = losses(make_trainer(cfg, load(), tokenizer, Dataset.from_list(data), out, packing=False,
                                   padding_free=True, max_length=None, warmup_steps=0, save_strategy="no",
                                   completion_only_loss=True))
    diff = [abs(x - y) for x, y in zip(base, ours)]
    result = {"steps": a.steps, "batch": a.batch, "recipe_losses": base, "loragate_losses": ours,
              "max_abs_diff": max(diff), "mean_abs_diff": sum(diff) / len(diff),
              "relative_max_diff": max(d / abs(x) for d, x in zip(diff, base))}
    (ROOT / "bench/results/train_equivalence.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
