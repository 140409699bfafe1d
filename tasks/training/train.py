"""Training stage: LoRA (or QLoRA when params.yaml has `quantization.enabled: true`) with trl's
SFTTrainer on the anonymized training split; the loss counts the assistant's answer only.

    python -m tasks.training.train MODEL_DIR data/splits/train.jsonl OUT_DIR

Writes OUT_DIR/adapter/ (adapter weights + tokenizer), OUT_DIR/log_history.json (the loss curve)
and checkpoints under OUT_DIR/checkpoints/ every `train.checkpoint_steps`: a run killed at any
point (SIGKILL, power loss) and started again with the same OUT_DIR resumes from the last complete
checkpoint (optimizer, scheduler, RNG and data position included), and finishes with the adapter
the uninterrupted run would have written. A checkpoint made with other params, data or code is
refused in one line naming what changed.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from tasks.config import Config, ConfigError, QuantizationConfig
from tasks.training import budget
from tasks.training.adapter_first import adapter_first
from tasks.training.bookkeeping import lean_bookkeeping, lean_walks
from tasks.training.counted_labels import counted_labels
from tasks.training.fp8_base import supported as fp8_supported
from tasks.training.fp8_base import use_fp8_base
from tasks.training.fused_lora import fuse_lora
from tasks.training.graphed_layers import graph_layers
from tasks.training.host_embedding import HostEmbedding, embedding_on_host, rows_ahead
from tasks.training.offload import exit_without_host_wait, fetch_ahead, keep_allocator_cache
from tasks.io import atomic_path, file_sha256, read_json, read_jsonl, write_json
from tasks.orchestration import stage_task


@dataclass(frozen=True)
class TrainReport:
    steps: int
    train_loss: float
    trainable_params: int
    total_params: int
    seconds: float
    tokens_per_second: float
    quantized: bool
    resumed_from_step: int = 0  # 0: started from scratch
    rows_over_max_length: int = 0  # truncated to train.max_length (train.overlong: truncate)
    plan: dict | None = None  # what train.memory_budget_gib chose (MLflow tags train.plan.*); None: no GPU
    fp8_base_layers: int = 0  # frozen 4-bit layers multiplied in FP8 (train.fp8_base)


class ResumeError(Exception):
    """A checkpoint that belongs to other params, data or code than this run's."""


class OverlongRows(Exception):
    """Rows longer than train.max_length where params say to reject them."""


def count_overlong(cfg: Config, tokenizer, train_path: str | Path) -> int:
    """Rows whose chat-formatted tokens exceed train.max_length (trl would cut their ends off);
    with train.overlong: reject, any such row refuses the run in one line."""
    encoded = [tokenizer.apply_chat_template(r["messages"], tokenize=True) for r in read_jsonl(train_path)]
    lengths = [len(e["input_ids"] if hasattr(e, "keys") else e) for e in encoded]  # transformers 5 returns a mapping
    over = [n for n in lengths if n > cfg.train.max_length]
    if over and cfg.train.overlong == "reject":
        raise OverlongRows(f"{train_path}: {len(over)} of {len(lengths)} rows are longer than train.max_length "
                           f"({cfg.train.max_length} tokens; the longest has {max(over)}): raise train.max_length, "
                           "shorten them, or set train.overlong: truncate")
    return len(over)


FINGERPRINT = "fingerprint.json"  # what the checkpoints in a folder were made with
COMPLETE = "loragate-complete"  # written, after an fsync of every file, last into a checkpoint
# params that change nothing a checkpoint holds
_NEUTRAL = {"train.logging_steps", "train.checkpoint_steps", "model.cache_dir"}


def bnb_config(q: QuantizationConfig):
    """The BitsAndBytesConfig for QLoRA, or None for plain LoRA: the one place this is decided."""
    if not q.enabled:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype))


def lora_config(cfg: Config):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")


def _dataset(path: str | Path):
    """Conversational prompt/completion rows: trl then masks the prompt out of the loss."""
    from datasets import Dataset

    rows = read_jsonl(path)
    return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])


def _use_liger(cfg: Config) -> bool:
    """Liger's kernels are Triton: CUDA only. Asked for on a GPU without the package is an error,
    not a silent slow run."""
    import importlib.util

    if not (cfg.train.liger_kernels and torch.cuda.is_available()):
        return False
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("params: train.liger_kernels: liger-kernel is not installed "
                          "(pip install liger-kernel, or set it to false)")
    return True


def _sft_config(cfg: Config, out_dir: Path):
    from trl import SFTConfig

    t = cfg.train
    return SFTConfig(
        output_dir=str(out_dir / "checkpoints"), max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.learning_rate, lr_scheduler_type="linear",
        warmup_steps=min(5, t.max_steps // 10), logging_steps=t.logging_steps, max_length=t.max_length,
        gradient_checkpointing=t.gradient_checkpointing, seed=t.seed, data_seed=t.seed,
        # two kept: a kill while the newest is written leaves the one before it complete
        save_strategy="steps", save_steps=t.checkpoint_steps or max(10, t.max_steps // 4), save_total_limit=2,
        # bfd packing is padding-free: rows share a bin, position_ids keep them apart in attention
        packing=packs(cfg), packing_strategy="bfd", optim=t.optimizer,
        use_liger_kernel=_use_liger(cfg),
        report_to="none", bf16=cfg.quantization.compute_dtype == "bfloat16" and torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)


def attention(name: str) -> str:
    """`auto` is flex_attention on CUDA: its block mask keeps packed rows apart and skips the
    blocks between them, where sdpa (cuDNN) took 8x longer on packed 7B batches. Its backward
    does not exist on the CPU, which trains with sdpa."""
    if name == "auto":
        return "flex_attention" if torch.cuda.is_available() else "sdpa"
    if name == "flex_attention" and not torch.cuda.is_available():
        raise ConfigError("params: train.attn_implementation: flex_attention trains on CUDA only "
                          "(no CPU backward); use auto or sdpa")
    return name


def packs(cfg: Config) -> bool:
    """Whether rows are packed. trl flattens a packed batch into one row: flex/flash attention skip
    the blocks between its sequences, sdpa and eager compute them all under a mask, so on the CPU
    packing makes each token dearer and `auto` packs only for the former."""
    if cfg.train.packing == "auto":
        return attention(cfg.train.attn_implementation) in {"flex_attention", "flash_attention_2"}
    return bool(cfg.train.packing)


def load_base(cfg: Config, model_dir: str):
    from transformers import AutoModelForCausalLM

    quant = bnb_config(cfg.quantization)
    kwargs = {"quantization_config": quant, "device_map": "auto" if torch.cuda.is_available() else "cpu"} if quant else {}
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention(cfg.train.attn_implementation),
                                                **kwargs)


def fp8_base(cfg: Config) -> str | None:
    """train.fp8_base as use_fp8_base's mode: "all" (true; auto where the GPU has FP8 tensor cores
    and the base is 4-bit), "grads", or None (off)."""
    wanted, able = cfg.train.fp8_base, fp8_supported() and cfg.quantization.enabled
    if wanted in (True, "grads") and not able:
        raise ConfigError(f"params: train.fp8_base: {str(wanted).lower()} needs a GPU with FP8 tensor cores "
                          "(compute capability >= 8.9) and quantization.enabled: true; use auto or false")
    if not wanted or not able:
        return None
    return "grads" if wanted == "grads" else "all"


_RENAMED = {"gradient_checkpointing": "activation_checkpointing"}  # transformers >= 5.2x: old name is an alias


def _replaced(args, **fields):
    """dataclasses.replace for training arguments that also sets a renamed field's new name: a
    replaced copy keeps the new name's old value and silently drops a change of the alias."""
    from dataclasses import fields as fields_of, replace

    names = {f.name for f in fields_of(args)}
    return replace(args, **fields, **{_RENAMED[k]: v for k, v in fields.items() if _RENAMED.get(k) in names})


def fp32_adapter(model) -> int:
    """trl casts a 4-bit model's adapter to bf16 (the QLoRA paper's choice); at lr 2e-4 many Adam
    updates then round away: on an H100, SmolLM2's loss after 40 steps was 0.97 against the recipe's
    0.91 (noise 0.005, bench/train_equivalence.py --gpu). The adapter is kept in fp32 (80 MB more
    on a 7B) and still runs in bf16 under autocast. Returns how many tensors were cast."""
    cast = [p for p in model.parameters() if p.requires_grad and p.dtype != torch.float32]
    for p in cast:
        p.data = p.data.float()
    return len(cast)


def _upcast(_module, _args, out: torch.Tensor) -> torch.Tensor:
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out


def _to_compute_dtype(_module, _args, out):
    # a norm's output only feeds products, which autocast would cast one by one (q, k and v each)
    if isinstance(out, torch.Tensor) and out.dtype == torch.float32 and torch.is_autocast_enabled(out.device.type):
        return out.to(torch.get_autocast_dtype(out.device.type))
    return out


def fp32_residual(model) -> bool:
    """Carry the residual stream in fp32 from a half-precision checkpoint's embedding on. In bf16
    (8 mantissa bits) a young adapter's small share of each layer's output rounds away when added
    to the residual: SmolLM2 from bf16 weights, 4-bit, learned slower than the common recipe
    (whose prepare_model_for_kbit_training upcasts the whole non-4-bit model), on the GPU 0.886 vs
    0.837 mean loss over the last 10 of 40 steps, and from fp32 weights the two matched. Only the
    embedding's output is cast up and each norm's output back down under autocast: the weights stay
    as they are, the products run in bf16 and take their inputs in it (fused LoRA and FP8 need
    that; left fp32, 5 of a layer's 7 projections fell back to peft's order). The residual alone
    did not close the gap on the GPU: make_trainer also has fused LoRA sum base and adapter in fp32
    (fuse_lora's fp32_out, what the recipe's bnb layers return to its fp32 norms). Set only where
    the trainer runs in bf16/fp16; the budget counts the wider layer inputs (`train.fp32_residual`).
    Returns whether a hook was set."""
    table = model.get_input_embeddings()
    weight = getattr(table, "weight", None)
    if weight is None or weight.dtype not in (torch.bfloat16, torch.float16):
        return False
    table.register_forward_hook(_upcast)
    for module in model.modules():
        if type(module).__name__.endswith("Norm"):  # RMSNorm, LayerNorm, and Liger's
            module.register_forward_hook(_to_compute_dtype)
    return True


def make_trainer(cfg: Config, model, tokenizer, dataset, out_dir: str | Path, **overrides):
    """SFTTrainer with the LoRA adapter attached (base frozen), its micro-batch, recompute and
    offload chosen by train.memory_budget_gib; overrides replace SFTConfig fields (the throughput
    bench uses this to vary one lever at a time). trainer.memory_plan holds the plan (or None)."""
    from trl import SFTTrainer

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    plan = budget.plan_for(cfg, model)
    args = _replaced(_sft_config(cfg, Path(out_dir)), **budget.sft_overrides(plan), **overrides)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(cfg))
    fp32_adapter(trainer.model)
    keep_allocator_cache(trainer)  # trl's offloader would empty CUDA's cache every step
    exit_without_host_wait(trainer)  # ... and wait for the GPU at the end of every backward
    fetch_ahead(trainer)  # ... and bring each layer input back only when the backward asks for it
    lean_bookkeeping(trainer)  # trl would read its metrics on the host every micro-batch
    lean_walks(trainer.model)  # ... and the trainer walk every module three times a step
    counted_labels(trainer)  # ... and its loss wait for the whole forward to pick the labelled positions
    # the fp32 stream and fused LoRA's fp32 outputs need autocast: it casts them back for each product
    widen = cfg.train.fp32_residual and (args.bf16 or args.fp16)
    if widen:
        fp32_residual(trainer.model)
    if plan and 0 < plan.recomputed_layers < model.config.num_hidden_layers:
        trainer.add_callback(budget.partial_recompute_callback(plan.recomputed_layers))
    if plan and plan.embedding_on_host:
        embedding_on_host(trainer.model)
        rows_ahead(trainer)
        torch.cuda.empty_cache()
    if cfg.train.fused_lora:
        fuse_lora(trainer.model, fp32_out=widen)
    else:  # peft's arithmetic with the adapter first: a recomputed layer stops before its last base product
        adapter_first(trainer.model)
    mode = fp8_base(cfg)
    trainer.fp8_base_layers = use_fp8_base(trainer.model, mode) if mode else 0
    trainer.graphed_layers = graph_layers(trainer.model) if cfg.train.cuda_graphs and _all_recomputed(args, plan, model) else 0
    trainer.memory_plan = plan
    return trainer


def _all_recomputed(args, plan, model) -> bool:
    """Every decoder layer recomputed in the backward: the case graphed_layers replays."""
    return bool(args.gradient_checkpointing) and (plan is None or plan.recomputed_layers >= model.config.num_hidden_layers)


def build_trainer(cfg: Config, model_dir: str, train_path: str | Path, out_dir: str | Path):
    from transformers import AutoTokenizer

    return make_trainer(cfg, load_base(cfg, model_dir), AutoTokenizer.from_pretrained(model_dir),
                        _dataset(train_path), out_dir)


def fingerprint(cfg: Config, train_path: str | Path) -> dict[str, str]:
    """What a checkpoint's numbers depend on: the params of model, LoRA, quantization and training,
    the training split's bytes, the training code and the libraries that run it."""
    found = {k: str(v) for k, v in cfg.flat().items()
             if k.split(".")[0] in {"model", "lora", "quantization", "train"} and k not in _NEUTRAL}
    found["data: the training split"] = file_sha256(Path(train_path))
    found |= {f"code: tasks/training/{p.name}": file_sha256(p) for p in sorted(Path(__file__).parent.glob("*.py"))}
    return found | {f"package: {name}": version(name) for name in ("torch", "transformers", "peft", "trl")}


def resume_problem(saved: dict[str, str], now: dict[str, str]) -> str | None:
    """The first difference between two fingerprints, as a user reads it; None when they agree."""
    for key in sorted(set(saved) | set(now)):
        before, after = saved.get(key, "(none)"), now.get(key, "(none)")
        if before != after:
            shown = (before, after) if "." in key and ":" not in key else (before[:12], after[:12])
            return f"{key} changed ({shown[0]} -> {shown[1]})"
    return None


def _checkpoint_callback():
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        """Every file of a new checkpoint reaches the disk before its completeness mark does."""

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            for path in (p for p in folder.rglob("*") if p.is_file()):
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
            with atomic_path(folder / COMPLETE) as tmp:
                tmp.write_text(str(state.global_step))

    return MarkComplete()


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint holding its completeness mark: one cut off mid-write is passed over."""
    found = [p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / COMPLETE).is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0


def checkpoint_step(out_dir: str | Path) -> int:
    """The step a training folder would go on from (0: none complete yet)."""
    ckpt_dir = Path(out_dir) / "checkpoints"
    return _step(last_complete_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None)


def check_resume(cfg: Config, train_path: str | Path, out_dir: str | Path,
                 now: dict[str, str] | None = None) -> Path | None:
    """The last complete checkpoint in out_dir (None: none yet), or ResumeError when it was made
    with other params, data or code. now: this run's fingerprint, if already computed."""
    ckpt_dir = Path(out_dir) / "checkpoints"
    last = last_complete_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if last and (ckpt_dir / FINGERPRINT).is_file():
        problem = resume_problem(read_json(ckpt_dir / FINGERPRINT), now or fingerprint(cfg, train_path))
        if problem:
            raise ResumeError(f"resume refused: {problem} since the checkpoint at step {_step(last)} "
                              f"in {ckpt_dir}; restore it, or start a new run")
    return last


def _resume_point(cfg: Config, train_path: str | Path, ckpt_dir: Path) -> Path | None:
    """The checkpoint to continue from (None: start), after checking it was made for this run."""
    now = fingerprint(cfg, train_path)
    last = check_resume(cfg, train_path, ckpt_dir.parent, now)
    write_json(ckpt_dir / FINGERPRINT, now)
    return last


def train(cfg: Config, model_dir: str, train_path: str | Path, out_dir: str | Path, trainer=None) -> TrainReport:
    """Train, resuming from the last complete checkpoint in out_dir if it was made with the same
    params, data and code (ResumeError otherwise), and save the adapter."""
    out_dir = Path(out_dir)
    resume = _resume_point(cfg, train_path, out_dir / "checkpoints")
    trainer = trainer or build_trainer(cfg, model_dir, train_path, out_dir)
    overlong = count_overlong(cfg, trainer.processing_class, train_path)
    trainer.add_callback(_checkpoint_callback())
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    trainer.model.save_pretrained(out_dir / "adapter")
    trainer.processing_class.save_pretrained(out_dir / "adapter")
    history = trainer.state.log_history
    write_json(out_dir / "log_history.json", history)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    total += sum(m.table.numel() for m in trainer.model.modules() if isinstance(m, HostEmbedding))
    tokens = max([float(e.get("num_tokens", 0)) for e in history] + [0.0])
    plan = getattr(trainer, "memory_plan", None)
    return TrainReport(trainer.state.global_step, round(result.training_loss, 4), trainable, total,
                       round(seconds, 1), round(tokens / seconds, 1), bnb_config(cfg.quantization) is not None,
                       _step(resume), overlong, asdict(plan) if plan else None,
                       getattr(trainer, "fp8_base_layers", 0))

train_task = stage_task(train, "train", retries=1)  # a retry resumes from the last checkpoint


def _main(cfg: Config, model_dir: str, train_path: str, out_dir: str) -> None:
    """Train a LoRA adapter on the training split."""
    print(asdict(train(cfg, model_dir, train_path, out_dir)))


if __name__ == "__main__":
    from tasks.orchestration import stage_main

    sys.exit(stage_main(sys.argv, ("model_dir", "train_path", "out_dir"), _main, (ResumeError, OverlongRows)))
