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
The throughput bench's `itemmetrics` variant restores trl's and transformers' own bookkeeping.

    python -m pytest -q tests/test_train.py -k bookkeeping
"""
from __future__ import annotations

import torch

from tasks.training import mix_in


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
