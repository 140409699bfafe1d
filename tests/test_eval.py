"""Scores you can trust: bootstrap intervals against known answers, classification scores,
per-slice numbers, the data slice carried from the raw file to the splits."""
import json

import numpy as np
import pytest

from tasks.data.anonymize import anonymize
from tasks.config import Config, ConfigError, config_from_dict
from tasks.data.validate import DataError, validate
from tasks.evaluation.plots import confusion_plot
from tasks.evaluation.stats import slice_metrics
from tasks.evaluation.scoring import NO_LABEL, classification_scores, delta_interval, mean_interval, parse_label, score

CFG = Config()


def test_interval_of_identical_differences_is_that_difference():
    low, high = delta_interval(CFG, [0.2, 0.5, 0.1, 0.9] * 10, [0.3, 0.6, 0.2, 1.0] * 10)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_interval_matches_normal_theory_on_a_large_sample():
    x = np.random.default_rng(3).normal(0.1, 0.2, 1000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    low, high = mean_interval(CFG, x)
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_paired_interval_is_narrower_than_unpaired_when_rows_correlate():
    rng = np.random.default_rng(5)
    difficulty = rng.uniform(0, 1, 300)  # per-row difficulty shared by both models
    before, after = difficulty, difficulty + 0.05 + rng.normal(0, 0.02, 300)
    low, high = delta_interval(CFG, before, after)
    # unpaired: each model's rows resampled on their own, so the shared difficulty stays in the spread
    draws = [rng.choice(after, 300).mean() - rng.choice(before, 300).mean() for _ in range(2000)]
    unpaired_low, unpaired_high = np.percentile(draws, [2.5, 97.5])
    assert low > 0 and unpaired_low < 0.05 < unpaired_high
    assert (high - low) < (unpaired_high - unpaired_low) / 5  # the shared difficulty cancels out


def test_accuracy_interval_of_a_known_proportion():
    correct = [1.0] * 60 + [0.0] * 40
    low, high = mean_interval(CFG, correct)
    assert low == pytest.approx(0.6 - 1.96 * np.sqrt(0.24 / 100), abs=0.02)
    assert high == pytest.approx(0.6 + 1.96 * np.sqrt(0.24 / 100), abs=0.02)


def test_labels_are_parsed_from_free_answers():
    labels = ["billing", "delivery", "access"]
    assert parse_label("Billing", labels) == "billing"
    assert parse_label("I'd say delivery, maybe billing.", labels) == "delivery"
    assert parse_label("no idea", labels) == NO_LABEL


def test_classification_scores_by_hand():
    labels = ["a", "b", "c"]
    refs = ["a", "a", "b", "b", "c", "c"]
    preds = ["a", "b", "b", "b", "a", "nothing"]
    scores, correct = classification_scores(labels, preds, refs)
    assert correct == [1, 0, 1, 1, 0, 0] and scores["accuracy"] == pytest.approx(0.5)
    # a: P 1/2 R 1/2 -> 0.5; b: P 2/3 R 1 -> 0.8; c: nothing predicted -> 0
    assert (scores["f1/a"], scores["f1/b"], scores["f1/c"]) == pytest.approx((0.5, 0.8, 0.0))
    assert scores["macro_f1"] == pytest.approx(1.3 / 3)


def test_classification_mode_needs_labels_and_adds_scores_beside_rouge():
    with pytest.raises(ConfigError, match="eval.labels: task: classification needs at least 2 labels"):
        config_from_dict({"eval": {"task": "classification"}})
    cfg = config_from_dict({"eval": {"task": "classification", "labels": ["billing", "delivery"]}})
    means, per_row = score(cfg, ["billing", "delivery", "billing"], ["billing", "billing", "billing"])
    assert means["accuracy"] == pytest.approx(2 / 3) and per_row["accuracy"] == [1.0, 0.0, 1.0]
    assert "rougeL" in means and "bertscore_f1" in means
    rows = [{"reference": r, "prediction": p} for r, p in [("billing", "billing"), ("delivery", "billing")]]
    fig = confusion_plot(cfg.eval.labels, rows)
    counts = fig.axes[0].images[0].get_array()  # rows: reference billing, delivery, (no label)
    assert counts.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_slice_scores_cover_each_slice_with_its_own_delta():
    base = [{"slice": s, "rougeL": v, "bertscore_f1": 0.5} for s, v in [("de", 0.1), ("de", 0.3), ("pl", 0.5)]]
    ft = [{"slice": s, "rougeL": v, "bertscore_f1": 0.7} for s, v in [("de", 0.4), ("de", 0.4), ("pl", 0.4)]]
    out = slice_metrics(base, ft)
    assert out["slice/de/rows"] == 2 and out["slice/pl/rows"] == 1
    assert out["slice/de/delta/rougeL"] == pytest.approx(0.2) and out["slice/pl/delta/rougeL"] == pytest.approx(-0.1)
    assert out["slice/de/finetuned/bertscore_f1"] == pytest.approx(0.7)


def test_the_slice_field_travels_from_raw_records_to_the_anonymized_file(tmp_path, sample):
    cfg = config_from_dict({"data": {"slice_field": "market"}})
    rows = [dict(r, market=m) for r, m in zip(sample[:6], ["de", "pl"] * 3)]
    src = tmp_path / "raw.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    validate(cfg, src, tmp_path / "clean.jsonl")
    anonymize(cfg, tmp_path / "clean.jsonl", tmp_path / "anon.jsonl")
    out = [json.loads(line) for line in (tmp_path / "anon.jsonl").read_text().splitlines()]
    assert [r["slice"] for r in out] == ["de", "pl"] * 3
    src.write_text(json.dumps(dict(sample[0], market={"x": 1})) + "\n")
    with pytest.raises(DataError, match=r"raw.jsonl:1: field 'market' \(data.slice_field\): must be a short string"):
        validate(cfg, src, tmp_path / "clean2.jsonl")


def test_classification_deltas_carry_paired_intervals_for_accuracy_and_macro_f1():
    from tasks.evaluation.holdout import EvalReport
    from tasks.evaluation.stats import comparison_metrics

    cfg = config_from_dict({"eval": {"task": "classification", "labels": ["billing", "delivery"],
                                     "bootstrap_resamples": 300}})
    refs = ["billing", "delivery"] * 20
    base = [{"reference": r, "prediction": "billing", "accuracy": float(r == "billing")} for r in refs]
    ft = [{"reference": r, "prediction": r, "accuracy": 1.0} for r in refs]
    before, _ = classification_scores(cfg.eval.labels, [b["prediction"] for b in base], refs)
    after, _ = classification_scores(cfg.eval.labels, [f["prediction"] for f in ft], refs)
    m = comparison_metrics(cfg, base, ft, EvalReport(40, before, {}, 0), EvalReport(40, after, {}, 0))
    assert m["delta/accuracy"] == pytest.approx(0.5) and m["delta/macro_f1"] == pytest.approx(1 - 1 / 3)
    assert 0.3 < m["delta/accuracy_ci_low"] < 0.5 < m["delta/accuracy_ci_high"] <= 0.7
    assert m["delta/macro_f1_ci_low"] < m["delta/macro_f1"] < m["delta/macro_f1_ci_high"]
