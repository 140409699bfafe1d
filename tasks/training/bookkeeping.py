"""A trainer's per-step bookkeeping (metrics, token and FLOP counts) without host waits for the
GPU and without rescanning the model: on a 7B QLoRA step the host launches kernels barely ahead
of the GPU, so any host work beside the math slows the step.

Metrics: trl 1.16's SFTTrainer.compute_loss turns each micro-batch's entropy, token accuracy and
token count into Python numbers as it goes (`.item()`, `if num_valid > 0`): the host waits for the
GPU six times between a step's forward and its backward, and the backward starts on an idle GPU.
For the plain single-process loss loragate computes the same numbers as tensors and reads them all
at once when the trainer logs (every train.logging_steps); the logged values are trl's. Any other
setup (a custom loss, label smoothing, MoE aux loss, several processes) goes through trl unchanged.
FLOPs: transformers counts the model's parameters anew for every micro-batch (every module, every
parameter: ~2,300 modules on a 7B); the count does not change while training, so it is taken once.
Walks: every step the trainer calls model.train(), model.zero_grad() and clips the gradients of
model.parameters(), and each walks every module (~2,300 on a 7B under LoRA; 7 + 2.5 + 2.4 ms on 2
CPU cores here) while the GPU waits for the step's first kernel. ModelWalks lists the modules and
parameters once, and again after any module anywhere registers a submodule, parameter or buffer
(torch's global registration hooks); train() is skipped where every module is already in that mode
and none has a train() of its own (DoRA's clears a cache). The throughput bench's `itemmetrics`
variant restores trl's and transformers' own bookkeeping, `walks` only the walks.

    python -m pytest -q tests/test_train.py -k "bookkeeping or walks"
"""
from __future__ import annotations

import types

import torch
from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                     register_module_module_registration_hook,
                                     register_module_parameter_registration_hook)

from tasks.training import mix_in

_STRUCTURE = [0]  # moves whenever any module registers a submodule, parameter or buffer


def _registered(*_) -> None:
    _STRUCTURE[0] += 1


for _hook in (register_module_module_registration_hook, register_module_parameter_registration_hook,
              register_module_buffer_registration_hook):
    _hook(_registered)


def _ratio(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros((), device=total.device))


class LeanBookkeeping:
    """Mixed into an SFTTrainer: compute_loss keeps its metrics on the device, log reads them,
    floating_point_ops counts the parameters once."""

    def _plain(self, inputs, return_outputs: bool) -> bool:
        """trl's own fused-head next-token loss in one process: the case computed here."""
        return (not return_outputs and self.compute_loss_func is None and self.label_smoother is None
                and not self.aux_loss_enabled and self.args.loss_type in ("nll", "dft")
                and self.accelerator.num_processes == 1 and ("attention_mask" in inputs or "position_ids" in inputs))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._plain(inputs, return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        per_token_loss = -outputs.log_probs  # zero where the label is ignored
        if self.args.loss_type == "dft":
            per_token_loss = per_token_loss * outputs.log_probs.exp().detach()
        counted = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token_loss.sum() / torch.as_tensor(counted).clamp(min=1)
        self._keep_metrics(inputs, outputs)
        return loss

    def _keep_metrics(self, inputs, outputs) -> None:
        mode = "train" if self.model.training else "eval"
        valid = outputs.label_mask.sum()
        self._metrics[mode]["entropy"].append(_ratio(outputs.entropy.detach().sum(), valid))
        self._metrics[mode]["mean_token_accuracy"].append(_ratio(outputs.is_top1.sum(), valid))
        if mode == "train":  # padding-free batches have no attention mask: every position is a token
            seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["position_ids"].size(1)
            self._total_train_tokens = self._total_train_tokens + seen // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def log(self, logs, start_time=None):
        for metrics in self._metrics.values():
            read_all(metrics)
        if isinstance(self._total_train_tokens, torch.Tensor):
            self._total_train_tokens = int(self._total_train_tokens)
        return super().log(logs, start_time)

    def _clip_grad_norm(self, model):
        walks = getattr(model, "_lean_walks", None)
        if walks is None or self.accelerator.num_processes != 1:  # sharded gradients: the library's own walk
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_(walks.parameters(), self.args.max_grad_norm)

    def floating_point_ops(self, inputs) -> int:
        main = getattr(self.model, "main_input_name", "input_ids")
        if main not in inputs or not hasattr(self.model, "num_parameters"):
            return super().floating_point_ops(inputs)
        if getattr(self, "_counted_params", None) is None:
            self._counted_params = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main].numel() * self._counted_params


def read_all(metrics: dict[str, list]) -> None:
    """Replace every tensor in metrics' lists by its Python number, in one wait for the device."""
    at = [(key, i) for key, values in metrics.items() for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    if not at:
        return
    read = torch.stack([metrics[k][i].detach().double().reshape(()) for k, i in at]).tolist()
    for (key, i), value in zip(at, read):
        metrics[key][i] = int(value) if not metrics[key][i].is_floating_point() else value


def lean_bookkeeping(trainer) -> bool:
    """Make an SFTTrainer keep its per-step metrics on the device until it logs and count its
    parameters once; returns whether it changed (False: already done)."""
    return mix_in(trainer, LeanBookkeeping)


def _plain_train_methods() -> tuple:
    """train() methods that only set the mode when the mode does not change."""
    from transformers import PreTrainedModel

    return torch.nn.Module.train, PreTrainedModel.train


class ModelWalks:
    """A model's modules and parameters, listed again only after a registration anywhere."""

    def __init__(self, model: torch.nn.Module):
        self.model, self._at = model, None

    def _lists(self) -> tuple[list, list]:
        if self._at != _STRUCTURE[0]:
            self._modules, self._params = list(self.model.modules()), list(self.model.parameters())
            plain = _plain_train_methods()
            self._plain = all(type(m).train in plain for m in self._modules)
            self._at = _STRUCTURE[0]
        return self._modules, self._params

    def parameters(self) -> list:
        return self._lists()[1]

    def in_mode(self, mode: bool) -> bool:
        """Would model.train(mode) change nothing?"""
        modules = self._lists()[0]
        return self._plain and all(m.training == mode for m in modules)


def lean_walks(model: torch.nn.Module) -> ModelWalks:
    """Give `model` train() and zero_grad() that walk ModelWalks' lists (the trainer's clip uses
    them too); returns them."""
    walks = ModelWalks(model)

    def train(self, mode: bool = True):
        return self if walks.in_mode(mode) else type(self).train(self, mode)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return type(self).zero_grad(self, set_to_none)
        for p in walks.parameters():
            p.grad = None

    model.train, model.zero_grad = types.MethodType(train, model), types.MethodType(zero_grad, model)
    model._lean_walks = walks
    return walks
