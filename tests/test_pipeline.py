"""End to end on the tiny model: real DVC repo, real MLflow store, real Prefect server."""
import html
import importlib.metadata
import json
from pathlib import Path


import mlflow
import pytest
import yaml
from prefect.flow_runs import resume_flow_run

from flows.cli import main as cli
from flows.finetune import finetune
from tasks.config import load_config
from tasks.governance import audit, gate
from tasks.governance.gate import APPROVAL_TAG
from tests.conftest import LENIENT_GATE, Background, paused_flow_run_id, update_params
from tasks.tracking import client_for


def _forms(value: str) -> set[bytes]:
    """A value as files may hold it: as is, JSON-escaped (ASCII or not) and HTML-escaped."""
    return {value.encode(), json.dumps(value)[1:-1].encode(), json.dumps(value, ensure_ascii=False)[1:-1].encode(),
            html.escape(value).encode()}


def _files_holding(root: Path, values: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    forms = {f: v for v in values for f in _forms(v)}
    hits = []
    for path in (p for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()):
        if not any(str(path).endswith(s) or f"/{s}/" in str(path) for s in skip):
            data = path.read_bytes()
            hits += [f"{path.name}: {len(v)}-character value" for f, v in forms.items() if f in data]
    return hits


def _prefect_database() -> Path:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    return Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])


def _direct_answer(cfg, workspace, summary, prompt: str) -> str:
    """What base + adapter answer without MLflow in between: the registered pyfunc must say the same."""
    from tasks.data.validate import system_prompt
    from tasks.evaluation.holdout import generate, load_for_inference

    model, tokenizer = load_for_inference(cfg.model.base, str(Path(summary.run_dir) / "train" / "adapter"))
    system = system_prompt(workspace / "data/splits/holdout.jsonl")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return generate(model, tokenizer, [messages], cfg.eval.max_new_tokens, batch_size=8, desc="direct")[0]


@pytest.mark.slow
def test_flow_records_the_run_and_waits_for_a_four_eyes_approval(workspace, prefect_server, personal_values):
    # a 4-step tiny model may not beat its baseline: let the checks pass so a human is asked
    update_params(workspace, gate=LENIENT_GATE)
    running = Background(lambda: finetune(str(workspace), wait_for_approval=True))
    resume_flow_run(paused_flow_run_id(timeout=600), run_input={"decision": "approve", "reviewer": "reviewer-b",
                                                            "rationale": "scores and samples reviewed"})
    summary = running.result(timeout=120)
    cfg = load_config(workspace / "params.yaml")
    client = client_for(cfg, workspace)

    version = client.get_model_version(cfg.registry.model_name, summary.version)
    assert summary.checks.passed and summary.decision.status == "approved"
    assert version.tags[APPROVAL_TAG] == "approved" and version.tags["loragate.reviewer"] == "reviewer-b"
    assert str(client.get_registered_model(cfg.registry.model_name).aliases["production"]) == summary.version
    events = [e.event for e in audit.read(gate.audit_path(cfg, workspace))]
    assert events == ["run_started", "registering", "registered", "checks", "approved", "alias_moved"]
    assert gate.verify(cfg, workspace) == []
    assert version.tags["loragate.initiator"] == "test-initiator"
    assert client.get_run(summary.run_id).data.tags["loragate.version"] == importlib.metadata.version("loragate")
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    split_outs = {o["path"]: o["md5"] for o in lock["stages"]["split"]["outs"]}
    assert version.tags["loragate.data.holdout"] == split_outs["data/splits/holdout.jsonl"]
    assert client.get_run(summary.run_id).data.tags["loragate.data.train"] == split_outs["data/splits/train.jsonl"]

    run = client.get_run(summary.run_id)
    for name in ("baseline/rougeL", "finetuned/rougeL", "delta/rougeL", "finetuned/bertscore_f1", "pii/PERSON"):
        assert name in run.data.metrics, name
    assert run.data.params["train.max_steps"] == "4"
    assert [m.step for m in client.get_metric_history(summary.run_id, "train/loss")] == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(summary.run_id, "eval")}
    assert "eval/predictions.json" in artifacts
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=summary.run_id,
                                                                artifact_path="eval/predictions.json")).read_text())
    assert {"input", "reference", "baseline", "finetuned"} <= set(table["columns"])

    # the registered version is the adapter only, and it serves
    model = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}/{summary.version}")
    prompt = "My router is broken, call me."
    (answer,) = model.predict([prompt])
    assert isinstance(answer, str) and answer == _direct_answer(cfg, workspace, summary, prompt)

    raw = (workspace / "data/raw/tickets.jsonl").read_text()
    present = [v for v in personal_values if v in raw]
    assert len(present) >= 80  # at least one name per record
    # everywhere but the raw input, clean.jsonl (never cached) and the stage code: MLflow, the DVC cache, splits,
    # reports, run folders, dvc.lock, and the Prefect server's database
    assert _files_holding(workspace, present, skip=("data/raw", "clean.jsonl", ".git", "tasks")) == []
    assert (workspace / ".dvc" / "cache").is_dir() and _prefect_database().stat().st_size > 0
    assert _files_holding(_prefect_database(), present) == []


def test_cli_rejects_bad_input_in_one_line_and_writes_nothing(workspace, prefect_server, capfd):
    (workspace / "data/raw/bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3}\n')
    assert cli(["run", "--workspace", str(workspace), "--data", "data/raw/bad.jsonl"]) == 2
    out, err = capfd.readouterr()
    assert "data/raw/bad.jsonl:2: field 'prompt': must be a non-empty string" in err
    (workspace / "data/raw/cut.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "compl\n')
    before = (workspace / "params.yaml").read_bytes()
    assert cli(["run", "--workspace", str(workspace), "--data", "data/raw/cut.jsonl"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err  # one line, before any server starts
    assert "cut.jsonl:2: not valid JSON" in err and (workspace / "params.yaml").read_bytes() == before
    assert not (workspace / "data/interim/clean.jsonl").exists()
    assert not (workspace / "mlflow/mlflow.db").exists() or not client_for(
        load_config(workspace / "params.yaml"), workspace).search_registered_models()


def test_cli_status_lists_nothing_before_a_run(workspace, capsys):
    assert cli(["status", "--workspace", str(workspace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"versions": [], "alias_history": []}


@pytest.mark.slow
def test_a_fine_tuned_model_that_does_not_beat_its_baseline_by_the_margin_is_rejected_by_checks(workspace, prefect_server):
    """The gate's delta check on real scores: a 4-step tiny model cannot gain 0.5 ROUGE-L, so the
    version is rejected by the checks, with the measured delta in the reason, and cannot be approved."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["gate"] = {"min_delta_rougeL": 0.5}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    summary = finetune(str(workspace))
    cfg = load_config(workspace / "params.yaml")
    delta = summary.metrics["delta/rougeL"]
    assert delta < 0.5 and not summary.checks.passed
    assert f"delta/rougeL {delta:+.4f} < required +0.5000" in summary.checks.reasons
    version = client_for(cfg, workspace).get_model_version(cfg.registry.model_name, summary.version)
    assert version.tags[APPROVAL_TAG] == "rejected-by-checks"
    with pytest.raises(gate.GateError, match="failed its pre-checks"):
        gate.approve(cfg, workspace, cfg.registry.model_name, summary.version, "reviewer-b", "ship it")
