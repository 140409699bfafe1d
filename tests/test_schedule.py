"""Scheduled retraining on a real Prefect server: `loragate schedule` creates the deployment with
the quarterly cron, a `--serve` process runs it, and a triggered run completes the pipeline."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main as cli
from tasks.config import load_config
from tasks.tracking import client_for


def _deployment(name: str, timeout: float = 60):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                return client.read_deployment_by_name(name)
            except Exception:  # not created yet
                time.sleep(0.5)
    raise AssertionError(f"deployment {name} did not appear within {timeout} s")


@pytest.mark.slow
def test_a_served_quarterly_deployment_runs_the_pipeline(workspace, prefect_server, capfd):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    assert cli(["schedule", "--workspace", str(workspace)]) == 0
    out = capfd.readouterr().out
    name = "loragate-finetune/quarterly-ws"
    assert f"deployment {name}: 0 2 1 1,4,7,10 *" in out
    made = _deployment(name)
    assert made.schedules[0].schedule.cron == "0 2 1 1,4,7,10 *"
    assert made.parameters["workspace"] == str(workspace.resolve())

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "schedule", "--serve", "--cron", "0 3 1 * *",
                               "--workspace", str(workspace)], env=env, cwd=Path(__file__).parents[1],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _deployment(name).schedules[0].schedule.cron != "0 3 1 * *":  # --serve updated the cron
            assert time.monotonic() < deadline and server.poll() is None, "serve did not update the deployment"
            time.sleep(0.5)
        started = time.monotonic()
        flow_run = run_deployment(name, timeout=600)
        wall = time.monotonic() - started
    finally:
        server.terminate()
        err = server.communicate(timeout=60)[1]
    assert flow_run.state.is_completed(), (flow_run.state, err[-2000:])
    cfg = load_config(workspace / "params.yaml")
    versions = client_for(cfg, workspace).search_model_versions(f"name='{cfg.registry.model_name}'")
    assert len(versions) == 1
    print(f"scheduled run wall time: {wall:.1f} s")
