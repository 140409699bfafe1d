"""The numbers a run is judged by: means, deltas and paired bootstrap intervals against the base
model and the serving champion, and per-slice scores. Pure functions of prediction rows."""
from __future__ import annotations

import re

import numpy as np

from tasks.evaluation.holdout import EvalReport
from tasks.evaluation.scoring import BERT_KEYS, ROUGE_KEYS, delta_interval, interval, mean_interval, parse_label

PER_ROW = (*ROUGE_KEYS, *BERT_KEYS, "accuracy")  # metrics that are means of per-row values
HEADLINE = ("rougeL", "bertscore_f1", "accuracy", "macro_f1")  # what the per-slice and champion views show


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


def _vs_champion(cfg, prefix: str, shared: list[dict], champ: dict[str, dict], keys) -> dict[str, float]:
    out = {f"{prefix}/rows": float(len(shared))}
    for k in (k for k in keys if shared and k in shared[0] and k in champ[shared[0]["id"]]):
        before, after = [champ[r["id"]][k] for r in shared], [r[k] for r in shared]
        out[f"{prefix}/{k}"] = float(np.mean(after) - np.mean(before))
        out[f"{prefix}/{k}_ci_low"], out[f"{prefix}/{k}_ci_high"] = delta_interval(cfg, before, after)
    return out


def champion_metrics(cfg, ft: list[dict], champ: dict[str, dict]) -> dict[str, float]:
    """Paired (same hold-out records) difference to the champion's fine-tuned scores, overall
    (`vs_champion/<m>`) and per slice value (`slice/<value>/vs_champion/<m>`), with intervals."""
    shared = [r for r in ft if r["id"] in champ]
    out = _vs_champion(cfg, "vs_champion", shared, champ, PER_ROW)
    for value in sorted({r.get("slice", "") for r in shared} - {""}):
        rows = [r for r in shared if r.get("slice") == value]
        out |= _vs_champion(cfg, f"slice/{_slice_name(value)}/vs_champion", rows, champ, HEADLINE)
    return out
