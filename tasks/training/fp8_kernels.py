"""Triton kernels for the FP8 base products (tasks/training/fp8_base.py), CUDA only.

- nf4_to_fp8: a 4-bit (nf4/fp4) weight straight to float8 e4m3, one scale per output channel, or
  transposed with one scale per input channel, in one pass. The unfused route wrote the bf16 weight,
  read it back for the scale and the cast, and once more for the transpose (bench/fp8_product.py).
- rowwise_fp8: an activation or gradient (rows, cols) to e4m3 with one scale per row, rows padded to
  a multiple of 16 with zeros, in one pass (the row lives in registers).

    python -m pytest -q tests/test_train.py -k fp8     # on a GPU with FP8 tensor cores
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

@triton.jit
def _nf4_to_fp8_kernel(packed, absmax, code, inv_scale, out, OUT, IN, BLOCKSIZE: tl.constexpr,
                       TRANSPOSE: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr):
    # one byte holds two neighbours (the earlier one in the high nibble, as bitsandbytes packs them);
    # decoding both and interleaving them in registers reads each byte once (decoding the nibble each
    # column needs, each byte read twice, measured 2.7x slower on an H200)
    rows = tl.program_id(0) * BO + tl.arange(0, BO).to(tl.int64)
    pairs = tl.program_id(1) * (BI // 2) + tl.arange(0, BI // 2).to(tl.int64)
    inside = (rows[:, None] < OUT) & (pairs[None, :] < IN // 2)
    byte = rows[:, None] * (IN // 2) + pairs[None, :]
    b = tl.load(packed + byte, mask=inside, other=0).to(tl.int32)
    block_scale = tl.load(absmax + (2 * byte) // BLOCKSIZE, mask=inside, other=0.0)
    hi = tl.load(code + (b >> 4)) * block_scale
    lo = tl.load(code + (b & 15)) * block_scale
    w = tl.reshape(tl.join(hi, lo), (BO, BI))
    cols = tl.program_id(1) * BI + tl.arange(0, BI).to(tl.int64)
    keep = (rows[:, None] < OUT) & (cols[None, :] < IN)
    if TRANSPOSE:
        w = w * tl.load(inv_scale + cols, mask=cols < IN, other=0.0)[None, :]
        tl.store(out + cols[None, :] * OUT + rows[:, None], w.to(tl.float8e4nv), mask=keep)
    else:
        w = w * tl.load(inv_scale + rows, mask=rows < OUT, other=0.0)[:, None]
        tl.store(out + rows[:, None] * IN + cols[None, :], w.to(tl.float8e4nv), mask=keep)


TILE = (64, 128, 4)  # rows, columns, warps per program: 0.15-0.18 ms for a 7B's largest weight (H200)


def nf4_to_fp8(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, shape: torch.Size,
               blocksize: int, inv_scale: torch.Tensor, transpose: bool, tile: tuple[int, int, int] = TILE) -> torch.Tensor:
    """The 4-bit weight of `shape` (out, in) as e4m3 * inv_scale: (out, in) with inv_scale (out,),
    or (in, out) with inv_scale (in,) when `transpose`. absmax: the fp32 per-block scales. `tile`:
    see TILE (bench/fp8_product.py times others)."""
    n_out, n_in = shape
    result = torch.empty((n_in, n_out) if transpose else (n_out, n_in), device=packed.device,
                         dtype=torch.float8_e4m3fn)
    bo, bi, warps = tile
    grid = (triton.cdiv(n_out, bo), triton.cdiv(n_in, bi))
    _nf4_to_fp8_kernel[grid](packed, absmax, code, inv_scale, result, n_out, n_in,
                             BLOCKSIZE=blocksize, TRANSPOSE=transpose, BO=bo, BI=bi, num_warps=warps)
    return result


@triton.jit
def _rowwise_kernel(x, q, scale, M, C, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    v = tl.load(x + row.to(tl.int64) * stride + cols, mask=(cols < C) & (row < M), other=0.0).to(tl.float32)
    s = tl.maximum(tl.max(tl.abs(v), axis=0), 1e-12) / 448.0  # e4m3's largest finite value
    tl.store(q + row.to(tl.int64) * C + cols, (v / s).to(tl.float8e4nv), mask=cols < C)
    tl.store(scale + row, s)


def rowwise_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t (M, C) -> (e4m3 (M16, C), fp32 scale (M16, 1)), M16 = M rounded up to 16, extra rows zero."""
    m, c = t.shape
    rows = -(-m // 16) * 16
    q = torch.empty((rows, c), device=t.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty((rows, 1), device=t.device, dtype=torch.float32)
    block = triton.next_power_of_2(c)
    _rowwise_kernel[(rows,)](t, q, scale, m, c, t.stride(0), BLOCK=block,
                             num_warps=min(max(block // 1024, 4), 16))
    return q, scale
