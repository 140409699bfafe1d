"""Record a finished pipeline run in MLflow: scores with paired bootstrap intervals (vs the base
model, and vs the serving champion when one exists), per-slice scores, the loss curve as a metric
history, the predictions table, PNG plots, an HTML eval report and the stage reports. Only
anonymized text and counts reach MLflow: every table cell passes the second detector first.

Metric names: `baseline/<m>`, `finetuned/<m>`, `delta/<m>` (fine-tuned minus baseline), each with
`_ci_low`/`_ci_high`; `vs_champion/<m>`; `slice/<value>/<stage>/<m>`; `train/loss` by step.
Statistics live in stats.py, plots in plots.py, the page in page.py; this module logs.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow

from tasks.data.pii_guard import scrub_table
from tasks.data.split import HOLDOUT, TRAIN
from tasks.evaluation.holdout import EvalReport
from tasks.evaluation.page import eval_report_html, quarter_report_html
from tasks.evaluation.plots import _plt, confusion_plot, loss_plot, metric_bars
from tasks.evaluation.stats import PER_ROW, champion_metrics, comparison_metrics, slice_metrics
from tasks.io import read_json, read_jsonl
from tasks.orchestration import stage_task
from tasks.tracking import client_for, log_loss_curve, log_metrics


def champion(client, cfg, run_id: str, ft: list[dict], holdout: str | Path) -> tuple[str, dict[str, dict], int] | None:
    """The version serving under the gate alias now, its per-row scores by record id on this run's
    hold-out rows, and how many of those it had never been scored on (new this quarter): those
    it answers now, through its registered model, and they are scored the same way."""
    try:
        version = client.get_model_version_by_alias(cfg.registry.model_name, cfg.gate.alias)
    except Exception:  # no registered model or no alias yet: nothing to compare with
        return None
    if not version.run_id or version.run_id == run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(version.run_id, "eval/predictions.json", tmp)
        except Exception:
            return None
        table = json.loads(Path(path).read_text())
    rows = [dict(zip(table["columns"], values)) for values in table["data"]]
    scores = {r["id"]: {k[len("finetuned_"):]: v for k, v in r.items() if k.startswith("finetuned_")}
              | {"answer": r.get("finetuned", "")} for r in rows}
    missing = [r["id"] for r in ft if r["id"] not in scores]
    if missing:
        scores |= _champion_answers(cfg, version, missing, holdout)
    return version.version, scores, len(missing)


def _champion_answers(cfg, version, ids: list[str], holdout: str | Path) -> dict[str, dict]:
    """The champion's per-row scores on hold-out records it was never scored on."""
    import mlflow.pyfunc

    from tasks.evaluation.scoring import score

    wanted = set(ids)
    rows = [r for r in read_jsonl(holdout) if r["id"] in wanted]
    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    # as it serves: the request's user text, its own system prompt (a multi-turn record: its last user turn)
    answers = model.predict([[m for m in r["messages"][:-1] if m["role"] == "user"][-1]["content"] for r in rows])
    _, per_row = score(cfg, answers, [r["messages"][-1]["content"] for r in rows])
    return {r["id"]: {k: v[i] for k, v in per_row.items()} | {"answer": answers[i]} for i, r in enumerate(rows)}


TEXT_COLUMNS = ("slice", "input", "reference", "baseline", "finetuned")  # what the second detector scrubs


def _ever_held_in_train(cfg, root: Path, client, run_id: str) -> int:
    from tasks.evaluation.quarter import ever_held_out

    held = ever_held_out(cfg, root, client.get_run(run_id).data.tags.get("loragate.data.clean", ""))
    return len(held & {r["id"] for r in read_jsonl(root / TRAIN)}) if held else 0


def record_quarter(cfg, root: Path, client, run_id: str, champ_version: str, ft: list[dict],
                   champ: dict[str, dict]) -> dict[str, float]:
    """The quarter-over-quarter report against the champion, logged; its metrics returned."""
    from tasks.evaluation import quarter

    mv = client.get_model_version(cfg.registry.model_name, champ_version)
    rep = quarter.report(cfg, root, client, run_id, mv, ft, champ)
    table, leaked = scrub_table({k: [e[k] for e in rep["changed_answers"]] for k in ("input", "champion", "challenger")},
                                ("input", "champion", "challenger"), cfg.pii.phone_regions)
    for i, e in enumerate(rep["changed_answers"]):  # the second detector reads them, as every text leaving for MLflow
        e.update({k: table[k][i] for k in ("input", "champion", "challenger")})
    fig = quarter.lengths_plot(rep.pop("_lengths"))
    client.log_figure(run_id, fig, "plots/quarter_lengths.png")
    page = quarter_report_html(rep, client.get_run(run_id).info.run_name, fig, cfg.eval.drift_alpha)
    client.log_text(run_id, page, "quarter/report.html")
    client.log_dict(run_id, rep, "quarter/report.json")
    client.set_tag(run_id, "loragate.quarter_report", "quarter/report.html")
    found = quarter.metrics(rep) | {"pii/residual_in_quarter_report": float(sum(leaked.values()))}
    log_metrics(client, run_id, found)
    return found


def predictions_table(base: list[dict], ft: list[dict]) -> dict[str, list]:
    table = {"id": [r["id"] for r in ft], "slice": [r.get("slice", "") for r in ft], "input": [r["prompt"] for r in ft],
             "reference": [r["reference"] for r in ft], "baseline": [r["prediction"] for r in base],
             "finetuned": [r["prediction"] for r in ft]}
    for k in (k for k in PER_ROW if k in ft[0]):
        table[f"baseline_{k}"] = [r[k] for r in base]
        table[f"finetuned_{k}"] = [r[k] for r in ft]
    return table


def record_results(cfg, root: str | Path, run_id: str, run_dir: str | Path, baseline: EvalReport,
                   finetuned: EvalReport, reports_dir: str | Path) -> dict[str, float]:
    """Log everything the run produced; returns the metrics logged."""
    client, run_dir = client_for(cfg, root), Path(run_dir)
    ft = read_jsonl(run_dir / "eval" / "finetuned" / "predictions.jsonl")
    base_by_id = {r["id"]: r for r in read_jsonl(run_dir / "eval" / "baseline" / "predictions.jsonl")}
    base = [base_by_id[r["id"]] for r in ft]
    metrics = comparison_metrics(cfg, base, ft, baseline, finetuned) | slice_metrics(base, ft)
    champ = champion(client, cfg, run_id, ft, Path(root) / HOLDOUT)
    if champ:
        metrics |= champion_metrics(cfg, ft, champ[1]) | {"vs_champion/rows_answered_now": float(champ[2])}
        client.set_tag(run_id, "loragate.champion_version", champ[0])
    metrics["split/ever_held_out_in_train"] = float(_ever_held_in_train(cfg, Path(root), client, run_id))
    log_metrics(client, run_id, metrics)
    if champ:
        metrics |= record_quarter(cfg, Path(root), client, run_id, champ[0], ft, champ[1])
    history = read_json(run_dir / "train" / "log_history.json")
    log_loss_curve(client, run_id, history)
    # defense in depth: nothing the second detector recognises leaves for MLflow, whoever wrote it
    table, leaked = scrub_table(predictions_table(base, ft), TEXT_COLUMNS, cfg.pii.phone_regions)
    leaked_total = float(sum(leaked.values())) + metrics.get("pii/residual_in_quarter_report", 0.0)
    log_metrics(client, run_id, {"pii/residual_in_artifacts": leaked_total}
                | {f"pii/residual_in_artifacts/{k}": float(v) for k, v in leaked.items()})
    client.log_table(run_id, table, "eval/predictions.json")
    figures = {"Training loss": loss_plot(history), "Scores": metric_bars(metrics)}
    if cfg.eval.task == "classification":
        figures["Confusion matrix"] = confusion_plot(cfg.eval.labels, ft)
    for title, fig in figures.items():
        client.log_figure(run_id, fig, f"plots/{title.lower().replace(' ', '_')}.png")
    run = client.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("loragate.") and "audit" not in k}
    client.log_text(run_id, eval_report_html(run.info.run_name, tags, metrics, finetuned.metric_config, figures, table),
                    "eval/report.html")
    _plt().close("all")
    # as params too, so the compare view shows two runs' metric set-ups side by side
    client.log_batch(run_id, params=[mlflow.entities.Param(f"metric.{k}", v[:6000])
                                     for k, v in finetuned.metric_config.items()])
    client.log_dict(run_id, finetuned.metric_config, "eval/metric_config.json")
    client.log_artifacts(run_id, str(reports_dir), "data_reports")
    pii = read_json(Path(reports_dir) / "pii.json")
    log_metrics(client, run_id, {f"pii/{k}": v for k, v in pii["entities"].items()}
                | {"pii/residual_records": pii.get("residual_records", 0)})
    return metrics


record_results_task = stage_task(record_results, "record-results", retries=3)
