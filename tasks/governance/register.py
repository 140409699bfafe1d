"""Register stage: the adapter becomes a new version of the registered model; the gate records it
as `pending`. Nothing here promotes it; only tasks/governance/gate.py moves the serving alias.

    loragate status   # lists versions, their approval state and aliases
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from pathlib import Path

import mlflow

from tasks.config import Config
from tasks.governance.gate import record_registered, record_registering
from tasks.governance.records import COMPLIANCE_TAG
from tasks.governance.serving import AdapterChatModel
from tasks.tracking import RUN_KEY_TAG, client_for, initiator, run_key
from tasks.orchestration import stage_task


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    run_id: str
    tags: dict[str, str]


def serving_base(cfg: Config) -> str:
    """The base the version was scored on and is served on: the 4-bit one for QLoRA."""
    q = cfg.quantization
    return f"{cfg.model.base} ({q.quant_type} 4-bit, compute {q.compute_dtype})" if q.enabled else f"{cfg.model.base} (full precision)"


def register(cfg: Config, root: str | Path, run_id: str, adapter_dir: str | Path,
             data_hashes: dict[str, str], system_prompt: str | None = None) -> Registration:
    """Log the adapter as a pyfunc model in run_id and register it as a pending version, once per
    run: a retry (or a resumed run) finds the version its first attempt made. The intent is in the
    audit log before MLflow creates anything."""
    client, model = client_for(cfg, root), cfg.registry.model_name
    made = [v for v in client.search_model_versions(f"name='{model}'") if v.run_id == run_id]
    if made:
        record_registered(cfg, root, model, str(made[0].version), run_id, made[0].tags.get("loragate.initiator", ""))
        return Registration(model, str(made[0].version), run_id, dict(made[0].tags))
    record_registering(cfg, root, model, run_id, initiator())
    model_config = {"base_model": cfg.model.base, "cache_dir": cfg.model.cache_dir,
                    "max_new_tokens": cfg.eval.max_new_tokens, "system": system_prompt,
                    "quantization": dataclasses.asdict(cfg.quantization) if cfg.quantization.enabled else None}
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=AdapterChatModel(), artifacts={"adapter": str(adapter_dir)},
            model_config=model_config, pip_requirements=["loragate", "torch", "transformers", "peft"])
    tags = {"loragate.initiator": initiator(), "loragate.base_model": cfg.model.base,
            "loragate.serving_base": serving_base(cfg), "loragate.run_id": run_id, RUN_KEY_TAG: run_key(cfg, data_hashes),
            **({COMPLIANCE_TAG: "true"} if cfg.compliance.required else {}),
            **{f"loragate.data.{Path(p).stem}": h for p, h in sorted(data_hashes.items()) if p.startswith("data/splits/")}}
    version = mlflow.register_model(info.model_uri, cfg.registry.model_name, tags=tags)
    record_registered(cfg, root, cfg.registry.model_name, str(version.version), run_id, tags["loragate.initiator"])
    return Registration(cfg.registry.model_name, str(version.version), run_id, tags)


register_task = stage_task(register, "register", retries=3)
