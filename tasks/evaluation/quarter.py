"""Quarter over quarter: what changed between the serving champion and this run, for the reviewer.

Logged with a run that has a champion (record-results stage): `quarter/report.html` and
`quarter/report.json`, `plots/quarter_lengths.png`, and metrics `quarter/*`:
- data: records new, gone and changed since the champion's data state (record ids from the two
  states' erasure indexes; a new record sharing most of its keyed word hashes with a gone one
  counts as changed), length spread and languages of both training sets, values masked per type;
- drift of the new training records against the champion's training data: MMD of all-MiniLM-L6-v2
  sentence embeddings with a permutation p-value, and a Kolmogorov-Smirnov test on lengths; either
  below `eval.drift_alpha` sets `quarter/drift_flag` ("look at the data before approving");
- the scores against the champion with their intervals, and the hold-out records whose answers
  changed most (anonymized text, scrubbed again by the second detector).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tasks.io import read_json, read_jsonl

def _index(path: Path) -> dict[str, set[str]]:
    """record id -> its keyed word hashes, from an erasure index file (no text in it)."""
    from tasks.governance.erasure import read_index

    return {row["id"]: set(row["h"]) for row in read_index(path)[1]} if path.exists() else {}


def record_changes(before: dict[str, set[str]], now: dict[str, set[str]], similar: float = 0.6) -> dict[str, list[str]]:
    """Ids of the records new, gone and changed (a new one sharing most keyed word hashes with a
    gone one) between two data states."""
    new, gone = set(now) - set(before), set(before) - set(now)
    jaccard = lambda a, b: len(a & b) / max(1, len(a | b))
    pairs = [(i, g) for i in new for g in gone if jaccard(now[i], before[g]) >= similar] \
        if len(new) * len(gone) <= 2_000_000 else []  # pairwise; beyond this, edits count as new + gone
    changed, edited = {i for i, _ in pairs}, {g for _, g in pairs}
    return {"new": sorted(new - changed), "gone": sorted(gone - edited), "changed": sorted(changed)}


def ever_held_out(cfg, root: Path, current_state: str) -> set[str]:
    """Ids every earlier data state (indexed, same split.salt) kept in its hold-out: none of them
    may be trained on, whatever split.holdout_fraction says now. A new salt is a deliberate re-draw."""
    from tasks.governance.erasure import indexes

    return {row["id"] for header, rows in indexes(cfg, root) for row in rows if row["split"] == "holdout"
            and header["state"].get("clean") != current_state and header.get("salt", cfg.split.salt) == cfg.split.salt}


def _user_text(row: dict) -> str:
    return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")


def drift(cfg, new_rows: list[dict], before_rows: list[dict]) -> dict[str, float]:
    """New training records against the champion's training data (tasks/evaluation/drift.py's
    statistics); flagged on the two p-values; empty when either side is too small."""
    from tasks.evaluation.drift import DriftError, measure

    try:
        r, _ = measure(cfg, [_user_text(r) for r in new_rows], [_user_text(r) for r in before_rows], "")
    except DriftError:
        return {}
    return {"drift_mmd": r.mmd, "drift_mmd_p": r.mmd_p, "drift_length_ks": r.length_ks, "drift_length_p": r.length_p,
            "drift_flag": float(min(r.mmd_p, r.length_p) < cfg.eval.drift_alpha)}


def changed_answers(ft: list[dict], champ: dict[str, dict], shown: int = 10) -> list[dict[str, Any]]:
    """The hold-out records whose ROUGE-L moved most between champion and challenger."""
    rows = [r for r in ft if r["id"] in champ and "answer" in champ[r["id"]] and "rougeL" in champ[r["id"]]]
    moved = lambda r, k: abs(r.get(k, 0.0) - champ[r["id"]].get(k, 0.0))
    rows.sort(key=lambda r: (-moved(r, "rougeL"), -moved(r, "bertscore_f1")))
    return [{"input": r["prompt"], "champion": champ[r["id"]]["answer"], "challenger": r["prediction"],
             "rougeL_champion": round(champ[r["id"]]["rougeL"], 4), "rougeL_challenger": round(r["rougeL"], 4)}
            for r in rows[:shown]]


def dvc_cached(root: Path, md5: str) -> Path:
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def report(cfg, root: Path, client, run_id: str, champ_version, ft: list[dict], champ: dict[str, dict]) -> dict[str, Any]:
    """The quarter-over-quarter facts (counts, distributions, drift, deltas, examples) as one dict."""
    from tasks.governance.erasure import index_dir
    from tasks.governance.technical_file import _spread, language

    this, before = client.get_run(run_id).data, client.get_run(champ_version.run_id).data
    idx = index_dir(cfg, root)
    states = [_index(idx / f"{run.tags.get('loragate.data.clean', '-')}.jsonl") for run in (before, this)]
    ids = record_changes(*states)
    changes = {"new_records": len(ids["new"]), "gone_records": len(ids["gone"]), "changed_records": len(ids["changed"]),
               "records_before": len(states[0]), "records_now": len(states[1])}
    cached = dvc_cached(root, before.tags.get("loragate.data.train", "--"))
    before_train = read_jsonl(cached) if cached.exists() else []
    train_now = read_jsonl(root / "data/splits/train.jsonl")
    seen = {r["id"] for r in before_train}
    new_train = [r for r in train_now if r["id"] not in seen]
    lengths = {"before": [len(_user_text(r)) for r in before_train], "now": [len(_user_text(r)) for r in train_now]}
    langs = {side: dict(sorted(Counter(language(_user_text(r)) for r in rows).items()))
             for side, rows in (("before", before_train), ("now", train_now))}
    masked_now = read_json(root / "data" / "reports" / "pii.json")["entities"]  # this run's pii/* metrics come later
    pii = {k: {"before": before.metrics.get(f"pii/{k}", 0.0), "now": float(masked_now.get(k, 0))}
           for k in sorted(set(masked_now) | {m[4:] for m in before.metrics if m.startswith("pii/") and m.count("/") == 1
                                                and m[4:].isupper()})}
    return {"champion_version": str(champ_version.version), "changes": changes, "record_ids": ids,
            "champion_retrain_recommended": champ_version.tags.get("loragate.drift.retrain_recommended", "not measured"),
            "new_training_records": len(new_train), "champion_train_available": bool(before_train),
            "length_chars": {side: _spread(v) for side, v in lengths.items()}, "languages": langs,
            "personal_data": pii, "drift": drift(cfg, new_train, before_train),
            "vs_champion": {k: v for k, v in sorted(this.metrics.items()) if "vs_champion/" in k},
            "changed_answers": changed_answers(ft, champ), "_lengths": lengths}


def metrics(rep: dict[str, Any]) -> dict[str, float]:
    return {f"quarter/{k}": float(v) for k, v in {**rep["changes"], **rep["drift"]}.items()}


def lengths_plot(lengths: dict[str, list[int]]):
    from tasks.evaluation.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    top = max([*lengths["before"], *lengths["now"], 1])
    bins = np.linspace(0, top, 30)
    for side, colour in (("before", "tab:gray"), ("now", "tab:blue")):
        if lengths[side]:
            ax.hist(lengths[side], bins=bins, alpha=0.55, color=colour, density=True,
                    label=f"{'champion' if side == 'before' else 'this run'} ({len(lengths[side])})")
    ax.set(xlabel="characters per request", ylabel="share", title="Training requests: champion vs this run")
    ax.legend()
    fig.tight_layout()
    return fig
