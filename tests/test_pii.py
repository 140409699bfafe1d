import json

import pytest

from tasks.data.anonymize import Replacer, anonymize, anonymize_records, build_analyzer, detect, resolve_spans
from tasks.config import Config, ConfigError, config_from_dict
from tasks.data.pii_eval import TARGETS, score
from tasks.data.validate import validate
from tests.conftest import load_generator


def test_sample_personal_values_are_all_removed_and_report_holds_counts_only(tmp_path, sample, personal_values):
    src = tmp_path / "raw.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in sample[:150]))
    validate(Config(), src, tmp_path / "clean.jsonl")
    report = anonymize(Config(), tmp_path / "clean.jsonl", tmp_path / "anon.jsonl")
    text = (tmp_path / "anon.jsonl").read_text()
    present = [v for v in personal_values if v in src.read_text()]
    assert len(present) > 150  # the slice really carries personal data
    assert [v for v in present if v in text] == []
    assert report.records == 150 and report.entities["PERSON"] >= 150 and report.entities["EMAIL_ADDRESS"] > 0
    assert "<PERSON_1>" in text and "<EMAIL_ADDRESS_1>" in text
    assert report.operator == "placeholder" and report.pseudonym_key_id == ""
    assert {"PlPeselRecognizer", "PlNipRecognizer", "DeTaxIdRecognizer", "StreetAddressRecognizer"} <= set(report.recognizers)
    dumped = json.dumps(report.__dict__)
    assert not any(v in dumped for v in present)


def test_unknown_entity_type_is_a_config_error():
    with pytest.raises(ConfigError, match="pii.entities: unknown entity type 'PASSPORT_NUMBER_X'"):
        build_analyzer(config_from_dict({"pii": {"entities": ["PERSON", "PASSPORT_NUMBER_X"]}}))


def test_records_the_second_pass_still_flags_are_quarantined(tmp_path, sample):
    # the first pass is told to leave e-mails and IBANs alone; the residual scan must catch them
    cfg = config_from_dict({"pii": {"entities": ["PERSON", "PHONE_NUMBER"]}})
    raw, src, dst = tmp_path / "raw.jsonl", tmp_path / "clean.jsonl", tmp_path / "anon.jsonl"
    rows = sample[:40]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    validate(cfg, raw, src)
    with_email = sum(any("@" in m["content"] for m in r["messages"]) for r in rows)
    assert with_email > 0
    report = anonymize(cfg, src, dst)
    out = dst.read_text()
    assert report.residual_records >= with_email and report.residual_entities["EMAIL_ADDRESS"] >= with_email
    assert report.residual_entities["IBAN_CODE"] > 0
    assert "@" not in out and len(out.splitlines()) == len(rows) - report.residual_records


@pytest.fixture(scope="module")
def analyzer():
    return build_analyzer(Config())


TICKET = ["Hi, this is Dr. Anna Nowak. Call me on +48 601 234 567 or 206.269.0743x9150.",
          "Anna Nowak again: my husband Jan Kowalski (PESEL 44051401359) moved to ul. Kwiatowa 12/3, 00-123 Warszawa."]


def test_placeholders_are_numbered_per_record_and_consistent_for_one_person(analyzer):
    cfg = Config()
    (first, second), = anonymize_records(cfg, [TICKET], analyzer)[0]
    assert first.startswith("Hi, this is <PERSON_1>. Call me on <PHONE_NUMBER_1> or <PHONE_NUMBER_2>.")
    assert second.startswith("<PERSON_1> again: my husband <PERSON_2> (PESEL <PL_PESEL_1>) moved to <STREET_ADDRESS_1>")
    (again,), = anonymize_records(cfg, [[TICKET[1]]], analyzer)[0]  # a new record counts from 1 again
    assert again.startswith("<PERSON_1> again: my husband <PERSON_2>")


def test_pseudonyms_are_keyed_stable_across_records_and_never_carry_the_key(tmp_path, monkeypatch, analyzer):
    cfg = config_from_dict({"pii": {"operator": "pseudonym"}})
    monkeypatch.setenv("LORAGATE_PII_KEY", "k" * 24)
    (a1, _), = anonymize_records(cfg, [TICKET], analyzer)[0]
    (b1,), = anonymize_records(cfg, [[TICKET[0]]], analyzer)[0]
    assert a1 == b1 and "Anna" not in a1 and "<PERSON_" in a1
    monkeypatch.setenv("LORAGATE_PII_KEY", "another-secret-of-24-chars")
    (c1,), = anonymize_records(cfg, [[TICKET[0]]], analyzer)[0]
    assert c1 != a1  # a different secret gives different pseudonyms

    raw, src, dst = tmp_path / "raw.jsonl", tmp_path / "clean.jsonl", tmp_path / "anon.jsonl"
    raw.write_text(json.dumps({"messages": [{"role": "user", "content": TICKET[0]},
                                            {"role": "assistant", "content": "ok"}]}) + "\n")
    validate(cfg, raw, src)
    report = anonymize(cfg, src, dst)
    assert report.operator == "pseudonym" and len(report.pseudonym_key_id) == 8
    assert "another-secret" not in json.dumps(report.__dict__) + dst.read_text()


def test_pseudonym_without_a_secret_fails_in_one_line_before_writing(tmp_path, monkeypatch):
    monkeypatch.delenv("LORAGATE_PII_KEY", raising=False)
    src, dst = tmp_path / "clean.jsonl", tmp_path / "anon.jsonl"
    src.write_text("")
    with pytest.raises(ConfigError, match=r"^params: pii.operator: pseudonym needs a secret .* \$LORAGATE_PII_KEY \(not set\)$"):
        anonymize(config_from_dict({"pii": {"operator": "pseudonym"}}), src, dst)
    assert not dst.exists()


def test_custom_pattern_masks_its_own_type_and_a_bad_regex_names_the_key(analyzer):
    cfg = config_from_dict({"pii": {"custom_patterns": [{"entity": "EMPLOYEE_ID", "regex": r"\bEMP-\d{6}\b"}]}})
    (out,), = anonymize_records(cfg, [["Badge EMP-123456 stopped working."]], build_analyzer(cfg))[0]
    assert out == "Badge <EMPLOYEE_ID_1> stopped working."
    with pytest.raises(ConfigError, match=r"^params: pii.custom_patterns\[0\].regex: not a valid regular expression$"):
        config_from_dict({"pii": {"custom_patterns": [{"entity": "X_ID", "regex": "EMP-(\\d"}]}})
    with pytest.raises(ConfigError, match=r"pii.custom_patterns\[0\].entity: must be an UPPER_CASE"):
        config_from_dict({"pii": {"custom_patterns": [{"entity": "employee id", "regex": "x"}]}})


def test_a_record_that_cannot_be_masked_is_quarantined_by_reason_and_the_run_goes_on(monkeypatch, analyzer):
    real = Replacer.__call__

    def boom(self, kind, value):
        if "Nowak" in value:
            raise ValueError(f"cannot handle {value}")
        return real(self, kind, value)

    monkeypatch.setattr(Replacer, "__call__", boom)
    out, counts, failed = anonymize_records(Config(), [["Call Jan Kowalski on +48 601 234 567."], TICKET], analyzer)
    assert out[0] == ["Call <PERSON_1> on <PHONE_NUMBER_1>."] and out[1] is None
    assert failed == {"masking failed (ValueError)": 1} and "Nowak" not in str(failed)


def test_synthetic_multilocale_recall_and_precision_per_type(analyzer):
    """300 records of data/sample/pii_synth (5 Faker locales, EU identifiers): the issue's targets hold."""
    records = load_generator("pii_synth").generate(300, seed=11)
    found = [resolve_spans(texts[0])
             for r, texts in zip(records, detect(Config(), [[r["text"]] for r in records], analyzer))]
    result = score(records, found)
    assert set(result["recall"]) >= {"PL_PESEL", "PL_NIP", "DE_TAX_ID", "DATE_OF_BIRTH", "STREET_ADDRESS"}
    assert {t: r for t, r in result["recall"].items() if r < TARGETS.get(t, 0.99)} == {}
    assert {t: p for t, p in result["precision"].items() if p < 0.9} == {}
