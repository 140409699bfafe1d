"""A GPU memory budget instead of knobs: `train.memory_budget_gib: auto | N` picks the micro-batch,
which decoder layers recompute their activations (gradient checkpointing) and whether the layer
inputs kept for the backward go to host memory, so that the estimated peak stays inside the budget.

Preference, fastest first: the whole batch in one micro-batch with as few recomputed layers as fit
(a recomputed layer costs a third more compute); then every layer recomputed with its kept inputs
offloaded to host memory (copies overlap compute); then the input-embedding table in host memory
too (tasks/training/host_embedding.py: ~1 GiB on a 7B, a step copies its rows over; 0.5% slower);
then smaller micro-batches (divisors of the batch) with more gradient accumulation, which measured
0.6x the speed on a 7B: the host needs ~0.74 s to issue each pass of its layers, so the GPU idles
between two passes. The effective batch
(rows per optimizer step) never changes. The estimate's coefficients were fitted to peak-allocated
memory measured on an H100 (Qwen2.5-7B, bench/results/train_throughput-*.json): within 3% of every
measured case, erring high.

    python -m tasks.training.budget MODEL_DIR [BUDGET_GIB]      # prints the plan for params.yaml
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from tasks.config import Config, ConfigError

GIB = 2**30
# bytes a token costs in one decoder layer whose activations are kept for the backward (bf16),
# fitted on Qwen2.5-7B with Liger kernels and flex attention: 16 * hidden + 8.3 * intermediate
ACT_HIDDEN, ACT_MLP = 16.0, 8.3
KEPT = 0.78  # a layer that is not recomputed keeps this share of it (the rest is the backward's transients)
OFFLOAD_STASH = 2  # layer inputs trl's offloading keeps on the GPU while copies are in flight (measured)
# bytes a token adds per intermediate / hidden element where fused LoRA's outputs are fp32: gate's and up's
# kept by the activation for its backward and its fp32 output, o's and down's on their way to the residual.
# Qwen2.5-7B, 16 x 512 tokens, all recomputed (H200): peak 8.43 GiB against 7.19 with bf16 outputs; 8/4 put
# the estimate at 8.85 (erring high; 4/4 had it at 8.27, low)
WIDE_MLP, WIDE_HIDDEN = 8.0, 4.0
HEADROOM = 0.92  # of the card's free memory under `auto`: the allocator's fragmentation and cuBLAS work space


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know of a model."""
    layers: int
    hidden: int
    intermediate: int
    quantized_params: int  # in 4-bit layers (half a byte each, plus their block scales)
    other_params: int  # embeddings, head, norms: 2 bytes each
    lora_params: int  # fp32 weights, gradients, two Adam moments and autocast's bf16 copies: ~21 bytes each
    embedding_params: int = 0  # of an input embedding the head does not share (it can live in host memory)
    fp32_scale_params: int = 0  # 4-bit weights whose 8-bit block scales are kept un-nested in fp32 (fused LoRA, FP8)
    residual_bytes: int = 2  # per element of the residual stream: 4 under train.fp32_residual (or fp32 weights)
    fp32_outputs: bool = False  # fused LoRA's o/gate/up/down outputs in fp32 (train.fp32_residual with fused_lora)


@dataclass(frozen=True)
class Plan:
    micro_batch: int
    grad_accum: int
    recomputed_layers: int  # of Shape.layers; 0 = no gradient checkpointing
    offload: bool
    estimate_gib: float
    budget_gib: float
    embedding_on_host: bool = False


def shape_of(model, lora_r: int, targets: list[str], fp32_scales: bool = False, fp32_residual: bool = False,
             fp32_outputs: bool = False) -> Shape:
    """Read the estimate's inputs from a loaded (possibly 4-bit) model before the adapter is attached."""
    c = model.config
    quantized = sum(p.numel() * 2 for p in model.parameters() if p.dtype == torch.uint8)  # 2 weights a byte
    other = sum(p.numel() for p in model.parameters() if p.dtype != torch.uint8)
    lora = sum(lora_r * (m.in_features + m.out_features) for n, m in model.named_modules()
               if n.split(".")[-1] in targets and hasattr(m, "in_features"))
    table, head = model.get_input_embeddings(), model.get_output_embeddings()
    own_table = isinstance(table, torch.nn.Embedding) and (head is None or head.weight is not table.weight)
    nested = sum(p.numel() * 2 for p in model.parameters()
                 if p.dtype == torch.uint8 and getattr(getattr(p, "quant_state", None), "nested", False))
    wide = fp32_residual or getattr(table, "weight", torch.empty(0)).dtype == torch.float32
    return Shape(c.num_hidden_layers, c.hidden_size, c.intermediate_size, quantized, other, lora,
                 table.weight.numel() if own_table else 0, nested if fp32_scales else 0, 4 if wide else 2,
                 fp32_outputs)


def estimate_bytes(s: Shape, tokens: int, recomputed: int, offload: bool, host_table: bool = False) -> float:
    """Peak allocated bytes of one training step with `tokens` tokens per micro-batch."""
    other = s.other_params - (s.embedding_params if host_table else 0)
    static = s.quantized_params * 0.5156 + other * 2 + s.lora_params * 21  # nf4 + 8-bit block scales
    static += s.fp32_scale_params * 4 / 64  # the fp32 copy of them: one per 64-weight block
    # one layer's kept activations (fitted with a bf16 residual); a wider residual widens the layer's
    # input and output it keeps (not fitted: no GPU peak measured with it yet, so taken high)
    wider = 2 * (s.residual_bytes - 2)
    layer = tokens * ((ACT_HIDDEN + wider) * s.hidden + ACT_MLP * s.intermediate)
    if s.fp32_outputs:
        layer += tokens * (WIDE_HIDDEN * s.hidden + WIDE_MLP * s.intermediate)
    kept_inputs = tokens * s.hidden * s.residual_bytes * (min(recomputed, OFFLOAD_STASH) if offload else recomputed)
    # a bf16 + fp8 copy of the largest weight, and the chunked loss's hidden-state gradient
    workspace = 3 * s.hidden * s.intermediate + tokens * s.hidden * 4
    return static + kept_inputs + layer * (1 + KEPT * (s.layers - recomputed)) + workspace


def _candidates(batch: int, s: Shape):
    """(micro_batch, recomputed, offload, host_table), fastest first; micro-batches divide the batch."""
    for micro in (d for d in range(batch, 0, -1) if batch % d == 0):
        for recomputed in range(s.layers + 1):
            yield micro, recomputed, False, False
        yield micro, s.layers, True, False
        if s.embedding_params:
            yield micro, s.layers, True, True


def plan(s: Shape, batch: int, max_length: int, budget_gib: float) -> Plan:
    """The fastest settings whose estimate fits `budget_gib`; ConfigError when none does."""
    for micro, recomputed, offload, host in _candidates(batch, s):
        need = estimate_bytes(s, micro * max_length, recomputed, offload, host) / GIB
        if need <= budget_gib:
            return Plan(micro, batch // micro, recomputed, offload, round(need, 2), round(budget_gib, 2), host)
    least = estimate_bytes(s, max_length, s.layers, True, bool(s.embedding_params)) / GIB
    raise ConfigError(f"params: train.memory_budget_gib: {budget_gib:.1f} GiB cannot train this model "
                      f"(at least {least:.1f} GiB with one row per micro-batch, every layer recomputed and offloaded)")


def budget_gib(cfg: Config) -> float | None:
    """The budget in GiB, or None where no budget applies (no GPU, or `off`: params' own knobs hold)."""
    if not torch.cuda.is_available() or cfg.train.memory_budget_gib == "off":
        return None
    if cfg.train.memory_budget_gib == "auto":  # the loaded base is ours: what it holds counts as free
        return (torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved()) * HEADROOM / GIB
    return float(cfg.train.memory_budget_gib)


def plan_for(cfg: Config, model, budget: float | None = None) -> Plan | None:
    """The plan for this model under `budget` GiB (default: params'); None: params' knobs as written."""
    budget = budget_gib(cfg) if budget is None else budget
    if budget is None:
        return None
    return plan(shape_for(cfg, model), cfg.train.batch_size * cfg.train.grad_accum, cfg.train.max_length, budget)


def shape_for(cfg: Config, model) -> Shape:
    """shape_of with what params switch on: fused LoRA and the FP8 kernels both read the block
    scales un-nested (fused_lora.block_scales); fp32_residual widens the stream and fused outputs."""
    t = cfg.train
    return shape_of(model, cfg.lora.r, list(cfg.lora.target_modules), t.fused_lora or bool(t.fp8_base),
                    t.fp32_residual, t.fp32_residual and t.fused_lora)


def sft_overrides(p: Plan | None) -> dict:
    """SFTConfig fields the plan sets (none without a plan)."""
    if p is None:
        return {}
    return {"per_device_train_batch_size": p.micro_batch, "gradient_accumulation_steps": p.grad_accum,
            "gradient_checkpointing": p.recomputed_layers > 0, "activation_offloading": p.offload}


def recompute_only(model, recomputed: int) -> int:
    """Keep gradient checkpointing on the first `recomputed` decoder layers only (transformers
    turns it on for all): the others keep their activations, which costs memory and saves compute.
    Returns how many layers recompute."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer") and hasattr(m, "gradient_checkpointing")]
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = layer.gradient_checkpointing and i < recomputed
    return sum(layer.gradient_checkpointing for layer in layers)


def partial_recompute_callback(recomputed: int):
    """Trainer callback: applies recompute_only once transformers has switched checkpointing on."""
    from transformers import TrainerCallback

    class PartialRecompute(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            recompute_only(model, recomputed)

    return PartialRecompute()


def _main(argv: list[str]) -> int:
    from tasks.config import load_config
    from tasks.training.train import load_base

    cfg = load_config()
    model = load_base(cfg, argv[1])
    chosen = plan_for(cfg, model, float(argv[2]) if len(argv) > 2 else None)
    print(chosen or "no GPU (or memory_budget_gib: off): params' train.* settings are used as written")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
