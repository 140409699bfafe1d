"""What loragate changes in trl's activation offloading, used where train.memory_budget_gib's plan
offloads the kept layer inputs to host memory (tasks/training/budget.py).

trl 1.16's offloader empties CUDA's allocator cache at the start of every training step whenever
bitsandbytes is imported (against cached blocks piling up under MoE + packing + torch.compile, and
bitsandbytes' dequantization buffers). Emptying it waits for the GPU and hands every block back, so
each step then maps its activations' memory again while the GPU idles. loragate's 4-bit layers
dequantize into blocks the allocator reuses step after step, so the cache is kept; the throughput
bench's `emptycache` variant restores trl's flush. Qwen2.5-7B at 7.6 GiB, 8 steps (H200): peak
reserved 7.35-7.51 GiB kept, 7.45-7.49 flushed; peak allocated 7.04 both.

    python -m pytest -q tests/test_train.py -k offload
"""
from __future__ import annotations


class CacheKept:
    """A device module (torch.cuda) as trl's offloader sees it, with empty_cache a no-op: streams,
    events and everything else are the module's own."""

    def __init__(self, module):
        self._module = module

    def empty_cache(self) -> None:
        return None

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def keep_allocator_cache(trainer) -> bool:
    """Stop `trainer`'s activation offloader (if it has one) from emptying the allocator's cache
    every step; returns whether there was one to change."""
    ctx = getattr(trainer, "maybe_activation_offload_context", None)
    if ctx is None or not hasattr(ctx, "device_module") or isinstance(ctx.device_module, CacheKept):
        return False
    ctx.device_module = CacheKept(ctx.device_module)
    return True
