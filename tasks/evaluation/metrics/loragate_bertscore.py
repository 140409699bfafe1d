"""BERTScore precision/recall/F1 with an explicit local encoder folder and layer, as an
`evaluate` metric. bert_score's `lang=` default would fetch roberta-large from the hub."""
import datasets
import evaluate
from bert_score import BERTScorer

_SCORERS = {}


class LoragateBertscore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="BERTScore P/R/F1 per row, from a local encoder.",
            citation="Zhang et al., 2020. BERTScore: Evaluating Text Generation with BERT.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, model_path=None, num_layers=None, idf=False, batch_size=32):
        key = (model_path, num_layers, idf)
        if key not in _SCORERS:  # loading the encoder costs seconds: reuse it across calls
            _SCORERS[key] = BERTScorer(model_type=model_path, num_layers=num_layers, idf=idf,
                                       idf_sents=references if idf else None, batch_size=batch_size)
        # An empty answer scores 0 (and bert_score's empty-string path breaks on transformers 5).
        keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
        out = {k: [0.0] * len(predictions) for k in ("precision", "recall", "f1")}
        if keep:
            scores = _SCORERS[key].score([predictions[i] for i in keep], [references[i] for i in keep])
            for name, values in zip(("precision", "recall", "f1"), scores):
                for i, v in zip(keep, values.tolist()):
                    out[name][i] = v
        return out
