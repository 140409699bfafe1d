"""Hold-out scoring: ROUGE and BERTScore through `evaluate` (offline metric modules), classification
scores through scikit-learn, and paired bootstrap intervals through scipy; the metric choices are
returned beside the scores so two runs' numbers are comparable, or visibly not.

    python -m tasks.evaluation.scoring PREDICTIONS.jsonl   # rescore a predictions file (fields: reference, prediction)
"""
from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

import numpy as np

from tasks.config import Config, load_config
from tasks.io import read_jsonl
from tasks.evaluation.metrics import BERTSCORE, ROUGE
from tasks.training.models import resolve_model

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
BERT_KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")
NO_LABEL = "(no label)"  # a classification answer that names none of the labels


@functools.lru_cache(maxsize=None)
def _metric(path: str):
    import evaluate

    return evaluate.load(path)


def metric_config(cfg: Config) -> dict[str, str]:
    """What the scores depend on; logged with them."""
    out = {"rouge.implementation": f"rouge_score=={version('rouge_score')}",
           "rouge.tokenizer": "rouge_score default (lowercase, [a-z0-9]+ tokens)", "rouge.stemmer": "false",
           "bertscore.model": resolve_model(cfg.eval.bertscore_model), "bertscore.num_layers": str(cfg.eval.bertscore_layers),
           "bertscore.idf": "false", "bertscore.rescale_with_baseline": "false (no baseline file exists for this encoder)",
           "bertscore.implementation": f"bert-score=={version('bert-score')}",
           "bootstrap": f"paired percentile, {cfg.eval.bootstrap_resamples} resamples, {cfg.eval.confidence:.0%}, seed 0",
           "task": cfg.eval.task}
    if cfg.eval.task == "classification":
        out["classification.labels"] = ",".join(cfg.eval.labels)
        out["classification.parse"] = "exact label (case-insensitive) or the first label named in the answer"
    return out


def score(cfg: Config, predictions: list[str], references: list[str]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus means and per-row values of rouge1/2/L/Lsum and bertscore_precision/recall/f1
    (plus accuracy, macro_f1 and f1/<label> for classification). Means are means of the rows."""
    rouge = _metric(ROUGE).compute(predictions=predictions, references=references, use_stemmer=False)
    bert = _metric(BERTSCORE).compute(predictions=predictions, references=references,
                                      model_path=resolve_model(cfg.eval.bertscore_model),
                                      num_layers=cfg.eval.bertscore_layers)
    per_row = {k: rouge["per_row"][k] for k in ROUGE_KEYS}
    per_row.update({f"bertscore_{k}": bert[k] for k in ("precision", "recall", "f1")})
    means = {k: float(np.mean(v)) if v else 0.0 for k, v in per_row.items()}
    if cfg.eval.task == "classification":
        more, correct = classification_scores(cfg.eval.labels, predictions, references)
        means.update(more)
        per_row["accuracy"] = correct
    return means, per_row


def parse_label(answer: str, labels: Sequence[str]) -> str:
    """The label an answer names: the whole answer (case-insensitive), else the first label in it."""
    text = answer.strip().casefold()
    exact = [lab for lab in labels if lab.casefold() == text]
    if exact:
        return exact[0]
    found = [(m.start(), lab) for lab in labels for m in [re.search(rf"\b{re.escape(lab.casefold())}\b", text)] if m]
    return min(found)[1] if found else NO_LABEL


def classification_scores(labels: Sequence[str], predictions: list[str], references: list[str]) -> tuple[dict, list[float]]:
    """accuracy, macro F1 over the label set, F1 per label; and per-row correctness (0/1)."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true = [parse_label(r, labels) for r in references]
    y_pred = [parse_label(p, labels) for p in predictions]
    per_class = f1_score(y_true, y_pred, labels=list(labels), average=None, zero_division=0)
    out = {"accuracy": float(accuracy_score(y_true, y_pred)),
           "macro_f1": float(f1_score(y_true, y_pred, labels=list(labels), average="macro", zero_division=0))}
    out.update({f"f1/{label}": float(v) for label, v in zip(labels, per_class)})
    return out, [float(t == p) for t, p in zip(y_true, y_pred)]


def interval(cfg: Config, statistic: Callable, *samples: Sequence) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(*samples), rows resampled together (paired)."""
    from scipy.stats import bootstrap

    data = tuple(np.asarray(s) for s in samples)
    if len(data[0]) < 2:
        value = float(statistic(*data))
        return value, value
    res = bootstrap(data, statistic, n_resamples=cfg.eval.bootstrap_resamples, confidence_level=cfg.eval.confidence,
                    method="percentile", paired=True, vectorized=False, rng=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_interval(cfg: Config, values: Sequence[float]) -> tuple[float, float]:
    return interval(cfg, np.mean, values)


def delta_interval(cfg: Config, before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """Paired bootstrap of mean(after - before) over the same rows."""
    return interval(cfg, np.mean, np.asarray(after) - np.asarray(before))


if __name__ == "__main__":
    rows = read_jsonl(sys.argv[1])
    means, _ = score(load_config(), [r["prediction"] for r in rows], [r["reference"] for r in rows])
    print(json.dumps(means, indent=2))
