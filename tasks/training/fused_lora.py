"""LoRA forward with the adapter folded into one GEMM: out = base(x) + s * (drop(x) A^T) B^T.

peft computes the adapter as separate tensors: a defensive clone of the base output, B's output,
the scaled copy, then the sum: five passes over an output as large as the layer's, in the forward,
again in the recompute under gradient checkpointing, and their mirrors in the backward. With
torch.addmm(base, a, B^T, alpha=s) the GEMM epilogue adds the scaled product to the base output
in one read and one write, and autograd hands the gradient to the base output untouched. Same
math, same parameters, same checkpoints: a speed lever only (`train.fused_lora`, off by default:
equal to peft on the CPU, but on an H100 in bf16 SmolLM2's loss curve drifted from the recipe's,
bench/results/train_equivalence-gpu.json).

    python -m pytest -q tests/test_train.py -k fused     # equal outputs and gradients to peft's
"""
from __future__ import annotations

import types

import torch


def _plain(layer, name: str) -> bool:
    """Only vanilla LoRA (no DoRA or other variant, no LoRA bias) on a plain Linear-like base."""
    return (name in layer.lora_A and name not in getattr(layer, "lora_variant", {})
            and not getattr(layer, "use_dora", {}).get(name, False)
            and not getattr(layer, "lora_bias", {}).get(name, False)
            and isinstance(layer.lora_A[name], torch.nn.Linear))


def single_plain_adapter(layer, kwargs: dict) -> str | None:
    """The one active vanilla adapter of a LoRA layer in plain use (not merged or disabled, no
    per-row adapters); None where peft's own forward must run."""
    adapters = [n for n in layer.active_adapters if n in layer.lora_A]
    usable = (not layer.disable_adapters and not layer.merged and "adapter_names" not in kwargs
              and len(adapters) == 1 and _plain(layer, adapters[0]))
    return adapters[0] if usable else None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = single_plain_adapter(self, kwargs)
    # without autocast peft casts between dtypes; that case keeps peft's own path
    if name is None or (not torch.is_autocast_enabled(x.device.type) and x.dtype != self.lora_A[name].weight.dtype):
        return self._peft_forward(x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    a = self.lora_A[name](self.lora_dropout[name](x))
    flat = torch.addmm(result.reshape(-1, result.shape[-1]).to(a.dtype), a.reshape(-1, a.shape[-1]),
                       self.lora_B[name].weight.t().to(a.dtype), alpha=self.scaling[name])
    return flat.view(result.shape).to(result.dtype)


def replace_forward(model, kind, forward) -> int:
    """Give every module of `kind` in `model` `forward`, keeping peft's as _peft_forward for the
    cases it does not take; a layer replaced once is left alone. Returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, kind) and not hasattr(module, "_peft_forward") and hasattr(module, "base_layer"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(forward, module)
            count += 1
    return count


def fuse_lora(model) -> int:
    """Swap the forward of every LoRA layer of `model` for the fused one; returns how many."""
    from peft.tuners.lora import LoraLayer

    return replace_forward(model, LoraLayer, _fused_forward)
