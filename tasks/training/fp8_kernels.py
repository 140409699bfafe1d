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
                       TRANSPOSE: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, JOIN: tl.constexpr):
    # one byte holds two neighbours (the earlier one in the high nibble, as bitsandbytes packs them);
    # both are decoded from one read (decoding the nibble each column needs, each byte read twice,
    # measured 2.7x slower on an H200), then interleaved in registers (JOIN) or stored apart
    rows = tl.program_id(0) * BO + tl.arange(0, BO).to(tl.int64)
    pairs = tl.program_id(1) * (BI // 2) + tl.arange(0, BI // 2).to(tl.int64)
    inside = (rows[:, None] < OUT) & (pairs[None, :] < IN // 2)
    byte = rows[:, None] * (IN // 2) + pairs[None, :]
    b = tl.load(packed + byte, mask=inside, other=0).to(tl.int32)
    block_scale = tl.load(absmax + (2 * byte) // BLOCKSIZE, mask=inside, other=0.0)
    hi = tl.load(code + (b >> 4)) * block_scale
    lo = tl.load(code + (b & 15)) * block_scale
    if JOIN:
        cols = tl.program_id(1) * BI + tl.arange(0, BI).to(tl.int64)
        _store_fp8(out, tl.reshape(tl.join(hi, lo), (BO, BI)), rows, cols, inv_scale, OUT, IN, TRANSPOSE)
    else:
        _store_fp8(out, hi, rows, 2 * pairs, inv_scale, OUT, IN, TRANSPOSE)
        _store_fp8(out, lo, rows, 2 * pairs + 1, inv_scale, OUT, IN, TRANSPOSE)


@triton.jit
def _store_fp8(out, w, rows, cols, inv_scale, OUT, IN, TRANSPOSE: tl.constexpr):
    keep = (rows[:, None] < OUT) & (cols[None, :] < IN)
    if TRANSPOSE:
        w = w * tl.load(inv_scale + cols, mask=cols < IN, other=0.0)[None, :]
        tl.store(out + cols[None, :] * OUT + rows[:, None], w.to(tl.float8e4nv), mask=keep)
    else:
        w = w * tl.load(inv_scale + rows, mask=rows < OUT, other=0.0)[:, None]
        tl.store(out + rows[:, None] * IN + cols[None, :], w.to(tl.float8e4nv), mask=keep)


# (rows, columns, warps, interleaved in registers): the first was 0.15-0.18 ms for a 7B's largest
# weight on an H200, ~5x the copy's bandwidth floor; the fastest for each shape and layout is
# picked on first use (bench/fp8_product.py times them all)
TILES = [(64, 128, 4, True), (32, 256, 4, True), (64, 256, 8, True), (128, 128, 8, True), (16, 512, 4, True),
         (64, 128, 4, False), (32, 256, 4, False), (128, 64, 4, False), (16, 512, 4, False)]


def _quick_bench(kernel_call, quantiles) -> list[float]:
    """Median, fastest and slowest ms of 10 runs after 3: Triton's own timer flushes L2 through a
    256 MiB buffer it allocates, which would raise the training's peak memory the first time."""
    for _ in range(3):
        kernel_call()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        kernel_call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return [times[len(times) // 2], times[0], times[-1]]


_tuned_kernel = triton.autotune(
    configs=[triton.Config({"BO": bo, "BI": bi, "JOIN": join}, num_warps=w) for bo, bi, w, join in TILES],
    key=["OUT", "IN", "TRANSPOSE"], do_bench=_quick_bench)(_nf4_to_fp8_kernel)


def nf4_to_fp8(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, shape: torch.Size,
               blocksize: int, inv_scale: torch.Tensor, transpose: bool,
               tile: tuple[int, int, int, bool] | None = None) -> torch.Tensor:
    """The 4-bit weight of `shape` (out, in) as e4m3 * inv_scale: (out, in) with inv_scale (out,),
    or (in, out) with inv_scale (in,) when `transpose`. absmax: the fp32 per-block scales. `tile`:
    one of TILES, else the fastest of them for this shape and layout."""
    n_out, n_in = shape
    result = torch.empty((n_in, n_out) if transpose else (n_out, n_in), device=packed.device,
                         dtype=torch.float8_e4m3fn)
    args = (packed, absmax, code, inv_scale, result, n_out, n_in)
    if tile is None:
        grid = lambda meta: (triton.cdiv(n_out, meta["BO"]), triton.cdiv(n_in, meta["BI"]))  # noqa: E731
        _tuned_kernel[grid](*args, BLOCKSIZE=blocksize, TRANSPOSE=transpose)
    else:
        bo, bi, warps, join = tile
        _nf4_to_fp8_kernel[(triton.cdiv(n_out, bo), triton.cdiv(n_in, bi))](
            *args, BLOCKSIZE=blocksize, TRANSPOSE=transpose, BO=bo, BI=bi, JOIN=join, num_warps=warps)
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
