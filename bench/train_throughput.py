"""QLoRA training throughput: the common recipe vs loragate's training path, same GPU, same run.

    python bench/train_throughput.py                       # Qwen2.5-7B architecture, all cases (H100)
    python bench/train_throughput.py --arch llama-3.1-8b --cases recipe-fixed,loragate-fixed
    python bench/train_throughput.py --arch tiny --steps 3  # CPU smoke run of the same code

Models are random-init from an architecture written below (no hub), quantized to nf4 in place.
(a) the recipe: transformers Trainer + prepare_model_for_kbit_training + peft, nf4 double-quant, bf16,
    gradient checkpointing, paged_adamw_8bit, r=16 alpha=32, rows padded to max_length;
(b) loragate: tasks.training.train.make_trainer (trl SFTTrainer) with the params below: padding-free bfd
    packing, trl's chunked LM-head loss, bf16 embeddings, fused AdamW, optional Liger kernels.
Prints useful (non-pad) tokens/s, MFU (6N flops/token, H100 989 TFLOP/s dense bf16), peak memory
and ratios; writes bench/results/train_throughput-<arch>.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCHS = {  # architecture configs as published for the open-weight models (random weights here)
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rope_theta=1e6,
                       rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=False),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=5e5,
                         rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=False),
    "tiny": dict(model_type="qwen2", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=2048, max_position_embeddings=1024),
}
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QKVO = ALL_LINEAR[:4]
PEAK_FLOPS = 989e12  # H100 SXM dense bf16


def quantized_model(arch: str, device: str, attn: str = "sdpa"):
    """Random-init model of the architecture with every decoder Linear swapped for an nf4 Linear4bit
    (double-quant, bf16 compute), as from_pretrained(quantization_config=...) would leave it."""
    import bitsandbytes as bnb
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**ARCHS[arch])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
    n_params = sum(p.numel() for p in model.parameters())
    for module in list(model.model.layers.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                      device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True, module=q).to(device)
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, name, q)
    model.is_loaded_in_4bit = True  # what peft and trl look for on a bnb-quantized model
    return model, n_params


def lengths(kind: str, n: int, max_len: int, seed: int = 0) -> list[int]:
    """fixed: every row max_len. variable: chat turns, log-normal around 200 tokens, 24..max_len."""
    if kind == "fixed":
        return [max_len] * n
    g = torch.Generator().manual_seed(seed)
    raw = torch.exp(torch.randn(n, generator=g) * 0.65 + math.log(200))
    return [int(min(max_len, max(24, x))) for x in raw.tolist()]


def rows(kind: str, n: int, max_len: int, vocab: int) -> list[dict]:
    """Token rows; the last third of each row is the answer the loss counts."""
    g = torch.Generator().manual_seed(1)
    out = []
    for L in lengths(kind, n, max_len):
        ids = torch.randint(0, vocab - 1, (L,), generator=g).tolist()  # vocab-1 is the pad id
        answer = max(1, L // 3)
        out.append({"input_ids": ids, "completion_mask": [0] * (L - answer) + [1] * answer})
    return out


def tokenizer_for(vocab: int):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=f"t{vocab - 1}", eos_token=f"t{vocab - 2}")


def make_clock():
    """Trainer callback: wall time and non-pad tokens seen at each step end (GPU synchronized)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    return Clock()


KERNEL_KINDS = [("dequant", ("dequantize", "kdequant")), ("gemm", ("gemm", "nvjet", "cutlass", "sm90_x", "cublas")),
                ("attention", ("flash", "fmha", "attention", "sdpa")), ("triton", ("triton", "liger")),
                ("optimizer", ("adam", "foreach", "multi_tensor")), ("copy/cast", ("copy", "cast", "to_copy"))]


def kernel_kinds(events) -> dict[str, float]:
    """GPU milliseconds per kind of kernel (by name); the rest is elementwise/reduction work."""
    out: dict[str, float] = {}
    for e in events:
        ms = getattr(e, "device_time_total", 0) / 1e3
        if ms <= 0 or e.device_type.name != "CUDA":
            continue
        name = e.key.lower()
        kind = next((k for k, keys in KERNEL_KINDS if any(w in name for w in keys)), "other")
        out[kind] = round(out.get(kind, 0.0) + ms, 1)
    return out


def make_profiler(start: int, steps: int, path: Path):
    """Trainer callback: torch.profiler over `steps` steps from `start`; writes the top kernels and
    the GPU time per kernel kind against the wall time, to tell GPU-bound from launch-bound."""
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        summary: dict = {}

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == start:
                torch.cuda.synchronize()
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                               torch.profiler.ProfilerActivity.CUDA])
                self.prof.start()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == start + steps:
                torch.cuda.synchronize()
                wall = (time.perf_counter() - self.t0) * 1e3 / steps
                self.prof.stop()
                events = self.prof.key_averages()
                kinds = {k: round(v / steps, 1) for k, v in kernel_kinds(events).items()}
                self.summary.update(wall_ms_per_step=round(wall, 1), gpu_ms_per_step=kinds,
                                    gpu_busy=round(sum(kinds.values()) / wall, 3))
                path.write_text(json.dumps(self.summary) + "\n" + events.table(
                    sort_by="device_time_total", row_limit=45, max_name_column_width=90))

    return Profile()


def recipe_trainer(model, data: list[dict], targets: list[str], batch: int, steps: int, max_len: int, pad: int,
                   out: str, dropout: float = 0.05, optim: str | None = None, gradient_checkpointing: bool = True):
    """The common recipe, as tutorials write it: every row padded to max_length."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments, default_data_collator

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    padded = [{"input_ids": r["input_ids"] + [pad] * (max_len - len(r["input_ids"])),
               "attention_mask": [1] * len(r["input_ids"]) + [0] * (max_len - len(r["input_ids"])),
               "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"])]
               + [-100] * (max_len - len(r["input_ids"]))} for r in data]
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=2e-4,
                             bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
                             gradient_checkpointing=gradient_checkpointing,
                             optim=optim or ("paged_adamw_8bit" if torch.cuda.is_available() else "adamw_torch"),
                             logging_steps=1, save_strategy="no", report_to="none",
                             include_num_input_tokens_seen="non_padding", seed=42, data_seed=42)
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(padded), data_collator=default_data_collator)


def loragate_trainer(model, tokenizer, data: list[dict], targets: list[str], batch: int, steps: int, max_len: int,
                     out: str, dropout: float | None = None, sft: dict | None = None, **train):
    """loragate's own training path (tasks.training.train.make_trainer) with the given train params."""
    from datasets import Dataset

    from tasks.config import config_from_dict
    from tasks.training.train import make_trainer

    gpu = torch.cuda.is_available()
    cfg = config_from_dict({
        "quantization": {"enabled": True, "compute_dtype": "bfloat16" if gpu else "float32"},
        "lora": {"r": 16, "alpha": 32, "target_modules": targets, **({} if dropout is None else {"dropout": dropout})},
        "train": {"batch_size": batch, "max_length": max_len, "max_steps": steps, "logging_steps": 1,
                  "gradient_checkpointing": True, "optimizer": "adamw_torch_fused" if gpu else "adamw_torch",
                  **train}})
    torch.manual_seed(0)
    return make_trainer(cfg, model, tokenizer, Dataset.from_list(data), out, save_strategy="no",
                        include_num_input_tokens_seen="non_padding", completion_only_loss=True,
                        **(sft or {}))


def measure(trainer, warmup: int, timed: int, n_params: int, profile: Path | None = None) -> dict:
    """Clock steps warmup+1..warmup+timed; a profile, if asked for, covers the 2 steps after them."""
    static = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    clock = make_clock()
    trainer.add_callback(clock)
    profiler = make_profiler(warmup + timed, 2, profile) if profile and torch.cuda.is_available() else None
    if profiler:
        profile.parent.mkdir(parents=True, exist_ok=True)
        trainer.add_callback(profiler)
    trainer.train()
    (t0, k0), (t1, k1) = clock.marks[warmup - 1], clock.marks[warmup + timed - 1]
    tps = (k1 - k0) / (t1 - t0)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    out = {"tokens_per_s": round(tps, 1), "mfu": round(6 * n_params * tps / PEAK_FLOPS, 4),
           "step_s": round((t1 - t0) / timed, 3), "tokens_per_step": round((k1 - k0) / timed), "losses": losses}
    steps = [b[0] - a_[0] for a_, b in zip(clock.marks[warmup - 1:warmup + timed - 1], clock.marks[warmup:warmup + timed])]
    out["step_s_min_max"] = [round(min(steps), 3), round(max(steps), 3)]  # spread: a hiccup shows here
    out["step_s_each"] = [round(x, 3) for x in steps]
    if profiler:
        out["profile"] = profiler.summary
    if torch.cuda.is_available():
        out |= {"static_gib": round(static, 2), "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
    return out


def run_case(case: str, a) -> dict:
    """case = <path>-<data>[-<variant>...]: path recipe|loragate|lean, data fixed|var; variants: qkvo (targets),
    nodrop (LoRA dropout 0 in the recipe), b<N> (micro-batch N, any path: recipe-fixed-b16 is the recipe at
    loragate's 16 rows a step, so a ratio does not mix in batch size). loragate runs its params defaults (Liger kernels, dropout 0, fused
    LoRA, packing, flex attention) less what a variant turns off: noliger, drop (dropout 0.05), unfused (peft's
    forward), sdpa, nopack (padded batches); or adds: compile (torch.compile), b<N> (micro-batch N),
    offload (activations to host)."""
    from tasks.training.train import attention

    parts = case.split("-")
    path, kind, variants = parts[0], parts[1], set(parts[2:])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab, targets = ARCHS[a.arch]["vocab_size"], QKVO if "qkvo" in variants else ALL_LINEAR
    steps = a.warmup + a.steps + (2 if a.profile else 0)
    attn = "sdpa" if path == "recipe" or "sdpa" in variants else attention("auto")
    model, n_params = quantized_model(a.arch, device, attn)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # build-time bf16 copies are not training memory
    with tempfile.TemporaryDirectory() as out:
        batch = next((int(v[1:]) for v in variants if v[0] == "b" and v[1:].isdigit()),
                     {"recipe": a.recipe_batch, "lean": a.lean_batch}.get(path, a.batch))
        if path == "recipe":
            data = rows(kind, batch * steps, a.max_len, vocab)
            trainer = recipe_trainer(model, data, targets, batch, steps, a.max_len, vocab - 1, out,
                                     dropout=0.0 if "nodrop" in variants else 0.05)
        else:
            data = rows(kind, batch * steps * (3 if kind == "var" else 1), a.max_len, vocab)
            extra = {"liger_kernels": "noliger" not in variants,
                     "packing": False if "nopack" in variants else "auto",
                     "dropout": 0.05 if "drop" in variants else None, "fused_lora": "unfused" not in variants,
                     "sft": {"torch_compile": True} if "compile" in variants else {}}
            if "offload" in variants:
                extra["sft"]["activation_offloading"] = True
            if path == "lean":
                extra["optimizer"] = "paged_adamw_8bit"
            trainer = loragate_trainer(model, tokenizer_for(vocab), data, targets, batch, steps, a.max_len, out, **extra)
        profile = Path(a.out) / f"profile-{case}.txt" if a.profile else None
        result = {"case": case, "n_params": n_params, **measure(trainer, a.warmup, a.steps, n_params, profile)}
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def isolated(case: str) -> dict:
    """One case in a fresh process: no allocator state or leaked references carry between cases,
    so each peak-memory figure is that case's own. A failing lever does not lose the others."""
    import subprocess

    args = [a for a in sys.argv[1:]]
    proc = subprocess.run([sys.executable, __file__, *args, "--one", case], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line] or ["no result (see stderr)"]
        return {"case": case, "error": errors[-1][:500]}
    return json.loads(lines[-1][len("RESULT "):])


def ratios(results: dict[str, dict]) -> dict[str, dict]:
    """Each loragate/lean case against each recipe case on the same data kind and targets."""
    ok = {n: r for n, r in results.items() if "error" not in r}
    key = lambda n: (n.split("-")[1], "qkvo" in n.split("-"))  # noqa: E731
    out = {}
    for name, r in ok.items():
        for base, b in ok.items():
            if not name.startswith("recipe") and base.startswith("recipe") and key(name) == key(base):
                out[f"{name} / {base}"] = {
                    "tokens_per_s": round(r["tokens_per_s"] / b["tokens_per_s"], 2),
                    "peak_allocated": round(r.get("peak_allocated_gib", 0) / max(b.get("peak_allocated_gib", 1), 1e-9), 2)}
    return out


def headline(results: dict[str, dict]) -> dict[str, dict]:
    """Per case, what a reader compares first: tokens/s, MFU, peak memory and the step-time spread."""
    keys = ("tokens_per_s", "mfu", "step_s", "step_s_min_max", "tokens_per_step", "peak_allocated_gib", "error")
    return {case: {k: r[k] for k in keys if k in r} for case, r in results.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="qwen2.5-7b", choices=sorted(ARCHS))
    p.add_argument("--cases", default="recipe-fixed,loragate-fixed,loragate-fixed-drop,recipe-fixed-nodrop,"
                                      "recipe-var,loragate-var,lean-fixed")
    p.add_argument("--steps", type=int, default=8, help="timed steps, after --warmup")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--recipe-batch", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="loragate: packed bins of max-len tokens per step")
    p.add_argument("--lean-batch", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench/results"))
    p.add_argument("--profile", action="store_true", help="write profile-<case>.txt: top kernels, GPU time by kind")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process, print its JSON
    a = p.parse_args()
    if a.one:
        print("RESULT " + json.dumps(run_case(a.one, a)), flush=True)
        return
    results = {}
    for case in a.cases.split(","):  # the JSON is rewritten after each case: a later crash loses nothing
        results[case] = isolated(case)
        print(json.dumps({k: v for k, v in results[case].items() if k != "losses"}), flush=True)
        summary = {"arch": a.arch, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                   "torch": torch.__version__, "args": vars(a), "headline": headline(results),
                   "results": results, "ratios": ratios(results)}
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / f"train_throughput-{a.arch}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["ratios"], indent=2))


if __name__ == "__main__":
    main()
