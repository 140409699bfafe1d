"""The promotion gate: pre-checks, four-eyes human decisions, the serving alias, and the audit log.
Only this module writes approval states and moves aliases; every change is an audit entry first.

    loragate approve MODEL VERSION --reviewer NAME --rationale TEXT
    loragate reject MODEL VERSION --reviewer NAME --rationale TEXT
    loragate rollback MODEL --reviewer NAME --rationale TEXT
    loragate audit verify
    loragate audit repair     # replays the log onto MLflow after a crash between the two

States (tag `loragate.approval_status`): pending -> approved | rejected, pending -> rejected-by-checks,
approved -> rolled-back, any -> erasure-pending (tasks/governance/erasure.py). A decided version is never decided again; a new run makes a new version.
"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mlflow.tracking import MlflowClient

from tasks.config import Config
from tasks.data.pii_guard import scrub
from tasks.governance import audit, records
from tasks.orchestration import stage_task
from tasks.tracking import client_for, experiment_id

APPROVAL_TAG = "loragate.approval_status"
CHECKS_TAG = "loragate.checks"
HEAD_TAG = "loragate.audit.head"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
REJECTED_BY_CHECKS, ROLLED_BACK = "rejected-by-checks", "rolled-back"
ERASURE_PENDING = "erasure-pending"  # built from records an erasure request removed: never served again
# the state each audit event leaves a version in; verify replays these against the tags
_STATE_AFTER = {"registered": PENDING, "approved": APPROVED, "rejected": REJECTED,
                "rejected_by_checks": REJECTED_BY_CHECKS, "rolled_back": ROLLED_BACK, "erasure_pending": ERASURE_PENDING}


class GateError(RuntimeError):
    """A refused gate action; the message is one line saying what and why."""


@dataclass(frozen=True)
class Checks:
    passed: bool
    reasons: tuple[str, ...]  # why it failed; empty when passed
    values: dict[str, float]


@dataclass(frozen=True)
class Decision:
    model: str
    version: str
    status: str
    actor: str
    alias_from: str | None = None  # version that held the alias before, when the alias moved
    alias_to: str | None = None


def audit_path(cfg: Config, root: str | Path) -> Path:
    return Path(root).resolve() / cfg.gate.audit_log


def _record(cfg: Config, root: str | Path, client: MlflowClient, event: str, key: str | None = None,
            **data) -> audit.Entry:
    """Append to the log, then mirror: the head onto the experiment (catches cut-off lines), the
    entry's seq:hash onto the version it concerns (visible in the MLflow UI). A key makes a retry
    find its first entry instead of writing a second."""
    entry = audit.append(audit_path(cfg, root), event, key=key, **data)
    client.set_experiment_tag(experiment_id(client, cfg, root), HEAD_TAG, f"{entry.seq}:{entry.hash}")
    if data.get("version") and data.get("model"):
        client.set_model_version_tag(data["model"], data["version"], f"loragate.audit.{event}",
                                     f"{entry.seq}:{entry.hash[:16]}")
    return entry


def _set_state(client: MlflowClient, model: str, version: str, state: str, **tags: str) -> None:
    client.set_model_version_tag(model, version, APPROVAL_TAG, state)
    for key, value in tags.items():
        client.set_model_version_tag(model, version, f"loragate.{key}", value)
    client.update_model_version(model, version, description=_description(client, model, version))


def _description(client: MlflowClient, model: str, version: str) -> str:
    """The registry page's description: state and headline scores, where people look first."""
    mv = client.get_model_version(model, version)
    m = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    state, t = mv.tags.get(APPROVAL_TAG, "unknown"), mv.tags
    who = f" by {t['loragate.reviewer']}" if t.get("loragate.reviewer") and state in {APPROVED, REJECTED} else ""
    scores = " · ".join(f"{name} {m[f'finetuned/{k}']:.3f} ({m.get(f'delta/{k}', float('nan')):+.3f} vs base)"
                        for k, name in (("rougeL", "ROUGE-L"), ("bertscore_f1", "BERTScore F1")) if f"finetuned/{k}" in m)
    checks = f" · pre-checks {t[CHECKS_TAG]}" if t.get(CHECKS_TAG) else ""
    return f"**{state}**{who} · {scores or 'no scores recorded'}{checks} · started by {t.get('loragate.initiator', '?')}"


def _version(client: MlflowClient, model: str, version: str):
    try:
        return client.get_model_version(model, str(version))
    except Exception:
        raise GateError(f"{model} version {version}: no such registered model version") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_run_started(cfg: Config, root: str | Path, run_id: str, initiator: str,
                       data_hashes: dict[str, str]) -> None:
    _record(cfg, root, client_for(cfg, root), "run_started", key=f"run_started:{run_id}", model=cfg.registry.model_name,
            run_id=run_id, actor=initiator, base_model=cfg.model.base, data=dict(sorted(data_hashes.items())))


def record_run_resumed(cfg: Config, root: str | Path, run_id: str, initiator: str, step: int) -> None:
    """The log says a run went on from a checkpoint before MLflow shows it running again."""
    client = client_for(cfg, root)
    _record(cfg, root, client, "run_resumed", key=f"run_resumed:{run_id}:{step}", model=cfg.registry.model_name,
            run_id=run_id, actor=initiator, from_step=step)
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "loragate.resumed_from_step", str(step))


def record_registering(cfg: Config, root: str | Path, model: str, run_id: str, initiator: str) -> None:
    """The intent, logged before MLflow creates the version: a crash in between is then found by
    `audit verify` and mended by `audit repair`."""
    _record(cfg, root, client_for(cfg, root), "registering", key=f"registering:{model}:{run_id}", model=model,
            run_id=run_id, actor=initiator)


def record_registered(cfg: Config, root: str | Path, model: str, version: str, run_id: str, initiator: str) -> None:
    """The version's `registered` entry (once per run) and, if it has no state yet, `pending`."""
    client = client_for(cfg, root)
    _record(cfg, root, client, "registered", key=f"registered:{model}:{run_id}", model=model, version=str(version),
            run_id=run_id, actor=initiator)
    if not _version(client, model, str(version)).tags.get(APPROVAL_TAG):
        _set_state(client, model, str(version), PENDING)


def evaluate_checks(cfg: Config, metrics: dict[str, float], tags: dict[str, str]) -> Checks:
    """The automatic pre-checks on a run's metrics and a version's tags, thresholds from params."""
    reasons, values = [], {}
    for metric, floor in (("rougeL", cfg.gate.min_delta_rougeL), ("bertscore_f1", cfg.gate.min_delta_bertscore_f1)):
        delta = metrics.get(f"delta/{metric}")
        if delta is None:
            reasons.append(f"delta/{metric} was not recorded")
            continue
        values[f"delta/{metric}"] = delta
        if delta < floor:
            reasons.append(f"delta/{metric} {delta:+.4f} < required {floor:+.4f}")
    residual = metrics.get("pii/residual_records")
    if residual is None:
        reasons.append("no residual personal-data scan was recorded")
    else:
        values["pii/residual_records"] = residual
        if residual > cfg.gate.max_residual_records:
            reasons.append(f"{int(residual)} records still held personal data after anonymization "
                           f"(allowed {cfg.gate.max_residual_records})")
    leaked = metrics.get("pii/residual_in_artifacts")
    if leaked is None:
        reasons.append("no personal-data scan of the run's artifacts was recorded")
    elif leaked > 0:
        values["pii/residual_in_artifacts"] = leaked
        reasons.append(f"{int(leaked)} personal-data findings were masked in the run's artifacts (predictions, "
                       "report): the data or the model's answers still carry personal data")
    for split in ("train", "holdout"):
        if not tags.get(f"loragate.data.{split}"):
            reasons.append(f"data hash of the {split} split is missing")
    if (moved := metrics.get("split/ever_held_out_in_train", 0)) > 0:
        reasons.append(f"{int(moved)} training records were in an earlier hold-out (split.holdout_fraction lowered?): "
                       "scores would no longer compare across quarters; change split.salt to re-draw on purpose")
    if tags.get(records.COMPLIANCE_TAG) == "true":
        _memorisation_checks(cfg, metrics, reasons, values)
    _champion_checks(cfg, metrics, reasons, values)
    return Checks(not reasons, tuple(reasons), values)


def _champion_checks(cfg: Config, metrics: dict[str, float], reasons: list[str], values: dict[str, float]) -> None:
    """No regression against the serving champion on the same hold-out rows, overall or in a slice:
    each paired interval's lower bound must stay at or above -gate.max_regression_vs_champion."""
    floor = -cfg.gate.max_regression_vs_champion
    for key, low in sorted(metrics.items()):
        if key.endswith("_ci_low") and "vs_champion/" in key and key.split("/")[-1][:-7] in {"rougeL", "bertscore_f1"}:
            values[key] = low
            if low < floor:
                reasons.append(f"{key} {low:+.4f} < {floor:+.4f}: worse than the serving champion on the same hold-out rows")


def _memorisation_checks(cfg: Config, metrics: dict[str, float], reasons: list[str], values: dict[str, float]) -> None:
    """A compliance version's model must not give back planted canaries or personal data."""
    for key, limit, what in (("canary_exposure", cfg.compliance.max_canary_exposure, "planted canaries came back"),
                             ("probe_pii_rate", cfg.compliance.max_probe_pii_rate, "probed answers carried personal data")):
        value = metrics.get(f"memorisation/{key}")
        if value is None:
            reasons.append(f"memorisation/{key} was not recorded (the memorisation probe did not run)")
            continue
        values[f"memorisation/{key}"] = value
        if value > limit:
            reasons.append(f"memorisation/{key} {value:.3f} > allowed {limit:.3f}: {what}")


def run_checks(cfg: Config, root: str | Path, model: str, version: str) -> Checks:
    """Run the pre-checks, record them, and mark a failing version `rejected-by-checks`. The first
    recorded verdict stands: a retry (or a second call) replays it and writes nothing twice."""
    client = client_for(cfg, root)
    mv = _version(client, model, version)
    checks = evaluate_checks(cfg, client.get_run(mv.run_id).data.metrics, mv.tags)
    entry = _record(cfg, root, client, "checks", key=f"checks:{model}:{version}", model=model, version=str(version),
                    passed=checks.passed, reasons=list(checks.reasons), values=checks.values).data
    checks = Checks(entry["passed"], tuple(entry["reasons"]), entry["values"])
    client.set_model_version_tag(model, str(version), CHECKS_TAG, "passed" if checks.passed else "failed")
    client.update_model_version(model, str(version), description=_description(client, model, str(version)))
    if not checks.passed:
        reason = "; ".join(checks.reasons)
        _record(cfg, root, client, "rejected_by_checks", key=f"rejected_by_checks:{model}:{version}", model=model,
                version=str(version), actor="loragate", rationale=reason)
        _set_state(client, model, str(version), REJECTED_BY_CHECKS, decision_rationale=reason[:5000])
    return checks


def _decidable(client: MlflowClient, model: str, version: str, reviewer: str, rationale: str):
    """The version, if it may be decided now by this reviewer; else a GateError saying why not."""
    mv = _version(client, model, version)
    state = mv.tags.get(APPROVAL_TAG, "unknown")
    if state == REJECTED_BY_CHECKS:
        raise GateError(f"{model} version {version} failed its pre-checks "
                        f"({mv.tags.get('loragate.decision_rationale', '')}); it cannot be decided by hand")
    if state != PENDING:
        raise GateError(f"{model} version {version} is already {state}: a decided version cannot be decided again")
    if not reviewer.strip():
        raise GateError("--reviewer must name the person deciding")
    if not rationale.strip():
        raise GateError("--rationale must not be empty: the audit log records why")
    return mv


def _initiators(client: MlflowClient, mv) -> set[str]:
    names = {mv.tags.get("loragate.initiator", ""), client.get_run(mv.run_id).data.tags.get("loragate.initiator", "")}
    return {n.strip().casefold() for n in names if n.strip()}


@contextmanager
def _decision_lock(cfg: Config, root: str | Path):
    """One decision at a time per workspace: two `approve` calls on one version find it pending
    one after the other, never both."""
    path = audit_path(cfg, root).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def approve(cfg: Config, root: str | Path, model: str, version: str, reviewer: str, rationale: str) -> Decision:
    """Four-eyes approval of a pending version whose pre-checks passed; moves the serving alias."""
    with _decision_lock(cfg, root):
        return _approve(cfg, root, model, version, reviewer, rationale)


def _approve(cfg: Config, root: str | Path, model: str, version: str, reviewer: str, rationale: str) -> Decision:
    client = client_for(cfg, root)
    mv = _decidable(client, model, str(version), reviewer, rationale)
    if mv.tags.get(CHECKS_TAG) != "passed":
        raise GateError(f"{model} version {version}: pre-checks have not passed; only checked versions can be approved")
    if reviewer.strip().casefold() in _initiators(client, mv):
        raise GateError(f"four eyes: {reviewer!r} started run {mv.run_id}; another person must approve it")
    from tasks.governance import dpia

    if problem := dpia.signature_problem(cfg, root, mv):
        raise GateError(problem)
    rationale = _decide(cfg, root, client, model, str(version), APPROVED, reviewer, rationale)
    if mv.tags.get(records.COMPLIANCE_TAG) == "true":
        dpia.record_decision(cfg, root, model, str(version), APPROVED, reviewer.strip(), rationale)
    return promote(cfg, root, model, str(version), reviewer.strip())


def reject(cfg: Config, root: str | Path, model: str, version: str, reviewer: str, rationale: str) -> Decision:
    with _decision_lock(cfg, root):
        client = client_for(cfg, root)
        mv = _decidable(client, model, str(version), reviewer, rationale)
        rationale = _decide(cfg, root, client, model, str(version), REJECTED, reviewer, rationale)
        if mv.tags.get(records.COMPLIANCE_TAG) == "true":
            from tasks.governance import dpia

            dpia.record_decision(cfg, root, model, str(version), REJECTED, reviewer.strip(), rationale)
    return Decision(model, str(version), REJECTED, reviewer.strip())


def _decide(cfg: Config, root: str | Path, client: MlflowClient, model: str, version: str, state: str,
            reviewer: str, rationale: str) -> str:
    """A human decision: the audit entry first (the record of truth), then the version's tags. The
    free-text rationale passes the second personal-data detector first: it is stored in both.
    Returns the rationale as stored."""
    rationale, hits = scrub(rationale.strip(), cfg.pii.phone_regions)
    _record(cfg, root, client, state, model=model, version=version, actor=reviewer.strip(), rationale=rationale,
            **({"rationale_masked": dict(hits)} if hits else {}))
    _set_state(client, model, version, state, reviewer=reviewer.strip(),
               decision_rationale=rationale[:5000], decided_at=_now())
    return rationale


def _approved_in_log(cfg: Config, root: str | Path, model: str, version: str) -> bool:
    return any(e.event == "approved" and e.data.get("model") == model and e.data.get("version") == str(version)
               for e in audit.read(audit_path(cfg, root)))


def promote(cfg: Config, root: str | Path, model: str, version: str, actor: str, reason: str = "approval") -> Decision:
    """Point the serving alias at an approved version; the only code that moves it."""
    client = client_for(cfg, root)
    mv = _version(client, model, str(version))
    if mv.tags.get(APPROVAL_TAG) != APPROVED or not _approved_in_log(cfg, root, model, str(version)):
        raise GateError(f"{model} version {version} has no recorded approval: it cannot take alias "
                        f"'{cfg.gate.alias}' (run `loragate approve`)")
    alias = cfg.gate.alias
    before = client.get_registered_model(model).aliases.get(alias)
    _record(cfg, root, client, "alias_moved", model=model, version=str(version), alias=alias,
            from_version=str(before) if before else None, actor=actor, reason=reason)
    client.set_registered_model_alias(model, alias, str(version))
    return Decision(model, str(version), APPROVED, actor, str(before) if before else None, str(version))


def alias_history(cfg: Config, root: str | Path, model: str) -> list[dict]:
    """Every move of the serving alias, oldest first: version (None: removed), previous holder, who,
    when, why."""
    return [{"alias": e.data["alias"], "version": e.data.get("version"), "from_version": e.data.get("from_version"),
             "actor": e.data.get("actor"), "time": e.data.get("time"), "reason": e.data.get("reason"), "seq": e.seq}
            for e in audit.read(audit_path(cfg, root)) if e.event in {"alias_moved", "alias_removed"}
            and e.data.get("model") == model and e.data.get("alias") == cfg.gate.alias]


def rollback(cfg: Config, root: str | Path, model: str, actor: str, rationale: str) -> Decision:
    """Return the alias to the most recent earlier holder that is still approved; the version
    leaving it becomes `rolled-back`."""
    with _decision_lock(cfg, root):
        return _rollback(cfg, root, model, actor, rationale)


def _rollback(cfg: Config, root: str | Path, model: str, actor: str, rationale: str) -> Decision:
    client = client_for(cfg, root)
    if not actor.strip() or not rationale.strip():
        raise GateError("rollback needs --reviewer and a non-empty --rationale")
    current = client.get_registered_model(model).aliases.get(cfg.gate.alias) if _exists(client, model) else None
    if current is None:
        raise GateError(f"{model}: no version holds alias '{cfg.gate.alias}'; nothing to roll back")
    target = _earlier_approved(cfg, root, client, model, {str(current)})
    if target is None:
        raise GateError(f"{model}: no earlier approved version to roll back to from version {current}")
    _record(cfg, root, client, "rolled_back", model=model, version=str(current), to_version=target,
            actor=actor.strip(), rationale=rationale.strip())
    _set_state(client, model, str(current), ROLLED_BACK, rolled_back_by=actor.strip(), rolled_back_at=_now())
    return promote(cfg, root, model, target, actor.strip(), reason=f"rollback from version {current}")


def _earlier_approved(cfg: Config, root: str | Path, client: MlflowClient, model: str, leaving: set[str]) -> str | None:
    """The most recent earlier alias holder, outside `leaving`, that is still approved."""
    earlier = [h["version"] for h in alias_history(cfg, root, model) if h["version"] and h["version"] not in leaving]
    return next((v for v in reversed(earlier) if _version(client, model, v).tags.get(APPROVAL_TAG) == APPROVED), None)


def record_erasure(cfg: Config, root: str | Path, client: MlflowClient, value_key: str, actor: str, removed: int,
                   raw: str, versions: list[str]) -> None:
    """The erasure request as carried out: the value by its keyed hash only, never itself."""
    _record(cfg, root, client, "erasure_applied", model=cfg.registry.model_name, value_key=value_key, actor=actor,
            records_removed=removed, input=raw, versions=versions)


def withdraw(cfg: Config, root: str | Path, model: str, versions: list[str], actor: str, reason: str) -> None:
    """Take versions out of service: each becomes erasure-pending; an alias on one of them moves
    back to the latest earlier approved version not among them, or is removed when there is none."""
    with _decision_lock(cfg, root):
        client = client_for(cfg, root)
        for v in versions:
            if _version(client, model, v).tags.get(APPROVAL_TAG) != ERASURE_PENDING:
                _record(cfg, root, client, "erasure_pending", model=model, version=v, actor=actor, reason=reason)
                _set_state(client, model, v, ERASURE_PENDING)
        holder = client.get_registered_model(model).aliases.get(cfg.gate.alias) if versions else None
        if holder is None or str(holder) not in versions:
            return
        if target := _earlier_approved(cfg, root, client, model, set(versions)):
            promote(cfg, root, model, target, actor, reason=reason)
            return
        _record(cfg, root, client, "alias_removed", model=model, alias=cfg.gate.alias, from_version=str(holder),
                version=None, actor=actor, reason=reason)
        client.delete_registered_model_alias(model, cfg.gate.alias)


def _exists(client: MlflowClient, model: str) -> bool:
    try:
        client.get_registered_model(model)
        return True
    except Exception:
        return False


def _head_problems(cfg: Config, root: str | Path, client: MlflowClient, entries: list[audit.Entry]) -> list[str]:
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    head = exp.tags.get(HEAD_TAG) if exp else None
    if not head:
        return [] if not entries else [f"MLflow holds no audit head for experiment '{cfg.registry.experiment}'"]
    seq, _, digest = head.partition(":")
    last = entries[-1] if entries else None
    if last is None or last.seq != int(seq) or last.hash != digest:
        where = f"ends at seq {last.seq}" if last else "is empty or missing"
        return [f"{audit_path(cfg, root)}: the log {where}, but MLflow's head is seq {seq} "
                f"(lines cut off the end, or the last line edited)"]
    return []


def _logged_states(model: str, entries: list[audit.Entry]) -> dict[str, str]:
    """Each version's state as the log's state events leave it."""
    return {e.data["version"]: _STATE_AFTER[e.event] for e in entries
            if e.data.get("model") == model and e.event in _STATE_AFTER}


def _state_problems(client: MlflowClient, model: str, entries: list[audit.Entry]) -> list[str]:
    """Replay the log's state events and compare with each version's tag."""
    expected = _logged_states(model, entries)
    problems = []
    for mv in client.search_model_versions(f"name='{model}'"):
        tag, want = mv.tags.get(APPROVAL_TAG), expected.get(str(mv.version))
        if want is None:
            problems.append(f"{model} version {mv.version} (run {mv.run_id}) has no `registered` entry in the audit "
                            "log (a crash while registering, or registered outside loragate): `loragate audit repair`")
        elif tag != want:
            problems.append(f"{model} version {mv.version}: tag says {tag!r} but the audit log says {want!r} "
                            "(state changed outside loragate)")
    return problems


def _alias_problems(cfg: Config, root: str | Path, client: MlflowClient, model: str) -> list[str]:
    holder = client.get_registered_model(model).aliases.get(cfg.gate.alias)
    moves = alias_history(cfg, root, model)
    logged = moves[-1]["version"] if moves else None
    if holder is None and logged is None:
        return []
    if str(holder) != str(logged):  # None on one side: never moved, or removed by an erasure
        return [f"{model}: alias '{cfg.gate.alias}' points to version {holder} but the audit log last moved it to "
                f"version {logged} (moved outside loragate)"]
    if not _approved_in_log(cfg, root, model, str(holder)):
        return [f"{model}: alias '{cfg.gate.alias}' holder version {holder} has no approval in the audit log"]
    return []


def verify(cfg: Config, root: str | Path, model: str | None = None) -> list[str]:
    """Every problem found: chain breaks, a cut-off tail, states or aliases changed outside the gate."""
    client, model = client_for(cfg, root), model or cfg.registry.model_name
    entries = audit.read(audit_path(cfg, root))
    problems = audit.chain_problems(audit_path(cfg, root)) + _head_problems(cfg, root, client, entries)
    problems += records.hash_problems(client, entries)
    if _exists(client, model):
        problems += _state_problems(client, model, entries) + _alias_problems(cfg, root, client, model)
    return problems


def _repair_versions(cfg: Config, root: str | Path, client: MlflowClient, model: str) -> list[str]:
    """Versions whose registration was logged as intended but not as done get their entry; every
    version's state tag is set to what the log says."""
    entries, done = audit.read(audit_path(cfg, root)), []
    intended = {e.data.get("run_id") for e in entries if e.event == "registering" and e.data.get("model") == model}
    logged = {e.data.get("version") for e in entries if e.event == "registered" and e.data.get("model") == model}
    for mv in client.search_model_versions(f"name='{model}'"):
        if str(mv.version) not in logged and mv.run_id in intended:
            record_registered(cfg, root, model, str(mv.version), mv.run_id, mv.tags.get("loragate.initiator", ""))
            done.append(f"{model} version {mv.version}: `registered` entry written (its registration was cut off)")
    logged_states = _logged_states(model, audit.read(audit_path(cfg, root)))
    for mv in client.search_model_versions(f"name='{model}'"):
        want = logged_states.get(str(mv.version))
        if want and mv.tags.get(APPROVAL_TAG) != want:
            _set_state(client, model, str(mv.version), want)
            done.append(f"{model} version {mv.version}: state tag set to {want!r} from the log")
    return done


def repair(cfg: Config, root: str | Path, model: str | None = None) -> list[str]:
    """Replay the audit log onto MLflow after a crash between an entry and its MLflow change: the
    head tag, versions' `registered` entries and states, the serving alias. Never edits the log;
    what cannot be mended this way (a broken chain, lines cut off) stays for `verify` to report."""
    client, model = client_for(cfg, root), model or cfg.registry.model_name
    entries, done = audit.read(audit_path(cfg, root)), []
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    head = exp.tags.get(HEAD_TAG, "0:") if exp else "0:"
    if entries and int(head.split(":")[0]) < entries[-1].seq:  # the log got further than MLflow's mirror of it
        client.set_experiment_tag(experiment_id(client, cfg, root), HEAD_TAG, f"{entries[-1].seq}:{entries[-1].hash}")
        done.append(f"audit head set to seq {entries[-1].seq}")
    if _exists(client, model):
        done += _repair_versions(cfg, root, client, model)
        moves = alias_history(cfg, root, model)
        holder = client.get_registered_model(model).aliases.get(cfg.gate.alias)
        last = moves[-1]["version"] if moves else None
        if moves and last is None and holder is not None:
            client.delete_registered_model_alias(model, cfg.gate.alias)
            done.append(f"{model}: alias '{cfg.gate.alias}' removed, as the log says")
        elif last and str(holder) != last and _approved_in_log(cfg, root, model, last):
            client.set_registered_model_alias(model, cfg.gate.alias, last)
            done.append(f"{model}: alias '{cfg.gate.alias}' set to version {last} from the log")
    return done


def review_description(model: str, version: str, metrics: dict[str, float], checks: Checks, tags: dict[str, str]) -> str:
    """The Markdown a reviewer reads above the Prefect form: scores, checks, data hashes."""
    rows = "\n".join(f"| {k} | {metrics.get(f'baseline/{k}', float('nan')):.4f} | "
                     f"{metrics.get(f'finetuned/{k}', float('nan')):.4f} | {metrics.get(f'delta/{k}', float('nan')):+.4f} |"
                     for k in ("rougeL", "rouge1", "bertscore_f1"))
    hashes = "\n".join(f"- {k.removeprefix('loragate.data.')}: `{v}`" for k, v in sorted(tags.items())
                       if k.startswith("loragate.data."))
    return (f"## Approve {model} version {version}?\n\nInitiated by **{tags.get('loragate.initiator', '?')}**; "
            f"a different person must decide.\n\n| metric | baseline | fine-tuned | delta |\n|---|---|---|---|\n{rows}\n\n"
            f"Pre-checks: **{'passed' if checks.passed else 'failed'}**\n\nData hashes (dvc.lock):\n{hashes}\n"
            + _quarter_lines(metrics))


def _quarter_lines(metrics: dict[str, float]) -> str:
    """What changed since the champion, for the approval form (full page: the run's quarter/report.html)."""
    if "quarter/new_records" not in metrics:
        return ""
    q = {k.removeprefix("quarter/"): int(v) if float(v).is_integer() else v for k, v in metrics.items() if k.startswith("quarter/")}
    drift = ("**drift flagged: look at the data before approving**" if q.get("drift_flag") else "no drift flagged") \
        if "drift_flag" in q else "drift not measured"
    return (f"\nSince the champion: {q['new_records']} new, {q['gone_records']} gone, {q['changed_records']} changed "
            f"records; {drift}. Quarter report: run artifact `quarter/report.html`.\n")


def record_timeout(cfg: Config, root: str | Path, model: str, version: str, waited_s: int) -> None:
    """A paused approval that got no answer: logged, the version stays pending."""
    _record(cfg, root, client_for(cfg, root), "approval_timed_out", model=model, version=str(version),
            actor="loragate", waited_s=waited_s)


run_checks_task = stage_task(run_checks, "pre-checks", retries=3)
