"""ROUGE-1/2/L/Lsum F-measure (rouge_score's tokenizer: lowercase, alphanumeric tokens) as an
`evaluate` metric, with per-row scores for the predictions table."""
import datasets
import evaluate
from rouge_score import rouge_scorer

KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class LoragateRouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE F-measure via rouge_score, mean and per row.",
            citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, use_stemmer=False):
        scorer = rouge_scorer.RougeScorer(list(KEYS), use_stemmer=use_stemmer)
        rows = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
        out = {k: sum(r[k].fmeasure for r in rows) / max(len(rows), 1) for k in KEYS}
        out["per_row"] = {k: [r[k].fmeasure for r in rows] for k in KEYS}
        return out
