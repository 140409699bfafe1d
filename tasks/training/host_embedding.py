"""The frozen input-embedding table in host memory, for memory budgets where the GPU would
otherwise have to split the batch.

A 7B's input embedding is a bf16 table of ~1 GiB (Qwen2.5-7B: 152,064 x 3,584) that a step reads
only a few rows of: 8,192 tokens need 56 MiB. Kept in pinned host memory, a step gathers its rows
there and copies them to the GPU; the GPU gets the ~1 GiB back for activations. The table is frozen
under LoRA, so nothing flows back. Same values as the on-GPU lookup (test); chosen by the memory
plan (tasks/training/budget.py) only when the batch would not fit whole otherwise. A head tied to
the table (small models) keeps it on the GPU.

Each batch's rows are gathered ahead, on a host thread, as soon as the batch is collated (the
trainer's loader collates the next batch while the GPU works on this one): the collator puts the
pending rows into the batch under ROWS_KEY, a hook on the model takes them out before its forward,
and the lookup waits on them instead of copying the step's token ids back from the GPU (a wait for
the GPU) and gathering on the host while the GPU idles. Rows travel with their own batch, so a
lookup can never take another batch's; a forward without them (generation, eval by hand) gathers
as before.

    python -m pytest -q tests/test_train.py -k host_embedding
"""
from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import torch

ROWS_KEY = "loragate_host_rows"  # batch key the gathered rows ride under; taken out before the model sees it


class Ahead:
    """A batch's rows being gathered on a host thread. No `.to()`: trainers pass it on unmoved."""

    __slots__ = ("shape", "rows")

    def __init__(self, shape: torch.Size, rows: Future):
        self.shape, self.rows = shape, rows


class HostEmbedding(torch.nn.Module):
    """An nn.Embedding's lookup with its table in (pinned, where CUDA exists) host memory. The
    table is a plain attribute, not a parameter: the model's device stays the GPU, and neither
    the optimizer nor a saved adapter sees it."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        table = embedding.weight.detach().to("cpu")
        self.table = table.pin_memory() if torch.cuda.is_available() else table
        self.device = embedding.weight.device
        self.embedding_dim = embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.pending: Ahead | None = None  # the rows of the batch the model is running now
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="host-embedding")

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of host token ids, straight into pinned memory (so the copy to the GPU runs
        asynchronously)."""
        flat = ids.reshape(-1)
        rows = torch.empty((flat.numel(), self.embedding_dim), dtype=self.table.dtype,
                           pin_memory=self.table.is_pinned())
        return torch.index_select(self.table, 0, flat, out=rows)

    def ahead(self, ids: torch.Tensor) -> Ahead:
        """Start gathering the rows of a collated batch's (host) token ids."""
        return Ahead(ids.shape, self._thread.submit(self.gather, ids.detach().to("cpu")))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pending, self.pending = self.pending, None
        if pending is not None and pending.shape == input_ids.shape:
            rows = pending.rows.result()
        else:
            rows = self.gather(input_ids.to("cpu"))
        return rows.to(self.device, non_blocking=True).view(*input_ids.shape, self.embedding_dim)


def gathering_ahead(collator, host: HostEmbedding):
    """`collator` that also starts gathering each batch's rows (in the trainer's own process only:
    a loader worker holds no usable table)."""
    from torch.utils.data import get_worker_info

    def collate(features):
        batch = collator(features)
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if isinstance(ids, torch.Tensor) and get_worker_info() is None:
            batch[ROWS_KEY] = host.ahead(ids)
        return batch

    return collate


def rows_ahead(trainer) -> bool:
    """Have `trainer`'s batches bring their rows gathered ahead to its host embedding, if it has
    one: the collator starts them, a pre-hook on the model hands them over. Returns whether set."""
    host = next((m for m in trainer.model.modules() if isinstance(m, HostEmbedding)), None)
    if host is None:
        return False

    def take_rows(_module, args, kwargs):
        host.pending = kwargs.pop(ROWS_KEY, None)
        return args, kwargs

    trainer.data_collator = gathering_ahead(trainer.data_collator, host)
    trainer.model.register_forward_pre_hook(take_rows, with_kwargs=True)
    return True


def embedding_on_host(model) -> int:
    """Move the input embedding of `model` (a transformers or peft model) to host memory, keeping
    the hooks set on it (the input-gradient hook gradient checkpointing needs); returns the bytes
    freed on the GPU, 0 where the head shares the table or it is already there."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    old = base.get_input_embeddings()
    head = base.get_output_embeddings()
    if not isinstance(old, torch.nn.Embedding) or (head is not None and head.weight is old.weight):
        return 0
    new = HostEmbedding(old)
    for hooks in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                  "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"):  # shared: a hook's handle still removes it
        setattr(new, hooks, getattr(old, hooks))
    base.set_input_embeddings(new)
    freed = old.weight.numel() * old.weight.element_size() if old.weight.is_cuda else 0
    old.weight.data = torch.empty(0, dtype=old.weight.dtype, device=old.weight.device)
    return freed
