"""How well the params' anonymizer masks labelled data: recall per type (a value counts as
removed when every letter and digit of it lies inside a masked span), typed recall, and precision
(a masked span overlaps a labelled value). For a DPO's own labelled sample, before trusting a run.

    python -m tasks.data.pii_eval LABELLED.jsonl [--params params.yaml]   # lines: {"text", "spans": [{"start", "end", "type"}]}

Prints counts and rates only, never a value.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

STRUCTURED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE", "CREDIT_CARD", "IP_ADDRESS", "PL_PESEL", "PL_NIP", "DE_TAX_ID")
TARGETS = {**{t: 0.99 for t in STRUCTURED}, "PERSON": 0.95, "STREET_ADDRESS": 0.95}  # recall the [pii] work set


def covered(text: str, gold: dict, spans: list[tuple[int, int]]) -> bool:
    return all(any(a <= i < b for a, b in spans) for i in range(gold["start"], gold["end"]) if text[i].isalnum())


def score(records: list[dict], found: list[list]) -> dict:
    """Per-type recall (value fully masked), typed recall and precision (detection overlaps a value)."""
    gold_n, removed, typed, det_n, det_ok = Counter(), Counter(), Counter(), Counter(), Counter()
    for rec, results in zip(records, found):
        spans = [(r.start, r.end) for r in results]
        for g in rec["spans"]:
            gold_n[g["type"]] += 1
            removed[g["type"]] += covered(rec["text"], g, spans)
            typed[g["type"]] += covered(rec["text"], g, [(r.start, r.end) for r in results if r.entity_type == g["type"]])
        for r in results:
            det_n[r.entity_type] += 1
            det_ok[r.entity_type] += any(r.start < g["end"] and g["start"] < r.end for g in rec["spans"])
    return {"recall": {t: round(removed[t] / gold_n[t], 4) for t in sorted(gold_n)},
            "typed_recall": {t: round(typed[t] / gold_n[t], 4) for t in sorted(gold_n)},
            "precision": {t: round(det_ok[t] / det_n[t], 4) for t in sorted(det_n)},
            "values": dict(sorted(gold_n.items())), "detections": dict(sorted(det_n.items())),
            "overall_recall": round(sum(removed.values()) / max(sum(gold_n.values()), 1), 4),
            "overall_precision": round(sum(det_ok.values()) / max(sum(det_n.values()), 1), 4)}


def detections(cfg, records: list[dict], analyzer=None) -> list[list]:
    """What the params' anonymizer would replace in each record's text: overlaps resolved as the
    anonymize stage resolves them."""
    from tasks.data.anonymize import build_analyzer, detect, resolve_spans

    return [resolve_spans(texts[0]) for texts in detect(cfg, [[r["text"]] for r in records],
                                                         analyzer or build_analyzer(cfg))]


def evaluate(cfg, records: list[dict], analyzer=None) -> dict:
    return score(records, detections(cfg, records, analyzer))


def main(argv: list[str]) -> int:
    from tasks.config import ConfigError, load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labelled")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv[1:])
    try:
        cfg = load_config(args.params)
        with open(args.labelled, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
    except (ConfigError, OSError, json.JSONDecodeError) as err:
        print(f"loragate: {args.labelled}: {type(err).__name__}: cannot be read as labelled JSONL"
              if not isinstance(err, ConfigError) else f"loragate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(evaluate(cfg, records), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
