"""The second personal-data detector, built differently from the first, and the scrub that every
text leaving the workspace for MLflow passes (predictions table, HTML report, review text, the
reviewer's rationale).

    python -m tasks.data.pii_guard FILE.jsonl...   # counts per type of what it still finds; never the values

The first pass (tasks/data/anonymize.py) is spaCy NER plus loragate's own pattern recognizers at the
params' threshold. This one runs no NER and few of those patterns: presidio's stock pattern
recognizers (e-mail, IBAN, payment cards, IP, US SSN), libphonenumber's own matcher over the
params' phone regions, the checksum-validated national IDs (PESEL, NIP, Steuer-ID), and the cue
table (an identifier introduced by its name), honorific names and birth-date cues, at a lower
threshold. Placeholders the first pass wrote are text
it ignores. A hit in the anonymize stage quarantines the record; a hit in an artifact is masked
there (`<TYPE>`) and counted (`pii/residual_in_artifacts`), which fails the gate's pre-check.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from collections import Counter

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # no network lookups from the e-mail recognizer

import regex

from tasks.config import PiiConfig

THRESHOLD = 0.3  # below the first pass's 0.4: a second look should rather flag too much
PLACEHOLDER = regex.compile(r"<[A-Z][A-Z0-9_]*>")  # what the first pass wrote: <PERSON_1>, <PHONE_NUMBER_3fa91c0d2e>


@functools.lru_cache(maxsize=4)
def second_detector(phone_regions: tuple[str, ...] = PiiConfig().phone_regions) -> tuple:
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    from tasks.data.recognizers import _DOB, _TITLED_NAME, _cued_id_recognizer, _group_recognizer, checksum_recognizers

    return (EmailRecognizer(), IbanRecognizer(), CreditCardRecognizer(), IpRecognizer(), UsSsnRecognizer(),
            PhoneRecognizer(supported_regions=list(phone_regions)), *checksum_recognizers(), _cued_id_recognizer(),
            _group_recognizer("PERSON", _TITLED_NAME, 0.7, "TitledNameRecognizer"),
            _group_recognizer("DATE_OF_BIRTH", _DOB, 0.85, "DateOfBirthRecognizer"))


@functools.lru_cache(maxsize=1)
def _anonymizer():
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


def findings(text: str, phone_regions: tuple[str, ...] = PiiConfig().phone_regions) -> list:
    """What the second detector finds in text, placeholders left out."""
    held = [(m.start(), m.end()) for m in PLACEHOLDER.finditer(text)]
    out = []
    for recognizer in second_detector(tuple(phone_regions)):
        for r in recognizer.analyze(text, recognizer.supported_entities, None):
            if r.score >= THRESHOLD and not any(a < r.end and r.start < b for a, b in held):
                out.append(r)
    return out


def residual_scan(texts: list[str], phone_regions: tuple[str, ...] = PiiConfig().phone_regions) -> Counter:
    """Entity types the second detector still finds in already anonymized texts."""
    return Counter(r.entity_type for t in texts for r in findings(t, phone_regions))


def scrub(text: str, phone_regions: tuple[str, ...] = PiiConfig().phone_regions) -> tuple[str, Counter]:
    """text with every hit of the second detector replaced by `<TYPE>`, and the hits per type."""
    from tasks.data.anonymize import resolve_spans

    spans = resolve_spans(findings(text, phone_regions))
    if spans:  # presidio's default operator replaces a span with <TYPE>
        text = _anonymizer().anonymize(text=text, analyzer_results=spans, merge_entities_with_spaces=False).text
    return text, Counter(s.entity_type for s in spans)


def scrub_table(table: dict[str, list], columns: tuple[str, ...], phone_regions: tuple[str, ...] = PiiConfig().phone_regions
                ) -> tuple[dict[str, list], Counter]:
    """A column-oriented table (MLflow's log_table form) with its text columns scrubbed."""
    hits, out = Counter(), dict(table)
    for col in (c for c in columns if c in table):
        cells = []
        for cell in table[col]:
            clean, found = scrub(str(cell), phone_regions)
            cells.append(clean)
            hits.update(found)
        out[col] = cells
    return out, hits


def main(argv: list[str]) -> int:
    for path in argv[1:]:
        with open(path, encoding="utf-8") as fh:
            texts = [m["content"] for line in fh if line.strip() for m in json.loads(line).get("messages", [])]
        print(f"{path}: {dict(residual_scan(texts))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
