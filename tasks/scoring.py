"""Hold-out scoring: ROUGE and BERTScore through `evaluate`, offline, with the metric choices
returned beside the scores so two runs' numbers are comparable, or visibly not.

    python -m tasks.scoring PREDICTIONS.jsonl   # rescore a predictions file (fields: reference, prediction)
"""
from __future__ import annotations

import functools
import json
import sys
from importlib.metadata import version
from statistics import fmean

from tasks.config import Config, load_config
from tasks.io import read_jsonl
from tasks.metrics import BERTSCORE, ROUGE
from tasks.models import resolve_model


@functools.lru_cache(maxsize=None)
def _metric(path: str):
    import evaluate

    return evaluate.load(path)


def metric_config(cfg: Config) -> dict[str, str]:
    """What the scores depend on; logged with them."""
    return {"rouge.implementation": f"rouge_score=={version('rouge_score')}",
            "rouge.tokenizer": "rouge_score default (lowercase, [a-z0-9]+ tokens)", "rouge.stemmer": "false",
            "bertscore.model": resolve_model(cfg.eval.bertscore_model), "bertscore.num_layers": str(cfg.eval.bertscore_layers),
            "bertscore.idf": "false", "bertscore.rescale_with_baseline": "false (no baseline file exists for this encoder)",
            "bertscore.implementation": f"bert-score=={version('bert-score')}"}


def score(cfg: Config, predictions: list[str], references: list[str]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus means (rouge1/2/L/Lsum, bertscore_precision/recall/f1) and per-row rougeL/bertscore_f1."""
    rouge = _metric(ROUGE).compute(predictions=predictions, references=references, use_stemmer=False)
    bert = _metric(BERTSCORE).compute(predictions=predictions, references=references,
                                      model_path=resolve_model(cfg.eval.bertscore_model),
                                      num_layers=cfg.eval.bertscore_layers)
    means = {k: float(rouge[k]) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    means.update({f"bertscore_{k}": fmean(bert[k]) for k in ("precision", "recall", "f1")})
    return means, {"rougeL": rouge["per_row"]["rougeL"], "bertscore_f1": bert["f1"]}


if __name__ == "__main__":
    rows = read_jsonl(sys.argv[1])
    means, _ = score(load_config(), [r["prediction"] for r in rows], [r["reference"] for r in rows])
    print(json.dumps(means, indent=2))
