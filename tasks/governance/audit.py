"""Tamper-evident audit log: append-only JSON lines, each holding the sha256 of the line before it.

    loragate audit verify     # exits 1 and names the entry when a line was edited, removed or reordered

Editing, removing or reordering a line breaks the chain at the next line; cutting lines off the end
is caught by the head (sequence number and hash of the last line) that the gate mirrors into MLflow.
Entries hold ids, hashes, names and counts, never record text.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    seq: int
    event: str
    data: dict[str, Any]
    hash: str  # sha256 of this entry's line: what the next entry's `prev` must hold


def _last_line(fh) -> str | None:
    fh.seek(0)
    last = None
    for line in fh:
        if line.strip():
            last = line.rstrip("\n")
    return last


def _keyed(fh, key: str) -> str | None:
    fh.seek(0)
    return next((line.rstrip("\n") for line in fh if line.strip() and json.loads(line).get("key") == key), None)


def append(path: str | Path, event: str, key: str | None = None, **data: Any) -> Entry:
    """Add one entry under an exclusive lock (flow threads and CLI calls may append at once). With
    a key, an entry already holding it is returned instead: a retried step never logs twice."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if key and (found := _keyed(fh, key)):
            entry = json.loads(found)
            return Entry(entry["seq"], entry["event"], entry, line_hash(found))
        data = {**data, "key": key} if key else data
        last = _last_line(fh)
        prev = json.loads(last) if last else None
        entry = {"seq": prev["seq"] + 1 if prev else 1, "prev": line_hash(last) if last else GENESIS,
                 "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "event": event, **data}
        line = json.dumps(entry, sort_keys=True, ensure_ascii=False)
        fh.seek(0, os.SEEK_END)
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())  # a decision is not made until it is on disk
    return Entry(entry["seq"], event, entry, line_hash(line))


def read(path: str | Path) -> list[Entry]:
    """All entries in file order (no checking; see `problems`)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            out.append(Entry(int(data.get("seq", 0)), str(data.get("event", "")), data, line_hash(line)))
    return out


def chain_problems(path: str | Path) -> list[str]:
    """One message per break in the chain, naming the line; empty when the chain is whole."""
    path, problems, prev_hash = Path(path), [], GENESIS
    if not path.exists():
        return []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"{path}:{number}: not a JSON entry (edited by hand?)")
            prev_hash = line_hash(line)
            continue
        if data.get("seq") != number:
            problems.append(f"{path}:{number}: entry seq {data.get('seq')} where {number} belongs "
                            "(lines removed or reordered)")
        elif data.get("prev") != prev_hash:
            problems.append(f"{path}:{number}: seq {number} ({data.get('event')}) does not chain to line "
                            f"{number - 1}: one of them was edited")
        prev_hash = line_hash(line)
    return problems
