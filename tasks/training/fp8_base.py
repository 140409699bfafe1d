"""The frozen 4-bit base multiplied in FP8 on Hopper (`train.fp8_base`); LoRA stays bf16.

QLoRA unpacks every base weight before each product anyway (forward, the recompute under gradient
checkpointing, backward). Unpacked straight to float8 e4m3 (fp8_kernels.nf4_to_fp8, one pass, a
scale per output channel, or per input channel for the transposed copy the input gradient needs)
and with the activations cast row-wise (one scale per token), the tensor cores run the product at
about twice bf16's rate: a 7B layer's forward + input gradient is 1.5-1.7x faster on an H200
(bench/fp8_product.py). Only products with frozen weights change: no weight gradient is taken
through them, and the adapter, its gradients and the optimizer stay in bf16/fp32. Fused LoRA
(fused_lora.py) takes both products of a routed layer from here; other layers use _FP8Product.

Modes: "all" routes every product, so the loss itself is computed from FP8 products; "grads"
only those whose results feed gradients alone (the recompute and the input gradient), so the
loss is bf16's bit for bit and only the gradients carry FP8's rounding.

    python -m pytest -q tests/test_train.py -k fp8                  # CPU: refused/skipped cleanly; GPU: kernels, modes
    python bench/fp8_product.py                                     # H200: one layer, each part timed
    python bench/train_throughput.py --cases unsloth-fixed,loragate-fixed-m7.6,loragate-fixed-m7.6-fp8g
    python bench/train_equivalence.py --gpu --levers fp8_base,fp8_base=grads   # SmolLM2 loss curves
"""
from __future__ import annotations

import contextlib
import types

import torch

from tasks.training import fused_lora  # a module reference: fused_lora imports this one too

E4M3 = torch.float8_e4m3fn


def supported() -> bool:
    """FP8 tensor-core products need compute capability 8.9 (Ada) or 9.0 (Hopper) and up."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def _scales(weight) -> tuple[torch.Tensor, ...]:
    """max |w| / 448 per output and per input channel, and their inverses (what the kernel takes)."""
    w = fused_lora.dequantized(weight, torch.bfloat16).abs()
    rows, cols = (w.amax(dim).float().clamp(min=1e-12) / torch.finfo(E4M3).max for dim in (1, 0))
    return rows, cols, 1.0 / rows, 1.0 / cols


def _channel_scales(weight) -> tuple[torch.Tensor, torch.Tensor]:
    """The per output channel and per input channel scales of a frozen 4-bit weight, taken once
    from a bf16 copy (the weight never changes, so neither do they)."""
    return fused_lora.per_weight(weight, "_fp8_scales", _scales)[:2]


def weight_fp8(weight, transpose: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen 4-bit weight in e4m3: (out, in) with a scale per output channel for the forward,
    or (in, out) with a scale per input channel for the input gradient, so each scale follows the
    axis the product keeps. Scales come back as (1, n) rows, the shape _scaled_mm takes."""
    from tasks.training.fp8_kernels import nf4_to_fp8  # Triton: CUDA only

    state = weight.quant_state
    rows, cols, inv_rows, inv_cols = fused_lora.per_weight(weight, "_fp8_scales", _scales)
    scale, inverse = (cols, inv_cols) if transpose else (rows, inv_rows)
    q = nf4_to_fp8(weight.data, fused_lora.block_scales(weight), state.code, state.shape, state.blocksize,
                   inverse, transpose)
    return q, scale.view(1, -1)


_LAST_CAST: list = [None]  # (input, its version, its e4m3 rows and scales) of the last shared cast


def _rows_fp8(a: torch.Tensor, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """a cast row-wise to e4m3; `shared`: the input several projections take (q, k and v read one,
    gate and up another), cast once for all of them. The kept input stays alive while cached, so
    no other tensor can take its address; any other cast lets it go."""
    from tasks.training.fp8_kernels import rowwise_fp8

    last = _LAST_CAST[0]
    if (shared and last is not None and last[0].data_ptr() == a.data_ptr() and last[0].shape == a.shape
            and last[0].stride() == a.stride() and last[1] == a._version and last[0].dtype == a.dtype):
        return last[2]
    cast = rowwise_fp8(a.contiguous())
    _LAST_CAST[0] = (a, a._version, cast) if shared else None
    return cast


def _fp8_mm(a: torch.Tensor, weight, transpose: bool, fast_accum: bool, shared: bool = False) -> torch.Tensor:
    """a @ W^T (or a @ W, `transpose`) with both operands cast to e4m3, result bf16 (a's rows)."""
    aq, a_scale = _rows_fp8(a, shared)
    wq, w_scale = weight_fp8(weight, transpose)
    return torch._scaled_mm(aq, wq.t(), scale_a=a_scale, scale_b=w_scale, out_dtype=torch.bfloat16,
                            use_fast_accum=fast_accum)[:a.shape[0]]


# Hopper's fast FP8 accumulation keeps fewer bits than fp32 over long sums (a 7B's products sum 3,584 or
# 18,944 terms); full accumulation promotes to fp32 as it goes
FORWARD_FAST_ACCUM = True


def product(x: torch.Tensor, weight, shared: bool = False) -> torch.Tensor:
    """x (rows, in) @ W^T in FP8 -> bf16 (rows, out), accumulated as FORWARD_FAST_ACCUM says.
    `shared`: x is an input other projections take too (see _rows_fp8)."""
    return _fp8_mm(x, weight, transpose=False, fast_accum=FORWARD_FAST_ACCUM, shared=shared)


def layer_product(base, x: torch.Tensor) -> torch.Tensor:
    """product() for a routed 4-bit Linear `base`, sharing its input's cast where the layer does."""
    return product(x, base.weight, shares_input(base))


def input_grad(grad: torch.Tensor, weight) -> torch.Tensor:
    """grad (rows, out) @ W in FP8 -> bf16 (rows, in); full-precision accumulation for gradients."""
    return _fp8_mm(grad, weight, transpose=True, fast_accum=False)


_RECOMPUTING = [False]  # a recompute outside autograd's backward (a graph of it being captured: graphed_layers)


@contextlib.contextmanager
def recomputing():
    """Route products as in a recompute under the backward, though autograd is not running one."""
    _RECOMPUTING[0] = True
    try:
        yield
    finally:
        _RECOMPUTING[0] = False


def forget_shared_cast() -> None:
    """Let the shared input cast go (a graph's capture must not hand its memory to later code)."""
    _LAST_CAST[0] = None


def routed(base, backward: bool = False) -> bool:
    """Does this product of a frozen 4-bit Linear run in FP8 now? Every one under use_fp8_base's
    "all"; under "grads" only those whose results feed gradients alone: the input gradient
    (`backward`) and the forward that gradient checkpointing recomputes, which autograd runs
    inside the backward pass. The loss is then computed from bf16 products, as without FP8."""
    mode = getattr(base, "_fp8_base", None)
    return mode == "all" or (mode == "grads" and (backward or _RECOMPUTING[0] or torch._C._current_graph_task_id() != -1))


def shares_input(base) -> bool:
    """Is this base one of the projections that read one input (q, k, v; gate, up)? Their casts
    of it are shared (_rows_fp8)."""
    return getattr(base, "_fp8_shared", False)


def _shared_name(name: str) -> bool:
    """A module name (peft's base_layer under its projection's name, or the projection itself)
    whose input other projections read too."""
    return any(part in fused_lora.ATTENTION_INPUTS + fused_lora.MLP_INPUTS for part in name.split(".")[-2:])


class _FP8Product(torch.autograd.Function):
    """x @ W^T with W the frozen 4-bit weight, result bf16; FP8 where routed() says so (the input
    gradient always); grad for x only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight, fp8: bool, shared: bool) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = product(flat, weight, shared) if fp8 else flat @ fused_lora.dequantized(weight, torch.bfloat16).t()
        ctx.weight, ctx.in_shape = weight, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dx = input_grad(grad.reshape(-1, grad.shape[-1]).to(torch.bfloat16), ctx.weight)
        return dx.view(ctx.in_shape), None, None, None


def _fp8_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    # tiny batches (generation) gain nothing and _scaled_mm wants 16-aligned inner sizes
    if x.numel() // x.shape[-1] < 16 or not x.is_cuda:
        return self._bnb_forward(x, *args, **kwargs)
    out = _FP8Product.apply(x, self.weight, routed(self), shares_input(self))
    if self.bias is not None:
        out = out + self.bias.to(out.dtype)
    return out.to(x.dtype)


def use_fp8_base(model, mode: str = "all") -> int:
    """Route every frozen 4-bit Linear of `model` whose sizes suit FP8 through _FP8Product, for
    every product ("all") or for those that feed gradients alone ("grads", see routed); returns
    how many. Layers with other shapes keep bitsandbytes' product."""
    import bitsandbytes as bnb

    count = 0
    for name, module in model.named_modules():
        if (isinstance(module, bnb.nn.Linear4bit) and not hasattr(module, "_bnb_forward")
                and module.in_features % 16 == 0 and module.out_features % 16 == 0):
            module._bnb_forward, module._fp8_base = module.forward, mode
            module._fp8_shared = _shared_name(name)
            module.forward = types.MethodType(_fp8_forward, module)
            count += 1
    return count
