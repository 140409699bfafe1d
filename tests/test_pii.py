import json

import pytest

from tasks.anonymize import anonymize, build_analyzer
from tasks.config import Config, ConfigError, config_from_dict
from tasks.data import validate


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
    assert "<PERSON>" in text
    dumped = json.dumps(report.__dict__)
    assert not any(v in dumped for v in present)


def test_unknown_entity_type_is_a_config_error():
    with pytest.raises(ConfigError, match="pii.entities: unknown entity type 'PASSPORT_NUMBER_X'"):
        build_analyzer(config_from_dict({"pii": {"entities": ["PERSON", "PASSPORT_NUMBER_X"]}}))


def test_records_the_second_pass_still_flags_are_quarantined(tmp_path, sample):
    # the first pass is told to leave e-mails and IBANs alone; the residual scan must catch them
    cfg = config_from_dict({"pii": {"entities": ["PERSON", "PHONE_NUMBER"]}})
    src, dst = tmp_path / "clean.jsonl", tmp_path / "anon.jsonl"
    rows = sample[:40]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with_email = sum(any("@" in m["content"] for m in r["messages"]) for r in rows)
    assert with_email > 0
    report = anonymize(cfg, src, dst)
    out = dst.read_text()
    assert report.residual_records >= with_email and report.residual_entities["EMAIL_ADDRESS"] >= with_email
    assert report.residual_entities["IBAN_CODE"] > 0
    assert "@" not in out and len(out.splitlines()) == len(rows) - report.residual_records
