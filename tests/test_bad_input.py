"""The bad-input catalogue: each case, fed to `loragate run` as a user would, is one line on stderr
naming what and where, exit code 2, no traceback, the input and params untouched, nothing run or
registered."""
from __future__ import annotations

import json

import pytest
import yaml

from flows.cli import main as cli
from tests.conftest import tiny_params


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"Ticket {i}: my order {i} never arrived", "completion": f"Category {i % 5}"}
            for i in range(start, start + n)]


def _jsonl(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


GOOD = _rows(80)
CHAT = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
CASES = {  # name: (file bytes, --set overrides, what the line must say)
    "malformed JSON line": (_jsonl([*GOOD, '{"prompt": "a", "compl']), [], "in.jsonl:81: not valid JSON"),
    "array instead of object": (_jsonl([*GOOD, "[1, 2]"]), [], "in.jsonl:81: a record must be a JSON object, not an array"),
    "scalar instead of object": (_jsonl([*GOOD, "42"]), [], "in.jsonl:81: a record must be a JSON object, not a number"),
    "string instead of object": (_jsonl([*GOOD, '"hello"']), [], "a record must be a JSON object, not a string"),
    "null line": (_jsonl([*GOOD, "null"]), [], "in.jsonl:81: a record must be a JSON object, not null"),
    "unknown field names": (_jsonl([{"question": "a", "answer": "b"}, *GOOD]), [], "in.jsonl:1: cannot detect the format"),
    "missing field": (_jsonl([*GOOD, {"prompt": "a"}]), [], "in.jsonl:81: field 'completion'"),
    "null field": (_jsonl([*GOOD, {"prompt": None, "completion": "b"}]), [], "in.jsonl:81: field 'prompt': must be a non-empty string"),
    "number field": (_jsonl([*GOOD, {"prompt": 3, "completion": "b"}]), [], "in.jsonl:81: field 'prompt': must be a non-empty string"),
    "empty answer": (_jsonl([*GOOD, {"prompt": "a", "completion": "  "}]), [], "in.jsonl:81: field 'completion'"),
    "chat without an assistant turn": (_jsonl([CHAT, {"messages": [{"role": "user", "content": "x"}]}]), [],
                                       "in.jsonl:2: field 'messages'"),
    "chat with an unknown role": (_jsonl([CHAT, {"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}]),
                                  [], "in.jsonl:2: field 'messages[1].role'"),
    "chat content not a string": (_jsonl([CHAT, {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}]),
                                  [], "in.jsonl:2: field 'messages[0].content'"),
    "messages not a list": (_jsonl([CHAT, {"messages": "hi"}]), [], "in.jsonl:2: field 'messages'"),
    "mixed formats": (_jsonl([*GOOD, CHAT]), [], "in.jsonl:81: a messages record in a prompt_completion file"),
    "empty file": (b"", [], "in.jsonl: no records"),
    "whitespace-only file": (b"  \n\n\t\n", [], "in.jsonl: no records"),
    "non-UTF-8 bytes": (_jsonl(GOOD) + b'{"prompt": "caf\xe9", "completion": "x"}\n', [], "in.jsonl:81: not UTF-8 text (byte 0xe9"),
    "CSV": (b"prompt,completion\nwhere is my order,shipping\n", [], "in.jsonl:1: looks like CSV, not JSON Lines"),
    "JSON, not JSON Lines": (json.dumps(GOOD, indent=2).encode(), [], "in.jsonl:1: a JSON document, not JSON Lines"),
    "too few records": (_jsonl(_rows(37)), [], "in.jsonl: 37 distinct records, fewer than data.min_records (40)"),
    "all records duplicates": (_jsonl(_rows(1) * 250), [], "in.jsonl: all 250 records are one record repeated"),
    "hold-out too small to score": (_jsonl(_rows(45)), ["split.holdout_fraction=0.05"],
                                    "the hold-out would hold about 2 records"),
    "LoRA rank zero": (_jsonl(GOOD), ["lora.r=0"], "params: lora.r: must be >= 1"),
    "learning rate zero": (_jsonl(GOOD), ["train.learning_rate=0"], "params: train.learning_rate: must be > 0"),
    "hold-out fraction out of range": (_jsonl(GOOD), ["split.holdout_fraction=0.7"], "params: split.holdout_fraction"),
    "zero steps": (_jsonl(GOOD), ["train.max_steps=0"], "params: train.max_steps: must be >= 1"),
    "misspelt params key": (_jsonl(GOOD), ["train.learnig_rate=0.1"],
                            "params: train.learnig_rate: unknown key (did you mean train.learning_rate?)"),
    "misspelt params section": (_jsonl(GOOD), ["trian.max_steps=3"], "params: trian: unknown section (did you mean train?)"),
    "override without a value": (_jsonl(GOOD), ["train.max_steps"], "--set 'train.max_steps': expected section.key=value"),
    "unknown entity type": (_jsonl(GOOD), ["pii.entities=[PERSON,PASSPORTX]"], "params: pii.entities: unknown entity type 'PASSPORTX'"),
    "missing base model folder": (_jsonl(GOOD), ["model.base=/no/such/model"], "model.base: model '/no/such/model': no such folder"),
    "base model that is not a causal LM": (_jsonl(GOOD), ["model.base=MINILM"], "is not a causal language model"),
    "Prefect server that is down": (_jsonl(GOOD), [], "PREFECT_API_URL http://127.0.0.1:9/api: the Prefect server does not answer"),
    "MLflow server that is down": (_jsonl(GOOD), ["registry.tracking_uri=http://127.0.0.1:9"],
                                   "registry.tracking_uri http://127.0.0.1:9: the MLflow server does not answer"),
    "MLflow store locked": (_jsonl(GOOD), [], "mlflow.db is locked by another process"),
}


@pytest.fixture
def ws(tmp_path, tiny_model):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model)))
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_touches_nothing(ws, case, capfd, monkeypatch):
    data, sets, expected = CASES[case]
    (ws / "in.jsonl").write_bytes(data)
    if case == "base model that is not a causal LM":
        encoder = ws / "encoder"
        encoder.mkdir()
        (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
        sets = [f"model.base={encoder}"]
    if case == "Prefect server that is down":

        monkeypatch.setattr("prefect.settings.get_current_settings", _settings_with_api("http://127.0.0.1:9/api"))
    if case == "MLflow store locked":
        import sqlite3

        (ws / "mlflow").mkdir()
        holder = sqlite3.connect(ws / "mlflow" / "mlflow.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process mid-write
    params = (ws / "params.yaml").read_bytes()
    capfd.readouterr()
    code = cli(["run", "--workspace", str(ws), "--data", "in.jsonl", *[a for s in sets for a in ("--set", s)]])
    out, err = capfd.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("loragate: "), err
    assert expected in err and "Traceback" not in err, err
    assert (ws / "in.jsonl").read_bytes() == data and (ws / "params.yaml").read_bytes() == params
    assert not any((ws / d).exists() for d in ("runs", "data")) and (case == "MLflow store locked") == (ws / "mlflow").exists()


def _settings_with_api(url: str):
    from prefect.settings import get_current_settings

    real = get_current_settings()
    fake = real.model_copy(update={"api": real.api.model_copy(update={"url": url})})
    return lambda: fake


def test_a_byte_order_mark_is_accepted(tmp_path):
    from tasks.config import Config
    from tasks.data.validate import validate

    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + _jsonl(_rows(3)))
    assert validate(Config(), src, tmp_path / "clean.jsonl").records_out == 3


def test_the_catalogue_holds_thirty_cases():
    assert len(CASES) >= 30


def test_a_disk_that_fills_up_while_a_split_is_written_is_one_line_and_leaves_no_half_file(tmp_path, capfd, monkeypatch):
    """A write that hits ENOSPC half-way (a patched write, as a full disk would behave)."""
    import builtins
    import errno

    from tasks.data import split

    src = tmp_path / "anonymized.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": f"question {i}"},
                                                                   {"role": "assistant", "content": "y"}]}) + "\n"
                           for i in range(400)))
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.jsonl").write_text("the previous split\n")
    real_open = builtins.open

    class Filling:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, text):
            self.written += len(text)
            if self.written > 2000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(text)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

    def filling_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Filling(fh) if "w" in mode and ".train.jsonl." in str(file) else fh

    monkeypatch.setattr(builtins, "open", filling_open)
    capfd.readouterr()
    code = split.main(["split", str(src), str(tmp_path / "splits/train.jsonl"), str(tmp_path / "splits/holdout.jsonl"),
                       str(tmp_path / "split.json"), "--params", str(tmp_path / "none.yaml")])
    monkeypatch.setattr(builtins, "open", real_open)
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"loragate: {tmp_path / 'splits/train.jsonl'}: no space left on device while writing it")
    assert (tmp_path / "splits" / "train.jsonl").read_text() == "the previous split\n"
    assert [p.name for p in (tmp_path / "splits").iterdir()] == ["train.jsonl"]
