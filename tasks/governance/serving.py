"""The registered model: an MLflow pyfunc that holds only the LoRA adapter and names its base
model, so a version costs megabytes, not a copy of the base weights.

    mlflow.pyfunc.load_model("models:/loragate-triage/1").predict(["<ticket text>"])
"""
from __future__ import annotations

import mlflow.pyfunc


class AdapterChatModel(mlflow.pyfunc.PythonModel):
    """predict(list of user messages or chat prompts) -> greedy answers."""

    def load_context(self, context) -> None:
        from tasks.config import QuantizationConfig
        from tasks.evaluation.holdout import load_for_inference
        from tasks.training.models import resolve_model
        from tasks.training.train import bnb_config

        cfg = context.model_config
        base = resolve_model(cfg["base_model"], cfg.get("cache_dir", "~/.cache/loragate/models"))
        quant = cfg.get("quantization")  # QLoRA versions serve on the 4-bit base they were scored on
        bnb = bnb_config(QuantizationConfig(**quant)) if quant else None
        self.model, self.tokenizer = load_for_inference(base, context.artifacts["adapter"], bnb)
        self.max_new_tokens = int(cfg.get("max_new_tokens", 64))
        self.system = cfg.get("system")

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        from tasks.evaluation.holdout import generate

        items = model_input["prompt"].tolist() if hasattr(model_input, "columns") else list(model_input)
        head = [{"role": "system", "content": self.system}] if self.system else []
        prompts = [p if isinstance(p, list) else head + [{"role": "user", "content": str(p)}] for p in items]
        return generate(self.model, self.tokenizer, prompts, self.max_new_tokens, batch_size=8, desc="predict")
