"""QLoRA training throughput: the common recipe vs loragate's training path, same GPU, same run.

    python bench/train_throughput.py                       # Qwen2.5-7B architecture, all cases (H100)
    python bench/train_throughput.py --arch llama-3.1-8b --cases recipe-fixed,loragate-fixed
    python bench/train_throughput.py --arch tiny --steps 3  # CPU smoke run of the same code
    python bench/train_throughput.py --repeat 3 --cases unsloth-fixed,loragate-fixed-m7.6   # median of 3 rounds

Models are random-init from an architecture written below (no hub), quantized to nf4 in place
(Unsloth loads the same weights from a folder written once: it only loads from disk).
(a) the recipe: transformers Trainer + prepare_model_for_kbit_training + peft, nf4 double-quant, bf16,
    gradient checkpointing, paged_adamw_8bit, r=16 alpha=32, rows padded to max_length;
(b) loragate: tasks.training.train.make_trainer (trl SFTTrainer) with params' defaults: padding-free bfd
    packing, flex attention, Liger kernels, the adapter before the base product, fused AdamW, the
    micro-batch/recompute/offload/host table that train.memory_budget_gib picks (m<GiB> variants set
    the budget);
(c) Unsloth 2026.10 (unsloth-* cases): FastLanguageModel 4-bit, its gradient checkpointing (host
    offload), its patched SFTTrainer with packing; the defaults it rewrites set to (b)'s values.
Peak GPU memory is what PyTorch allocated; host_peak_gib is the process's peak RSS (Unsloth's
offloaded activations land there).
Prints useful (non-pad) tokens/s, MFU (6N flops/token, H100 989 TFLOP/s dense bf16), peak memory
and ratios; writes bench/results/train_throughput-<arch>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plot_results import plot_if_possible  # noqa: E402

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
PEAK_FLOPS = 989e12  # H100 and H200 SXM dense bf16 (the same tensor cores)


def random_model(arch: str, device: str, attn: str = "sdpa"):
    """The architecture with random bf16 weights, seed 0: the same weights in every case."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**ARCHS[arch]), dtype=torch.bfloat16,
                                                attn_implementation=attn)


def quantized_model(arch: str, device: str, attn: str = "sdpa"):
    """Random-init model of the architecture with every decoder Linear swapped for an nf4 Linear4bit
    (double-quant, bf16 compute), as from_pretrained(quantization_config=...) would leave it."""
    import bitsandbytes as bnb

    model = random_model(arch, device, attn)
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


def make_clock(host_waits: bool = False):
    """Trainer callback: when each step ended and the non-pad tokens seen by then. host_waits: the
    host waits for the GPU at each step end and reads the trainer's token count (two waits a step,
    as every result before the -fewerwaits ones ran); else a CUDA event marks each step end on the GPU's own
    timeline and the tokens are counted on the host as batches are collated (`count_batches`),
    read once at the end (`marks`)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.events = torch.cuda.is_available() and not host_waits  # else host times, after a wait
            self.ends: list[tuple[object, int]] = []  # (a CUDA event or a host time, tokens seen)
            self.batch_tokens: list[int] = []  # each collated batch's non-pad tokens, in order

        def on_step_end(self, args, state, control, **kwargs):
            seen = (int(state.num_input_tokens_seen) if host_waits
                    else sum(self.batch_tokens[:state.global_step * args.gradient_accumulation_steps]))
            if self.events:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                self.ends.append((event, seen))
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append((time.perf_counter(), seen))

        def marks(self) -> list[tuple[float, int]]:
            if not self.events or not self.ends:
                return self.ends
            self.ends[-1][0].synchronize()
            first = self.ends[0][0]
            return [(first.elapsed_time(e) / 1e3, n) for e, n in self.ends]

    return Clock()


def count_batches(trainer, into: list[int]) -> None:
    """Append each batch's non-pad tokens to `into` as the trainer's collator builds it (on the
    host, before the batch reaches the GPU), counted as the trainer's own "non_padding" count is."""
    collate, pad = trainer.data_collator, getattr(trainer.processing_class, "pad_token_id", None)

    def counted(features):
        batch = collate(features)
        if "attention_mask" in batch:
            into.append(int(batch["attention_mask"].sum()))
        else:  # padding-free rows, or padded ones the pad id tells apart
            into.append(int((batch["input_ids"] != pad).sum()) if pad is not None else batch["input_ids"].numel())
        return batch

    trainer.data_collator = counted


KERNEL_KINDS = [("dequant", ("dequantize", "kdequant")), ("gemm", ("gemm", "nvjet", "cutlass", "sm90_x", "cublas")),
                ("attention", ("flash", "fmha", "attention", "sdpa")), ("triton", ("triton", "liger")),
                ("optimizer", ("adam", "foreach", "multi_tensor")), ("copy/cast", ("copy", "cast", "to_copy")),
                ("memcpy", ("memcpy",))]


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


def stream_gaps(events, steps: int, top: int = 12) -> dict:
    """Idle time between kernels on the busiest GPU stream, per step: late = the host had not yet
    launched the next kernel or copy (launch-bound), waiting = it had (a dependency: another stream,
    a copy). A copy is launched by cudaMemcpyAsync/cudaMemsetAsync, a kernel by a *LaunchKernel call."""
    gpu = [e for e in events if e.device_type() == torch.autograd.DeviceType.CUDA and e.duration_ns() > 0]
    launched = {e.correlation_id(): e.end_ns() for e in events
                if e.device_type() == torch.autograd.DeviceType.CPU
                and any(call in e.name().lower() for call in ("launch", "memcpy", "memset"))}
    busy: dict[int, int] = {}
    for e in gpu:
        busy[e.device_resource_id()] = busy.get(e.device_resource_id(), 0) + e.duration_ns()
    compute: dict[int, int] = {}
    for e in gpu:
        if not e.name().startswith(("Memcpy", "Memset")):
            compute[e.device_resource_id()] = compute.get(e.device_resource_id(), 0) + e.duration_ns()
    main = max(compute, key=compute.get)
    kernels = sorted((e for e in gpu if e.device_resource_id() == main), key=lambda e: e.start_ns())
    late = waiting = 0
    gaps = []
    for prev, nxt in zip(kernels, kernels[1:]):
        gap = nxt.start_ns() - prev.end_ns()
        if gap <= 0:
            continue
        host = min(gap, max(0, launched.get(nxt.correlation_id(), 0) - prev.end_ns()))
        late, waiting = late + host, waiting + gap - host
        gaps.append((gap, host, prev.name()[:50], nxt.name()[:50]))
    gaps.sort(reverse=True)
    ms = lambda ns: round(ns / 1e6 / steps, 1)  # noqa: E731
    return {"streams_busy_ms": {str(k): ms(v) for k, v in busy.items()}, "main_idle_late_ms": ms(late),
            "main_idle_waiting_ms": ms(waiting), "gaps_over_50us": sum(g > 50_000 for g, *_ in gaps) / steps,
            "largest_gaps": [{"us": round(g / 1e3), "late_us": round(h / 1e3), "after": a, "before": b}
                             for g, h, a, b in gaps[:top]]}


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
                try:  # the timeline's gaps; a profiler without them must not lose the case's numbers
                    self.summary["gaps"] = stream_gaps(self.prof.profiler.kineto_results.events(), steps)
                except Exception as e:  # noqa: BLE001
                    self.summary["gaps"] = f"not read: {type(e).__name__}: {e}"
                path.write_text(json.dumps(self.summary) + "\n" + events.table(
                    sort_by="device_time_total", row_limit=45, max_name_column_width=90))

    return Profile()


def make_gc_meter(warmup: int, timed: int):
    """Trainer callback: the host's time in Python's garbage collector over the timed steps, by
    generation (a full collection walks every live object while the GPU may run dry). H200,
    2026-12-04: 3.6 ms a step; gc.freeze() at the start of training made steps slower and erratic
    (-gcfreeze results), so nothing is done about it."""
    import gc

    from transformers import TrainerCallback

    class GcMeter(TrainerCallback):
        def __init__(self):
            self.started, self.ms, self.count = 0.0, [0.0] * 3, [0] * 3

        def collected(self, phase, info):
            if phase == "start":
                self.started = time.perf_counter()
                return
            self.ms[info["generation"]] += (time.perf_counter() - self.started) * 1e3
            self.count[info["generation"]] += 1

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:  # listening only over the timed steps
                gc.callbacks.append(self.collected)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup + timed:
                gc.callbacks.remove(self.collected)

        def summary(self) -> dict:
            return {"ms_per_step": round(sum(self.ms) / timed, 2), "collections_by_generation": self.count,
                    "ms_by_generation": [round(m, 1) for m in self.ms]}

    return GcMeter()


def make_sync_report(step: int, path: Path):
    """Trainer callback: every operation that makes the host wait for the GPU during step `step`
    (torch.cuda's sync debug mode), counted by the Python lines that called it, into `path`."""
    import collections
    import traceback
    import warnings

    from transformers import TrainerCallback

    class SyncReport(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step:
                self.sites, self.shown, self.filters = collections.Counter(), warnings.showwarning, warnings.filters[:]
                warnings.showwarning = self.record
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")

        def record(self, message, category, *args, **kwargs):
            if "synchroniz" not in str(message):
                return self.shown(message, category, *args, **kwargs)
            frames = [f for f in traceback.extract_stack()[:-2] if "site-packages/torch/" not in f.filename][-3:]
            self.sites[" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))] += 1

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step + 1:
                torch.cuda.set_sync_debug_mode(0)
                warnings.showwarning, warnings.filters[:] = self.shown, self.filters
                path.write_text(json.dumps({"step": step, "syncs": sum(self.sites.values()),
                                            "sites": self.sites.most_common()}, indent=1))

    return SyncReport()


def make_host_profile(start: int, steps: int, path: Path):
    """Trainer callback: cProfile of the host's Python over `steps` steps from `start`, top
    functions by own time and by cumulative time, and the callers of the costliest, into `path`:
    where a step that waits for the host spends it. The backward runs on the calling thread
    meanwhile (autograd's device threads are out of cProfile's sight). cProfile counts every
    resumption of a generator as a call: `parameters()` shows once per parameter it yields."""
    import cProfile
    import io
    import pstats

    from transformers import TrainerCallback

    class HostProfile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == start:
                self.one_thread = torch.autograd.set_multithreading_enabled(False)
                self.prof = cProfile.Profile()
                self.prof.enable()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == start + steps:
                self.prof.disable()
                self.one_thread.__exit__(None, None, None)
                out = io.StringIO()
                stats = pstats.Stats(self.prof, stream=out)
                stats.sort_stats("tottime").print_stats(45)
                stats.sort_stats("cumulative").print_stats(60)
                stats.sort_stats("tottime").print_callers(25)  # who calls the costliest
                path.write_text(f"{steps} steps\n" + out.getvalue())

    return HostProfile()


def recipe_trainer(model, data: list[dict], targets: list[str], batch: int, steps: int, max_len: int, pad: int,
                   out: str, dropout: float = 0.05, optim: str | None = None, gradient_checkpointing: bool = True,
                   seed: int = 0, bf16: bool | None = None):
    """The common recipe, as tutorials write it: every row padded to max_length. seed: LoRA init;
    bf16: autocast (default: on a GPU)."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments, default_data_collator

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    padded = [{"input_ids": r["input_ids"] + [pad] * (max_len - len(r["input_ids"])),
               "attention_mask": [1] * len(r["input_ids"]) + [0] * (max_len - len(r["input_ids"])),
               "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"])]
               + [-100] * (max_len - len(r["input_ids"]))} for r in data]
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=2e-4,
                             bf16=torch.cuda.is_available() if bf16 is None else bf16,
                             use_cpu=not torch.cuda.is_available(),
                             gradient_checkpointing=gradient_checkpointing,
                             optim=optim or ("paged_adamw_8bit" if torch.cuda.is_available() else "adamw_torch"),
                             logging_steps=1, save_strategy="no", report_to="none",
                             include_num_input_tokens_seen="non_padding", seed=42, data_seed=42)
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(padded), data_collator=default_data_collator)


def loragate_trainer(model, tokenizer, data: list[dict], targets: list[str], batch: int, steps: int, max_len: int,
                     out: str, dropout: float | None = None, sft: dict | None = None, **train):
    """loragate's own training path (tasks.training.train.make_trainer) with the given train params;
    params' defaults otherwise (memory_budget_gib auto, fp8_base auto, ...)."""
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


def saved_model(arch: str) -> Path:
    """The random-init bf16 model (seed 0, the weights every other case quantizes) and the bench
    tokenizer on disk, for trainers that only load from a folder (Unsloth). Written once per machine."""
    path = Path(tempfile.gettempdir()) / f"loragate-bench-{arch}"
    if not (path / "config.json").is_file():
        model = random_model(arch, "cuda" if torch.cuda.is_available() else "cpu")
        model.save_pretrained(path.with_suffix(".part"))
        tokenizer_for(ARCHS[arch]["vocab_size"]).save_pretrained(path.with_suffix(".part"))
        path.with_suffix(".part").rename(path)
        del model
        torch.cuda.empty_cache()
    return path


def unsloth_trainer(model_dir: Path, data: list[dict], targets: list[str], batch: int, steps: int, max_len: int,
                    out: str, packing: bool = True):
    """Unsloth's own path, as its documentation writes it: FastLanguageModel (4-bit from bf16), its
    LoRA with use_gradient_checkpointing="unsloth" (activations to host memory), its patched
    SFTTrainer (packing unless told). The defaults its patch rewrites (gradient accumulation,
    optimizer, weight decay) are set explicitly; trainer.ran_with records what it ran with."""
    from unsloth import FastLanguageModel  # before transformers/trl: it patches them on import
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = FastLanguageModel.from_pretrained(model_name=str(model_dir), max_seq_length=max_len,
                                                         dtype=torch.bfloat16, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0, target_modules=targets,
                                             bias="none", use_gradient_checkpointing="unsloth", random_state=0)
    args = SFTConfig(output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                     max_steps=steps, learning_rate=2e-4, lr_scheduler_type="linear", warmup_steps=0,
                     optim="adamw_torch_fused", weight_decay=0.0, packing=packing, max_length=max_len, bf16=True,
                     logging_steps=1, save_strategy="no", report_to="none", completion_only_loss=True,
                     include_num_input_tokens_seen="non_padding", seed=42, data_seed=42, dataset_num_proc=1)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(data), args=args)
    trainer.ran_with = {k: str(getattr(trainer.args, k, None)) for k in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "optim", "weight_decay", "learning_rate",
        "packing", "max_length", "bf16")}
    return trainer


def measure(trainer, warmup: int, timed: int, n_params: int, profile: Path | None = None,
            syncs: Path | None = None, host_waits: bool = False, log_every: int = 5,
            host_profile: Path | None = None) -> dict:
    """Clock steps warmup+1..warmup+timed; a profile, if asked for, covers the 2 steps after them,
    a sync report the first of them, a host profile the 2 after them. Unless host_waits, the
    trainer logs every `log_every` steps (loragate's default train.logging_steps) and the clock
    adds no waits of its own."""
    static = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    clock = make_clock(host_waits)
    trainer.add_callback(clock)
    if not host_waits:
        trainer.args.logging_steps, trainer.args.include_num_input_tokens_seen = log_every, "no"
        count_batches(trainer, clock.batch_tokens)
    profiler = make_profiler(warmup + timed, 2, profile) if profile and torch.cuda.is_available() else None
    if profiler:
        profile.parent.mkdir(parents=True, exist_ok=True)
        trainer.add_callback(profiler)
    if syncs and torch.cuda.is_available():  # the step after the timed ones (sync checks slow the host)
        trainer.add_callback(make_sync_report(warmup + timed, syncs))
    trainer.add_callback(gc_meter := make_gc_meter(warmup, timed))
    if host_profile:  # the 2 steps after the timed ones (cProfile slows the host)
        host_profile.parent.mkdir(parents=True, exist_ok=True)
        trainer.add_callback(make_host_profile(warmup + timed, 2, host_profile))
    trainer.train()
    marks = clock.marks()
    (t0, k0), (t1, k1) = marks[warmup - 1], marks[warmup + timed - 1]
    tps = (k1 - k0) / (t1 - t0)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    out = {"tokens_per_s": round(tps, 1), "mfu": round(6 * n_params * tps / PEAK_FLOPS, 4),
           "step_s": round((t1 - t0) / timed, 3), "tokens_per_step": round((k1 - k0) / timed), "losses": losses}
    steps = [b[0] - a_[0] for a_, b in zip(marks[warmup - 1:warmup + timed - 1], marks[warmup:warmup + timed])]
    out["step_s_min_max"] = [round(min(steps), 3), round(max(steps), 3)]  # spread: a hiccup shows here
    out["step_s_each"] = [round(x, 3) for x in steps]
    out["gc"] = gc_meter.summary()
    if profiler:
        out["profile"] = profiler.summary
    if torch.cuda.is_available():
        out |= {"static_gib": round(static, 2), "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
    return out


def _loragate_params(path: str, variants: set[str], a) -> dict:
    """train params for a loragate/lean case: params' defaults less what a variant turns off."""
    extra = {"liger_kernels": "noliger" not in variants, "packing": False if "nopack" in variants else "auto",
             "dropout": 0.05 if "drop" in variants else None, "fused_lora": "nofused" not in variants,
             "fp32_residual": "bf16res" not in variants, "cuda_graphs": "graphs" in variants,
             "fp8_base": "grads" if "fp8g" in variants else "fp8" in variants,
             "sft": {"torch_compile": True} if "compile" in variants else {}}
    budget = next((float(v[1:]) for v in variants if v[0] == "m" and v[1:].replace(".", "").isdigit()), None)
    extra["memory_budget_gib"] = budget or (a.lean_gib if path == "lean" else "off" if "ckpt" in variants else "auto")
    if "offload" in variants:
        extra["sft"]["activation_offloading"] = True
    return extra


def run_case(case: str, a) -> dict:
    """case = <path>-<data>[-<variant>...]: path recipe|loragate|lean|unsloth, data fixed|var.
    recipe: the common recipe; variants qkvo (targets), nodrop (LoRA dropout 0), b<N> (rows a step).
    loragate: params' defaults (memory budget auto, Liger, fused LoRA, fp32 residual, packing, flex
    attention) less what a variant turns off: ckpt (no budget: every layer recomputed, as before
    budgets), noliger, drop (dropout 0.05), peftorder (peft's base-first LoRA forward), sdpa, nopack,
    nofused (adapter first; `fused`, the default now, is accepted as before), bf16res (the residual
    stream left in bf16, as every result before 2026-12-02 ran); or sets: m<GiB> (memory budget),
    b<N> (rows a step), fp8 (FP8 base products), fp8g (FP8 for the recompute and the input gradients
    only), fp8full (with fp8/fp8g: the forward's FP8 products accumulated in fp32, not Hopper's
    fast accumulation), compile, offload.
    oldlaunch: every FP8 kernel launched through Triton's own call and each projection casting its
    input itself (as before the -directlaunch results).
    fused variants: nocache (the adapter cast and the block scales un-nested at every product),
    resout (fp32 outputs on the projections that feed the residual only: o, down).
    syncembed: a host table's rows gathered in the forward, the ids copied back from the GPU
    first (as before 2026-12-03; now gathered ahead as the batch is collated).
    emptycache: trl's offloader empties CUDA's allocator cache every step (as before 2026-12-03).
    exitsync: trl's offloader waits on the host for the GPU at the end of each backward, and
    itemmetrics: trl's loss reads its metrics on the host and transformers counts the model's
    parameters every micro-batch (both as before the -fewerwaits results).
    walks: model.train(), zero_grad() and the gradient clip walk every module each step (as before
    2026-12-04). ondemand: trl's offloader copies each offloaded tensor back only when the backward
    asks for it (as before 2026-12-04, late; now offload.fetch_ahead starts the next copy as one is
    handed back; `ahead` is accepted as before). nopackedwait: transformers' packed-sequence
    detection without its host wait (tasks/training/packed_mask.py; not in make_trainer yet).
    maskedindex: trl's fused loss picks the labelled positions with a boolean index, which waits on
    the host for the whole forward (as before 2026-12-04, evening; now counted_labels picks as many
    as the collator counted). nocompact: trl's fused loss scores every position, with no pick and
    no wait (3x the loss head's work here, where a third of each row is labelled).
    graphs: each decoder layer's forward and recompute + backward replayed as CUDA graphs
    (train.cuda_graphs, tasks/training/graphed_layers.py).
    lean: loragate under --lean-gib. unsloth: Unsloth's path on the same rows (needs its packages:
    --unsloth-site); variant xf: with xformers on its path (--xformers-site), which Unsloth uses for
    packed rows where flash-attn is missing."""
    from tasks.training.train import attention

    parts = case.split("-")
    path, kind, variants = parts[0], parts[1], set(parts[2:])
    vocab, targets = ARCHS[a.arch]["vocab_size"], QKVO if "qkvo" in variants else ALL_LINEAR
    steps = a.warmup + a.steps + (2 if a.profile or a.host_profile else 1 if a.syncs else 0)
    tokens = a.recipe_tokens if path == "recipe" else a.tokens
    batch = next((int(v[1:]) for v in variants if v[0] == "b" and v[1:].isdigit()), max(1, tokens // a.max_len))
    n_rows = batch * steps * (3 if kind == "var" and path != "recipe" else 1)  # packed bins take ~3 var rows
    data = rows(kind, n_rows, a.max_len, vocab)
    with tempfile.TemporaryDirectory() as out:
        if path == "unsloth":
            trainer = unsloth_trainer(saved_model(a.arch), data, targets, batch, steps, a.max_len, out)
            n_params = arch_params(a.arch)
        else:
            attn = "sdpa" if path == "recipe" or "sdpa" in variants else attention("auto")
            model, n_params = quantized_model(a.arch, "cuda" if torch.cuda.is_available() else "cpu", attn)
            if path == "recipe":
                trainer = recipe_trainer(model, data, targets, batch, steps, a.max_len, vocab - 1, out,
                                         dropout=0.0 if "nodrop" in variants else 0.05)
            else:
                _levers_off(variants | ({"maskedindex"} if "nocompact" in variants else set()))
                if "nocache" in variants:  # fused LoRA casting the adapter and un-nesting the scales at every product
                    _uncached_fused_lora()
                if "oldlaunch" in variants:  # as before the -directlaunch results
                    _old_fp8_launch()
                if "fp8full" in variants:  # the FP8 forward products accumulated in full (fp32) precision
                    from tasks.training import fp8_base
                    fp8_base.FORWARD_FAST_ACCUM = False
                if "resout" in variants:  # fused LoRA's fp32 outputs on o/down only (gate/up left bf16)
                    from tasks.training import fused_lora
                    fused_lora.NARROW_OUTPUTS = fused_lora.RESIDUAL_FEEDERS_ONLY
                trainer = loragate_trainer(model, tokenizer_for(vocab), data, targets, batch, steps, a.max_len, out,
                                           **_loragate_params(path, variants, a))
                if "nopackedwait" in variants:
                    from tasks.training.packed_mask import without_packed_wait
                    without_packed_wait()
                if "nocompact" in variants:  # trl then scores every position, labelled or not
                    import trl.trainer.utils as trl_utils
                    trl_utils._use_triton = lambda device: False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # build-time bf16 copies are not training memory
        profile = Path(a.out) / f"profile-{case}.txt" if a.profile else None
        syncs = Path(a.out) / f"syncs-{case}.json" if a.syncs else None
        host = Path(a.out) / f"host-{case}.txt" if a.host_profile else None
        result = {"case": case, "n_params": n_params, **measure(trainer, a.warmup, a.steps, n_params, profile, syncs,
                                                                        a.host_waits, host_profile=host),
                  **_ran_with(trainer)}
    return result


# variant -> the step of make_trainer it skips (each returns "nothing changed" there)
LEVERS_OFF = {"peftorder": "adapter_first",  # peft's forward left in place
              "syncembed": "rows_ahead",  # the host table's rows gathered in the forward, after a wait for the GPU
              "emptycache": "keep_allocator_cache",  # trl's offloader emptying CUDA's allocator cache every step
              "exitsync": "exit_without_host_wait",  # ... and waiting for the GPU at the end of every backward
              "itemmetrics": "lean_bookkeeping",  # metrics read on the host, parameters counted, every micro-batch
              "walks": "lean_walks",  # train(), zero_grad() and the clip walking every module each step
              "ondemand": "fetch_ahead",  # offloaded layer inputs copied back only when the backward asks
              "maskedindex": "counted_labels"}  # trl's loss picking the labelled positions by a boolean index


def _levers_off(variants: set[str]) -> None:
    """Turn off the make_trainer steps the case's variants name (in this case's own process)."""
    import tasks.training.train as train_module

    for variant in variants & LEVERS_OFF.keys():
        setattr(train_module, LEVERS_OFF[variant], lambda *_: 0)


def _old_fp8_launch() -> None:
    """The oldlaunch variant: every FP8 kernel through Triton's own call, each projection casting its input."""
    from tasks.training import fp8_base, fp8_kernels

    fp8_kernels._launch.usable = False
    fp8_base.shares_input = lambda base: False


def _uncached_fused_lora() -> None:
    """The nocache variant: fused LoRA without its per-update bf16 copies and fp32 block scales."""
    from tasks.training import fused_lora

    fused_lora.compute_copy = lambda param, dtype, scale=1.0: param.to(dtype) * scale if scale != 1.0 else param.to(dtype)
    fused_lora.block_scales = lambda weight: fused_lora.unnested_scales(weight.quant_state)


def _ran_with(trainer) -> dict:
    """What a trainer actually ran with: loragate's memory plan and FP8 layers, Unsloth's rewritten args."""
    import dataclasses
    import resource

    plan = getattr(trainer, "memory_plan", None)
    out = {"host_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if plan:
        out["plan"] = dataclasses.asdict(plan)
    if getattr(trainer, "graphed_layers", 0):
        out["graphed_layers"] = trainer.graphed_layers
    if getattr(trainer, "fp8_base_layers", 0):
        out["fp8_base_layers"] = trainer.fp8_base_layers
    if getattr(trainer, "ran_with", None):
        out["ran_with"] = trainer.ran_with
    return out


def arch_params(arch: str) -> int:
    """Parameter count of an architecture, from a model built on the meta device (no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**ARCHS[arch]))
    return sum(p.numel() for p in model.parameters())


def in_child(argv: list[str], sites: list[str], stderr_file: Path) -> tuple[object | None, str]:
    """Run this bench's script `argv` in a fresh process with `sites` first on its path (Unsloth's
    pinned trl shadows loragate's: set before any import); (its RESULT json, "") or (None, the
    error line). What it said goes to stderr_file (Unsloth's banner names its kernels)."""
    import os
    import subprocess

    env = dict(os.environ)
    if sites:
        env |= {"PYTHONPATH": os.pathsep.join(filter(None, [*sites, env.get("PYTHONPATH")])),
                "UNSLOTH_DISABLE_STATISTICS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    stderr_file.parent.mkdir(parents=True, exist_ok=True)
    stderr_file.write_text(proc.stderr[-20000:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line] or ["no result (see stderr)"]
        return None, errors[-1][:500]
    return json.loads(lines[-1][len("RESULT "):]), ""


def isolated(case: str, a_) -> dict:
    """One case in a fresh process: no allocator state or leaked references carry between cases,
    so each peak-memory figure is that case's own. A failing lever does not lose the others."""
    sites = []
    if case.startswith("unsloth"):  # packed rows through xformers' kernels in the xf variant
        sites = [*([a_.xformers_site] if "xf" in case.split("-") else []), a_.unsloth_site]
    result, error = in_child([__file__, *sys.argv[1:], "--one", case], sites, Path(a_.out, f"stderr-{case}.txt"))
    return {"case": case, "error": error} if error else result


def ratios(results: dict[str, dict], runs: dict[str, list[dict]] | None = None) -> dict[str, dict]:
    """Each loragate/lean case against each recipe and Unsloth case on the same data kind and
    targets; with `runs` (each case's rounds in order) also round by round, each round's pair run
    side by side on the same host (a host's speed moves loragate's steps, not Unsloth's)."""
    ok = {n: r for n, r in results.items() if "error" not in r}
    key = lambda n: (n.split("-")[1], "qkvo" in n.split("-"))  # noqa: E731
    out = {}
    for name, r in ok.items():
        for base, b in ok.items():
            if name.startswith(("loragate", "lean")) and base.startswith(("recipe", "unsloth")) and key(name) == key(base):
                out[f"{name} / {base}"] = {
                    "tokens_per_s": round(r["tokens_per_s"] / b["tokens_per_s"], 2),
                    "peak_allocated": round(r.get("peak_allocated_gib", 0) / max(b.get("peak_allocated_gib", 1), 1e-9), 2)}
                paired = _paired(runs[name], runs[base]) if runs and len(runs[name]) > 1 else []
                if paired:
                    out[f"{name} / {base}"]["tokens_per_s_rounds"] = paired
    return out


def _paired(rounds: list[dict], base_rounds: list[dict]) -> list[float]:
    """tokens/s ratio of each round against the base's same round, rounds where either failed left out."""
    return [round(x["tokens_per_s"] / y["tokens_per_s"], 2) for x, y in zip(rounds, base_rounds)
            if "error" not in x and "error" not in y]


def median_run(runs: list[dict]) -> dict:
    """A case's run with the median tokens/s (the lower middle of an even count), every round's
    tokens/s beside it; failed rounds are reported only when none succeeded."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    middle = sorted(ok, key=lambda r: r["tokens_per_s"])[(len(ok) - 1) // 2]
    return middle | ({"tokens_per_s_rounds": [r["tokens_per_s"] for r in ok]} if len(runs) > 1 else {})


def headline(results: dict[str, dict]) -> dict[str, dict]:
    """Per case, what a reader compares first: tokens/s, MFU, peak memory and the step-time spread."""
    keys = ("tokens_per_s", "tokens_per_s_rounds", "mfu", "step_s", "step_s_min_max", "tokens_per_step",
            "peak_allocated_gib", "host_peak_gib", "plan", "error")
    return {case: {k: r[k] for k in keys if k in r} for case, r in results.items()}


def write_summary(runs: dict[str, list[dict]], a) -> tuple[Path, dict]:
    """bench/results/train_throughput-<arch>[-<max_len>].json from the rounds so far: each case's
    median round, the headline and the ratios."""
    results = {case: median_run(r) for case, r in runs.items()}
    summary = {"arch": a.arch, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "args": vars(a), "headline": headline(results),
               "results": results, "ratios": ratios(results, runs)}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = Path(a.out) / (f"train_throughput-{a.arch}" + (f"-{a.max_len}" if a.max_len != 512 else "") + ".json")
    path.write_text(json.dumps(summary, indent=2))
    return path, summary


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="qwen2.5-7b", choices=sorted(ARCHS))
    p.add_argument("--cases", default="recipe-fixed,loragate-fixed,loragate-fixed-m7.6,lean-fixed,unsloth-fixed,"
                                      "recipe-var,loragate-var,unsloth-var")
    p.add_argument("--steps", type=int, default=8, help="timed steps, after --warmup")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1, help="rounds over all cases (interleaved); each case reports "
                   "its median round, the others' tokens/s beside it")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--tokens", type=int, default=8192, help="loragate/unsloth: tokens a step (rows of max-len)")
    p.add_argument("--recipe-tokens", type=int, default=2048, help="the recipe: tokens a step (4 rows of 512)")
    p.add_argument("--lean-gib", type=float, default=8.1, help="lean: train.memory_budget_gib (peak measured 7.92 GiB)")
    p.add_argument("--unsloth-site", default=str(ROOT / ".gpu-carry/site-uns"), help="folder holding Unsloth")
    p.add_argument("--xformers-site", default=str(ROOT / ".gpu-carry/site-xf"),
                   help="folder holding xformers, for unsloth-*-xf cases (its packed-row attention)")
    p.add_argument("--out", default=str(ROOT / "bench/results"))
    p.add_argument("--profile", action="store_true", help="write profile-<case>.txt: top kernels, GPU time by kind")
    p.add_argument("--syncs", action="store_true", help="write syncs-<case>.json: where the host waits for the "
                   "GPU in one step after the timed ones, by calling line")
    p.add_argument("--host-profile", action="store_true", help="write host-<case>.txt: cProfile of the host's "
                   "Python over the 2 steps after the timed ones, by function")
    p.add_argument("--host-waits", action="store_true", help="the harness before the -fewerwaits results: the host "
                   "waits for the GPU at every step end, reads the trainer's token count and logs every step (all cases)")
    p.add_argument("--deadline-s", type=float, help="seconds from the start after which no round may end: a "
                   "round is left out whole, not cut midway (the GPU machine's calls end at 10 minutes)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process, print its JSON
    a = p.parse_args()
    if a.repeat < 1:
        p.error(f"--repeat: must be 1 or more (got {a.repeat})")
    if a.one:
        if a.one.startswith("unsloth"):
            import unsloth  # noqa: F401  (patches transformers and trl: must come before them)
        print("RESULT " + json.dumps(run_case(a.one, a)), flush=True)
        return
    runs: dict[str, list[dict]] = {}
    start, longest = time.monotonic(), 0.0
    for n in range(a.repeat):  # rounds interleave the cases: a GPU whose speed drifts moves them all alike
        if not round_fits(time.monotonic() - start, longest, a.deadline_s):
            print(f"stopping after {n} of {a.repeat} rounds: another would end past --deadline-s {a.deadline_s:g}",
                  file=sys.stderr, flush=True)
            break
        began = time.monotonic()
        for case in a.cases.split(","):  # the JSON is rewritten after each case: a later crash loses nothing
            runs.setdefault(case, []).append(isolated(case, a))
            print(json.dumps({k: v for k, v in runs[case][-1].items() if k != "losses"}), flush=True)
            path, summary = write_summary(runs, a)
        longest = max(longest, time.monotonic() - began)
    print(json.dumps(summary["ratios"], indent=2))
    plot_if_possible(path)


def round_fits(elapsed: float, longest_round: float, deadline: float | None) -> bool:
    """Start another round only if it would end by the deadline, judged by the longest round so far
    (a round cut midway leaves its cases unpaired; the first round always runs)."""
    return deadline is None or longest_round == 0.0 or elapsed + longest_round <= deadline


if __name__ == "__main__":
    main()
