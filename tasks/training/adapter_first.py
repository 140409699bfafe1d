"""LoRA on a 4-bit base with the adapter's product computed before the base's: peft's arithmetic,
in an order that lets a recomputed layer skip its last base product.

Under gradient checkpointing, PyTorch recomputes a layer in the backward only until every tensor
the backward needs is back, then stops (non-reentrant checkpoints' early stop). The base product
of a decoder layer's last projection (down_proj) is needed by nothing: the backward multiplies
the output gradient by the dequantized weight and never reads the product. peft computes it first
and the adapter after, so the recompute runs it to reach the adapter's saved inputs. With the
adapter first, the recompute stops before it: one dequantization and about a third of the MLP's
products less per recomputed layer. Two passes over each output go too: peft's defensive copy of
the base output (the sum is out of place), and its separate scaling of the adapter's product,
which torch.add's alpha does inside the sum. With a power-of-two scaling (lora.alpha / lora.r = 2
by default) that is peft's arithmetic bit for bit, the product times two being exact; another
scaling rounds once where peft rounds twice. On an H100 (Qwen2.5-7B, every layer recomputed):
+8% tokens/s for the order, +5% more for the single pass; SmolLM2's GPU loss curve identical to
peft's over 40 steps (bench/results/train_equivalence-gpu-adapter-first.json). Used wherever
fused LoRA is off (`train.fused_lora: false`) or does not apply (no autocast: the CPU).

    python -m pytest -q tests/test_train.py -k adapter_first
"""
from __future__ import annotations

import torch

from tasks.training.fused_lora import replace_forward, single_plain_adapter


def _adapter_first_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = single_plain_adapter(self, kwargs)
    if name is None:
        return self._peft_forward(x, *args, **kwargs)
    # the dtype handling of peft's 4-bit LoRA layer: without autocast, cast in and the result back
    autocast = torch.is_autocast_enabled()
    inner = x if autocast else x.to(self.lora_A[name].weight.dtype)
    delta = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](inner)))
    result = self.base_layer(x, *args, **kwargs)
    return torch.add(result, delta if autocast else delta.to(result.dtype), alpha=self.scaling[name])


def adapter_first(model) -> int:
    """Run the adapter before the base product in every 4-bit LoRA layer of `model`; returns how many."""
    from peft.tuners.lora import bnb

    four_bit = getattr(bnb, "Linear4bit", None)  # peft defines it only where bitsandbytes imports
    return replace_forward(model, four_bit, _adapter_first_forward) if four_bit else 0
