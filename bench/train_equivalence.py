"""Does loragate's fast training path learn the same thing as the common recipe? Real SmolLM2
weights, the real (anonymized) training split, the same rows in the same order, same LoRA init:
the recipe pads every row to max_length; loragate's path (tasks.training.train.make_trainer) concatenates
rows padding-free with per-sequence positions and scores only the answer tokens in chunks.

    python bench/train_equivalence.py [--steps 12]     # CPU is enough; writes bench/results/train_equivalence.json
    python bench/train_equivalence.py --gpu --steps 40 # QLoRA on a GPU, then one lever switched at a time, and Unsloth
    python bench/train_equivalence.py --qlora --bf16-weights --steps 6 --max-len 128   # CPU: the bf16 residual
    python bench/train_equivalence.py --cpu-autocast --steps 12 --max-len 128  # CPU, bf16 autocast as on a GPU
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
from bench.plot_results import plot_if_possible  # noqa: E402
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


def _loragate(cfg_dict: dict, load, tokenizer, data: list[dict], out: str, **overrides) -> list[float]:
    """loragate's make_trainer on the same rows in the same order (one row per sequence, padding-free),
    the base loaded with the attention train.attn_implementation picks (flex on CUDA), as load_base does."""
    from datasets import Dataset

    from tasks.config import config_from_dict
    from tasks.training.train import attention, make_trainer

    cfg = config_from_dict(cfg_dict)
    torch.manual_seed(0)
    trainer = make_trainer(cfg, load(attention(cfg.train.attn_implementation)), tokenizer, Dataset.from_list(data),
                           out, packing=False, padding_free=True, max_length=None, warmup_steps=0,
                           save_strategy="no", completion_only_loss=True, **overrides)
    return losses(trainer)


def _with_lever(levers: str, cfg: dict, load, tokenizer, data: list[dict], out: str) -> tuple[str, list[float]]:
    """loragate's losses with train params switched from their defaults: `levers` names one
    (a boolean flipped: fp8_base on, liger off), one set (fp8_base=grads), or several joined by '+';
    fp32_out=residual keeps fused LoRA's fp32 outputs to the projections that feed the residual (o, down);
    fp8_accum=full accumulates the FP8 forward products in fp32 (fp8_base.FORWARD_FAST_ACCUM)."""
    from tasks.config import config_from_dict
    from tasks.training import fp8_base, fused_lora

    train, names, narrow, accum = dict(cfg["train"]), [], fused_lora.NARROW_OUTPUTS, fp8_base.FORWARD_FAST_ACCUM
    for lever in levers.split("+"):
        key, _, value = lever.partition("=")
        if key == "fp8_accum":  # not a param: full = the FP8 forward products accumulated in fp32
            fp8_base.FORWARD_FAST_ACCUM = value != "full"
            names.append(f"fp8_accum_{value}")
            continue
        if key == "fp32_out":  # not a param: which fused outputs stay fp32 (residual: o/down only)
            fused_lora.NARROW_OUTPUTS = fused_lora.RESIDUAL_FEEDERS_ONLY if value == "residual" else fused_lora.ATTENTION_INPUTS
            names.append(f"fp32_out_{value}")
            continue
        train[key] = value or not getattr(config_from_dict(cfg).train, key)
        names.append(f"{key}_{value}" if value else f"with_{key}" if train[key] else f"no_{key}")
    try:
        return "_".join(names), _loragate(cfg | {"train": train}, load, tokenizer, data, out)
    finally:
        fused_lora.NARROW_OUTPUTS, fp8_base.FORWARD_FAST_ACCUM = narrow, accum


def _widened(model):
    """The model with its residual stream in fp32 (train.fp32_residual's hook). Without autocast this
    runs on the CPU only because every product here is 4-bit (which casts its input) or the chunked loss."""
    from tasks.training.train import fp32_residual

    fp32_residual(model)
    return model


def _unsloth_curve(a, site: str) -> list[float] | str:
    """Unsloth's losses on the same rows, in a child process (it must patch transformers before
    anything imports it); the error line where it fails."""
    from bench.train_throughput import in_child

    curve, error = in_child([__file__, *sys.argv[1:], "--one-unsloth"], [site],
                            Path(a.out, "stderr-equivalence-unsloth.txt"))
    return error or curve


def _diffs(base: list[float], other: list[float]) -> dict:
    diff = [abs(x - y) for x, y in zip(base, other)]
    return {"max_abs_diff": max(diff), "mean_abs_diff": sum(diff) / len(diff),
            "relative_max_diff": max(d / abs(x) for d, x in zip(diff, base))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--gpu", action="store_true", help="QLoRA in bf16 on the GPU: loragate's GPU defaults (Liger, "
                   "flex attention, fused LoRA) and with FP8 base products, against the recipe; noise = the "
                   "recipe with another LoRA init")
    p.add_argument("--qlora", action="store_true", help="4-bit base on the CPU too (fp32 compute)")
    p.add_argument("--bf16-weights", action="store_true", help="CPU, with --qlora: weights and 4-bit compute in "
                   "bf16, as a 7B checkpoint ships; adds loragate with the residual stream in fp32 (train."
                   "fp32_residual, set by hand: on the CPU the trainer runs without autocast)")
    p.add_argument("--cpu-autocast", action="store_true", help="CPU, 4-bit from bf16 weights, both trainers under "
                   "bf16 autocast as on a GPU: the recipe, loragate, and loragate without train.fp32_residual")
    # default: the modes the throughput table compares with Unsloth (bf16 stream, with FP8 grads) and FP8 grads alone
    p.add_argument("--levers", default="fp32_residual,fp32_residual+fp8_base=grads,fp8_base=grads",
                   help="--gpu: loragate with train params switched from their defaults, one run per comma-"
                        "separated item: a boolean flipped (fused_lora), a value set (fp8_base=grads), '+' joins; "
                        "fp32_out=residual: fused LoRA's fp32 outputs on o/down only")
    p.add_argument("--out", default=str(ROOT / "bench/results"))
    p.add_argument("--unsloth-site", default=str(ROOT / ".gpu-carry/site-uns"),
                   help="--gpu: folder holding Unsloth; where it exists, Unsloth's path runs on the same rows too")
    p.add_argument("--one-unsloth", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one_unsloth:
        import unsloth  # noqa: F401  (patches transformers and trl: must come before them)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.config import QuantizationConfig
    from tasks.training.models import resolve_model
    from tasks.training.train import bnb_config

    model_dir = resolve_model("smollm2-135m-instruct", "~/.cache/loragate/models")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = tokenized_rows(tokenizer, ROOT / "data/splits/train.jsonl", a.max_len, a.batch * a.steps)
    quantized = a.gpu or a.qlora or a.cpu_autocast
    half = a.gpu or (a.bf16_weights and a.qlora) or a.cpu_autocast
    compute = "bfloat16" if half else "float32"
    quant = bnb_config(QuantizationConfig(enabled=True, compute_dtype=compute)) if quantized else None
    # on the GPU the weights load in bf16, as a 7B checkpoint ships (the converted SmolLM2 is fp32)
    load = lambda attn="sdpa": AutoModelForCausalLM.from_pretrained(  # noqa: E731
        model_dir, attn_implementation=attn, **({"dtype": torch.bfloat16} if half else {}),
        **({"quantization_config": quant, "device_map": "cuda" if a.gpu else "cpu"} if quant else {}))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"] + (["gate_proj", "up_proj", "down_proj"] if quantized else [])
    if a.one_unsloth:  # the child _unsloth_curve starts: Unsloth's FastLanguageModel, rows unpacked, in order
        from bench.train_throughput import unsloth_trainer

        with tempfile.TemporaryDirectory() as out:
            trainer = unsloth_trainer(Path(model_dir), data, targets, a.batch, a.steps, a.max_len, out, packing=False)
            print("RESULT " + json.dumps(losses(trainer)))
        return
    cfg = {"lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": targets},
           "train": {"batch_size": a.batch, "max_steps": a.steps, "logging_steps": 1, "learning_rate": 2e-4, "seed": 42}}
    if quant:
        cfg |= {"quantization": {"enabled": True, "compute_dtype": compute}}
    if a.gpu:
        cfg["train"] |= {"optimizer": "adamw_torch_fused", "attn_implementation": "flex_attention"}
    with tempfile.TemporaryDirectory() as out:
        # dropout 0 in both: dropout masks depend on tensor shapes, which padding changes
        recipe = lambda seed: losses(recipe_trainer(  # noqa: E731
            load(), data, targets, a.batch, a.steps, a.max_len, pad, out, dropout=0.0,
            optim="adamw_torch_fused" if a.gpu else "adamw_torch", gradient_checkpointing=False, seed=seed,
            bf16=a.gpu or a.cpu_autocast))
        autocast = {"bf16": True} if a.cpu_autocast else {}
        base = recipe(0)
        result = {"device": torch.cuda.get_device_name() if a.gpu else "cpu", "steps": a.steps, "batch": a.batch,
                  "recipe_losses": base}
        if a.gpu:
            result["recipe_other_init_losses"] = other = recipe(1)
            result["noise"] = _diffs(base, other)
            for lever in a.levers.split(","):  # one lever switched at a time: which one moves the curve
                name, curve = _with_lever(lever, cfg, load, tokenizer, data, out)
                result[f"{name}_losses"], result[name] = curve, _diffs(base, curve)
            if Path(a.unsloth_site).is_dir():
                curve = _unsloth_curve(a, a.unsloth_site)
                result["unsloth_losses"], result["unsloth"] = curve, _diffs(base, curve) if isinstance(curve, list) else curve
        elif a.cpu_autocast:  # the bf16 residual and outputs, as loragate had them before
            result["recipe_other_init_losses"] = other = recipe(1)
            result["noise"] = _diffs(base, other)
            narrow = cfg | {"train": cfg["train"] | {"fp32_residual": False}}
            result["no_fp32_residual_losses"] = curve = _loragate(narrow, load, tokenizer, data, out, **autocast)
            result["no_fp32_residual"] = _diffs(base, curve)
        elif half:
            curve = _loragate(cfg, lambda attn="sdpa": _widened(load(attn)), tokenizer, data, out)
            result["fp32_residual_losses"], result["fp32_residual"] = curve, _diffs(base, curve)
        result["loragate_losses"] = ours = _loragate(cfg, load, tokenizer, data, out, **autocast)
        result |= _diffs(base, ours)
    name = ("train_equivalence-gpu.json" if a.gpu else "train_equivalence-cpu-autocast.json" if a.cpu_autocast
            else "train_equivalence-cpu-bf16.json" if half else "train_equivalence.json")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    plot_if_possible(Path(a.out) / name)


if __name__ == "__main__":
    main()
