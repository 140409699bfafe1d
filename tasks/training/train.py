"""Training stage: LoRA (or QLoRA when params.yaml has `quantization.enabled: true`) with trl's
SFTTrainer on the anonymized training split; the loss counts the assistant's answer only.

    python -m tasks.training.train MODEL_DIR data/splits/train.jsonl OUT_DIR

Writes OUT_DIR/adapter/ (adapter weights + tokenizer), OUT_DIR/log_history.json (the loss curve)
and checkpoints under OUT_DIR/checkpoints/: a crashed run started again with the same OUT_DIR
resumes from the last checkpoint instead of starting over.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tasks.config import Config, ConfigError, QuantizationConfig, load_config
from tasks.training.fused_lora import fuse_lora
from tasks.io import read_jsonl, write_json
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
        save_strategy="steps", save_steps=max(10, t.max_steps // 4), save_total_limit=1,
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


def make_trainer(cfg: Config, model, tokenizer, dataset, out_dir: str | Path, **overrides):
    """SFTTrainer with the LoRA adapter attached (base frozen); overrides replace SFTConfig fields
    (the throughput bench uses this to vary one lever at a time)."""
    from dataclasses import replace

    from trl import SFTTrainer

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = replace(_sft_config(cfg, Path(out_dir)), **overrides)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(cfg))
    if cfg.train.fused_lora:
        fuse_lora(trainer.model)
    return trainer


def build_trainer(cfg: Config, model_dir: str, train_path: str | Path, out_dir: str | Path):
    from transformers import AutoTokenizer

    return make_trainer(cfg, load_base(cfg, model_dir), AutoTokenizer.from_pretrained(model_dir),
                        _dataset(train_path), out_dir)


def train(cfg: Config, model_dir: str, train_path: str | Path, out_dir: str | Path, trainer=None) -> TrainReport:
    """Train (resuming from the last checkpoint in out_dir if any) and save the adapter."""
    from transformers.trainer_utils import get_last_checkpoint

    out_dir = Path(out_dir)
    trainer = trainer or build_trainer(cfg, model_dir, train_path, out_dir)
    ckpt_dir = out_dir / "checkpoints"
    resume = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    trainer.model.save_pretrained(out_dir / "adapter")
    trainer.processing_class.save_pretrained(out_dir / "adapter")
    history = trainer.state.log_history
    write_json(out_dir / "log_history.json", history)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    tokens = max([float(e.get("num_tokens", 0)) for e in history] + [0.0])
    return TrainReport(trainer.state.global_step, round(result.training_loss, 4), trainable, total,
                       round(seconds, 1), round(tokens / seconds, 1), bnb_config(cfg.quantization) is not None)

train_task = stage_task(train, "train")


if __name__ == "__main__":
    a = sys.argv[1:]
    print(asdict(train(load_config(), a[0], a[1], a[2])))
