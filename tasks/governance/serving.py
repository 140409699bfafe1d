"""The registered model: an MLflow pyfunc that holds only the LoRA adapter and names its base
model, so a version costs megabytes, not a copy of the base weights.

    mlflow.pyfunc.load_model("models:/loragate-triage/1").predict(["<ticket text>"])
    loragate serve [MODEL@ALIAS] [--port 8080]   # MLflow's model server on 127.0.0.1, the alias holder

Served by `loragate serve`, every request and answer is written to the request log
($LORAGATE_REQUEST_LOG, JSON lines) after the project's anonymizer and the second detector have
masked them: raw request text is never stored. `loragate drift` reads that log.
"""
from __future__ import annotations

import functools
import json
import os
from datetime import datetime, timezone

import mlflow.pyfunc

REQUEST_LOG_ENV, PARAMS_ENV, VERSION_ENV = "LORAGATE_REQUEST_LOG", "LORAGATE_PARAMS", "LORAGATE_SERVED_VERSION"


@functools.lru_cache(maxsize=1)
def _masking():
    """The anonymizer as the params configure it, one process, built once per server worker."""
    from tasks.config import load_config
    from tasks.data.anonymize import build_analyzer

    cfg = load_config(os.environ.get(PARAMS_ENV, "params.yaml"), ["pii.n_process=1"])
    return cfg, build_analyzer(cfg)


def log_requests(requests: list[str], answers: list[str]) -> None:
    """Append each request/answer pair, masked, to the request log (a record that cannot be masked
    is logged as quarantined, without text)."""
    path = os.environ.get(REQUEST_LOG_ENV)
    if not path:
        return
    from tasks.data.anonymize import anonymize_records
    from tasks.data.pii_guard import scrub

    cfg, analyzer = _masking()
    masked, _, _ = anonymize_records(cfg, [[q, a] for q, a in zip(requests, answers)], analyzer)
    now, version = datetime.now(timezone.utc).isoformat(timespec="seconds"), os.environ.get(VERSION_ENV, "")
    lines = []
    for pair in masked:
        if pair is None:
            lines.append({"time": now, "version": version, "quarantined": True})
            continue
        request, answer = (scrub(text, cfg.pii.phone_regions)[0] for text in pair)
        lines.append({"time": now, "version": version, "request": request, "answer": answer})
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


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
        answers = generate(self.model, self.tokenizer, prompts, self.max_new_tokens, batch_size=8, desc="predict")
        log_requests([p[-1]["content"] for p in prompts], answers)
        return answers
