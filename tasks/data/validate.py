"""Validate stage: read user JSONL in any supported format, check every record, drop exact
duplicates, and write one normalized chat format.

    python -m tasks.data.validate RAW.jsonl CLEAN.jsonl REPORT.json [--params params.yaml]   # DVC stage `validate`

Supported inputs: chat `messages` (system/user/assistant), Alpaca (`instruction`/`input`/`output`),
`prompt`/`completion` strings. An invalid record stops the stage with one line naming file, line
and field (never the value: it may be personal data), and nothing is written.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError

from tasks.config import Config
from tasks.io import atomic_path, write_json, write_jsonl
from tasks.orchestration import stage_main



class DataError(ValueError):
    """Input that cannot be used; the message is one line: file:line: field: problem."""


@dataclass(frozen=True)
class ValidationReport:
    format: str
    records_in: int
    records_out: int
    duplicates_dropped: int


def detect_format(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    return None


def _non_empty(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


Text = Annotated[str, BeforeValidator(_non_empty)]
_RECORD = ConfigDict(extra="ignore")  # other fields (a slice label, ids) travel along unchecked


class Message(BaseModel):
    model_config = _RECORD
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatRecord(BaseModel):
    model_config = _RECORD
    messages: Annotated[list[Message], Field(min_length=2)]


class AlpacaRecord(BaseModel):
    model_config = _RECORD
    instruction: Text
    input: StrictStr = ""
    output: Text


class PromptCompletionRecord(BaseModel):
    model_config = _RECORD
    prompt: Text
    completion: Text


SCHEMAS = {"messages": ChatRecord, "alpaca": AlpacaRecord, "prompt_completion": PromptCompletionRecord}  # the formats


def _parsed(record: Any, fmt: str, where: str) -> BaseModel:
    """The record checked against its format's schema; the first problem as one line naming the
    field (`messages[1].role`), never the value."""
    try:
        return SCHEMAS[fmt].model_validate(record)
    except ValidationError as err:
        e = err.errors()[0]
        if not e["loc"]:
            raise DataError(f"{where}: record must be a JSON object") from None
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        why = e["msg"].removeprefix("Value error, ")
        raise DataError(f"{where}: field '{field}': {why[0].lower()}{why[1:]}") from None


def _chat(messages: list[dict[str, str]], where: str) -> list[dict[str, str]]:
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field 'messages[{len(messages) - 1}].role': the last message must be the assistant's")
    if not any(m["role"] == "user" for m in messages):
        raise DataError(f"{where}: field 'messages': no user message")
    return messages


def normalize(record: Any, fmt: str, where: str) -> list[dict[str, str]]:
    """One record -> chat messages ending with the assistant's answer."""
    rec = _parsed(record, fmt, where)
    if fmt == "messages":
        return _chat([m.model_dump() for m in rec.messages], where)
    if fmt == "alpaca":
        user = f"{rec.instruction}\n\n{rec.input}" if rec.input.strip() else rec.instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": rec.output}]
    return [{"role": "user", "content": rec.prompt}, {"role": "assistant", "content": rec.completion}]


def _slice(record: dict, field: str, where: str) -> str:
    """The record's slice label for per-slice scores; a record without one is its own visible slice."""
    value = record.get(field, "(missing)")
    if not isinstance(value, (str, int, bool)) or not str(value).strip() or len(str(value)) > 64:
        raise DataError(f"{where}: field '{field}' (data.slice_field): must be a short string or number")
    return str(value)


ID_KEY_ENV = "LORAGATE_ID_KEY"
ID_KEY_FILE = Path(".loragate/record-id.key")


def record_id_key(root: str | Path = ".") -> bytes:
    """The secret behind record ids: $LORAGATE_ID_KEY (share it across a team's machines), else a
    random key made once in the workspace's .loragate/ (git-ignored; losing it re-draws the hold-out)."""
    if os.environ.get(ID_KEY_ENV):
        return os.environ[ID_KEY_ENV].encode()
    path = Path(root) / ID_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
    return path.read_text().strip().encode()


def record_id(messages: list[dict[str, str]], key: bytes) -> str:
    """A keyed hash of the raw record, taken before anonymization: the id (and so the hold-out
    side) stays the same whatever the anonymizer later does to the text, and reveals nothing of it."""
    return hmac.new(key, json.dumps(messages, sort_keys=True).encode(), hashlib.sha256).hexdigest()[:16]


def system_prompt(path: str | Path) -> str | None:
    """The system message of a normalized file's first record (what the served model is told)."""
    with open(path, encoding="utf-8") as fh:
        first = json.loads(fh.readline())["messages"][0]
    return first["content"] if first["role"] == "system" else None


def _not_jsonl(src: Path, first: str) -> str | None:
    """What a first line that is not JSON says about the file, when it says something."""
    head = first.strip()
    if head.startswith("[") or head == "{":
        return f"{src}:1: a JSON document, not JSON Lines: write one JSON object per line (e.g. jq -c '.[]')"
    if "," in head and not head.startswith("{"):
        return f"{src}:1: looks like CSV, not JSON Lines: write each row as a JSON object on its own line"
    return None


def _decoded(src: Path, n: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a byte-order mark is accepted
    except UnicodeDecodeError as err:
        raise DataError(f"{src}:{n}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                        "save the file as UTF-8") from None


_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false", type(None): "null"}


def _parse_lines(src: Path) -> list[tuple[str, Any]]:
    if not src.is_file():
        raise DataError(f"{src}: no such file" if not src.exists() else f"{src}: not a file")
    rows = []
    with open(src, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            line = _decoded(src, n, raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError((n == 1 and _not_jsonl(src, line))
                                or f"{src}:{n}: not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{src}:{n}: a record must be a JSON object, not {_KINDS.get(type(record), 'that')}")
            rows.append((f"{src}:{n}", record))
    if not rows:
        raise DataError(f"{src}: no records (the file is empty or holds only blank lines)")
    return rows


MIN_HOLDOUT = 10  # hold-out records below which scores and their intervals say nothing


def check_volume(cfg: Config, src: str | Path, messages: list[list[dict[str, str]]]) -> None:
    """Enough distinct records to fine-tune and to score: refused in one line before any work."""
    distinct = len({json.dumps(m, sort_keys=True) for m in messages})
    if distinct == 1 and len(messages) > 1:
        raise DataError(f"{src}: all {len(messages)} records are one record repeated")
    if distinct < cfg.data.min_records:
        raise DataError(f"{src}: {distinct} distinct records, fewer than data.min_records ({cfg.data.min_records}): "
                        "fine-tuning on so few is unstable; add data, or lower data.min_records to train anyway")
    if distinct * cfg.split.holdout_fraction < MIN_HOLDOUT:
        raise DataError(f"{src}: the hold-out would hold about {int(distinct * cfg.split.holdout_fraction)} records "
                        f"(split.holdout_fraction {cfg.split.holdout_fraction} of {distinct}); {MIN_HOLDOUT} are "
                        "needed to score: raise it or add data")


def input_files(src: str | Path) -> list[Path]:
    """data.raw as files: the file itself, or a folder's *.jsonl drops in name order (2026Q1.jsonl,
    2026Q2.jsonl, ...): each quarter adds a file, the pipeline reads their union."""
    src = Path(src)
    if not src.is_dir():
        return [src]
    files = sorted(p for p in src.glob("*.jsonl") if p.is_file())
    if not files:
        raise DataError(f"{src}: a folder without *.jsonl files (data.raw may be a JSONL file or a folder of them)")
    return files


def check(cfg: Config, src: str | Path) -> tuple[str, list[tuple[str, Any, list[dict[str, str]]]]]:
    """Every record of src (a file or a folder of drops) checked and normalized in memory, nothing
    written: the format and (where, record, messages) per line. The CLI runs this before any server starts."""
    rows = [row for path in input_files(src) for row in _parse_lines(path)]
    fmt = cfg.data.format
    if fmt == "auto":
        first = rows[0][1] if isinstance(rows[0][1], dict) else {}
        fmt = detect_format(first) or ""
        if not fmt:
            raise DataError(f"{rows[0][0]}: cannot detect the format: expected 'messages', "
                            "'instruction'+'output' or 'prompt'+'completion' fields")
    for where, record in rows:
        found = detect_format(record)
        if found and found != fmt:
            raise DataError(f"{where}: a {found} record in a {fmt} file (set by its first line): one format per file")
    return fmt, [(where, record, normalize(record, fmt, where)) for where, record in rows]


def validate(cfg: Config, src: str | Path, dst: str | Path, key: bytes | None = None) -> ValidationReport:
    """Check and normalize src into dst (rows: id, messages); exact duplicates are dropped. Ids are
    keyed hashes of the raw records (key: `record_id_key()` of the working directory by default)."""
    key = key or record_id_key()
    fmt, records = check(cfg, src)
    seen: dict[str, dict] = {}
    for where, record, messages in records:
        row = {"id": record_id(messages, key), "messages": messages}
        if cfg.data.slice_field:
            row["slice"] = _slice(record, cfg.data.slice_field, where)
        seen.setdefault(row["id"], row)
    written = write_jsonl(dst, seen.values())
    return ValidationReport(fmt, len(records), written, len(records) - written)


def _run(cfg: Config, src: str, dst: str, report_path: str) -> None:
    check_volume(cfg, src, [m for _, _, m in check(cfg, src)[1]])
    report = validate(cfg, src, dst)
    write_json(report_path, asdict(report))
    print(f"validate: {report.records_out} records ({report.duplicates_dropped} duplicates dropped)")


def main(argv: list[str]) -> int:
    return stage_main(argv, ("src", "dst", "report"), _run, (DataError,), prefix="invalid input: ")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
