"""Triton kernels for the FP8 base products (tasks/training/fp8_base.py), CUDA only.

- nf4_to_fp8: a 4-bit (nf4/fp4) weight straight to float8 e4m3, one scale per output channel, or
  transposed with one scale per input channel, in one pass. The unfused route wrote the bf16 weight,
  read it back for the scale and the cast, and once more for the transpose (bench/fp8_product.py).
- rowwise_fp8: an activation or gradient (rows, cols) to e4m3 with one scale per row, rows padded to
  a multiple of 16 with zeros, in one pass (the row lives in registers).

Both are launched through _Launcher once compiled: a 7B step launches ~800 of them and is bound by
the host, and Triton's own call re-binds and re-specializes every argument in Python each time.

    python -m pytest -q tests/test_train.py -k fp8     # on a GPU with FP8 tensor cores
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def _no_hooks(hook) -> bool:
    """A launch hook that is unset (None, or an empty chain of them in newer Triton)."""
    return hook is None or not getattr(hook, "calls", True)


class _Launcher:
    """Compiled Triton kernels launched straight through their driver entry point, as Triton's own
    call ends (JITFunction.run: grid, stream, function, metadata, hooks, then every parameter,
    constexprs included) without re-binding and re-specializing the arguments, which cost ~3x the
    launch itself (cProfile on an H200: 0.22 s of 0.28 s for 2,152 launches). The caller's key
    must hold all Triton specializes on: dtypes, sizes, strides, 16-byte pointer alignment."""

    def __init__(self):
        knobs = getattr(triton, "knobs", None)  # Triton >= 3.4: the launcher takes constexprs too
        self.usable = knobs is not None and hasattr(knobs.runtime, "launch_enter_hook")
        self.kernels: dict = {}

    def __call__(self, key, grid, params: tuple, first_call) -> None:
        """Launch the kernel compiled under `key` on grid with `params`, or run first_call()
        (Triton's own call, which returns the kernel it compiled and ran) and keep its kernel."""
        kernel = self.kernels.get(key)
        runtime = triton.knobs.runtime if self.usable else None
        if kernel is None or runtime is None or not (_no_hooks(runtime.launch_enter_hook)
                                                     and _no_hooks(runtime.launch_exit_hook)):
            kernel = first_call()
            if self.usable and kernel is not None and hasattr(kernel, "run"):
                self.kernels[key] = kernel
            return
        stream = torch._C._cuda_getCurrentRawStream(params[0].device.index)
        kernel.run(*grid, stream, kernel.function, kernel.packed_metadata, None,
                   runtime.launch_enter_hook, runtime.launch_exit_hook, *params)


_launch = _Launcher()


def _aligned(*tensors: torch.Tensor) -> tuple[bool, ...]:
    """Triton specializes pointers on 16-byte alignment: part of every launch key."""
    return tuple(t.data_ptr() % 16 == 0 for t in tensors)


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
        key = ("nf4", packed.device.index, shape, blocksize, transpose, packed.dtype, _aligned(*args[:5]))
        _launch_tuned(key, args, blocksize, transpose)
    else:
        bo, bi, warps, join = tile
        _nf4_to_fp8_kernel[(triton.cdiv(n_out, bo), triton.cdiv(n_in, bi))](
            *args, BLOCKSIZE=blocksize, TRANSPOSE=transpose, BO=bo, BI=bi, JOIN=join, num_warps=warps)
    return result


_TUNED: dict = {}  # launch key -> the tile the autotuner picked (BO, BI, JOIN), which sets the grid


def _launch_tuned(key, args: tuple, blocksize: int, transpose: bool) -> None:
    """The autotuned kernel: through the autotuner the first time (it times TILES, then runs the
    fastest), straight through _launch after, with the tile it picked."""
    n_out, n_in = args[5], args[6]

    def through_autotuner():
        grid = lambda meta: (triton.cdiv(n_out, meta["BO"]), triton.cdiv(n_in, meta["BI"]))  # noqa: E731
        kernel = _tuned_kernel[grid](*args, BLOCKSIZE=blocksize, TRANSPOSE=transpose)
        best = _tuned_kernel.best_config.kwargs
        _TUNED[key] = (best["BO"], best["BI"], best["JOIN"])
        return kernel

    bo, bi, join = _TUNED.get(key, (1, 1, False))  # unknown yet: _launch takes through_autotuner
    _launch(key, (triton.cdiv(n_out, bo), triton.cdiv(n_in, bi), 1), (*args, blocksize, transpose, bo, bi, join),
            through_autotuner)


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
    block, stride = triton.next_power_of_2(c), t.stride(0)
    # M is specialized on divisibility by 16 and on being 1, like every int Triton is handed
    key = ("rowwise", t.device.index, t.dtype, c, stride, m % 16 == 0, m == 1, _aligned(t, q, scale))
    _launch(key, (rows, 1, 1), (t, q, scale, m, c, stride, block),
            lambda: _rowwise_kernel[(rows,)](t, q, scale, m, c, stride, BLOCK=block,
                                             num_warps=min(max(block // 1024, 4), 16)))
    return q, scale
