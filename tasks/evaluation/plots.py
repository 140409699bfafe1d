"""The plots a run logs and its HTML page embeds: training loss, scores with intervals, and the
confusion matrix of a classification run (matplotlib, Agg backend)."""
from __future__ import annotations

import base64
import io

import numpy as np

from tasks.evaluation.scoring import parse_label
from tasks.evaluation.stats import PER_ROW


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_plot(history: list[dict]):
    plt = _plt()
    points = [(e["step"], e["loss"]) for e in history if "loss" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o")
    ax.set(xlabel="step", ylabel="training loss", title="LoRA training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def metric_bars(metrics: dict[str, float]):
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


def confusion_plot(labels: tuple[str, ...], rows: list[dict]):
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


def png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()
