"""Scheduled retraining: a Prefect deployment of the pipeline flow, on a cron (params `schedule:`).

    loragate schedule [--cron "0 2 1 1,4,7,10 *"]          # create or update the deployment
    loragate schedule --serve                               # ... and run it here when it is due

The deployment runs `loragate run`'s flow on this workspace; a quarter whose data, params and code
are unchanged ends at once with "up to date" and registers nothing. A deployment made without
--serve waits for a serving process (`loragate schedule --serve`, e.g. under systemd) on the
Prefect server that PREFECT_API_URL names.
"""
from __future__ import annotations

import re
from pathlib import Path

from flows.finetune import finetune
from tasks.config import Config, ConfigError


def deployment_name(root: Path) -> str:
    """One deployment per workspace, named after its folder."""
    return "quarterly-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", root.name).strip("-") or "workspace")


def _deployment(cfg: Config, root: Path, params: str):
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    return finetune.to_deployment(
        deployment_name(root), schedule=CronSchedule(cron=cfg.schedule.cron, timezone=cfg.schedule.timezone),
        parameters={"workspace": str(root), "params": params}, entrypoint_type=EntrypointType.MODULE_PATH,
        description=f"loragate retraining of {root} ({cfg.schedule.cron}, {cfg.schedule.timezone})",
        tags=["loragate", "retraining"])


def schedule(cfg: Config, root: Path, params: str = "params.yaml", serve: bool = False) -> str:
    """Create or update the deployment; with serve, also run it from this process until stopped.
    Returns 'flow/deployment', the name `prefect deployment run` takes."""
    from prefect import serve as prefect_serve
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise ConfigError("schedule: needs a Prefect server: start one (`prefect server start`) and set PREFECT_API_URL")
    deployment = _deployment(cfg, root, params)
    name = f"{finetune.name}/{deployment.name}"
    if serve:
        prefect_serve(deployment, print_starting_message=False)  # blocks; creates or updates it first
    else:
        deployment.apply()
    return name
