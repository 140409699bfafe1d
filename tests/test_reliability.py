"""Killed mid-run, started again: the same MLflow run goes on from its last checkpoint, nothing lost,
nothing registered twice, the audit log says so."""
import json
import os
import signal
import subprocess
import sys
import threading
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
    assert events[:4] == [("run_started", run_id), ("run_resumed", run_id), ("registering", run_id), ("registered", run_id)]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 25))  # one curve, no gap
    assert gate.verify(cfg, workspace) == []
    assert cli(["run", "--workspace", str(workspace), "--resume", run_id]) == 2
    assert capsys.readouterr().err == (f"loragate: --resume: run {run_id} finished (its version is registered); "
                                       "start a new run\n")


def test_resume_with_nothing_to_resume_is_one_line(workspace, capsys):
    assert cli(["run", "--workspace", str(workspace), "--resume"]) == 2
    assert capsys.readouterr().err.startswith("loragate: --resume: no run with a training folder in ")


@pytest.fixture
def store(tmp_path):
    from tasks.config import config_from_dict

    (tmp_path / "params.yaml").write_text("registry: {model_name: triage}\n")  # for the CLI calls
    return config_from_dict({"registry": {"model_name": "triage"}}), tmp_path


def _events(cfg, root, event: str) -> list[dict]:
    return [e.data for e in audit.read(gate.audit_path(cfg, root)) if e.event == event]


def test_a_retried_registration_leaves_one_version_and_one_entry(store):
    from tasks.governance.register import register
    from tasks.tracking import start_run

    cfg, root = store
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    run_id = start_run(cfg, root, "retry", {})
    first = register(cfg, root, run_id, adapter, {"data/splits/train.jsonl": "aa11"})
    again = register(cfg, root, run_id, adapter, {"data/splits/train.jsonl": "aa11"})
    versions = client_for(cfg, root).search_model_versions("name='triage'")
    assert first.version == again.version and [str(v.version) for v in versions] == [first.version]
    assert len(_events(cfg, root, "registering")) == 1 and len(_events(cfg, root, "registered")) == 1
    gate.run_checks(cfg, root, "triage", first.version)
    gate.run_checks(cfg, root, "triage", first.version)  # a retried check step
    assert len(_events(cfg, root, "checks")) == 1 and gate.verify(cfg, root) == []


def test_a_crash_between_the_log_and_mlflow_is_found_by_verify_and_mended_by_repair(store, capsys):
    cfg, root = store
    client = client_for(cfg, root)
    from tasks.tracking import start_run

    run_id = start_run(cfg, root, "cut", {})
    gate.record_registering(cfg, root, "triage", run_id, "alice")
    client.create_registered_model("triage")
    mv = client.create_model_version("triage", f"runs:/{run_id}/model", run_id)  # ...and the process died here
    args = ["audit", "verify", "--workspace", str(root)]
    assert cli(args) == 1
    assert f"triage version {mv.version} (run {run_id}) has no `registered` entry" in capsys.readouterr().err
    assert cli(["audit", "repair", "--workspace", str(root)]) == 0
    assert "`registered` entry written (its registration was cut off)" in capsys.readouterr().out
    assert client.get_model_version("triage", mv.version).tags[gate.APPROVAL_TAG] == "pending"
    gate._record(cfg, root, client, "approved", model="triage", version=str(mv.version), actor="bob", rationale="ok")
    assert cli(args) == 1  # an approval logged, its tag never set
    assert "tag says 'pending' but the audit log says 'approved'" in capsys.readouterr().err
    assert cli(["audit", "repair", "--workspace", str(root)]) == 0
    assert "state tag set to 'approved' from the log" in capsys.readouterr().out
    assert client.get_model_version("triage", mv.version).tags[gate.APPROVAL_TAG] == "approved"
    assert cli(args) == 0 and len(_events(cfg, root, "registered")) == 1
    assert audit.chain_problems(gate.audit_path(cfg, root)) == []


def test_two_approvals_of_one_version_at_once_decide_it_once(store):
    from tests.test_gate import new_version

    cfg, root = store
    version = new_version(cfg, root)
    barrier, results = threading.Barrier(2), []

    def decide(reviewer):
        barrier.wait()
        try:
            results.append(gate.approve(cfg, root, "triage", version, reviewer, "fine").actor)
        except gate.GateError as err:
            results.append(str(err))

    threads = [threading.Thread(target=decide, args=(name,)) for name in ("reviewer-b", "reviewer-c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.startswith("triage version") for r in results) == [False, True], results
    assert len(_events(cfg, root, "approved")) == 1 and len(_events(cfg, root, "alias_moved")) == 1
    assert gate.verify(cfg, root) == []


def test_a_second_run_on_a_busy_workspace_is_refused_in_one_line(workspace, capfd):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tasks.orchestration import workspace_lock\n"
                               f"with workspace_lock({str(workspace)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (workspace / "params.yaml").read_bytes()
        capfd.readouterr()
        assert cli(["run", "--workspace", str(workspace), "--set", "train.max_steps=2"]) == 2
        err = capfd.readouterr().err
        assert err == (f"loragate: workspace {workspace} is busy: a run holds it (pid {holder.pid} since "
                       f"{err.split(' since ')[1].split(')')[0]}); wait for it to finish, or stop it and "
                       "`loragate run --resume`\n")
        assert (workspace / "params.yaml").read_bytes() == before and not (workspace / "runs").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_stage_refusal_inside_the_flow_shows_no_traceback(workspace, prefect_server, capfd):
    """Input that passes the pre-flight but is refused by a stage (a slice field holding e-mails):
    one line from the CLI, no traceback from the orchestrator's logging."""
    raw = workspace / "data/raw/tickets.jsonl"
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    raw.write_text("".join(json.dumps({**r, "customer": f"client{i % 2}@example.com"}) + "\n" for i, r in enumerate(rows)))
    capfd.readouterr()
    assert cli(["run", "--workspace", str(workspace), "--set", "data.slice_field=customer"]) == 2
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert err.strip().splitlines()[-1].startswith("loragate: "), err[-2000:]
    assert "customer" in err.strip().splitlines()[-1]


def test_doctor_names_each_problem_with_its_fix(tmp_path, tiny_model, capsys):
    from tests.conftest import tiny_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model)))
    assert cli(["doctor", "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    names = [line.split()[1] for line in out.splitlines()]
    assert names == ["python", "packages", "ner", "base", "disk", "mlflow", "prefect", "gpu"], out
    assert all(line.startswith("ok") for line in out.splitlines()), out
    broken = tiny_params(str(tmp_path / "gone"), pii={"spacy_model": "no_such_pipeline"},
                         registry={"tracking_uri": "http://127.0.0.1:9"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(broken))
    assert cli(["doctor", "--workspace", str(tmp_path)]) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert [f.split()[1] for f in fails] == ["ner", "base", "mlflow"]
    assert "'no_such_pipeline' is not installed (bash .ci/install" in fails[0]
    assert "no such folder" in fails[1] and "the MLflow server does not answer; start it" in fails[2]
