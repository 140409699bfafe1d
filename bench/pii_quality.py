"""Anonymization quality and speed on the project's own synthetic data (data/sample/pii_synth.py).

    python -m bench.pii_quality [--records 2000] [--plain-records 500]

Recall per entity type: an injected value counts as removed when every letter and digit of it lies
inside a detected span (so "Dr. <PERSON>" with the title left is a miss). Precision per detected
type: a detection is right when it overlaps an injected value. Both paths use the same recognizers;
they differ only in how presidio is driven:
- plain: `AnalyzerEngine.analyze` per record, full spaCy pipeline (what presidio's docs show);
- loragate: spaCy's NER component only, BatchAnalyzerEngine, spaCy worker processes (params' pii.*).
Throughput is records/s of each, measured in this one run; writes bench/results/pii_quality.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import sys
from pathlib import Path

from tasks.data.anonymize import build_analyzer, detected_entities, resolve_spans
from tasks.config import Config
from tasks.data.pii_eval import TARGETS, detections, score
from tasks.io import write_json
from tasks.data.recognizers import widen_names

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data" / "sample"))
from pii_synth import generate  # noqa: E402  (a seeded sample generator, like generate.py beside it)

def run_plain(cfg: Config, records: list[dict]) -> tuple[list[list], float]:
    analyzer = build_analyzer(dataclasses.replace(cfg, pii=dataclasses.replace(cfg.pii, ner_only=False)))
    entities = detected_entities(cfg)
    started = time.perf_counter()
    found = [widen_names(r["text"], analyzer.analyze(r["text"], language="en", entities=entities,
                                                     score_threshold=cfg.pii.score_threshold)) for r in records]
    return [resolve_spans(f) for f in found], len(records) / (time.perf_counter() - started)


def run_loragate(cfg: Config, records: list[dict]) -> tuple[list[list], float]:
    analyzer = build_analyzer(cfg)
    started = time.perf_counter()
    found = detections(cfg, records, analyzer)
    return found, len(records) / (time.perf_counter() - started)


def _table(name: str, s: dict) -> None:
    print(f"\n{name}: overall recall {s['overall_recall']:.4f}, precision {s['overall_precision']:.4f}")
    print(f"{'type':<16}{'values':>7}{'recall':>8}{'target':>8}{'typed':>8}{'detections':>11}{'precision':>10}")
    for t in sorted(set(s["values"]) | set(s["detections"])):
        rec = s["recall"].get(t)
        print(f"{t:<16}{s['values'].get(t, 0):>7}{'' if rec is None else f'{rec:.3f}':>8}{TARGETS.get(t, ''):>8}"
              f"{s['typed_recall'].get(t, ''):>8}{s['detections'].get(t, 0):>11}{s['precision'].get(t, float('nan')):>10.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--plain-records", type=int, default=500, help="the plain loop is slow: time it on a prefix")
    args = ap.parse_args()
    cfg, records = Config(), generate(args.records)
    fast, fast_rate = run_loragate(cfg, records)
    plain, plain_rate = run_plain(cfg, records[: args.plain_records])
    result = {"records": len(records), "loragate": score(records, fast), "loragate_records_per_s": round(fast_rate, 1),
              "plain_prefix": args.plain_records, "plain": score(records[: args.plain_records], plain),
              "loragate_on_prefix": score(records[: args.plain_records], fast[: args.plain_records]),
              "plain_records_per_s": round(plain_rate, 1), "speedup": round(fast_rate / plain_rate, 2),
              "config": cfg.to_dict()["pii"]}
    _table(f"loragate ({len(records)} records)", result["loragate"])
    _table(f"plain loop (first {args.plain_records})", result["plain"])
    print(f"\nrecall on the same {args.plain_records}: plain {result['plain']['overall_recall']:.4f} vs loragate "
          f"{result['loragate_on_prefix']['overall_recall']:.4f}")
    print(f"throughput: loragate {fast_rate:.1f} records/s, plain {plain_rate:.1f} records/s -> {result['speedup']:.2f}x")
    write_json("bench/results/pii_quality.json", result)


if __name__ == "__main__":
    main()
