"""`loragate`: the command line, a thin shell over the flows and tasks.

    loragate run [--data PATH] [--params FILE] [--set section.key=value ...] [--workspace DIR] [--wait-for-approval]
    loragate run --resume [RUN_ID]   # a killed run goes on from its last checkpoint
    loragate status [--json]
    loragate approve MODEL VERSION --reviewer NAME --rationale TEXT     (and: reject)
    loragate rollback MODEL --reviewer NAME --rationale TEXT
    loragate audit verify | repair
    loragate dpia show MODEL VERSION | sign MODEL VERSION --dpo NAME --opinion TEXT [--advice approve]
    loragate erasure find VALUE | apply VALUE --actor NAME     # VALUE '-': read from stdin (kept out of shell history)
    loragate schedule [--cron CRON] [--serve]   # a Prefect deployment retraining on a cron (default: quarterly)
    loragate export MODEL VERSION|@ALIAS [--format adapter|merged|gguf] [--out DIR]   # approved versions only
    loragate serve [MODEL@ALIAS] [--port 8080]   # MLflow's model server for the alias holder; requests logged anonymized
    loragate drift [--since DATE]     # served requests vs the serving version's training data
    loragate doctor                # packages, models, disk, MLflow store, Prefect API, GPU: each problem with its fix
    loragate ui [--port 5000]      # MLflow UI on 127.0.0.1 for the local store
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import tasks  # noqa: F401  (offline defaults before any library import)
from tasks.config import ConfigError, load_config
from tasks.training.models import ModelNotFound
from tasks.data.validate import DataError, check, check_volume
from tasks.data.versioning import StageFailed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loragate", description="Auditable LoRA/QLoRA fine-tuning pipeline.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline; ends with a model version pending approval")
    run.add_argument("--data", help="input JSONL, or a folder of JSONL drops (sets data.raw)")
    run.add_argument("--params", default="params.yaml", help="params file, relative to the workspace")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a param; written into the params file, as `dvc exp run -S` does")
    run.add_argument("--workspace", default=".", help="the DVC/git workspace holding dvc.yaml (default: .)")
    run.add_argument("--resume", nargs="?", const="", metavar="RUN_ID",
                     help="continue a killed run (default: the newest unfinished one) from its last checkpoint")
    run.add_argument("--compliance", action="store_true",
                     help="a compliance run (sets compliance.required): DPIA record, AI Act technical file, DPO sign-off")
    run.add_argument("--wait-for-approval", action="store_true",
                     help="pause after registration with an approval form in the Prefect UI (needs PREFECT_API_URL)")
    status = _with_store(sub.add_parser("status", help="registered versions, approval states, alias history"))
    status.add_argument("--json", action="store_true")
    for verb in ("approve", "reject"):
        decide = _with_store(sub.add_parser(verb, help=f"{verb} a pending model version (four eyes)"))
        decide.add_argument("model")
        decide.add_argument("version")
        _with_reviewer(decide)
    back = _with_store(sub.add_parser("rollback", help="return the serving alias to the previously approved version"))
    back.add_argument("model")
    _with_reviewer(back)
    _with_store(sub.add_parser("doctor", help="check packages, models, disk, MLflow store and Prefect API; each problem with its fix"))
    ui = _with_store(sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the workspace's store"))
    ui.add_argument("--port", type=int, default=5000)
    aud = sub.add_parser("audit", help="check the hash-chained audit log against MLflow")
    audit_sub = aud.add_subparsers(dest="audit_command", required=True)
    _with_store(audit_sub.add_parser("verify", help="check the chain, its head in MLflow, states and the alias"))
    _with_store(audit_sub.add_parser("repair", help="replay the log onto MLflow after a crash between the two"))
    dpia = sub.add_parser("dpia", help="a compliance version's DPIA record and technical file; the DPO's signature")
    dpia_sub = dpia.add_subparsers(dest="dpia_command", required=True)
    show = _with_store(dpia_sub.add_parser("show", help="where the records are, and a summary"))
    sign = _with_store(dpia_sub.add_parser("sign", help="record the DPO's opinion (needed before approval)"))
    for q in (show, sign):
        q.add_argument("model")
        q.add_argument("version")
    sign.add_argument("--dpo", required=True, help="the data-protection officer signing")
    sign.add_argument("--opinion", required=True, help="the DPO's opinion; stored in the DPIA and the audit log")
    sign.add_argument("--advice", default="approve", choices=["approve", "conditional", "reject", "refer"],
                      help="reject and refer (prior consultation, GDPR Art. 36) block approval")
    sch = _with_store(sub.add_parser("schedule", help="create or update the retraining deployment (params schedule:)"))
    sch.add_argument("--cron", help="when to run (sets schedule.cron), e.g. '0 2 1 1,4,7,10 *'")
    sch.add_argument("--serve", action="store_true", help="also run it from this process when due (blocks)")
    exp = _with_store(sub.add_parser("export", help="an approved version as a PEFT adapter folder, a merged HF model or a GGUF file"))
    exp.add_argument("model")
    exp.add_argument("version", help="a version number or @alias (e.g. @production)")
    exp.add_argument("--format", default="adapter", choices=["adapter", "merged", "gguf"])
    exp.add_argument("--out", help="folder to write (default: exports/MODEL-vN-FORMAT in the workspace)")
    srv = _with_store(sub.add_parser("serve", help="serve the version the serving alias points at on 127.0.0.1"))
    srv.add_argument("ref", nargs="?", help="MODEL@ALIAS (default: registry.model_name@gate.alias)")
    srv.add_argument("--port", type=int, default=8080)
    dri = _with_store(sub.add_parser("drift", help="served requests against the serving version's training data"))
    dri.add_argument("--since", help="only requests logged from this date/time on (ISO, e.g. 2026-10-01)")
    era = sub.add_parser("erasure", help="GDPR Art. 17: where a personal value went, and its removal")
    era_sub = era.add_subparsers(dest="erasure_command", required=True)
    find = _with_store(era_sub.add_parser("find", help="input records, dataset versions and model versions holding VALUE"))
    apply = _with_store(era_sub.add_parser("apply", help="remove VALUE's records from the input; take affected versions out of service"))
    for q in (find, apply):
        q.add_argument("value", help="the personal value; '-' reads it from stdin (kept out of shell history)")
    apply.add_argument("--actor", required=True, help="who carries out the erasure request")
    return p


def _with_store(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--params", default="params.yaml", help="params file, relative to the workspace")
    p.add_argument("--workspace", default=".", help="workspace holding params and the MLflow store")
    return p


def _with_reviewer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reviewer", required=True, help="who decides; must not be the run's initiator")
    p.add_argument("--rationale", required=True, help="why; recorded in the audit log and on the version")


def cmd_run(args) -> int:
    from flows.finetune import existing_summary, finetune
    from tasks.data.split import TRAIN
    from tasks.tracking import resumable_run
    from tasks.orchestration import workspace_lock
    from tasks.training.train import check_resume

    root = Path(args.workspace).resolve()
    sets = list(args.sets) + ([f"data.raw={args.data}"] if args.data else []) + \
        (["compliance.required=true"] if args.compliance else [])
    if args.wait_for_approval and not _prefect_server():
        raise ConfigError("--wait-for-approval: needs a Prefect server the reviewer can reach; start one "
                          "(`prefect server start`) and set PREFECT_API_URL")
    cfg = load_config(root / args.params, sets)  # checked in memory; the flow writes it for DVC's stages
    _preflight(cfg, root)
    with workspace_lock(root):  # taken before the flow starts, so a busy workspace is one line, not a failed flow
        if args.resume is None and (built := _built_already(cfg, root)):  # no orchestrator started for nothing
            print(existing_summary(cfg, root, built).note)
            return 0
        resume = None
        if args.resume is not None:  # which run, and whether its checkpoints still fit, before anything starts
            resume = resumable_run(cfg, root, args.resume or None)
            out = root / "runs" / resume / "train"
            planted = out / "train_with_canaries.jsonl"  # a compliance run trained on the split plus its canaries
            check_resume(cfg, planted if cfg.compliance.required and planted.exists() else root / TRAIN, out)
        summary = finetune(str(root), args.params, wait_for_approval=args.wait_for_approval, overrides=sets,
                           resume=resume)
    if summary.up_to_date:
        print(summary.note)
        return 0
    m = summary.metrics
    print(f"\nhold-out ROUGE-L {m['baseline/rougeL']:.3f} -> {m['finetuned/rougeL']:.3f}, "
          f"BERTScore F1 {m['baseline/bertscore_f1']:.3f} -> {m['finetuned/bertscore_f1']:.3f}")
    state = summary.decision.status if summary.decision else ("pending" if summary.checks.passed else "rejected-by-checks")
    print(f"registered {summary.model_name} version {summary.version}: {state} (MLflow run {summary.run_id})")
    if summary.note:
        print(summary.note)
    if state == "pending":
        print(f"next: review it in the MLflow UI (`loragate ui`, {experiment_url(cfg, root, 5000)}), then "
              f"`loragate approve {summary.model_name} {summary.version} --reviewer NAME --rationale TEXT`")
    return 0


def _built_already(cfg, root: Path):
    """The version built from exactly the current data, params and code, when DVC has nothing to redo."""
    from tasks.data.versioning import current_hashes
    from tasks.tracking import built_version, run_key

    hashes = current_hashes(root)
    return built_version(cfg, root, run_key(cfg, hashes)) if hashes else None


def _preflight(cfg, root: Path) -> None:
    """Bad input, params, model or servers are one line here, before Prefect or DVC start."""
    from tasks.config import check_compliance
    from tasks.data.anonymize import check_entities
    from tasks.orchestration import check_prefect
    from tasks.tracking import check_store
    from tasks.training.models import check_model

    check_compliance(cfg)  # before any data is read
    if not Path(root / cfg.data.raw).exists():
        raise ConfigError(f"data.raw: {cfg.data.raw}: no such file or folder")
    src = os.path.relpath(root / cfg.data.raw)
    src = src if not src.startswith("..") else str(root / cfg.data.raw)  # messages name the file as you would
    check_volume(cfg, src, [messages for _, _, messages in check(cfg, src)[1]])
    check_model(cfg.model.base)
    check_entities(cfg)
    if not os.access(root, os.W_OK):
        raise ConfigError(f"workspace {root}: not writable (runs/, mlflow/ and the DVC cache are written there)")
    check_store(cfg, root)
    check_prefect()


def _prefect_server() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def version_rows(cfg, root: Path) -> list[dict]:
    from tasks.governance.gate import APPROVAL_TAG, CHECKS_TAG
    from tasks.tracking import client_for

    client = client_for(cfg, root)
    try:
        aliases = client.get_registered_model(cfg.registry.model_name).aliases
    except Exception:  # no version registered yet
        return []
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name='{cfg.registry.model_name}'")
    return [{"model": v.name, "version": v.version, "status": v.tags.get(APPROVAL_TAG, "unknown"),
             "aliases": sorted(by_version.get(str(v.version), [])), "run_id": v.run_id,
             "initiator": v.tags.get("loragate.initiator", ""), "base_model": v.tags.get("loragate.base_model", ""),
             "checks": v.tags.get(CHECKS_TAG, ""), "reviewer": v.tags.get("loragate.reviewer", ""),
             "quarter_report": _quarter_report(client, v.run_id)}
            for v in sorted(versions, key=lambda v: int(v.version))]


def _quarter_report(client, run_id: str) -> str:
    """Where a run's quarter-over-quarter page is, if it has one."""
    run = client.get_run(run_id)
    path = run.data.tags.get("loragate.quarter_report")
    return f"{run.info.artifact_uri}/{path}" if path else ""


def cmd_status(args) -> int:
    from tasks.governance.gate import alias_history

    root = Path(args.workspace).resolve()
    cfg = load_config(root / args.params)
    rows, history = version_rows(cfg, root), alias_history(cfg, root, cfg.registry.model_name)
    if args.json:
        print(json.dumps({"versions": rows, "alias_history": history}, indent=2))
        return 0
    if not rows:
        print("no model versions registered yet: run `loragate run`")
        return 0
    print(f"{'model':<20} {'version':>7}  {'status':<20} {'checks':<8} {'aliases':<12} {'initiator':<16} reviewer")
    for r in rows:
        print(f"{r['model']:<20} {r['version']:>7}  {r['status']:<20} {r['checks'] or '-':<8} "
              f"{','.join(r['aliases']) or '-':<12} {r['initiator']:<16} {r['reviewer'] or '-'}")
    for r in rows:
        if r["quarter_report"] and r["status"] == "pending":
            print(f"version {r['version']}: what changed since the champion: {r['quarter_report']}")
    for h in history:
        print(f"{h['time']}  alias {h['alias']}: version {h['from_version'] or '-'} -> {h['version'] or 'removed'}  "
              f"by {h['actor']} ({h['reason']})")
    return 0


def cmd_decide(args) -> int:
    from tasks.governance import gate

    root = Path(args.workspace).resolve()
    cfg = load_config(root / args.params)
    if args.command == "rollback":
        d = gate.rollback(cfg, root, args.model, args.reviewer, args.rationale)
    else:
        d = {"approve": gate.approve, "reject": gate.reject}[args.command](
            cfg, root, args.model, args.version, args.reviewer, args.rationale)
    moved = f"; alias {cfg.gate.alias}: version {d.alias_from or '-'} -> {d.alias_to}" if d.alias_to else ""
    print(f"{d.model} version {d.version}: {d.status} by {d.actor}{moved}")
    return 0


def cmd_audit(args) -> int:
    from tasks.governance import audit, gate

    root = Path(args.workspace).resolve()
    cfg = load_config(root / args.params)
    if args.audit_command == "repair":
        for line in gate.repair(cfg, root) or ["nothing to repair: MLflow matches the log"]:
            print(f"audit repair: {line}")
    problems = gate.verify(cfg, root)
    for line in problems:
        print(f"loragate: audit: {line}", file=sys.stderr)
    if not problems:
        print(f"audit: {len(audit.read(gate.audit_path(cfg, root)))} entries, chain intact, head matches MLflow, "
              f"states and alias '{cfg.gate.alias}' match the log")
    return 1 if problems else 0


def cmd_dpia(args) -> int:
    from tasks.governance import dpia

    root = Path(args.workspace).resolve()
    cfg = load_config(root / args.params)
    if args.dpia_command == "sign":
        rec = dpia.sign(cfg, root, args.model, args.version, args.dpo, args.opinion, args.advice)
        print(f"{args.model} version {args.version}: DPIA signed by {args.dpo} ({args.advice}), revision {rec['revision']}")
        return 0
    for line in dpia.summary(cfg, root, args.model, args.version):
        print(line)
    return 0


def cmd_schedule(args) -> int:
    from flows.schedule import schedule

    root = Path(args.workspace).resolve()
    cfg = load_config(root / args.params, [f"schedule.cron={args.cron}"] if args.cron else [])  # --cron: the deployment's only
    if args.serve:
        print(f"serving the retraining of {root} ({cfg.schedule.cron}, {cfg.schedule.timezone}); Ctrl-C stops", flush=True)
    name = schedule(cfg, root, args.params, serve=args.serve)
    if not args.serve:
        print(f"deployment {name}: {cfg.schedule.cron} ({cfg.schedule.timezone}); runs when a process serves it: "
              f"`loragate schedule --serve --workspace {root}`; run it now: `prefect deployment run '{name}'`")
    return 0


def cmd_export(args) -> int:
    from tasks.governance.export import export

    root = Path(args.workspace).resolve()
    done = export(load_config(root / args.params), root, args.model, args.version, args.format, args.out)
    checked = f"; answers equal base + adapter on {done.checked_prompts} hold-out prompts" if done.checked_prompts else ""
    print(f"{done.model} version {done.version} exported as {done.format} to {done.out} ({len(done.files)} files{checked})")
    return 0


def cmd_serve(args) -> int:
    import subprocess

    from tasks.governance.serve import serve_command

    root = Path(args.workspace).resolve()
    cmd, env, version = serve_command(load_config(root / args.params), root, args.ref, args.port, args.params)
    print(f"serving version {version} on http://127.0.0.1:{args.port}/invocations (requests logged anonymized to "
          f"{env['LORAGATE_REQUEST_LOG']}); Ctrl-C stops", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def cmd_drift(args) -> int:
    from tasks.evaluation.drift import drift

    root = Path(args.workspace).resolve()
    r = drift(load_config(root / args.params), root, args.since)
    print(f"version {r.version}: {r.requests} requests vs {r.training_examples} training examples; embedding MMD "
          f"{r.mmd:.4f} (p {r.mmd_p:.3f}), length KS {r.length_ks:.3f} (p {r.length_p:.3f}), far {r.far_share:.1%}: "
          f"{'RETRAIN RECOMMENDED' if r.retrain_recommended else 'no drift beyond the thresholds'} (MLflow run {r.run_id})")
    return 0


def cmd_erasure(args) -> int:
    from tasks.governance import erasure

    root = Path(args.workspace).resolve()
    cfg = load_config(root / args.params)
    value = sys.stdin.readline().rstrip("\n") if args.value == "-" else args.value
    if args.erasure_command == "find":
        for line in erasure.describe(cfg, erasure.find(cfg, root, value)):
            print(line)
        return 0
    found = erasure.apply(cfg, root, value, args.actor)
    if found.empty:
        print("nothing to erase: no input record, indexed dataset version or model version holds it")
        return 0
    print(f"erasure {found.value_key}: {len(found.input_lines)} records removed from {cfg.data.raw}; "
          f"versions now {erasure.ERASURE_PENDING}: {', '.join(v['version'] for v in found.versions) or 'none'}; "
          "the next `loragate run` trains without them")
    return 0


def cmd_doctor(args) -> int:
    from tasks.doctor import diagnose

    root = Path(args.workspace).resolve()
    findings = diagnose(load_config(root / args.params), root)
    for f in findings:
        print(f"{'ok  ' if f.ok else 'FAIL' if f.fatal else 'warn'}  {f.name:<13} {f.detail}")
    return 1 if any(not f.ok and f.fatal for f in findings) else 0


def ui_command(cfg, root: Path, port: int) -> list[str]:
    """`mlflow server` bound to loopback only: the store holds model versions and review state."""
    from tasks.tracking import tracking_uri

    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri(cfg, root),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def experiment_url(cfg, root: Path, port: int) -> str:
    """The experiment's runs page. MLflow 3's UI opens experiments on its GenAI pages unless told
    the workflow is model training (it then remembers the choice in the browser)."""
    from tasks.tracking import client_for, experiment_id

    exp = experiment_id(client_for(cfg, root), cfg, root)
    return f"http://127.0.0.1:{port}/#/experiments/{exp}/runs?workflowType=machine_learning"


def cmd_ui(args) -> int:
    import subprocess

    root = Path(args.workspace).resolve()
    cfg = load_config(root / args.params)
    print(f"MLflow UI for {root}: {experiment_url(cfg, root, args.port)}  (Ctrl-C stops)", flush=True)
    try:
        return subprocess.call(ui_command(cfg, root, args.port))
    except KeyboardInterrupt:
        return 0


class _QuietExpected(logging.Filter):
    """Drops the orchestrator's records of an expected error (bad input or params, a refused
    resume, a failed stage): the CLI says it in one line, so its traceback and the failure echoes
    around it are noise. Crashes keep their tracebacks."""

    def __init__(self, expected: tuple[type, ...]):
        super().__init__()
        self.expected, self.names = expected, tuple(e.__name__ for e in expected)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.expected):
            return False
        return not any(name in record.getMessage() for name in self.names)


@contextmanager
def _quiet_expected(expected: tuple[type, ...]):
    handlers = {h for name, lg in list(logging.root.manager.loggerDict.items())
                if name.startswith("prefect") and isinstance(lg, logging.Logger) for h in lg.handlers}
    quiet = _QuietExpected(expected)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def main(argv: list[str] | None = None) -> int:
    from tasks.governance.gate import GateError
    from tasks.governance.erasure import ErasureError
    from tasks.evaluation.drift import DriftError
    from tasks.governance.export import ExportError
    from tasks.governance.records import RecordError
    from tasks.io import DiskFull
    from tasks.orchestration import WorkspaceBusy
    from tasks.tracking import NotResumable
    from tasks.training.train import OverlongRows, ResumeError

    args = _parser().parse_args(argv)
    commands = {"run": cmd_run, "status": cmd_status, "approve": cmd_decide, "reject": cmd_decide,
                "rollback": cmd_decide, "audit": cmd_audit, "dpia": cmd_dpia, "erasure": cmd_erasure, "schedule": cmd_schedule,
                "export": cmd_export, "serve": cmd_serve, "drift": cmd_drift, "ui": cmd_ui, "doctor": cmd_doctor}
    expected = (ConfigError, ModelNotFound, StageFailed, GateError, ResumeError, NotResumable, WorkspaceBusy, DiskFull,
                OverlongRows, RecordError, ErasureError, ExportError, DriftError)
    try:
        with _quiet_expected((*expected, DataError)):
            return commands[args.command](args)
    except expected as err:
        for line in str(err).splitlines():  # a compliance refusal names each missing field on its own line
            print(f"loragate: {line}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"loragate: invalid input: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
