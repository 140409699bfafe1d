"""The frozen input-embedding table in host memory, for memory budgets where the GPU would
otherwise have to split the batch.

A 7B's input embedding is a bf16 table of ~1 GiB (Qwen2.5-7B: 152,064 x 3,584) that a step reads
only a few rows of: 8,192 tokens need 56 MiB. Kept in pinned host memory, a step gathers its rows
there and copies them to the GPU; the GPU gets the ~1 GiB back for activations. The table is frozen
under LoRA, so nothing flows back. Same values as the on-GPU lookup (test); chosen by the memory
plan (tasks/training/budget.py) only when the batch would not fit whole otherwise. A head tied to
the table (small models) keeps it on the GPU.

    python -m pytest -q tests/test_train.py -k host_embedding
"""
from __future__ import annotations

import torch


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

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1).to("cpu")
        # gathered straight into pinned memory, so the copy to the GPU runs asynchronously
        rows = torch.empty((flat.numel(), self.embedding_dim), dtype=self.table.dtype,
                           pin_memory=self.table.is_pinned())
        torch.index_select(self.table, 0, flat, out=rows)
        return rows.to(self.device, non_blocking=True).view(*input_ids.shape, self.embedding_dim)


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
