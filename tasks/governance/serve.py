"""`loragate serve`: the version the serving alias points at, behind MLflow's model server on
127.0.0.1 (`POST /invocations`, `{"inputs": ["ticket text", ...]}`), so the gate decides what is
served: after an approval or rollback moves the alias, a restart serves the new holder. A version
without a recorded approval is refused. Requests go to the anonymized request log.

    loragate serve [MODEL@ALIAS] [--port 8080]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from tasks.config import Config
from tasks.governance.export import approved_version
from tasks.governance.serving import PARAMS_ENV, REQUEST_LOG_ENV, VERSION_ENV
from tasks.tracking import tracking_uri


def request_log(cfg: Config, root: Path, model: str) -> Path:
    """Where the served requests of a model go (beside the audit log, never in MLflow)."""
    return root / Path(cfg.gate.audit_log).parent / "requests" / f"{model}.jsonl"


def serve_command(cfg: Config, root: str | Path, ref: str | None, port: int, params: str = "params.yaml"
                  ) -> tuple[list[str], dict[str, str], str]:
    """The server command, its environment and the version it serves."""
    root = Path(root).resolve()
    model, _, alias = (ref or f"{cfg.registry.model_name}@{cfg.gate.alias}").partition("@")
    mv = approved_version(cfg, root, model, f"@{alias or cfg.gate.alias}")
    log = request_log(cfg, root, model)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(cfg, root), REQUEST_LOG_ENV: str(log),
           PARAMS_ENV: str(root / params), VERSION_ENV: str(mv.version)}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{model}/{mv.version}",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    return cmd, env, str(mv.version)
