"""Nothing changed, nothing done: a re-run on the same data, params and code registers nothing;
a change of train.* alone retrains without re-running the data stages."""
from __future__ import annotations

import pytest
import yaml

from flows.cli import main as cli
from flows.finetune import finetune
from tasks.config import load_config
from tasks.governance import audit, gate
from tasks.tracking import client_for


@pytest.mark.slow
def test_an_unchanged_rerun_registers_nothing_and_a_train_change_skips_the_data_stages(workspace, prefect_server,
                                                                                        capfd):
    first = finetune(str(workspace))
    cfg = load_config(workspace / "params.yaml")
    client, log = client_for(cfg, workspace), gate.audit_path(cfg, workspace)
    entries = len(audit.read(log))
    lock = (workspace / "dvc.lock").read_bytes()
    capfd.readouterr()

    assert cli(["run", "--workspace", str(workspace)]) == 0  # through the CLI: no Prefect flow even starts
    out = capfd.readouterr().out
    assert f"up to date: version {first.version}" in out and "nothing was registered" in out
    again = finetune(str(workspace))  # the flow itself (what a schedule runs) says the same
    assert again.up_to_date and again.version == first.version and again.run_id == first.run_id
    assert len(client.search_model_versions(f"name='{cfg.registry.model_name}'")) == 1
    assert len(client.search_runs([client.get_experiment_by_name(cfg.registry.experiment).experiment_id])) == 1
    assert len(audit.read(log)) == entries and (workspace / "dvc.lock").read_bytes() == lock

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["max_steps"] = 3
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    changed = finetune(str(workspace))
    assert not changed.up_to_date and changed.version != first.version
    assert (workspace / "dvc.lock").read_bytes() == lock  # the data stages were not re-run
    runs = client.search_runs([client.get_experiment_by_name(cfg.registry.experiment).experiment_id])
    assert len(runs) == 2
    first_base = (workspace / "runs" / first.run_id / "eval/baseline/predictions.jsonl").read_bytes()
    assert (workspace / "runs" / changed.run_id / "eval/baseline/predictions.jsonl").read_bytes() == first_base
    assert changed.metrics["baseline/rougeL"] == first.metrics["baseline/rougeL"]
    reused = {r.info.run_id: r.data.metrics["eval/baseline_reused"] for r in runs}
    assert reused == {first.run_id: 0.0, changed.run_id: 1.0}  # the base model was not scored again
