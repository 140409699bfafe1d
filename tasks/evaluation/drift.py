"""Drift of served requests away from the serving version's training data.

    loragate drift [--since 2026-10-01]

Reads the anonymized request log `loragate serve` writes, compares its requests with the user turns
the serving version was trained on (its training split, from the DVC cache by the hash it was
registered with): MMD of all-MiniLM-L6-v2 embeddings with a permutation p-value, a KS test on
lengths, and the share of requests far from every training example (best cosine similarity below
`eval.drift_far_similarity`). A p-value below `eval.drift_alpha` or a far share above
`eval.drift_max_far_share` sets "retrain recommended". Logged as an MLflow run `drift-v<N>`
(metrics drift/*, HTML page, PNG) and as tags on the version, which the quarter report shows.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasks.config import Config
from tasks.evaluation.quarter import _user_text, dvc_cached
from tasks.io import read_jsonl
from tasks.tracking import client_for, experiment_id

RETRAIN_TAG = "loragate.drift.retrain_recommended"
_PERMUTATIONS, _MAX_SIDE = 200, 300  # test cost bounds: p-values to 1/200, 300 texts a side


class DriftError(RuntimeError):
    """Drift that cannot be measured as asked; one line."""


@dataclass(frozen=True)
class DriftReport:
    version: str
    requests: int
    training_examples: int
    mmd: float
    mmd_p: float
    length_ks: float
    length_p: float
    far_share: float
    retrain_recommended: bool
    run_id: str = ""


def _embed(texts: list[str], model_dir: str) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tok(texts[start:start + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling, as the model was trained
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def mmd_test(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Squared MMD (RBF kernel, median-distance bandwidth) and its permutation p-value."""
    both = np.concatenate([a, b])
    d2 = np.maximum(((both[:, None, :] - both[None, :, :]) ** 2).sum(-1), 0)
    k = np.exp(-d2 / (np.median(d2[d2 > 0]) if (d2 > 0).any() else 1.0))
    n = len(a)

    def stat(idx: np.ndarray) -> float:
        x, y = idx[:n], idx[n:]
        return k[np.ix_(x, x)].mean() + k[np.ix_(y, y)].mean() - 2 * k[np.ix_(x, y)].mean()

    rng, base = np.random.default_rng(seed), np.arange(len(both))
    observed = stat(base)
    exceed = sum(stat(rng.permutation(base)) >= observed for _ in range(_PERMUTATIONS))
    return float(observed), (exceed + 1) / (_PERMUTATIONS + 1)


def requests_since(log: Path, since: str | None, version: str) -> list[str]:
    if not log.exists():
        raise DriftError(f"{log}: no request log yet (`loragate serve` writes it)")
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["request"] for r in rows if "request" in r and r.get("version") == version
            and (not since or r["time"] >= since)]


def _sample(items: list, rng) -> list:
    return [items[i] for i in sorted(rng.choice(len(items), min(len(items), _MAX_SIDE), replace=False))]


def measure(cfg: Config, requests: list[str], training: list[str], version: str) -> tuple[DriftReport, np.ndarray]:
    from scipy.stats import ks_2samp

    from tasks.training.models import resolve_model

    if len(requests) < 5 or len(training) < 5:
        raise DriftError(f"drift needs at least 5 requests and 5 training examples; got {len(requests)} and {len(training)}")
    rng = np.random.default_rng(0)
    a, b = _sample(requests, rng), _sample(training, rng)
    emb = _embed(a + b, resolve_model(cfg.eval.bertscore_model))
    mmd, p = mmd_test(emb[:len(a)], emb[len(a):])
    nearest = (emb[:len(a)] @ emb[len(a):].T).max(axis=1)  # each request's best cosine to a training example
    far = float(np.mean(nearest < cfg.eval.drift_far_similarity))
    ks = ks_2samp([len(t) for t in requests], [len(t) for t in training])
    retrain = min(p, float(ks.pvalue)) < cfg.eval.drift_alpha or far > cfg.eval.drift_max_far_share
    return DriftReport(version, len(requests), len(training), round(mmd, 6), round(p, 4), round(float(ks.statistic), 4),
                       round(float(ks.pvalue), 4), round(far, 4), bool(retrain)), nearest


def drift(cfg: Config, root: str | Path, since: str | None = None) -> DriftReport:
    """Measure and record drift for the version the serving alias points at."""
    from tasks.governance.export import approved_version
    from tasks.governance.serve import request_log

    root = Path(root).resolve()
    model = cfg.registry.model_name
    mv = approved_version(cfg, root, model, f"@{cfg.gate.alias}")
    client = client_for(cfg, root)
    train_md5 = mv.tags.get("loragate.data.train", "")
    cached = dvc_cached(root, train_md5)
    if not cached.exists():
        raise DriftError(f"{model} version {mv.version}: its training split ({train_md5 or 'no hash'}) is not in the "
                         "DVC cache (`dvc pull` it)")
    report, nearest = measure(cfg, requests_since(request_log(cfg, root, model), since, str(mv.version)),
                              [_user_text(r) for r in read_jsonl(cached)], str(mv.version))
    return _record(cfg, root, client, mv, report, _nearest_plot(nearest, cfg.eval.drift_far_similarity))


def _nearest_plot(nearest: np.ndarray, threshold: float):
    from tasks.evaluation.plots import _plt

    fig, ax = _plt().subplots(figsize=(6, 3.5))
    ax.hist(nearest, bins=30, range=(min(0.0, float(nearest.min())), 1.0), color="tab:blue")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"far below {threshold}")
    ax.set(xlabel="best cosine similarity to a training request", ylabel="requests", title="Served requests")
    ax.legend()
    fig.tight_layout()
    return fig


def _record(cfg: Config, root: Path, client, mv, report: DriftReport, figure) -> DriftReport:
    run = client.create_run(experiment_id(client, cfg, root), run_name=f"drift-v{mv.version}",
                            tags={"loragate.drift_of_version": str(mv.version)})
    values = {f"drift/{k}": float(v) for k, v in asdict(report).items() if k not in {"version", "run_id"}}
    for k, v in values.items():
        client.log_metric(run.info.run_id, k, v)
    client.log_dict(run.info.run_id, asdict(report), "drift/report.json")
    client.log_text(run.info.run_id, _page(report), "drift/report.html")
    client.log_figure(run.info.run_id, figure, "drift/nearest_similarity.png")
    client.set_terminated(run.info.run_id)
    client.set_model_version_tag(mv.name, str(mv.version), RETRAIN_TAG, str(report.retrain_recommended).lower())
    client.set_model_version_tag(mv.name, str(mv.version), "loragate.drift.run_id", run.info.run_id)
    return DriftReport(**{**asdict(report), "run_id": run.info.run_id})


def _page(r: DriftReport) -> str:
    verdict = "<b>Retrain recommended</b>: served requests moved away from the training data." if r.retrain_recommended \
        else "No drift beyond the thresholds."
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in asdict(r).items() if k != "run_id")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Drift of version {r.version}</title></head>"
            f"<body style='font-family:sans-serif;margin:2em'><h1>Drift of version {r.version}</h1><p>{verdict}</p>"
            f"<table border='1' cellpadding='4'>{rows}</table></body></html>")
