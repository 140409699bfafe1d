"""The pipeline flow: DVC data stages -> baseline eval -> LoRA/QLoRA training -> fine-tuned eval
-> MLflow record -> registered model version -> pre-checks -> (optionally) a paused human decision.

    loragate run [--wait-for-approval]   # or: python -m flows.finetune [WORKSPACE]
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from tasks.config import check_compliance, params_for_run
from tasks.evaluation.holdout import baseline_task, evaluate_task
from tasks.evaluation.memorisation import metrics as memorisation_metrics, plant, probe_task
from tasks.governance.erasure import build_index_task
from tasks.governance.records import compliance_records_task
from tasks.data.validate import system_prompt
from flows.approve import await_decision
from tasks.governance.gate import (APPROVAL_TAG, CHECKS_TAG, Checks, Decision, record_run_resumed, record_run_started,
                                   review_description, run_checks_task)
from tasks.training.models import resolve_model_task
from tasks.governance.register import register_task, serving_base
from tasks.evaluation.report import record_results_task
from tasks.data.split import HOLDOUT, TRAIN
from tasks.io import write_json
from tasks.orchestration import workspace_lock
from tasks.tracking import (built_version, client_for, finish, initiator, log_datasets, log_memory_plan, log_metrics,
                            previous_params, run_key, start_run)
from tasks.training.train import checkpoint_step, train_task
from tasks.data.versioning import reproduce_task


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]
    run_dir: str
    checks: Checks
    decision: Decision | None = None  # set when the run waited for approval and got a valid answer
    note: str = ""  # why no decision was taken (timeout, refused answer)
    up_to_date: bool = False  # nothing ran: this version was already built from the same data, params and code


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    started = time.perf_counter()
    yield
    timings[f"time/{stage}_s"] = round(time.perf_counter() - started, 2)


def _run_name(cfg, previous: dict[str, str] | None) -> str:
    """Base model, LoRA or QLoRA, then the settings that differ from the experiment's previous run,
    so runs tell themselves apart in the MLflow UI's lists and compare view."""
    head = f"{cfg.model.base.split('/')[-1]}-{'qlora' if cfg.quantization.enabled else 'lora'}"
    if previous is None:
        return f"{head} first run"
    changed = [f"{k.split('.', 1)[1]}={v}" for k, v in cfg.flat().items()
               if k.split(".")[0] in {"data", "pii", "split", "lora", "quantization", "train", "eval"}
               and str(v)[:6000] != previous.get(k)]
    more = f" +{len(changed) - 4} more" if len(changed) > 4 else ""
    return f"{head} " + (", ".join(changed[:4]) + more if changed else "same params")


def _open_run(cfg, root: Path, data, resume: str | None) -> str:
    """A new MLflow run (and its audit entry), or the killed one `resume` names, reopened."""
    if resume:
        record_run_resumed(cfg, root, resume, initiator(), checkpoint_step(root / "runs" / resume / "train"))
        return resume
    run_id = start_run(cfg, root, _run_name(cfg, previous_params(cfg, root)),
                       {f"loragate.data.{Path(p).stem}": h for p, h in data.hashes.items()}
                       | {"loragate.base_model": cfg.model.base, "loragate.serving_base": serving_base(cfg)})
    record_run_started(cfg, root, run_id, initiator(), data.hashes)
    log_datasets(client_for(cfg, root), run_id, data.hashes)
    return run_id


def existing_summary(cfg, root: Path, version) -> RunSummary:
    """The summary of a version built earlier from the same inputs: a run that changes nothing."""
    run = client_for(cfg, root).get_run(version.run_id)
    checks = Checks(version.tags.get(CHECKS_TAG) == "passed", (), {})
    return RunSummary(version.run_id, version.name, str(version.version), dict(run.data.metrics),
                      str(root / "runs" / version.run_id), checks, up_to_date=True,
                      note=f"up to date: version {version.version} ({version.tags.get(APPROVAL_TAG, '?')}) was built from "
                           "the same data, params and code; nothing ran, nothing was registered")


def _stages(cfg, root: Path, data, run_id: str, run_dir: Path, timings: dict[str, float]):
    """Baseline, training, fine-tuned eval (and on a compliance run the memorisation probe and the
    records), MLflow, registration, pre-checks: the run's work after its data is versioned."""
    write_json(run_dir / "params.json", cfg.to_dict())  # the resolved params stay with the run
    client, adapter, compliance = client_for(cfg, root), run_dir / "train" / "adapter", cfg.compliance.required
    client.log_dict(run_id, cfg.to_dict(), "params.json")
    with _timed(timings, "resolve_model"):
        model_dir = resolve_model_task(cfg.model.base, cfg.model.cache_dir)
    with _timed(timings, "baseline_eval"):
        baseline = baseline_task(cfg, root, model_dir, data.hashes[str(HOLDOUT)], run_dir / "eval" / "baseline")
    canaries, train_file = plant(cfg, root / TRAIN, run_dir / "train") if compliance else (None, root / TRAIN)
    with _timed(timings, "train"):
        trained = train_task(cfg, model_dir, train_file, run_dir / "train")
    log_metrics(client, run_id, {"train/rows_over_max_length": trained.rows_over_max_length,
                                 "train/resumed_from_step": trained.resumed_from_step,
                                 "train/fp8_base_layers": trained.fp8_base_layers,
                                 "eval/baseline_reused": float(baseline.reused)})
    log_memory_plan(client, run_id, trained.plan)
    with _timed(timings, "finetuned_eval"):
        finetuned = evaluate_task(cfg, model_dir, root / HOLDOUT, run_dir / "eval" / "finetuned", str(adapter),
                                  label="finetuned")
    if compliance:
        with _timed(timings, "memorisation_probe"):
            probed = probe_task(cfg, model_dir, str(adapter), train_file, canaries, run_dir / "eval" / "memorisation.json")
        log_metrics(client, run_id, memorisation_metrics(probed))
    with _timed(timings, "record_and_register"):
        metrics = record_results_task(cfg, root, run_id, run_dir, baseline, finetuned, root / "data" / "reports")
        reg = register_task(cfg, root, run_id, adapter, data.hashes, system_prompt(root / HOLDOUT))
        checks = run_checks_task(cfg, root, reg.model_name, reg.version)
    log_metrics(client, run_id, timings)
    if compliance:  # after the timings: the technical file reports them
        compliance_records_task(cfg, root, reg.model_name, reg.version, model_dir)
    return metrics, reg, checks


@flow(name="loragate-finetune")  # log_prints would log dill's captured bytecode dumps
def finetune(workspace: str = ".", params: str = "params.yaml", wait_for_approval: bool = False,
             overrides: list[str] | None = None, resume: str | None = None) -> RunSummary:
    """overrides (`section.key=value`, `loragate run --set`) hold for this run only. resume: the
    id of a killed run to continue (same MLflow run and folder; training from its last checkpoint)."""
    with workspace_lock(workspace):
        return _finetune(Path(workspace).resolve(), params, wait_for_approval, overrides, resume)


def _finetune(root: Path, params: str, wait_for_approval: bool, overrides: list[str] | None,
              resume: str | None) -> RunSummary:
    timings: dict[str, float] = {}
    with params_for_run(root / params, overrides or []) as cfg:  # DVC reads every param it lists from this file
        check_compliance(cfg)  # scheduled and API-started runs refuse too, before any data is read
        with _timed(timings, "data_stages"):
            data = reproduce_task(root)
            build_index_task(cfg, root, data.hashes)  # erasure requests find this data state's records later
    if not resume and (built := built_version(cfg, root, run_key(cfg, data.hashes))):
        return existing_summary(cfg, root, built)
    run_id = _open_run(cfg, root, data, resume)
    run_dir = root / "runs" / run_id
    try:
        metrics, reg, checks = _stages(cfg, root, data, run_id, run_dir, timings)
    except BaseException:
        finish(client_for(cfg, root), run_id, ok=False)
        raise
    decision, note = None, "" if checks.passed else "pre-checks failed: " + "; ".join(checks.reasons)
    if wait_for_approval and checks.passed:
        text = review_description(reg.model_name, reg.version, metrics, checks, reg.tags)
        decision, note = await_decision(cfg, root, reg.model_name, reg.version, text)
    return RunSummary(run_id, reg.model_name, reg.version, metrics, str(run_dir), checks, decision, note)


if __name__ == "__main__":
    print(finetune(sys.argv[1] if len(sys.argv) > 1 else "."))
