import json

import pytest

from tasks.config import Config, config_from_dict
from tasks.data.validate import DataError, validate
from tasks.data.split import in_holdout, split


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, user, answer", [
    ({"instruction": "Sum", "input": "2+2", "output": "4"}, "Sum\n\n2+2", "4"),
    ({"prompt": "Hi", "completion": "Hello"}, "Hi", "Hello"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}, "Hi", "Yo"),
])
def test_formats_are_detected_and_normalized_to_chat(tmp_path, row, user, answer):
    dst = tmp_path / "clean.jsonl"
    report = validate(Config(), _write(tmp_path / "in.jsonl", [row, row]), dst)
    assert (report.records_in, report.records_out, report.duplicates_dropped) == (2, 1, 1)
    (out,) = [json.loads(line) for line in dst.read_text().splitlines()]
    assert out["messages"][-2:] == [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize("bad, expected", [
    ('{"messages": [', "in.jsonl:2: not valid JSON"),
    ({"messages": [{"role": "user", "content": "Jane Roe, 555-0100"}]}, "in.jsonl:2: field 'messages'"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]},
     "in.jsonl:2: field 'messages[1].role'"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
     "in.jsonl:2: field 'messages[1].content': must be a non-empty string"),
])
def test_invalid_input_names_file_line_and_field_and_writes_nothing(tmp_path, bad, expected):
    good = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    dst = tmp_path / "clean.jsonl"
    with pytest.raises(DataError) as err:
        validate(Config(), _write(tmp_path / "in.jsonl", [good, bad]), dst)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert "Jane" not in str(err.value)  # values never reach error messages
    assert not dst.exists()


def test_holdout_is_frozen_when_new_data_arrives(tmp_path):
    cfg = config_from_dict({"split": {"holdout_fraction": 0.2}})
    rows = [{"id": f"r{i}", "messages": _asks(f"question {i}")} for i in range(400)]
    _write(tmp_path / "q1.jsonl", rows)
    _write(tmp_path / "q2.jsonl", rows + [{"id": f"new{i}", "messages": _asks(f"new {i}")} for i in range(200)])
    split(cfg, tmp_path / "q1.jsonl", tmp_path / "t1", tmp_path / "h1")
    report = split(cfg, tmp_path / "q2.jsonl", tmp_path / "t2", tmp_path / "h2")
    old_holdout = {json.loads(x)["id"] for x in (tmp_path / "h1").read_text().splitlines()}
    new_holdout = {json.loads(x)["id"] for x in (tmp_path / "h2").read_text().splitlines()}
    assert old_holdout == {i for i in new_holdout if i.startswith("r")}
    assert 0.12 < report.holdout_share < 0.28
    ids = [f"r{i}" for i in range(400)]
    drawn = {salt: {i for i in ids if in_holdout(i, salt, 0.2)} for salt in ("a", "b")}
    assert drawn["a"] != drawn["b"] and len(drawn["a"] & drawn["b"]) < len(drawn["a"]) / 2  # the salt re-draws it


def _asks(question: str, answer: str = "an answer") -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_a_training_record_asking_a_hold_out_question_is_left_out_and_counted(tmp_path):
    cfg = config_from_dict({"split": {"holdout_fraction": 0.2, "near_duplicate_threshold": 1.0}})  # exact repeats only
    rows = [{"id": f"r{i}", "messages": _asks(f"Where is order {i}?")} for i in range(300)]
    held = [r for r in rows if in_holdout(r["id"], cfg.split.salt, 0.2)]
    copies = [{"id": f"copy{i}", "messages": _asks(r["messages"][0]["content"].upper() + "  ", "another answer")}
              for i, r in enumerate(held[:7])]
    copies = [c for c in copies if not in_holdout(c["id"], cfg.split.salt, 0.2)]
    _write(tmp_path / "all.jsonl", rows + copies)
    report = split(cfg, tmp_path / "all.jsonl", tmp_path / "train", tmp_path / "holdout")
    train_ids = {json.loads(x)["id"] for x in (tmp_path / "train").read_text().splitlines()}
    assert copies and report.leakage_dropped == len(copies) and not train_ids & {c["id"] for c in copies}
    assert report.train + report.holdout + report.leakage_dropped == len(rows) + len(copies)


def test_a_near_duplicate_of_a_hold_out_question_is_left_out_of_train(tmp_path, sample):
    cfg = config_from_dict({"split": {"holdout_fraction": 0.2}})
    rows = [{"id": f"r{i}", "messages": r["messages"]} for i, r in enumerate(sample[:200])]
    held = [r for r in rows if in_holdout(r["id"], cfg.split.salt, 0.2)]
    question = next(m["content"] for m in held[0]["messages"] if m["role"] == "user")
    edited = question.replace(".", "!", 1).replace(" ", "  ", 2) + " Thanks"  # a near-duplicate, not a repeat
    near = [{"id": f"near{i}", "messages": _asks(edited, "another answer")} for i in range(20)]
    near = [n for n in near if not in_holdout(n["id"], cfg.split.salt, 0.2)][:1]
    far = [{"id": "far-0", "messages": _asks("Could you reset the password of my account?")}]
    far = [f for f in far if not in_holdout(f["id"], cfg.split.salt, 0.2)]
    _write(tmp_path / "all.jsonl", rows + near + far)
    report = split(cfg, tmp_path / "all.jsonl", tmp_path / "train", tmp_path / "holdout")
    train_ids = {json.loads(x)["id"] for x in (tmp_path / "train").read_text().splitlines()}
    assert near and near[0]["id"] not in train_ids and report.near_duplicates_dropped >= 1
    assert {f["id"] for f in far} <= train_ids


def test_raw_personal_data_is_never_tracked_by_git():
    import subprocess

    import yaml

    stage = yaml.safe_load(open("dvc.yaml"))["stages"]["validate"]
    CLEAN = next(iter(stage["outs"][0]))  # the raw-text out: cache and push off
    assert stage["outs"][0][CLEAN] == {"cache": False, "push": False}
    tracked = subprocess.run(["git", "ls-files", str(CLEAN), "data/raw"], capture_output=True, text=True).stdout
    ignored = subprocess.run(["git", "check-ignore", "-q", str(CLEAN)]).returncode == 0
    assert tracked == "" and ignored


def test_a_folder_of_quarterly_drops_is_read_as_their_union(tmp_path, sample):
    drops = tmp_path / "raw"
    drops.mkdir()
    _write(drops / "2026Q1.jsonl", sample[:30])
    _write(drops / "2026Q2.jsonl", sample[30:50])
    (drops / "notes.txt").write_text("not a drop")
    report = validate(Config(), drops, tmp_path / "clean.jsonl")
    assert report.records_in == 50 and report.records_out == len({json.dumps(r["messages"]) for r in sample[:50]})
    (drops / "2026Q1.jsonl").unlink()
    (drops / "2026Q2.jsonl").unlink()
    with pytest.raises(DataError, match="a folder without"):
        validate(Config(), drops, tmp_path / "clean2.jsonl")


def test_record_changes_tell_new_gone_and_edited_records_apart():
    from tasks.evaluation.quarter import record_changes

    words = lambda n: {f"w{i}" for i in range(n)}
    before = {"kept": words(20), "edited-old": words(30) | {"x"}, "removed": {"a", "b", "c"}}
    now = {"kept": words(20), "edited-new": words(30) | {"y"}, "added": {"p", "q"}}
    assert record_changes(before, now) == {"new": ["added"], "gone": ["removed"], "changed": ["edited-new"]}
