"""Split stage: a seeded, frozen train/hold-out split of the anonymized records.

    python -m tasks.data.split ANONYMIZED.jsonl TRAIN.jsonl HOLDOUT.jsonl REPORT.json [--params params.yaml]   # DVC stage

A record goes to the hold-out when sha256(salt + record id) falls under split.holdout_fraction.
The decision depends on the record alone, never on the rest of the data: when next quarter's
data arrives, every record seen before keeps its side, so the hold-out stays frozen and scores
stay comparable across retrainings. Changing split.salt re-draws it.

Leakage: a training record asking what a hold-out record asks (the same user turns, compared
after case and whitespace folding) would score the model on an answer it was trained on; it is
kept out of train and counted (`leakage_dropped` in the report). So is one asking nearly the same:
MinHash over character 5-grams (datasketch's LSH finds the candidates), Jaccard similarity at or
above split.near_duplicate_threshold (`near_duplicates_dropped`).
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.config import Config
from tasks.io import read_jsonl, write_json, write_jsonl
from tasks.orchestration import stage_main

TRAIN = Path("data/splits/train.jsonl")
HOLDOUT = Path("data/splits/holdout.jsonl")


class SplitError(ValueError):
    """Data that cannot be split as params ask; one line."""


@dataclass(frozen=True)
class SplitReport:
    train: int
    holdout: int
    holdout_share: float  # realised share; it tends to split.holdout_fraction as data grows
    leakage_dropped: int = 0  # training records whose question a hold-out record also asks
    near_duplicates_dropped: int = 0  # training records whose question nearly equals a hold-out one


def _question(row: dict) -> str:
    """What a record asks: its user turns, case and whitespace folded."""
    return " ".join(" ".join(m["content"].casefold().split()) for m in row["messages"] if m["role"] == "user")


def _minhash(text: str):
    from datasketch import MinHash

    m = MinHash(num_perm=128, seed=1)
    m.update_batch([text[i:i + 5].encode() for i in range(max(1, len(text) - 4))])
    return m


def near_duplicates(held: list[dict], candidates: list[dict], threshold: float) -> set[int]:
    """Indexes of candidates whose question is a near-duplicate of a hold-out record's."""
    from datasketch import MinHashLSH

    lsh, marks = MinHashLSH(threshold=threshold, num_perm=128), [_minhash(_question(r)) for r in held]
    for i, m in enumerate(marks):
        lsh.insert(str(i), m)
    found = set()
    for j, r in enumerate(candidates):
        m = _minhash(_question(r))
        if any(m.jaccard(marks[int(k)]) >= threshold for k in lsh.query(m)):
            found.add(j)
    return found


def in_holdout(record_id: str, salt: str, fraction: float) -> bool:
    digest = hashlib.sha256(f"{salt}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(cfg: Config, src: str | Path, train_dst: str | Path, holdout_dst: str | Path) -> SplitReport:
    rows = read_jsonl(src)
    side = [in_holdout(r["id"], cfg.split.salt, cfg.split.holdout_fraction) for r in rows]
    held = [r for r, h in zip(rows, side) if h]
    asked = {_question(r) for r in held}
    candidates = [r for r, h in zip(rows, side) if not h]
    exact = [r for r in candidates if _question(r) not in asked]
    threshold = cfg.split.near_duplicate_threshold
    near = near_duplicates(held, exact, threshold) if held and exact and threshold < 1.0 else set()
    train = [r for j, r in enumerate(exact) if j not in near]
    if not held or not train:
        raise SplitError(f"{src}: {len(rows)} records leave an empty "
                         f"{'hold-out' if not held else 'training set'}; add data or change split.holdout_fraction")
    write_jsonl(train_dst, train)
    write_jsonl(holdout_dst, held)
    return SplitReport(len(train), len(held), round(len(held) / len(rows), 4), len(candidates) - len(exact), len(near))


def _run(cfg: Config, src: str, train_dst: str, holdout_dst: str, report_path: str) -> None:
    report = split(cfg, src, train_dst, holdout_dst)
    write_json(report_path, asdict(report))
    print(f"split: {report.train} train, {report.holdout} hold-out ({report.holdout_share:.1%}), "
          f"{report.leakage_dropped} training records asking a hold-out question and {report.near_duplicates_dropped} "
          "asking nearly the same left out")


def main(argv: list[str]) -> int:
    return stage_main(argv, ("src", "train", "holdout", "report"), _run, (SplitError,))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
