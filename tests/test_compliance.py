"""Compliance runs: the params a DPIA needs, the memorisation probe, the DPIA record and technical
file, the DPO's signature at the gate, and erasure, each with real parts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.config import ConfigError, check_compliance, config_from_dict
from tasks.io import read_jsonl, write_jsonl
from tests.conftest import LENIENT_GATE, tiny_params, update_params

COMPLIANCE = {
    "required": True, "controller": "Example Insurance SE", "dpo_name": "Data Protection Office",
    "dpo_contact": "dpo@example.invalid", "purpose": "triage of customer support tickets",
    "legal_basis": "Art. 6(1)(f) legitimate interests", "data_subjects": ["customers"],
    "data_categories": ["contact details", "ticket text"], "recipients": ["support team"],
    "retention_raw_days": 90, "retention_anonymized_days": 365, "retention_adapters_days": 730,
    "transfers_outside_eu": "none", "ai_act_role": "provider", "ai_act_risk_class": "minimal",
}


def test_a_compliance_run_names_every_missing_field_on_its_own_line():
    cfg = config_from_dict({"compliance": {"required": True, "controller": "Example SE",
                                           "legal_basis": "legitimate interests", "special_categories": True}})
    with pytest.raises(ConfigError) as err:
        check_compliance(cfg)
    lines = str(err.value).splitlines()
    for key in ("dpo_name", "dpo_contact", "purpose", "data_subjects", "ai_act_role", "retention_raw_days",
                "legal_basis", "art9_condition"):
        assert sum(f"compliance.{key}:" in line for line in lines) == 1, key
    assert not any("compliance.controller" in line for line in lines)
    check_compliance(config_from_dict({"compliance": COMPLIANCE}))  # complete: no error
    check_compliance(config_from_dict({}))  # not a compliance run: nothing asked


def test_run_compliance_refuses_before_reading_any_data(workspace, capfd):
    from flows.cli import main as cli

    assert cli(["run", "--compliance", "--workspace", str(workspace)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) >= 10 and all(line.startswith("loragate: params: compliance.") for line in err), err
    assert "Traceback" not in "\n".join(err)
    assert not (workspace / "data" / "interim").exists() and not (workspace / "mlflow").exists()


def _memorising_cfg(tiny_model: str, **compliance):
    return config_from_dict(tiny_params(tiny_model, train={"max_steps": 80, "learning_rate": 0.01, "batch_size": 8},
                                        lora={"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"]},
                                        eval={"max_new_tokens": 24}, compliance=compliance))


def test_the_probe_catches_a_canary_the_model_memorised(tmp_path, tiny_model, sample):
    from tasks.evaluation.memorisation import plant, probe
    from tasks.training.train import train

    cfg = _memorising_cfg(tiny_model, canaries=2, canary_repeats=48, probe_records=8)
    write_jsonl(tmp_path / "train.jsonl", [{"id": f"r{i}", "messages": r["messages"]} for i, r in enumerate(sample[:16])])
    canaries, mixed = plant(cfg, tmp_path / "train.jsonl", tmp_path / "run")
    assert len(read_jsonl(mixed)) == 16 + 2 * 48
    train(cfg, tiny_model, mixed, tmp_path / "run")
    report = probe(cfg, tiny_model, str(tmp_path / "run" / "adapter"), mixed, canaries, tmp_path / "probe.json")
    assert report.canaries == 2 and report.canaries_exposed >= 1, report
    assert report.probed_records == 8
    assert json.loads((tmp_path / "probe.json").read_text())["canaries_exposed"] == report.canaries_exposed


def _compliance_workspace(workspace: Path) -> None:
    update_params(workspace, gate=LENIENT_GATE, compliance={**COMPLIANCE, "probe_records": 6})


def _render(html: Path, tmp_path: Path, name: str) -> str:
    """The page as headless Chromium shows it; the screenshot stays beside the test's files."""
    import os
    import shutil

    from tests.conftest import browser_for

    browser = browser_for(tmp_path)
    try:
        browser.get(html.as_uri())
        browser.save_screenshot(str(tmp_path / f"{name}.png"))
        text = browser.find_element("tag name", "body").text
    finally:
        browser.quit()
    if os.environ.get("LORAGATE_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / f"{name}.png", Path(os.environ["LORAGATE_SCREENSHOT_DIR"]) / f"{name}.png")
    assert (tmp_path / f"{name}.png").stat().st_size > 20_000
    return text


@pytest.mark.slow
def test_a_compliance_run_records_a_dpia_that_the_gate_and_verify_hold_to(workspace, prefect_server, tmp_path, capfd):
    import yaml

    from flows.cli import main as cli
    from flows.finetune import finetune
    from tasks.config import load_config
    from tasks.governance import audit, gate
    from tasks.governance.records import validate
    from tasks.tracking import client_for
    from tests.conftest import CHROMIUM

    _compliance_workspace(workspace)
    summary = finetune(str(workspace))
    cfg = load_config(workspace / "params.yaml")
    client, model, version = client_for(cfg, workspace), summary.model_name, summary.version
    assert summary.checks.passed, summary.checks.reasons
    run = client.get_run(summary.run_id).data
    folder = Path(summary.run_dir) / "compliance"
    dpia = json.loads((folder / "dpia-r1.json").read_text())
    tech = json.loads((folder / "technical_file-r1.json").read_text())
    validate("dpia", dpia)
    validate("technical_file", tech)

    # every number is the run's own
    reports = {n: json.loads((workspace / "data/reports" / f"{n}.json").read_text()) for n in ("pii", "split", "validation")}
    mini = dpia["necessity_proportionality"]["minimisation"]
    assert mini["entities_masked"] == reports["pii"]["entities"] and sum(mini["entities_masked"].values()) > 0
    assert dpia["systematic_description"]["volumes"]["train"] == reports["split"]["train"]
    assert dpia["systematic_description"]["volumes"]["records_in"] == reports["validation"]["records_in"] == 80
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    split_outs = {o["path"]: o["md5"] for o in lock["stages"]["split"]["outs"]}
    assert split_outs["data/splits/train.jsonl"] in json.dumps(dpia["systematic_description"]["lifecycle"])
    assert tech["datasheet"]["provenance"]["dvc_holdout"] == split_outs["data/splits/holdout.jsonl"]
    scores = dpia["necessity_proportionality"]["accuracy"]["holdout_scores"]
    assert scores["delta/rougeL"] == round(run.metrics["delta/rougeL"], 6)
    assert tech["validation"]["scores"]["finetuned/bertscore_f1"] == round(run.metrics["finetuned/bertscore_f1"], 6)
    assert tech["datasheet"]["counts"]["holdout"] == reports["split"]["holdout"]
    assert sum(tech["datasheet"]["languages"].values()) == reports["split"]["train"] + reports["split"]["holdout"]
    assert tech["general_description"]["base_weights_sha256"] != "" and len(tech["general_description"]["base_weights_sha256"]) == 64
    # the probe ran on the default compliance run and passed
    assert run.metrics["memorisation/canaries"] == 4 and run.metrics["memorisation/canary_exposure"] == 0
    assert run.metrics["memorisation/probed_records"] == 6
    assert {e.event for e in audit.read(gate.audit_path(cfg, workspace))} >= {"dpia_recorded", "technical_file_recorded"}
    tags = client.get_model_version(model, version).tags
    assert tags["loragate.compliance"] == "true" and tags["loragate.dpia"].startswith("r1:")

    if CHROMIUM:
        text = _render(folder / "dpia-r1.html", tmp_path, "dpia")
        for wanted in ("0. Technical sheet", "3. Risks", "Art. 6(1)(f)", "Example Insurance SE", summary.run_id, "awaiting"):
            assert wanted in text, wanted
        assert "Annex IV" in _render(folder / "technical_file-r1.html", tmp_path, "technical_file")

    # no promotion before the DPO signs; the initiator cannot sign
    with pytest.raises(gate.GateError, match="not signed by the DPO"):
        gate.approve(cfg, workspace, model, version, "reviewer-b", "scores reviewed")
    assert cli(["dpia", "sign", model, version, "--dpo", "test-initiator", "--opinion", "fine",
                "--workspace", str(workspace)]) == 2
    assert "started the run" in capfd.readouterr().err
    assert cli(["dpia", "sign", model, version, "--dpo", "Data Protection Office", "--opinion",
                "Residual risks acceptable; review again next quarter.", "--workspace", str(workspace)]) == 0
    gate.approve(cfg, workspace, model, version, "reviewer-b", "scores reviewed")
    assert cli(["dpia", "show", model, version, "--workspace", str(workspace)]) == 0
    shown = capfd.readouterr().out
    assert "approve by Data Protection Office" in shown and "approved by reviewer-b" in shown and "dpia" in shown
    assert gate.verify(cfg, workspace) == []

    # an edited record in the store is caught
    stored = Path(client.download_artifacts(summary.run_id, "compliance", str(tmp_path / "dl")))
    latest = sorted(stored.glob("dpia-r*.json"))[-1]
    artifact_root = Path(client.get_run(summary.run_id).info.artifact_uri.removeprefix("file://"))
    edited = artifact_root / "compliance" / latest.name
    edited.write_text(edited.read_text().replace('"approved"', '"rejected"'))
    problems = gate.verify(cfg, workspace)
    assert any(latest.name in p and "changed after it was recorded" in p for p in problems), problems


def _value_only_in(records: list[dict], others: list[dict], personal_values: set[str]) -> str:
    """A personal value (an e-mail: unambiguous) held by `records` and by none of `others`."""
    text = lambda rs: "\n".join(m["content"] for r in rs for m in r["messages"])
    inside, outside = text(records), text(others)
    return next(v for v in sorted(personal_values) if "@" in v and v in inside and v not in outside)


@pytest.mark.slow
def test_erasure_finds_a_value_and_takes_its_model_version_out_of_service(workspace, prefect_server, sample,
                                                                          personal_values, capfd):

    from flows.cli import main as cli
    from flows.finetune import finetune
    from tasks.config import load_config
    from tasks.data.validate import record_id, record_id_key
    from tasks.governance import audit, gate

    update_params(workspace, gate=LENIENT_GATE)
    cfg = load_config(workspace / "params.yaml")
    model, raw = cfg.registry.model_name, workspace / "data/raw/tickets.jsonl"
    value = _value_only_in(sample[80:120], sample[:80], personal_values)
    holders = [r for r in sample[80:120] if value in json.dumps(r, ensure_ascii=False)]

    first = finetune(str(workspace))  # data without the value
    gate.approve(cfg, workspace, model, first.version, "reviewer-b", "ok")
    with open(raw, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in holders)
    second = finetune(str(workspace))
    gate.approve(cfg, workspace, model, second.version, "reviewer-b", "ok")

    index_files = list((workspace / "mlflow/erasure").glob("*.jsonl"))
    assert len(index_files) == 2
    raw_values = [v for v in personal_values if v in raw.read_text()]
    assert all(v.encode() not in f.read_bytes() for f in index_files for v in raw_values)

    capfd.readouterr()
    assert cli(["erasure", "find", value, "--workspace", str(workspace)]) == 0
    out = capfd.readouterr().out
    ids = {record_id(r["messages"], record_id_key()) for r in holders}
    assert all(i in out for i in ids) and f"version {second.version}: approved (alias production)" in out
    assert f"version {first.version}:" not in out and value not in out
    places = [f"data/raw/tickets.jsonl:{80 + n}" for n in range(1, len(holders) + 1)]
    assert f"records: {', '.join(places)}" in out

    assert cli(["erasure", "apply", value, "--actor", "privacy-team", "--workspace", str(workspace)]) == 0
    assert value not in raw.read_text() and len(raw.read_text().splitlines()) == 80
    client = gate.client_for(cfg, workspace)
    assert client.get_model_version(model, second.version).tags[gate.APPROVAL_TAG] == gate.ERASURE_PENDING
    assert str(client.get_registered_model(model).aliases["production"]) == first.version  # moved back
    moves = gate.alias_history(cfg, workspace, model)
    assert moves[-1]["version"] == first.version and moves[-1]["reason"].startswith("erasure request")
    with pytest.raises(gate.GateError):
        gate.promote(cfg, workspace, model, second.version, "someone")
    assert gate.verify(cfg, workspace) == []
    assert value.encode() not in gate.audit_path(cfg, workspace).read_bytes()
    assert "erasure_applied" in [e.event for e in audit.read(gate.audit_path(cfg, workspace))]

    finetune(str(workspace))  # the next run trains without the records
    split_ids = {r["id"] for p in ("train", "holdout") for r in read_jsonl(workspace / f"data/splits/{p}.jsonl")}
    assert split_ids and not ids & split_ids
    assert value not in (workspace / "data/interim/clean.jsonl").read_text()


def test_an_erasure_with_no_earlier_approved_version_removes_the_alias(tmp_path):
    from tasks.governance import gate
    from tests.test_gate import new_version

    cfg = config_from_dict({"registry": {"model_name": "triage"}})
    version = new_version(cfg, tmp_path)
    gate.approve(cfg, tmp_path, "triage", version, "reviewer-b", "ok")
    gate.withdraw(cfg, tmp_path, "triage", [version], "privacy-team", "erasure request abc")
    client = gate.client_for(cfg, tmp_path)
    assert "production" not in client.get_registered_model("triage").aliases
    assert gate.alias_history(cfg, tmp_path, "triage")[-1]["version"] is None
    assert gate.verify(cfg, tmp_path) == []
    assert gate.repair(cfg, tmp_path) == []
