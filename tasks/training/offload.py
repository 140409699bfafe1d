"""What loragate changes in trl's activation offloading, used where train.memory_budget_gib's plan
offloads the kept layer inputs to host memory (tasks/training/budget.py).

trl 1.16's offloader empties CUDA's allocator cache at the start of every training step whenever
bitsandbytes is imported (against cached blocks piling up under MoE + packing + torch.compile, and
bitsandbytes' dequantization buffers). Emptying it waits for the GPU and hands every block back, so
each step then maps its activations' memory again while the GPU idles. loragate's 4-bit layers
dequantize into blocks the allocator reuses step after step, so the cache is kept; the throughput
bench's `emptycache` variant restores trl's flush. Qwen2.5-7B at 7.6 GiB, 8 steps (H200): peak
reserved 7.35-7.51 GiB kept, 7.45-7.49 flushed; peak allocated 7.04 both.

At the end of each forward + backward trl's offloader also waits on the host for both its streams
(compute and copy) before dropping its stashed tensors: the optimizer step and the next forward
are then launched onto an idle GPU. The same safety comes from the streams waiting on each other:
the allocator reuses a freed block only in order on the stream that owns it, so once the compute
stream waits for the copies (and the copy stream for the compute) nothing freed here can be
overwritten while in use. The bench's `exitsync` variant restores trl's host waits.

In the backward trl's offloader brings each offloaded tensor back when autograd asks for it and
makes the compute stream wait for that copy: under the 7.6 GiB plan each recomputed layer first
waits ~1 ms for its 58 MB input to cross PCIe (30-50 ms a step of the main stream waiting,
profiled). fetch_ahead starts the next offloaded tensor's copy as soon as one is handed back, so it
crosses while the layer before it computes, one copy on its way at a time (one more layer input
on the GPU). H200, Qwen2.5-7B at 7.6 GiB, one run: 15,473 vs 15,053 tokens/s on demand (+2.8%)
at 7.12 vs 7.07 GiB peak allocated (bench/results/train_throughput-qwen2.5-7b-h200-fetchahead.json);
the uncapped first form (every hand-back starting the next copy, many layers ahead) gave +4.3% at
+0.84 GiB.

    python -m pytest -q tests/test_train.py -k offload
"""
from __future__ import annotations

from torch.autograd.graph import saved_tensors_hooks

from tasks.training import mix_in


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
    ctx = _offloader(trainer)
    if ctx is None or isinstance(ctx.device_module, CacheKept):
        return False
    ctx.device_module = CacheKept(ctx.device_module)
    return True


def _offloader(trainer):
    ctx = getattr(trainer, "maybe_activation_offload_context", None)
    return ctx if hasattr(ctx, "device_module") else None


class InStreamOrder:
    """Mixed into trl's offloader: its __exit__ without the host waits. Each stream waits for the
    other, then the stashes go."""

    def __exit__(self, *exc):
        if self.use_streams:
            for _, event in self.fwd_stash.values():
                self.s0.wait_event(event)
            self.s0.wait_stream(self.s1)  # compute after every copy made or brought back
            self.s1.wait_stream(self.s0)  # the next copies after every use of what the stashes held
            self.bwd_tensor_stash.clear()
            self.bwd_ev_stash.clear()
            self.fwd_stash.clear()
        return saved_tensors_hooks.__exit__(self, *exc)


def exit_without_host_wait(trainer) -> bool:
    """Make `trainer`'s activation offloader (if it has one) end each step in stream order instead
    of waiting on the host for the GPU; returns whether there was one to change."""
    ctx = _offloader(trainer)
    return ctx is not None and mix_in(ctx, InStreamOrder)


def _next_on_host(ctx, after: int) -> int | None:
    """The offloaded tensor the backward will ask for next: the latest saved before `after` that is
    still in host memory (trl numbers them in the order the forward saved them)."""
    waiting = [i for i, entry in ctx.tracker.items()
               if i < after and entry[1] and i not in ctx.fwd_stash and entry[0].device.type == "cpu"]
    return max(waiting, default=None)


def _fetch(ctx, tensor_id: int) -> None:
    """Start the copy back on trl's copy stream; the tracker then holds the GPU tensor, which trl's
    unpack takes as it is (.to() on a tensor already there is itself), with the same references."""
    cpu, *rest = ctx.tracker[tensor_id]
    with ctx.device_module.stream(ctx.s1):
        ctx.tracker[tensor_id] = (cpu.to(ctx.accelerator_type, non_blocking=True), *rest)


def fetch_ahead(trainer) -> bool:
    """Make `trainer`'s activation offloader (if it has one, with its copy stream) fetch the next
    offloaded tensor each time it hands one back; returns whether there was one to change."""
    ctx = _offloader(trainer)
    if ctx is None or not getattr(ctx, "use_streams", False) or getattr(ctx, "_fetches_ahead", False):
        return False
    unpack, ahead = ctx.unpack_hook, set()

    def unpack_then_fetch_next(tensor_id: int):
        tensor = unpack(tensor_id)  # trl's compute stream waits for copies started so far, not for the next
        ahead.discard(tensor_id)
        following = None if ahead else _next_on_host(ctx, tensor_id)
        if following is not None:  # one on its way at a time: a layer input ahead, not every one
            _fetch(ctx, following)
            ahead.add(following)
        return tensor

    ctx.unpack_hook, ctx._fetches_ahead = unpack_then_fetch_next, True
    return True
