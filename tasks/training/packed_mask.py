"""transformers' packed-sequence detection without its host wait for the GPU (throughput bench
variant `nopackedwait`; not in make_trainer until measured on the GPU).

Padding-free packed rows reach the model as position_ids that restart at each sequence. Every
forward, transformers (masking_utils.find_packed_sequence_indices) turns them into sequence ids
on the GPU, then asks whether any row holds more than one sequence (`.all()` on a GPU tensor):
the host waits for every queued kernel, the optimizer step's included, and the GPU then idles
while the host queues the forward's first kernels (3-4 ms a step on 512-token rows, 8-9 ms on
2,048-token rows in the H200 profiles). The ids alone decide the mask: where every row holds one
sequence they are all zero, which masks as "no packing" does. So while gradients are taken (a
training forward; generation runs without) the ids are returned without the question.

    python -m pytest -q tests/test_train.py -k packed_sequence
"""
from __future__ import annotations

import torch

_ASKS: list = []  # transformers' own function, once replaced


def _sequence_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    if not torch.is_grad_enabled():
        return _ASKS[0](position_ids)
    # a new sequence wherever the position does not follow the one before (the first always does)
    steps = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    return (steps != 1).cumsum(-1)


def without_packed_wait() -> bool:
    """Replace transformers' packed-sequence detection for this process; False if already done."""
    from transformers import masking_utils

    if _ASKS:
        return False
    _ASKS.append(masking_utils.find_packed_sequence_indices)
    masking_utils.find_packed_sequence_indices = _sequence_ids
    return True
