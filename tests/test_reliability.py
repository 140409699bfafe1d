"""Killed mid-run, started again: the same MLflow run goes on from its last checkpoint, nothing lost,
nothing registered twice, the audit log says so."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from flows.cli import main as cli
from tasks.config import load_config
from tasks.governance import audit, gate
from tasks.tracking import client_for
from tasks.training.train import COMPLETE
from tests.conftest import ROOT


def _cli_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value() or ""}


def _kill_after_checkpoint(workspace, step: int) -> str:
    """`loragate run` as a user starts it, SIGKILLed once a checkpoint of `step` is complete."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run"], cwd=workspace, env=_cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (done := list(workspace.glob(f"runs/*/train/checkpoints/checkpoint-{step}/{COMPLETE}"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return done[0].parents[3].name


@pytest.mark.slow
def test_a_run_killed_in_training_resumes_as_the_same_run(workspace, prefect_server, capsys):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"].update({"max_steps": 24, "checkpoint_steps": 4})
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    run_id = _kill_after_checkpoint(workspace, 8)
    cfg = load_config(workspace / "params.yaml")
    client = client_for(cfg, workspace)
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody marked it
    assert not (workspace / "runs" / run_id / "train" / "adapter").exists()

    before = (workspace / "params.yaml").read_bytes()
    assert cli(["run", "--workspace", str(workspace), "--resume", "--set", "train.learning_rate=0.001"]) == 2
    assert capsys.readouterr().err.startswith("loragate: resume refused: train.learning_rate changed (0.003 -> 0.001) "
                                              "since the checkpoint at step ")
    assert (workspace / "params.yaml").read_bytes() == before
    assert cli(["run", "--workspace", str(workspace), "--resume"]) == 0
    assert f"(MLflow run {run_id})" in capsys.readouterr().out
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and int(run.data.tags["loragate.resumed_from_step"]) >= 8
    versions = client.search_model_versions(f"name='{cfg.registry.model_name}'")
    assert [v.run_id for v in versions] == [run_id]
    events = [(e.event, e.data.get("run_id")) for e in audit.read(gate.audit_path(cfg, workspace))]
    assert events[:3] == [("run_started", run_id), ("run_resumed", run_id), ("registered", run_id)]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 25))  # one curve, no gap
    assert gate.verify(cfg, workspace) == []
    assert cli(["run", "--workspace", str(workspace), "--resume", run_id]) == 2
    assert capsys.readouterr().err == (f"loragate: --resume: run {run_id} finished (its version is registered); "
                                       "start a new run\n")


def test_resume_with_nothing_to_resume_is_one_line(workspace, capsys):
    assert cli(["run", "--workspace", str(workspace), "--resume"]) == 2
    assert capsys.readouterr().err.startswith("loragate: --resume: no run with a training folder in ")
