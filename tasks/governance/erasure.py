"""Erasure (GDPR Art. 17): which input records, dataset versions and model versions a personal
value reached, and its removal.

    loragate erasure find VALUE
    loragate erasure apply VALUE --actor NAME

Every run indexes its data state once (the validated file's DVC hash), beside the audit log under
erasure/<hash>.jsonl: one line per record with its id, its split side and the keyed hashes
(HMAC-SHA256, 8 bytes) of each word and word pair of its text and of each digit run across words
(a phone or IBAN written with spaces). The index holds no raw value and is useless without the key:
$LORAGATE_ERASURE_KEY, else one derived from the workspace's record-id key. A value is in a record
when every one of its own word and word-pair hashes is. The raw input is searched the same way, so
a value the anonymizer missed is found too.

`apply` removes the records from data.raw (the next run retrains without them), marks every model
version built from them `erasure-pending` (the gate will not serve it), moves the serving alias to
the latest earlier approved version that is not affected (or removes it), and logs all of it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import regex

from tasks.config import Config
from tasks.governance import gate
from tasks.io import atomic_path, read_jsonl
from tasks.orchestration import stage_task, workspace_lock
from tasks.tracking import client_for

KEY_ENV = "LORAGATE_ERASURE_KEY"
_WORD = regex.compile(r"[\p{L}\p{N}](?:[\p{L}\p{N}@._+'-]*[\p{L}\p{N}])?")  # e-mails and hyphenated names stay whole
ERASURE_PENDING = gate.ERASURE_PENDING


class ErasureError(RuntimeError):
    """An erasure that cannot be done as asked; one line."""


def erasure_key(root: str | Path) -> bytes:
    from tasks.data.validate import record_id_key

    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    return hmac.new(record_id_key(root), b"loragate-erasure-index", hashlib.sha256).digest()


def _h(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def _grams(words: list[str]) -> set[str]:
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def keys(text: str, key: bytes) -> set[str]:
    """Hashes of each word, each word pair, and each run of digit-bearing words as digits only."""
    words = _words(text)
    grams = _grams(words)
    for i in range(len(words)):
        digits = ""
        for w in words[i:i + 8]:
            if not any(c.isdigit() for c in w):
                break
            digits += "".join(c for c in w if c.isdigit())
            if len(digits) >= 5:
                grams.add(f"#{digits}")
    return {_h(key, g) for g in grams}


def value_keys(value: str, key: bytes) -> set[str]:
    """What a record must hold to hold the value: its words and word pairs, or, for a value that
    is mostly digits (a phone, an ID), its digits in any spacing."""
    words = _words(value)
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) >= 5 and len(digits) >= 0.6 * sum(c.isalnum() for c in value):
        return {_h(key, f"#{digits}")}
    grams = _grams(words)
    if not grams:
        raise ErasureError("erasure: the value holds no letters or digits to look for")
    return {_h(key, g) for g in grams}


def _record_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def index_dir(cfg: Config, root: str | Path) -> Path:
    return gate.audit_path(cfg, root).parent / "erasure"


def build_index(cfg: Config, root: str | Path, hashes: dict[str, str]) -> Path:
    """The index of the current data state (written once per state; a run on unchanged data reuses it)."""
    from tqdm import tqdm

    from tasks.data.split import HOLDOUT, TRAIN

    root = Path(root).resolve()
    state = {Path(p).stem: h for p, h in hashes.items()}
    out = index_dir(cfg, root) / f"{state['clean']}.jsonl"
    if out.exists():
        return out
    key, side = erasure_key(root), {}
    for name, path in (("train", TRAIN), ("holdout", HOLDOUT)):
        side |= {r["id"]: name for r in read_jsonl(root / path)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"state": state, "salt": cfg.split.salt}, sort_keys=True) + "\n")
        for r in tqdm(read_jsonl(root / "data/interim/clean.jsonl"), desc="erasure index", unit="record"):
            fh.write(json.dumps({"id": r["id"], "split": side.get(r["id"], "left out"),
                                 "h": sorted(keys(_record_text(r["messages"]), key))}) + "\n")
    return out


build_index_task = stage_task(build_index, "erasure-index")


@dataclass
class Finding:
    value_key: str  # keyed hash of the value: what the audit log names it by
    input_lines: list[str] = field(default_factory=list)  # FILE:LINE of data.raw's records holding it
    states: dict[str, dict] = field(default_factory=dict)  # clean hash -> {"dataset": hashes, "records": {id: split}}
    versions: list[dict] = field(default_factory=list)  # model versions built from an affected state

    @property
    def empty(self) -> bool:
        return not (self.input_lines or self.states or self.versions)


def read_index(path: Path) -> tuple[dict, list[dict]]:
    """An index file's header ({"state": DVC hashes, "salt": ...}) and its rows (id, split, h)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def indexes(cfg: Config, root: str | Path) -> list[tuple[dict, list[dict]]]:
    """Every indexed data state, in file-name order."""
    return [read_index(path) for path in sorted(index_dir(cfg, root).glob("*.jsonl"))]


def _indexed(cfg: Config, root: Path, wanted: set[str]) -> dict[str, dict]:
    states = {}
    for header, rows in indexes(cfg, root):
        hits = {row["id"]: row["split"] for row in rows if wanted <= set(row["h"])}
        if hits:
            states[header["state"]["clean"]] = {"dataset": header["state"], "records": hits}
    return states


def _input_lines(cfg: Config, root: Path, wanted: set[str], key: bytes) -> list[str]:
    from tasks.data.validate import check

    _, records = check(cfg, root / cfg.data.raw)
    places = [where.rsplit(":", 1) for where, _, messages in records if wanted <= keys(_record_text(messages), key)]
    return [f"{Path(path).relative_to(root) if Path(path).is_relative_to(root) else path}:{line}" for path, line in places]


def find(cfg: Config, root: str | Path, value: str) -> Finding:
    root, key = Path(root).resolve(), erasure_key(root)
    wanted = value_keys(value, key)
    found = Finding(_h(key, "value:" + " ".join(_words(value))), _input_lines(cfg, root, wanted, key),
                    _indexed(cfg, root, wanted))
    client, model = client_for(cfg, root), cfg.registry.model_name
    if found.states and gate._exists(client, model):
        aliases = client.get_registered_model(model).aliases
        for mv in sorted(client.search_model_versions(f"name='{model}'"), key=lambda v: int(v.version)):
            state = client.get_run(mv.run_id).data.tags.get("loragate.data.clean")
            if state in found.states:
                found.versions.append({"model": model, "version": str(mv.version), "state": state,
                                       "status": mv.tags.get(gate.APPROVAL_TAG, ""),
                                       "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version))})
    return found


def _remove_lines(root: Path, places: list[str]) -> None:
    """Drop FILE:LINE records, each file rewritten whole or not at all."""
    by_file: dict[str, set[int]] = {}
    for place in places:
        name, line = place.rsplit(":", 1)
        by_file.setdefault(name, set()).add(int(line))
    for name, drop in by_file.items():
        path = root / name
        kept = [line for n, line in enumerate(path.read_bytes().splitlines(keepends=True), 1) if n not in drop]
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"".join(kept))


def apply(cfg: Config, root: str | Path, value: str, actor: str) -> Finding:
    """Remove the value's records from data.raw and take every model version built from them out
    of service; an audit entry first for each change."""
    if not actor.strip():
        raise ErasureError("erasure apply: --actor must name who carries out the request")
    root = Path(root).resolve()
    with workspace_lock(root):  # no run reads data.raw while it is rewritten
        found = find(cfg, root, value)
        if found.empty:
            return found
        client = client_for(cfg, root)
        gate.record_erasure(cfg, root, client, found.value_key, actor.strip(), len(found.input_lines),
                            cfg.data.raw, [v["version"] for v in found.versions])
        if found.input_lines:
            _remove_lines(root, found.input_lines)
        gate.withdraw(cfg, root, cfg.registry.model_name, [v["version"] for v in found.versions], actor.strip(),
                      f"erasure request {found.value_key}")
    return found


def describe(cfg: Config, found: Finding) -> list[str]:
    """What `loragate erasure find` prints; never the value itself."""
    if found.empty:
        return ["not found: no input record, indexed dataset version or model version holds it"]
    out = [f"value key {found.value_key} (the audit log names the request by it)",
           f"input {cfg.data.raw}: " + (f"{len(found.input_lines)} records: {', '.join(found.input_lines)}"
                                       if found.input_lines else "no record holds it now")]
    for state, hit in found.states.items():
        d = hit["dataset"]
        out.append(f"dataset version clean {state} (anonymized {d.get('anonymized', '-')}, train {d.get('train', '-')}, "
                   f"holdout {d.get('holdout', '-')}): records " + ", ".join(f"{i} ({s})" for i, s in hit["records"].items()))
    out += [f"model {v['model']} version {v['version']}: {v['status']}"
            f"{' (alias ' + ', '.join(v['aliases']) + ')' if v['aliases'] else ''}" for v in found.versions]
    return out
