"""One frozen 4-bit layer, forward + backward for the input: bitsandbytes' bf16 product vs the FP8
path (tasks/training/fp8_base.py), and what each part of the FP8 path costs (the kernels in
tasks/training/fp8_kernels.py), on Qwen2.5-7B's largest shapes. Ratios in one run, CUDA events, median of 20 after 5 warm-ups.

    python bench/fp8_product.py          # a GPU with FP8 tensor cores; writes bench/results/fp8_product.json
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {"gate/up (3584 -> 18944)": (3584, 18944), "down (18944 -> 3584)": (18944, 3584)}


def timed(fn, repeats: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of fn() on the GPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 3)


def tile_sweep(weight) -> dict:
    """ms of the one-pass nf4 -> e4m3 kernel per (rows, columns, warps) tile, both layouts: the
    kernel is ~5x off the copy's bandwidth floor, and the tile is the cheapest thing to try."""
    from tasks.training import fp8_base
    from tasks.training.fp8_kernels import TILES, nf4_to_fp8
    from tasks.training.fused_lora import block_scales

    state, (rows, cols) = weight.quant_state, fp8_base._channel_scales(weight)
    inverse = {False: 1.0 / rows, True: 1.0 / cols}
    return {f"{bo}x{bi}w{nw}{'' if join else 'split'}{'_t' if t else ''}": timed(lambda: nf4_to_fp8(
                weight.data, block_scales(weight), state.code, state.shape, state.blocksize,
                inverse[t], t, (bo, bi, nw, join)))
            for bo, bi, nw, join in TILES for t in (False, True)}


def layer_case(k: int, n: int, tokens: int) -> dict:
    import bitsandbytes as bnb

    from tasks.training import fp8_base
    from tasks.training.fp8_kernels import rowwise_fp8
    from tasks.training.fused_lora import base_weight, dequantized

    layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
    x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16)
    step = lambda: layer(x).backward(g)  # noqa: E731
    out = {"bf16_fwd_bwd_ms": timed(step)}
    fp8_base.use_fp8_base(torch.nn.Sequential(layer))
    out["fp8_fwd_bwd_ms"] = timed(step)
    w = dequantized(layer.weight, torch.bfloat16)
    xq, xs = rowwise_fp8(x.detach())
    wq, ws = fp8_base.weight_fp8(layer.weight, transpose=False)
    out |= {"dequantize_ms": timed(lambda: base_weight(layer, torch.bfloat16)),  # the bf16 fused path's
            "weight_fp8_ms": timed(lambda: fp8_base.weight_fp8(layer.weight, transpose=False)),
            "weight_fp8_t_ms": timed(lambda: fp8_base.weight_fp8(layer.weight, transpose=True)),
            "quantize_input_ms": timed(lambda: rowwise_fp8(x.detach())),
            "quantize_grad_ms": timed(lambda: rowwise_fp8(g)),
            "bf16_gemm_ms": timed(lambda: x.detach() @ w.t()),
            "fp8_gemm_ms": timed(lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws,
                                                          out_dtype=torch.bfloat16)),
            "fp8_gemm_fast_accum_ms": timed(lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws,
                                                                     out_dtype=torch.bfloat16, use_fast_accum=True))}
    out["fp8_vs_bf16"] = round(out["bf16_fwd_bwd_ms"] / out["fp8_fwd_bwd_ms"], 2)
    out["weight_fp8_tiles_ms"] = tile_sweep(layer.weight)
    return out


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 8192  # one micro-batch of the 7.6 GiB plan (16 rows of 512)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": tokens,
              "cases": {name: layer_case(k, n, tokens) for name, (k, n) in SHAPES.items()}}
    from tasks.training.fp8_kernels import _tuned_kernel
    result["picked_on_first_use"] = {str(key): str(config) for key, config in _tuned_kernel.cache.items()}
    (ROOT / "bench/results").mkdir(exist_ok=True)
    (ROOT / "bench/results/fp8_product.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
