"""trl's fused loss picking the labelled positions without a host wait for the GPU.

trl 1.16's fused LM head scores only the positions whose next-token label is kept. It picks them
with a boolean index (`hidden_states[mask]`), whose size only the GPU knows, so the host stops
launching kernels until the whole forward has run and the backward starts on an idle GPU (42 ms a
step on a 7B step in the throughput bench's host profile). The host knows the number at collation,
before the batch goes to the device: the collator here counts the positions (as trl counts them:
label of the next token not -100), and the loss picks that many with torch.nonzero_static, whose
size is given, so nothing waits. The scores are trl's own (its ChunkedLogProbFunction on the same
rows), scattered back to every position as trl's full-row path expects.

A count that disagrees with the labels on the device (something changed the labels after
collation) would score the wrong rows: each micro-batch compares the two on the device, and the
trainer's next log stops training with one line saying so. Bench variant `maskedindex` restores
trl's boolean index.

    python -m pytest -q tests/test_train.py -k counted
"""
from __future__ import annotations

import contextlib

import torch

from tasks.training import mix_in

KEY = "labelled_positions"  # the batch entry the collator adds: a Python int, so it stays on the host
_PICKED: list[torch.Tensor | None] = [None]  # the flat positions the loss being computed scores
_LIBRARY: dict = {}  # trl's own functions, as found before the first patch


class CountMismatch(RuntimeError):
    """The collator's count of labelled positions disagreed with the labels the loss saw."""


def _kept(labels: torch.Tensor) -> torch.Tensor:
    """Where the next token's label is kept, flat over batch x (length - 1): what trl's fused head scores."""
    return (labels[:, 1:] != -100).reshape(-1)


def count_labelled(labels: torch.Tensor) -> int:
    return int(_kept(labels).sum())


def pick(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The n flat positions whose label is kept, in a tensor of known size: no wait for the device."""
    return torch.nonzero_static(_kept(labels), size=n, fill_value=0).squeeze(1)


class CountingCollator:
    """A collator that adds each batch's count of labelled positions (`KEY`) to what it returns."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        batch = self.inner(examples)
        labels = batch.get("labels")
        # pre-shifted labels (sequence parallelism) are scored as they are: trl's own path
        if isinstance(labels, torch.Tensor) and labels.dim() == 2 and "shift_labels" not in batch:
            batch[KEY] = count_labelled(labels)
        return batch

    def __getattr__(self, name):  # the trainer reads the wrapped collator's settings (padding_free, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _use_triton(device: torch.device) -> bool:
    # while positions are picked, trl takes its full-row path, which the scoring below narrows
    return _PICKED[0] is None and _LIBRARY["_use_triton"](device)


class _PickedLogProb:
    """trl's ChunkedLogProbFunction, given only the picked rows while a count is in force."""

    @staticmethod
    def apply(hidden, weight, bias, targets, *rest):
        library, picked = _LIBRARY["_ChunkedLogProbFunction"], _PICKED[0]
        if picked is None:
            return library.apply(hidden, weight, bias, targets, *rest)
        scored = library.apply(hidden.index_select(0, picked), weight, bias, targets.index_select(0, picked), *rest)
        return tuple(None if x is None else x.new_zeros(hidden.shape[0]).index_copy(0, picked, x) for x in scored)


@contextlib.contextmanager
def scoring(picked: torch.Tensor):
    """trl's fused head scores only the flat positions `picked` (of batch x (length - 1)) inside."""
    _PICKED[0] = picked
    try:
        yield
    finally:
        _PICKED[0] = None


class CountedLoss:
    """Mixed into an SFTTrainer: the loss picks the positions the collator counted."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n, labels = inputs.pop(KEY, None), inputs.get("labels")
        if not n or labels is None or "shift_labels" in inputs:  # nothing counted, or nothing to score
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._count_misses = self._count_misses + (_kept(labels).sum() != n)
        with scoring(pick(labels, n)):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def log(self, logs, start_time=None):
        misses, self._count_misses = int(self._count_misses), 0
        if misses:
            raise CountMismatch(f"training stopped at step {self.state.global_step}: the labelled-position count "
                                f"taken at collation disagreed with the labels the loss saw in {misses} micro-batch(es)"
                                " (something changed the labels after collation)")
        return super().log(logs, start_time)


def _patch_trl() -> bool:
    """Route trl's fused head through the pick above; False where this trl lacks the pieces."""
    import trl.trainer.utils as trl_utils  # here: importing trl wakes bitsandbytes, which a refused run need not

    if not _LIBRARY:
        if not all(hasattr(trl_utils, f) for f in ("_use_triton", "_ChunkedLogProbFunction")):
            return False
        _LIBRARY.update(_use_triton=trl_utils._use_triton, _ChunkedLogProbFunction=trl_utils._ChunkedLogProbFunction)
        trl_utils._use_triton, trl_utils._ChunkedLogProbFunction = _use_triton, _PickedLogProb
    return True


def counted_labels(trainer) -> bool:
    """Make an SFTTrainer's fused loss pick its labelled positions by a count taken at collation;
    returns whether it changed (False: already done, or a setup it does not cover)."""
    # several processes dispatch batches themselves; other trl versions: their own path
    if trainer.accelerator.num_processes != 1 or not _patch_trl() or not mix_in(trainer, CountedLoss):
        return False
    trainer._count_misses = 0
    trainer.data_collator = CountingCollator(trainer.data_collator)
    return True
