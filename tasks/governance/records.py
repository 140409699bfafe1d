"""Compliance records (the DPIA and the AI Act technical file): the run's facts they are filled
from, their schema check, and how a record is attached and later checked.

A record revision is written once as canonical JSON (plus its HTML page) under
runs/<run_id>/compliance/, logged to the MLflow run as the same bytes, tagged on the model version,
and its sha256 goes into the audit log (`<kind>_recorded`). `loragate audit verify` downloads the
newest revision of each record from MLflow and fails when its bytes no longer hash to the logged value.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tasks.config import Config
from tasks.governance import audit
from tasks.io import file_sha256, read_json
from tasks.orchestration import stage_task

SCHEMAS = Path(__file__).with_name("schemas")
_ENV = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=select_autoescape(["j2"]))
COMPLIANCE_TAG = "loragate.compliance"


class RecordError(RuntimeError):
    """A compliance record that cannot be made or checked; one line."""


def canonical(record: dict) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def validate(kind: str, record: dict) -> None:
    """Against the JSON Schema the project ships (tasks/governance/schemas/<kind>.schema.json)."""
    import jsonschema

    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(record), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top)"
        raise RecordError(f"{kind} record: {where}: {errors[0].message}")


def sha256_files(paths: list[Path]) -> str:
    """One digest over files, in name order, each name and content: a weights or adapter folder."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


@lru_cache(maxsize=8)
def weights_sha256(model_dir: str) -> str:
    folder = Path(model_dir)
    files = [p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"}] if folder.is_dir() else []
    return sha256_files(files) if files else "unavailable (no local weight files)"


def stage_reports(root: Path) -> dict[str, Any]:
    return {name: read_json(root / "data" / "reports" / f"{name}.json") for name in ("validation", "pii", "split")}


def raw_kept_local(root: Path) -> bool:
    """True when dvc.yaml keeps the raw (validated, not yet anonymized) file out of the DVC cache and
    every remote: the measure is read from the workspace, not assumed."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
    outs = stages.get("validate", {}).get("outs", [])
    spec = next((o["data/interim/clean.jsonl"] for o in outs if isinstance(o, dict) and "data/interim/clean.jsonl" in o), {})
    return spec.get("cache") is False and spec.get("push") is False


def run_facts(cfg: Config, root: Path, client, model: str, version: str) -> dict[str, Any]:
    """What a record states about one model version, read from the run's own outputs."""
    mv = client.get_model_version(model, version)
    run = client.get_run(mv.run_id)
    entries = audit.read(root / cfg.gate.audit_log)
    return {"model": model, "version": str(version), "run_id": mv.run_id, "run_name": run.info.run_name,
            "tags": dict(mv.tags), "run_tags": dict(run.data.tags), "metrics": dict(run.data.metrics),
            "run_params": dict(run.data.params),
            "reports": stage_reports(root), "adapter_dir": root / "runs" / mv.run_id / "train" / "adapter",
            "audit_head": {"seq": entries[-1].seq, "hash": entries[-1].hash} if entries else {"seq": 0, "hash": ""},
            "audit_chain_intact": not audit.chain_problems(root / cfg.gate.audit_log),
            "raw_kept_local": raw_kept_local(root), "initiator": mv.tags.get("loragate.initiator", "")}


def render(kind: str, record: dict) -> str:
    return _ENV.get_template(f"{kind}.html.j2").render(r=record)


def attach(cfg: Config, root: Path, client, record: dict, kind: str, event: str, actor: str) -> str:
    """Validate, write, log to MLflow (JSON and HTML), tag the version, and put the JSON's sha256 in
    the audit log. Returns the sha256."""
    from tasks.governance.gate import _record

    validate(kind, record)
    sheet = record["technical_sheet"] if "technical_sheet" in record else record["general_description"]
    model, version, run_id, rev = sheet["model"], sheet["version"], sheet["run_id"], record["revision"]
    key = f"{event}:{model}:{version}:{rev}"
    if done := next((e for e in audit.read(root / cfg.gate.audit_log) if e.data.get("key") == key), None):
        return done.data["sha256"]  # a retried step: the first attempt's record stands
    folder = root / "runs" / run_id / "compliance"
    folder.mkdir(parents=True, exist_ok=True)
    data = canonical(record)
    (folder / f"{kind}-r{rev}.json").write_bytes(data)
    (folder / f"{kind}-r{rev}.html").write_text(render(kind, record), encoding="utf-8")
    for suffix in ("json", "html"):
        client.log_artifact(run_id, str(folder / f"{kind}-r{rev}.{suffix}"), "compliance")
    sha = hashlib.sha256(data).hexdigest()
    _record(cfg, root, client, event, key=key, model=model, version=str(version),
            run_id=run_id, kind=kind, revision=rev, artifact=f"compliance/{kind}-r{rev}.json", sha256=sha, actor=actor)
    client.set_model_version_tag(model, str(version), f"loragate.{kind}", f"r{rev}:{sha[:16]}")
    return sha


def latest(entries: list[audit.Entry], model: str, version: str, kind: str) -> audit.Entry | None:
    found = [e for e in entries if e.data.get("kind") == kind and e.data.get("model") == model
             and e.data.get("version") == str(version) and "sha256" in e.data]
    return found[-1] if found else None


def load(client, entry: audit.Entry) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(entry.data["run_id"], entry.data["artifact"], tmp)).read_text())


def hash_problems(client, entries: list[audit.Entry]) -> list[str]:
    """Each record's newest revision, downloaded from MLflow, must hash to what the log holds."""
    newest: dict[tuple, audit.Entry] = {}
    for e in entries:
        if "sha256" in e.data and e.data.get("kind"):
            newest[(e.data["model"], e.data["version"], e.data["kind"])] = e
    problems = []
    for (model, version, kind), e in sorted(newest.items()):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                data = Path(client.download_artifacts(e.data["run_id"], e.data["artifact"], tmp)).read_bytes()
            except Exception:
                problems.append(f"{model} version {version}: {kind} record {e.data['artifact']} is missing from MLflow")
                continue
        if hashlib.sha256(data).hexdigest() != e.data["sha256"]:
            problems.append(f"{model} version {version}: {kind} record {e.data['artifact']} was changed after it was "
                            f"recorded (sha256 differs from audit entry {e.seq})")
    return problems


def compliance_records(cfg: Config, root: str | Path, model: str, version: str, model_dir: str) -> dict[str, str]:
    """Revision 1 of the version's DPIA and technical file, attached; their sha256 by kind."""
    from tasks.governance import dpia, technical_file

    return {"dpia": dpia.record(cfg, root, model, version),
            "technical_file": technical_file.record(cfg, root, model, version, model_dir)}


compliance_records_task = stage_task(compliance_records, "compliance-records", retries=2)
