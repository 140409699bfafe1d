"""Two quarters on the tiny model, a real DVC repo, MLflow store and Prefect server: quarter 2 adds
records; its hold-out keeps every quarter-1 hold-out record; nothing of the hold-out (or nearly
the same) is trained on; the challenger is scored against the champion on every hold-out row
(the champion answers the new ones now), with intervals; a regression fails the pre-check."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flows.cli import version_rows
from flows.finetune import finetune
from tasks.config import load_config
from tasks.data.split import _question, near_duplicates
from tasks.governance import gate
from tasks.io import read_jsonl
from tasks.tracking import client_for
from tests.conftest import CHROMIUM, LENIENT_GATE, browser_for, update_params


def _ids(path) -> set[str]:
    return {r["id"] for r in read_jsonl(path)}


@pytest.mark.slow
def test_quarter_two_keeps_the_hold_out_and_must_not_regress_against_the_champion(workspace, prefect_server, sample,
                                                                                   tmp_path):
    update_params(workspace, gate=LENIENT_GATE, train={"max_steps": 40}, eval={"max_examples": 0})
    q1 = finetune(str(workspace))
    cfg = load_config(workspace / "params.yaml")
    gate.approve(cfg, workspace, q1.model_name, q1.version, "reviewer-b", "quarter 1")
    held_q1 = _ids(workspace / "data/splits/holdout.jsonl")

    with open(workspace / "data/raw/tickets.jsonl", "a") as fh:  # quarter 2's drop
        fh.writelines(json.dumps(r) + "\n" for r in sample[80:140])
    update_params(workspace, train={"max_steps": 1})  # a challenger that learnt nothing
    q2 = finetune(str(workspace))

    holdout, train = read_jsonl(workspace / "data/splits/holdout.jsonl"), read_jsonl(workspace / "data/splits/train.jsonl")
    assert held_q1 <= {r["id"] for r in holdout} and len(holdout) > len(held_q1)
    assert not {r["id"] for r in holdout} & {r["id"] for r in train}
    asked = {_question(r) for r in holdout}
    assert not any(_question(r) in asked for r in train)
    assert not near_duplicates(holdout, train, cfg.split.near_duplicate_threshold)

    m = client_for(cfg, workspace).get_run(q2.run_id).data.metrics
    assert m["vs_champion/rows"] == len(holdout)  # every hold-out row, old and new
    assert m["vs_champion/rows_answered_now"] == len(holdout) - len(held_q1)
    assert m["vs_champion/rougeL_ci_low"] <= m["vs_champion/rougeL"] <= m["vs_champion/rougeL_ci_high"]
    client = client_for(cfg, workspace)
    report = json.loads(Path(client.download_artifacts(q2.run_id, "quarter/report.json", str(tmp_path))).read_text())
    changes = report["changes"]
    assert changes["new_records"] == changes["records_now"] - changes["records_before"] > 0
    assert changes["gone_records"] == 0 and report["champion_version"] == q1.version
    assert m["quarter/new_records"] == changes["new_records"] and "quarter/drift_flag" in m
    page = Path(client.download_artifacts(q2.run_id, "quarter/report.html", str(tmp_path))).read_text()
    assert f"{changes['new_records']} new</b>" in page and len(report["changed_answers"]) > 0
    if CHROMIUM and os.environ.get("LORAGATE_SCREENSHOT_DIR"):  # to look at it
        (tmp_path / "quarter.html").write_text(page)
        browser = browser_for(tmp_path)
        browser.get((tmp_path / "quarter.html").as_uri())
        browser.save_screenshot(str(Path(os.environ["LORAGATE_SCREENSHOT_DIR"]) / "quarter.png"))
        browser.quit()
    text = gate.review_description(q2.model_name, q2.version, m, q2.checks, {})
    assert f"Since the champion: {changes['new_records']} new" in text and "quarter/report.html" in text
    rows = {str(r["version"]): r for r in version_rows(cfg, workspace)}  # `loragate status` links it
    assert rows[q2.version]["quarter_report"].endswith("quarter/report.html") and not rows[q1.version]["quarter_report"]
    assert not q2.checks.passed
    assert any(r.startswith("vs_champion/") and "worse than the serving champion" in r for r in q2.checks.reasons), \
        q2.checks.reasons
    version = client_for(cfg, workspace).get_model_version(q2.model_name, q2.version)
    assert version.tags[gate.APPROVAL_TAG] == gate.REJECTED_BY_CHECKS
    assert m["split/ever_held_out_in_train"] == 0

    update_params(workspace, split={"holdout_fraction": 0.08})  # a smaller hold-out would train on earlier hold-out records
    q3 = finetune(str(workspace))
    assert any("were in an earlier hold-out" in r for r in q3.checks.reasons), q3.checks.reasons
