"""The promotion gate on a real MLflow store: every bypass fails in one line, the audit log catches
edits, and a real paused Prefect flow is decided through the same gate."""
from __future__ import annotations


import pytest

from flows.approve import await_decision
from flows.cli import main as cli
from tasks.governance import gate
from tasks.config import config_from_dict
from tasks.tracking import client_for, log_metrics, start_run
from tests.conftest import Background, paused_flow_run_id

GOOD = {"delta/rougeL": 0.2, "delta/bertscore_f1": 0.1, "pii/residual_records": 0, "pii/residual_in_artifacts": 0}


@pytest.fixture
def store(tmp_path):
    cfg = config_from_dict({"registry": {"model_name": "triage"}})
    return cfg, tmp_path


def new_version(cfg, root, metrics=GOOD, hashes=True) -> str:
    """A real run with metrics and a registered version, as the flow leaves them (adapter aside)."""
    client = client_for(cfg, root)
    tags = {"loragate.data.train": "aa11", "loragate.data.holdout": "bb22"} if hashes else {}
    run_id = start_run(cfg, root, "gate-test", tags)
    log_metrics(client, run_id, metrics)
    if not gate._exists(client, cfg.registry.model_name):
        client.create_registered_model(cfg.registry.model_name)
    mv = client.create_model_version(cfg.registry.model_name, f"runs:/{run_id}/model", run_id,
                                     tags={"loragate.initiator": "test-initiator", **tags})
    gate.record_registered(cfg, root, cfg.registry.model_name, mv.version, run_id, "test-initiator")
    gate.run_checks(cfg, root, cfg.registry.model_name, mv.version)
    return str(mv.version)


def state(cfg, root, version) -> str:
    return client_for(cfg, root).get_model_version(cfg.registry.model_name, version).tags[gate.APPROVAL_TAG]


def alias_holder(cfg, root):
    holder = client_for(cfg, root).get_registered_model(cfg.registry.model_name).aliases.get("production")
    return None if holder is None else str(holder)


def test_approval_moves_the_alias_and_rollback_returns_it(store):
    cfg, root = store
    v1, v2 = new_version(cfg, root), new_version(cfg, root)
    assert state(cfg, root, v1) == "pending"
    gate.approve(cfg, root, "triage", v1, "reviewer-b", "beats baseline on the hold-out")
    d = gate.approve(cfg, root, "triage", v2, "reviewer-c", "better again")
    assert (d.alias_from, d.alias_to, alias_holder(cfg, root)) == (v1, v2, v2)
    back = gate.rollback(cfg, root, "triage", "oncall", "answers truncated in production")
    assert (back.alias_from, back.alias_to, alias_holder(cfg, root)) == (v2, v1, v1)
    assert state(cfg, root, v2) == "rolled-back"
    history = gate.alias_history(cfg, root, "triage")
    assert [(h["from_version"], h["version"]) for h in history] == [(None, v1), (v1, v2), (v2, v1)]
    assert gate.verify(cfg, root) == []
    with pytest.raises(gate.GateError, match="no earlier approved version"):
        gate.rollback(cfg, root, "triage", "oncall", "again")


def test_the_initiator_cannot_approve_their_own_run(store):
    cfg, root = store
    v = new_version(cfg, root)
    with pytest.raises(gate.GateError, match="four eyes: 'Test-Initiator ' started run"):
        gate.approve(cfg, root, "triage", v, "Test-Initiator ", "looks fine to me")
    assert state(cfg, root, v) == "pending" and alias_holder(cfg, root) is None


def test_a_decided_version_cannot_be_decided_again(store):
    cfg, root = store
    a, b = new_version(cfg, root), new_version(cfg, root)
    gate.reject(cfg, root, "triage", a, "reviewer-b", "tone is off")
    with pytest.raises(gate.GateError, match="already rejected"):
        gate.approve(cfg, root, "triage", a, "reviewer-c", "I disagree")
    gate.approve(cfg, root, "triage", b, "reviewer-b", "fine")
    with pytest.raises(gate.GateError, match="already approved"):
        gate.reject(cfg, root, "triage", b, "reviewer-c", "changed my mind")


def test_empty_rationale_is_refused(store):
    cfg, root = store
    v = new_version(cfg, root)
    with pytest.raises(gate.GateError, match="rationale must not be empty"):
        gate.approve(cfg, root, "triage", v, "reviewer-b", "   ")


def test_failed_pre_checks_reject_the_version_and_block_approval(store):
    cfg, root = store
    v = new_version(cfg, root, {"delta/rougeL": -0.05, "delta/bertscore_f1": 0.1, "pii/residual_records": 2,
                                "pii/residual_in_artifacts": 3}, hashes=False)
    assert state(cfg, root, v) == "rejected-by-checks"
    reason = client_for(cfg, root).get_model_version("triage", v).tags["loragate.decision_rationale"]
    assert "delta/rougeL -0.0500 < required +0.0000" in reason
    assert "2 records still held personal data" in reason and "data hash of the train split is missing" in reason
    assert "3 personal-data findings were masked in the run's artifacts" in reason
    with pytest.raises(gate.GateError, match="failed its pre-checks"):
        gate.approve(cfg, root, "triage", v, "reviewer-b", "ship it anyway")
    assert gate.verify(cfg, root) == []


def test_promotion_without_a_recorded_approval_is_refused(store):
    cfg, root = store
    v = new_version(cfg, root)
    with pytest.raises(gate.GateError, match="has no recorded approval"):
        gate.promote(cfg, root, "triage", v, "someone")
    # a state tag forged with the plain client neither promotes nor passes verify
    client_for(cfg, root).set_model_version_tag("triage", v, gate.APPROVAL_TAG, "approved")
    with pytest.raises(gate.GateError, match="has no recorded approval"):
        gate.promote(cfg, root, "triage", v, "someone")
    assert any("state changed outside loragate" in p for p in gate.verify(cfg, root))


def test_verify_catches_an_alias_moved_with_the_raw_mlflow_client(store, capsys):
    cfg, root = store
    v1, v2 = new_version(cfg, root), new_version(cfg, root)
    gate.approve(cfg, root, "triage", v1, "reviewer-b", "ok")
    client_for(cfg, root).set_registered_model_alias("triage", "production", v2)
    problems = gate.verify(cfg, root)
    assert problems == [f"triage: alias 'production' points to version {v2} but the audit log last moved it "
                        f"to version {v1} (moved outside loragate)"]


@pytest.mark.parametrize("tamper, expected", [
    ("edit", "audit.jsonl:2: seq 2 (checks) does not chain to line 1: one of them was edited"),
    ("remove", "audit.jsonl:2: entry seq 3 where 2 belongs (lines removed or reordered)"),
    ("reorder", "audit.jsonl:2: entry seq 3 where 2 belongs (lines removed or reordered)"),
    ("cut", "the log ends at seq 3, but MLflow's head is seq 4"),
])
def test_audit_verify_names_the_tampered_entry(store, capsys, tamper, expected):
    cfg, root = store
    v = new_version(cfg, root)
    gate.approve(cfg, root, "triage", v, "reviewer-b", "ok")
    params = root / "params.yaml"
    params.write_text("registry: {model_name: triage}\n")
    assert cli(["audit", "verify", "--workspace", str(root)]) == 0
    path = gate.audit_path(cfg, root)
    lines = path.read_text().splitlines(keepends=True)
    if tamper == "edit":
        lines[0] = lines[0].replace("test-initiator", "reviewer-b")
    elif tamper == "remove":
        del lines[1]
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        del lines[-1]
    path.write_text("".join(lines))
    capsys.readouterr()
    assert cli(["audit", "verify", "--workspace", str(root)]) == 1
    assert expected in capsys.readouterr().err


def test_cli_refuses_self_approval_in_one_line(store, capfd):
    cfg, root = store
    v = new_version(cfg, root)
    (root / "params.yaml").write_text("registry: {model_name: triage}\n")
    capfd.readouterr()
    code = cli(["approve", "triage", v, "--reviewer", "test-initiator", "--rationale", "mine", "--workspace", str(root)])
    err = capfd.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("loragate: four eyes:")
    assert cli(["approve", "triage", v, "--reviewer", "reviewer-b", "--rationale", "ok", "--workspace", str(root)]) == 0
    assert cli(["status", "--workspace", str(root)]) == 0
    out = capfd.readouterr().out
    assert f"alias production: version - -> {v}  by reviewer-b (approval)" in out


def test_a_paused_flow_times_out_and_leaves_the_version_pending(store, prefect_server):
    from prefect import flow

    cfg, root = store
    cfg = config_from_dict({"registry": {"model_name": "triage"}, "gate": {"approval_timeout_s": 1}})
    v = new_version(cfg, root)

    @flow
    def wait(version: str):
        return await_decision(cfg, root, "triage", version, "review me")

    decision, note = wait(v)
    assert decision is None and "stays pending" in note
    assert state(cfg, root, v) == "pending"
    assert [e.event for e in gate.audit.read(gate.audit_path(cfg, root))][-1] == "approval_timed_out"


def test_a_paused_flow_resumed_with_input_goes_through_the_gate(store, prefect_server):
    from prefect import flow
    from prefect.flow_runs import resume_flow_run

    cfg, root = store
    v = new_version(cfg, root)
    @flow
    def wait(version: str):
        return await_decision(cfg, root, "triage", version, "review me")

    waiting = Background(lambda: wait(v))
    resume_flow_run(paused_flow_run_id(), run_input={"decision": "approve", "reviewer": "reviewer-b",
                                                     "rationale": "metrics and samples reviewed"})
    decision, note = waiting.result(timeout=60)
    assert decision.status == "approved" and note == ""
    assert alias_holder(cfg, root) == v
    assert gate.verify(cfg, root) == []


def test_personal_data_in_a_reviewers_rationale_never_reaches_mlflow_or_the_log(store):
    cfg, root = store
    v = new_version(cfg, root)
    gate.reject(cfg, root, "triage", v, "reviewer-b", "customer at jan.kowalski@example.pl (PESEL 44051401358) complained")
    stored = client_for(cfg, root).get_model_version("triage", v).tags["loragate.decision_rationale"]
    logged = gate.audit_path(cfg, root).read_text()
    assert stored == "customer at <EMAIL_ADDRESS> (PESEL <PL_PESEL>) complained"
    assert "kowalski" not in logged and "44051401358" not in logged and '"rationale_masked"' in logged
    assert gate.verify(cfg, root) == []
