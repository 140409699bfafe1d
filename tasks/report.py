"""Record a finished pipeline run in MLflow: metrics under consistent names, the loss curve as a
metric history, the predictions table, the loss plot, and the stage reports. Only anonymized text
and counts reach MLflow.
"""
from __future__ import annotations

from pathlib import Path

from tasks.evaluation import EvalReport
from tasks.io import read_json, read_jsonl
from tasks.tracking import client_for, log_loss_curve, log_metrics
from tasks.orchestration import stage_task


def _loss_plot(history: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(e["step"], e["loss"]) for e in history if "loss" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o")
    ax.set(xlabel="step", ylabel="training loss", title="LoRA training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _predictions_table(baseline_dir: Path, finetuned_dir: Path) -> dict[str, list]:
    base = {r["id"]: r for r in read_jsonl(baseline_dir / "predictions.jsonl")}
    rows = read_jsonl(finetuned_dir / "predictions.jsonl")
    return {"id": [r["id"] for r in rows], "input": [r["prompt"] for r in rows],
            "reference": [r["reference"] for r in rows], "baseline": [base[r["id"]]["prediction"] for r in rows],
            "finetuned": [r["prediction"] for r in rows], "baseline_rougeL": [base[r["id"]]["rougeL"] for r in rows],
            "finetuned_rougeL": [r["rougeL"] for r in rows]}


def record_results(cfg, root: str | Path, run_id: str, run_dir: str | Path, baseline: EvalReport,
                   finetuned: EvalReport, reports_dir: str | Path) -> dict[str, float]:
    """Log everything the run produced; returns the metrics logged."""
    client, run_dir = client_for(cfg, root), Path(run_dir)
    metrics = {**{f"baseline/{k}": v for k, v in baseline.metrics.items()},
               **{f"finetuned/{k}": v for k, v in finetuned.metrics.items()},
               **{f"delta/{k}": finetuned.metrics[k] - baseline.metrics[k] for k in finetuned.metrics}}
    log_metrics(client, run_id, metrics)
    history = read_json(run_dir / "train" / "log_history.json")
    log_loss_curve(client, run_id, history)
    client.log_table(run_id, _predictions_table(run_dir / "eval" / "baseline", run_dir / "eval" / "finetuned"),
                     "eval/predictions.json")
    client.log_figure(run_id, _loss_plot(history), "plots/loss_curve.png")
    client.log_dict(run_id, finetuned.metric_config, "eval/metric_config.json")
    client.log_artifacts(run_id, str(reports_dir), "data_reports")
    pii = read_json(Path(reports_dir) / "pii.json")
    log_metrics(client, run_id, {f"pii/{k}": v for k, v in pii["entities"].items()}
                | {"pii/residual_records": pii.get("residual_records", 0)})
    return metrics


record_results_task = stage_task(record_results, "record-results")
