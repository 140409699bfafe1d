"""Record a finished pipeline run in MLflow: scores with paired bootstrap intervals (vs the base
model, and vs the serving champion when one exists), per-slice scores, the loss curve as a metric
history, the predictions table, PNG plots, an HTML eval report and the stage reports. Only
anonymized text and counts reach MLflow.

Metric names: `baseline/<m>`, `finetuned/<m>`, `delta/<m>` (fine-tuned minus baseline), each with
`_ci_low`/`_ci_high`; `vs_champion/<m>`; `slice/<value>/<stage>/<m>`; `train/loss` by step.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np

from tasks.evaluation.holdout import EvalReport
from tasks.data.pii_guard import scrub_table
from tasks.io import read_json, read_jsonl
from tasks.orchestration import stage_task
from tasks.evaluation.scoring import BERT_KEYS, ROUGE_KEYS, delta_interval, interval, mean_interval, parse_label
from tasks.tracking import client_for, log_loss_curve, log_metrics

PER_ROW = (*ROUGE_KEYS, *BERT_KEYS, "accuracy")  # metrics that are means of per-row values
HEADLINE = ("rougeL", "bertscore_f1", "accuracy", "macro_f1")  # what the per-slice and champion views show


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loss_plot(history: list[dict]):
    plt = _plt()
    points = [(e["step"], e["loss"]) for e in history if "loss" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o")
    ax.set(xlabel="step", ylabel="training loss", title="LoRA training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _metric_bars(metrics: dict[str, float]):
    """Baseline vs fine-tuned per metric, whiskers = bootstrap intervals."""
    plt = _plt()
    names = [k for k in (*PER_ROW, "macro_f1") if f"finetuned/{k}" in metrics]
    x, width = np.arange(len(names)), 0.38
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.8))
    for offset, stage in ((-width / 2, "baseline"), (width / 2, "finetuned")):
        values = np.array([metrics[f"{stage}/{k}"] for k in names])
        low = np.array([metrics.get(f"{stage}/{k}_ci_low", metrics[f"{stage}/{k}"]) for k in names])
        high = np.array([metrics.get(f"{stage}/{k}_ci_high", metrics[f"{stage}/{k}"]) for k in names])
        ax.bar(x + offset, values, width, label=stage, yerr=[values - low, high - values], capsize=3)
    ax.set_xticks(x, [n.replace("bertscore_", "BERTScore ") for n in names], rotation=20, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="score (hold-out mean)", title="Hold-out scores with 95% bootstrap intervals")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _confusion_plot(labels: tuple[str, ...], rows: list[dict]):
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    names = [*labels, "(no label)"]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 1.0 * len(names) + 1.5))
    ConfusionMatrixDisplay.from_predictions([parse_label(r["reference"], labels) for r in rows],
                                            [parse_label(r["prediction"], labels) for r in rows],
                                            labels=names, ax=ax, colorbar=False, xticks_rotation=30)
    ax.set_title("Fine-tuned model: confusion matrix (hold-out)")
    fig.tight_layout()
    return fig


def _with_intervals(cfg, stage: str, rows: list[dict]) -> dict[str, float]:
    out = {}
    for k in PER_ROW:
        if k in rows[0]:
            out[f"{stage}/{k}_ci_low"], out[f"{stage}/{k}_ci_high"] = mean_interval(cfg, [r[k] for r in rows])
    return out


def _macro_f1_delta(cfg, base: list[dict], ft: list[dict]) -> dict[str, float]:
    from sklearn.metrics import f1_score

    labels = list(cfg.eval.labels)
    truth = [parse_label(r["reference"], labels) for r in ft]
    before = [parse_label(r["prediction"], labels) for r in base]
    after = [parse_label(r["prediction"], labels) for r in ft]

    def stat(t, b, a):
        return (f1_score(t, a, labels=labels, average="macro", zero_division=0)
                - f1_score(t, b, labels=labels, average="macro", zero_division=0))

    low, high = interval(cfg, stat, truth, before, after)
    return {"delta/macro_f1_ci_low": low, "delta/macro_f1_ci_high": high}


def comparison_metrics(cfg, base: list[dict], ft: list[dict], baseline: EvalReport, finetuned: EvalReport) -> dict[str, float]:
    """Means, deltas and their paired bootstrap intervals; base and ft rows are in the same order."""
    metrics = {**{f"baseline/{k}": v for k, v in baseline.metrics.items()},
               **{f"finetuned/{k}": v for k, v in finetuned.metrics.items()},
               **{f"delta/{k}": finetuned.metrics[k] - baseline.metrics[k] for k in finetuned.metrics}}
    metrics |= _with_intervals(cfg, "baseline", base) | _with_intervals(cfg, "finetuned", ft)
    for k in PER_ROW:
        if k in ft[0]:
            metrics[f"delta/{k}_ci_low"], metrics[f"delta/{k}_ci_high"] = delta_interval(
                cfg, [r[k] for r in base], [r[k] for r in ft])
    if cfg.eval.task == "classification":
        metrics |= _macro_f1_delta(cfg, base, ft)
    return metrics


def _slice_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", value)[:40] or "_"


def slice_metrics(base: list[dict], ft: list[dict]) -> dict[str, float]:
    """Per slice value: row count and the headline per-row metrics of both stages and their delta."""
    out = {}
    for value in sorted({r.get("slice", "") for r in ft} - {""}):
        idx = [i for i, r in enumerate(ft) if r.get("slice") == value]
        name = _slice_name(value)
        out[f"slice/{name}/rows"] = float(len(idx))
        for k in (k for k in HEADLINE if k in ft[0]):
            b, f = np.mean([base[i][k] for i in idx]), np.mean([ft[i][k] for i in idx])
            out |= {f"slice/{name}/baseline/{k}": float(b), f"slice/{name}/finetuned/{k}": float(f),
                    f"slice/{name}/delta/{k}": float(f - b)}
    return out


def champion(client, cfg, run_id: str) -> tuple[str, dict[str, dict]] | None:
    """The version serving under the gate alias now, and its per-row hold-out scores by record id."""
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
    return version.version, {r["id"]: {k[len("finetuned_"):]: v for k, v in r.items() if k.startswith("finetuned_")}
                             for r in rows}


def champion_metrics(cfg, ft: list[dict], champ: dict[str, dict]) -> dict[str, float]:
    """Paired (same hold-out records) difference to the champion's fine-tuned scores."""
    shared = [r for r in ft if r["id"] in champ]
    out = {"vs_champion/rows": float(len(shared))}
    for k in (k for k in PER_ROW if shared and k in shared[0] and k in champ[shared[0]["id"]]):
        before, after = [champ[r["id"]][k] for r in shared], [r[k] for r in shared]
        out[f"vs_champion/{k}"] = float(np.mean(after) - np.mean(before))
        out[f"vs_champion/{k}_ci_low"], out[f"vs_champion/{k}_ci_high"] = delta_interval(cfg, before, after)
    return out


TEXT_COLUMNS = ("slice", "input", "reference", "baseline", "finetuned")  # what the second detector scrubs


def predictions_table(base: list[dict], ft: list[dict]) -> dict[str, list]:
    table = {"id": [r["id"] for r in ft], "slice": [r.get("slice", "") for r in ft], "input": [r["prompt"] for r in ft],
             "reference": [r["reference"] for r in ft], "baseline": [r["prediction"] for r in base],
             "finetuned": [r["prediction"] for r in ft]}
    for k in (k for k in PER_ROW if k in ft[0]):
        table[f"baseline_{k}"] = [r[k] for r in base]
        table[f"finetuned_{k}"] = [r[k] for r in ft]
    return table


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


def _cell(metrics: dict, key: str, signed: bool = False) -> str:
    if key not in metrics:
        return "<td>-</td>"
    fmt = "{:+.4f}" if signed else "{:.4f}"
    ci = (f" <small>[{fmt.format(metrics[key + '_ci_low'])}, {fmt.format(metrics[key + '_ci_high'])}]</small>"
          if key + "_ci_low" in metrics else "")
    return f"<td>{fmt.format(metrics[key])}{ci}</td>"


def eval_report_html(run_name: str, tags: dict[str, str], metrics: dict[str, float], metric_config: dict[str, str],
                     figures: dict[str, object], table: dict[str, list], shown: int = 25) -> str:
    """One self-contained page: scores with intervals, slices, plots, the metric set-up, sample rows."""
    names = [k for k in (*PER_ROW, "macro_f1") if f"finetuned/{k}" in metrics]
    rows = "".join(f"<tr><th>{k}</th>{_cell(metrics, f'baseline/{k}')}{_cell(metrics, f'finetuned/{k}')}"
                   f"{_cell(metrics, f'delta/{k}', True)}{_cell(metrics, f'vs_champion/{k}', True)}</tr>" for k in names)
    slices = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4f}</td></tr>" for k, v in metrics.items()
                     if k.startswith("slice/"))
    setup = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in {**tags, **metric_config}.items())
    images = "".join(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{_png(f)}'>" for t, f in figures.items())
    cols = ["input", "reference", "baseline", "finetuned", "baseline_rougeL", "finetuned_rougeL"]
    samples = "".join("<tr>" + "".join(f"<td>{html.escape(str(table[c][i]))}</td>" for c in cols) + "</tr>"
                      for i in range(min(shown, len(table["id"]))))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run_name)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}small{color:#666}"
            f"</style></head><body><h1>Hold-out evaluation: {html.escape(run_name)}</h1>"
            "<table><tr><th>metric</th><th>baseline</th><th>fine-tuned</th><th>delta</th><th>vs champion</th></tr>"
            f"{rows}</table>{'<h2>Slices</h2><table>' + slices + '</table>' if slices else ''}{images}"
            f"<h2>Set-up</h2><table>{setup}</table><h2>First {shown} hold-out rows (anonymized)</h2><table><tr>"
            + "".join(f"<th>{c}</th>" for c in cols) + f"</tr>{samples}</table></body></html>")


def record_results(cfg, root: str | Path, run_id: str, run_dir: str | Path, baseline: EvalReport,
                   finetuned: EvalReport, reports_dir: str | Path) -> dict[str, float]:
    """Log everything the run produced; returns the metrics logged."""
    client, run_dir = client_for(cfg, root), Path(run_dir)
    ft = read_jsonl(run_dir / "eval" / "finetuned" / "predictions.jsonl")
    base_by_id = {r["id"]: r for r in read_jsonl(run_dir / "eval" / "baseline" / "predictions.jsonl")}
    base = [base_by_id[r["id"]] for r in ft]
    metrics = comparison_metrics(cfg, base, ft, baseline, finetuned) | slice_metrics(base, ft)
    champ = champion(client, cfg, run_id)
    if champ:
        metrics |= champion_metrics(cfg, ft, champ[1])
        client.set_tag(run_id, "loragate.champion_version", champ[0])
    log_metrics(client, run_id, metrics)
    history = read_json(run_dir / "train" / "log_history.json")
    log_loss_curve(client, run_id, history)
    # defense in depth: nothing the second detector recognises leaves for MLflow, whoever wrote it
    table, leaked = scrub_table(predictions_table(base, ft), TEXT_COLUMNS, cfg.pii.phone_regions)
    log_metrics(client, run_id, {"pii/residual_in_artifacts": float(sum(leaked.values()))}
                | {f"pii/residual_in_artifacts/{k}": float(v) for k, v in leaked.items()})
    client.log_table(run_id, table, "eval/predictions.json")
    figures = {"Training loss": _loss_plot(history), "Scores": _metric_bars(metrics)}
    if cfg.eval.task == "classification":
        figures["Confusion matrix"] = _confusion_plot(cfg.eval.labels, ft)
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


record_results_task = stage_task(record_results, "record-results")
