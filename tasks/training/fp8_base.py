"""The frozen 4-bit base multiplied in FP8 on Hopper (`train.fp8_base`); LoRA stays bf16.

QLoRA dequantizes every base weight to bf16 before each product anyway (forward, the recompute
under gradient checkpointing, backward). Quantizing that copy and the activations to float8 e4m3
with one scale per row (per token, per output channel) lets the tensor cores run the product at
twice bf16's rate. Only products with frozen weights change: no weight gradient is taken through
them, and the adapter, its gradients and the optimizer stay in bf16/fp32. The backward product
(dY @ W) is FP8 too, with W re-scaled per input channel, so each scale follows the reduced axis.

    python -m pytest -q tests/test_train.py -k fp8                  # CPU: refused/skipped cleanly
    python bench/train_throughput.py --cases loragate-fixed,loragate-fixed-fp8   # H100: speed
    python bench/train_equivalence.py --fp8                         # H100: SmolLM2 loss curves
"""
from __future__ import annotations

import functools
import types

import torch

E4M3 = torch.float8_e4m3fn


def supported() -> bool:
    """FP8 tensor-core products need compute capability 8.9 (Ada) or 9.0 (Hopper) and up."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def _rowwise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t (R, C) -> (float8 (R, C), float32 scale (R, 1)) with t ~= q * scale."""
    amax = t.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / torch.finfo(E4M3).max
    return (t.float() / scale).to(E4M3), scale


@functools.cache
def _fused_quantize():
    """_rowwise compiled into one pass over each tensor instead of four (eager on the CPU)."""
    return torch.compile(_rowwise, dynamic=True) if torch.cuda.is_available() else _rowwise


def _rows16(t: torch.Tensor) -> torch.Tensor:
    """Zero rows up to a multiple of 16: cuBLAS's FP8 product wants aligned sizes (packed steps vary)."""
    extra = -t.shape[0] % 16
    return torch.nn.functional.pad(t, (0, 0, 0, extra)) if extra else t


def _dequantized(weight) -> torch.Tensor:
    import bitsandbytes.functional as F

    return F.dequantize_4bit(weight.data, weight.quant_state).to(torch.bfloat16)


class _FP8Product(torch.autograd.Function):
    """x @ W^T with W the frozen 4-bit weight: both operands FP8, result bf16; grad for x only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight) -> torch.Tensor:
        quantize = _fused_quantize()
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        xq, xs = quantize(_rows16(flat))
        wq, ws = quantize(_dequantized(weight))  # (out, in): one scale per output channel
        out = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16)[:flat.shape[0]]
        ctx.weight, ctx.in_shape = weight, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        quantize = _fused_quantize()
        g = grad.reshape(-1, grad.shape[-1]).to(torch.bfloat16)
        gq, gs = quantize(_rows16(g))
        wtq, wts = quantize(_dequantized(ctx.weight).t().contiguous())  # (in, out): scale per input channel
        dx = torch._scaled_mm(gq, wtq.t(), scale_a=gs, scale_b=wts.t(), out_dtype=torch.bfloat16)[:g.shape[0]]
        return dx.view(ctx.in_shape), None


def _fp8_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    # tiny batches (generation) gain nothing and _scaled_mm wants 16-aligned inner sizes
    if x.numel() // x.shape[-1] < 16 or not x.is_cuda:
        return self._bnb_forward(x, *args, **kwargs)
    out = _FP8Product.apply(x, self.weight)
    if self.bias is not None:
        out = out + self.bias.to(out.dtype)
    return out.to(x.dtype)


def use_fp8_base(model) -> int:
    """Route every frozen 4-bit Linear of `model` whose sizes suit FP8 through _FP8Product;
    returns how many. Layers with other shapes keep bitsandbytes' product."""
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if (isinstance(module, bnb.nn.Linear4bit) and not hasattr(module, "_bnb_forward")
                and module.in_features % 16 == 0 and module.out_features % 16 == 0):
            module._bnb_forward = module.forward
            module.forward = types.MethodType(_fp8_forward, module)
            count += 1
    return count
