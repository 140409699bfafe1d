"""The DPIA record of a compliance run, in the structure of the EDPB's harmonised DPIA template
(sections 0-6) with the content the CNIL PIA method asks for, filled from the run's own facts.

    loragate dpia show MODEL VERSION
    loragate dpia sign MODEL VERSION --dpo NAME --opinion TEXT [--advice approve|conditional|reject|refer]

Revision 1 is written when the version is registered (DPO advice and decision open); the DPO's
signature makes revision 2, the approver's decision the next. Every revision is attached to the run
and the version, and its sha256 is an audit entry (tasks/governance/records.py). The gate refuses to
approve a compliance version whose DPIA is unsigned or whose DPO advised reject or refer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.config import Config
from tasks.governance import audit
from tasks.governance.gate import _now
from tasks.governance.records import (COMPLIANCE_TAG, RecordError, attach, latest, load, run_facts, sha256_files)
from tasks.tracking import client_for, package_version

KIND = "dpia"
ADVICE = ("approve", "conditional", "reject", "refer")  # reject and refer (prior consultation, Art. 36) block approval
_RISK_TEXT = {
    "illegitimate_access": "Illegitimate access to personal data (raw input, splits, model outputs in MLflow)",
    "unwanted_modification": "Unwanted modification of data, records or decisions",
    "disappearance": "Disappearance of data or of the record of what was done",
    "memorisation": "Personal data memorised by the adapter and given back by the model",
}


def _level(severity: int, likelihood: int) -> str:
    """CNIL-style map: high when both are significant or worse, low when neither is above limited."""
    if severity >= 3 and likelihood >= 3:
        return "high"
    return "low" if max(severity, likelihood) <= 2 else "medium"


def measures(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The measures in force for this run, each with the run's own evidence."""
    pii, m = f["reports"]["pii"], f["metrics"]
    found = sum(pii["entities"].values())
    return [
        {"id": "anonymization", "measure": "personal data masked before any stage reads it (presidio + loragate recognizers)",
         "in_force": bool(pii.get("engine")), "evidence": f"{found} values masked in {pii['records']} records, "
         f"operator {pii.get('operator')}, recognizers {pii['engine'].get('loragate-recognizers')}"},
        {"id": "second_detector", "measure": "a second, differently built detector quarantines records still holding personal data",
         "in_force": "residual_records" in pii, "evidence": f"{pii.get('residual_records', 0)} records quarantined"},
        {"id": "artifact_scrub", "measure": "every text leaving for MLflow passes the second detector",
         "in_force": "pii/residual_in_artifacts" in m, "evidence": f"{int(m.get('pii/residual_in_artifacts', -1))} findings masked in artifacts"},
        {"id": "raw_kept_local", "measure": "raw input kept out of the DVC cache and every DVC remote",
         "in_force": f["raw_kept_local"], "evidence": "dvc.yaml: data/interim/clean.jsonl cache: false, push: false"},
        {"id": "versioned_data", "measure": "anonymized data and splits content-addressed by DVC",
         "in_force": bool(f["tags"].get("loragate.data.train")), "evidence": f"train {f['tags'].get('loragate.data.train', '-')}, "
         f"holdout {f['tags'].get('loragate.data.holdout', '-')}"},
        {"id": "audit_chain", "measure": "hash-chained, fsync'ed audit log mirrored into MLflow",
         "in_force": f["audit_chain_intact"], "evidence": f"chain intact: {f['audit_chain_intact']}, head seq {f['audit_head']['seq']}"},
        {"id": "four_eyes", "measure": "a human other than the initiator approves before the serving alias moves",
         "in_force": True, "evidence": f"initiator {f['initiator'] or '-'}; approval state {f['tags'].get('loragate.approval_status', '-')}"},
        {"id": "canary_probe", "measure": "canaries planted in training; the model is checked not to emit them",
         "in_force": "memorisation/canaries" in m and m["memorisation/canaries"] > 0,
         "evidence": f"{int(m.get('memorisation/canaries_exposed', 0))} of {int(m.get('memorisation/canaries', 0))} canaries exposed; "
         f"{m.get('memorisation/probe_pii_rate', 0):.3f} of probed answers carried personal data"},
    ]


def _contradicted(risk: str, f: dict[str, Any], cfg: Config) -> str | None:
    """Why the run's evidence contradicts the DPO's likelihood estimate, if it does."""
    m = f["metrics"]
    if risk == "illegitimate_access" and (m.get("pii/residual_in_artifacts", 0) > 0 or not f["raw_kept_local"]):
        return "personal data reached the run's artifacts, or raw input is cached by DVC"
    if risk == "unwanted_modification" and not f["audit_chain_intact"]:
        return "the audit chain is broken"
    if risk == "memorisation" and (m.get("memorisation/canary_exposure", 0) > cfg.compliance.max_canary_exposure
                                   or m.get("memorisation/probe_pii_rate", 0) > cfg.compliance.max_probe_pii_rate):
        return "the probe found memorised canaries or personal data in answers"
    return None


_RISK_MEASURES = {"illegitimate_access": ["anonymization", "second_detector", "artifact_scrub", "raw_kept_local"],
                  "unwanted_modification": ["versioned_data", "audit_chain", "four_eyes"],
                  "disappearance": ["versioned_data", "audit_chain"],
                  "memorisation": ["anonymization", "second_detector", "canary_probe"]}


def risks(cfg: Config, f: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, text in _RISK_TEXT.items():
        level = cfg.compliance.risks.get(name, {"severity": 4, "likelihood": 4})
        why = _contradicted(name, f, cfg)
        likelihood = 4 if why else level["likelihood"]
        out.append({"id": name, "risk": text, "measures": _RISK_MEASURES[name], "severity": level["severity"],
                    "likelihood": likelihood, "residual_risk": _level(level["severity"], likelihood),
                    "raised_by_evidence": why or ""})
    return out


def _lifecycle(f: dict[str, Any], cfg: Config) -> list[dict[str, str]]:
    t = f["run_tags"]
    return [
        {"stage": "validate", "holds": "raw personal data", "where": "data/interim/clean.jsonl (this machine only)",
         "version": t.get("loragate.data.clean", "-")},
        {"stage": "anonymize", "holds": "anonymized records", "where": "data/interim/anonymized.jsonl (DVC cache)",
         "version": t.get("loragate.data.anonymized", "-")},
        {"stage": "split", "holds": "anonymized train and frozen hold-out", "where": "data/splits/ (DVC cache)",
         "version": f"train {t.get('loragate.data.train', '-')}, holdout {t.get('loragate.data.holdout', '-')}"},
        {"stage": "train", "holds": "LoRA adapter (may memorise training text)", "where": f"runs/{f['run_id']}/train/adapter",
         "version": sha256_files([p for p in f["adapter_dir"].iterdir() if p.is_file()]) if f["adapter_dir"].is_dir() else "-"},
        {"stage": "register", "holds": "adapter, scores, anonymized predictions", "where": f"MLflow store ({cfg.registry.tracking_uri})",
         "version": f"{f['model']} version {f['version']}"},
    ]


def build(cfg: Config, root: Path, f: dict[str, Any]) -> dict[str, Any]:
    """Revision 1 of the version's DPIA."""
    c, rep, m = cfg.compliance, f["reports"], f["metrics"]
    return {
        "schema": "loragate/dpia/1", "revision": 1,
        "template": "EDPB harmonised DPIA template v1.0, sections 0-6; CNIL PIA content mapped onto it",
        "technical_sheet": {"processing": f"LoRA fine-tuning of {cfg.model.base} for: {c.purpose}",
                            "controller": c.controller, "dpo": {"name": c.dpo_name, "contact": c.dpo_contact},
                            "model": f["model"], "version": f["version"], "run_id": f["run_id"], "created": _now(),
                            "tool": f"loragate {package_version()}", "initiator": f["initiator"]},
        "systematic_description": {
            "purpose": c.purpose, "data_subjects": list(c.data_subjects), "data_categories": list(c.data_categories),
            "special_categories": c.special_categories, "recipients": list(c.recipients),
            "transfers_outside_eu": c.transfers_outside_eu,
            "processors": ["none: every stage runs on the controller's machines"],
            "volumes": {"records_in": rep["validation"]["records_in"], "records_out": rep["validation"]["records_out"],
                        "duplicates_dropped": rep["validation"]["duplicates_dropped"], "train": rep["split"]["train"],
                        "holdout": rep["split"]["holdout"], "leakage_dropped": rep["split"].get("leakage_dropped", 0),
                        "near_duplicates_dropped": rep["split"].get("near_duplicates_dropped", 0)},
            "lifecycle": _lifecycle(f, cfg),
            "assets": [{"asset": "raw input", "location": cfg.data.raw},
                       {"asset": "anonymized data and splits", "location": "data/interim, data/splits + DVC cache"},
                       {"asset": "adapters and checkpoints", "location": "runs/<run id>/train"},
                       {"asset": "MLflow store", "location": cfg.registry.tracking_uri},
                       {"asset": "audit log", "location": cfg.gate.audit_log}]},
        "necessity_proportionality": {
            "purpose": c.purpose, "legal_basis": c.legal_basis, "art9_condition": c.art9_condition,
            "minimisation": {"operator": rep["pii"]["operator"], "entities_masked": dict(rep["pii"]["entities"]),
                             "quarantined": dict(rep["pii"].get("quarantined", {})),
                             "residual_records": rep["pii"].get("residual_records", 0),
                             "residual_in_artifacts": int(m.get("pii/residual_in_artifacts", 0)),
                             "engine": dict(rep["pii"]["engine"])},
            "accuracy": {"format": rep["validation"]["format"], "duplicates_dropped": rep["validation"]["duplicates_dropped"],
                         "holdout_scores": {k: round(v, 6) for k, v in sorted(m.items())
                                            if k.split("/")[0] in {"baseline", "finetuned", "delta"}}},
            "retention_days": {"raw": c.retention_raw_days, "anonymized": c.retention_anonymized_days,
                               "adapters": c.retention_adapters_days},
            "data_subject_rights": {"erasure": "`loragate erasure find VALUE` names the records, dataset versions and "
                                    "model versions built from a value; `loragate erasure apply` removes the records, "
                                    "blocks the affected versions and moves the serving alias off them"}},
        "risks": risks(cfg, f),
        "measures": measures(f),
        "dpo_advice": {"status": "awaiting", "dpo": "", "advice": "", "opinion": "", "signed_at": ""},
        "decision": {"status": "pending", "approver": "", "rationale": "", "decided_at": ""},
    }


def record(cfg: Config, root: str | Path, model: str, version: str) -> str:
    """Build revision 1 from the run and attach it; returns its sha256."""
    root, client = Path(root).resolve(), client_for(cfg, root)
    return attach(cfg, root, client, build(cfg, root, run_facts(cfg, root, client, model, version)), KIND,
                  "dpia_recorded", "loragate")


def current(cfg: Config, root: str | Path, model: str, version: str) -> tuple[dict, audit.Entry]:
    client = client_for(cfg, root)
    entry = latest(audit.read(Path(root).resolve() / cfg.gate.audit_log), model, str(version), KIND)
    if entry is None:
        raise RecordError(f"{model} version {version}: no DPIA record (not a compliance run: `loragate run --compliance`)")
    return load(client, entry), entry


def _reissue(cfg: Config, root: str | Path, model: str, version: str, section: str, content: dict, event: str,
             actor: str) -> dict:
    """The next revision, with one section filled; every earlier revision stays where it was."""
    rec, _ = current(cfg, root, model, version)
    rec = {**rec, "revision": rec["revision"] + 1, section: content}
    attach(cfg, Path(root).resolve(), client_for(cfg, root), rec, KIND, event, actor)
    return rec


def sign(cfg: Config, root: str | Path, model: str, version: str, dpo: str, opinion: str, advice: str = "approve") -> dict:
    """The DPO's opinion (section 5), once per version; the DPO must not be the run's initiator."""
    from tasks.data.pii_guard import scrub

    rec, _ = current(cfg, root, model, version)
    if rec["dpo_advice"]["status"] == "signed":
        raise RecordError(f"{model} version {version}: DPIA already signed by {rec['dpo_advice']['dpo']}")
    if not dpo.strip() or not opinion.strip():
        raise RecordError("dpia sign: --dpo and a non-empty --opinion are required")
    if advice not in ADVICE:
        raise RecordError(f"dpia sign: --advice must be one of {', '.join(ADVICE)}, got {advice!r}")
    if dpo.strip().casefold() == rec["technical_sheet"]["initiator"].strip().casefold():
        raise RecordError(f"dpia sign: {dpo!r} started the run; the DPO's opinion must come from someone else")
    text, _ = scrub(opinion.strip(), cfg.pii.phone_regions)
    new = _reissue(cfg, root, model, version, "dpo_advice", {"status": "signed", "dpo": dpo.strip(), "advice": advice,
                   "opinion": text, "signed_at": _now()}, "dpia_signed", dpo.strip())
    client_for(cfg, root).set_model_version_tag(model, str(version), "loragate.dpia.status", f"signed:{advice}")
    return new


def signature_problem(cfg: Config, root: str | Path, mv) -> str | None:
    """Why the gate may not approve this compliance version yet (None: it may)."""
    if mv.tags.get(COMPLIANCE_TAG) != "true":
        return None
    try:
        rec, _ = current(cfg, root, mv.name, str(mv.version))
    except RecordError as err:
        return str(err)
    advice = rec["dpo_advice"]
    if advice["status"] != "signed":
        return (f"{mv.name} version {mv.version}: its DPIA is not signed by the DPO "
                f"(`loragate dpia sign {mv.name} {mv.version} --dpo NAME --opinion TEXT`)")
    if advice["advice"] in {"reject", "refer"}:
        return f"{mv.name} version {mv.version}: the DPO advised {advice['advice']!r}; it cannot be approved"
    return None


def record_decision(cfg: Config, root: str | Path, model: str, version: str, status: str, approver: str,
                    rationale: str) -> None:
    """Section 6: the approver's decision, as the DPIA's next revision."""
    _reissue(cfg, root, model, version, "decision", {"status": status, "approver": approver, "rationale": rationale,
                                                     "decided_at": _now()}, "dpia_decided", approver)


def summary(cfg: Config, root: str | Path, model: str, version: str) -> list[str]:
    """What `loragate dpia show` prints: where each record is, its hash, and the lines a DPO reads first."""
    root = Path(root).resolve()
    rec, entry = current(cfg, root, model, version)
    entries = audit.read(root / cfg.gate.audit_log)
    lines = [f"{model} version {version} (run {rec['technical_sheet']['run_id']})"]
    for kind in (KIND, "technical_file"):
        if e := latest(entries, model, str(version), kind):
            local = root / "runs" / e.data["run_id"] / e.data["artifact"]
            lines.append(f"  {kind:<15} r{e.data['revision']}  sha256 {e.data['sha256'][:16]}  {local} "
                         f"(+ .html; MLflow run artifact {e.data['artifact']})")
    m = rec["necessity_proportionality"]["minimisation"]
    lines += [f"  legal basis     {rec['necessity_proportionality']['legal_basis']}",
              f"  masked          {sum(m['entities_masked'].values())} values "
              f"({', '.join(f'{k} {v}' for k, v in sorted(m['entities_masked'].items()))}); "
              f"quarantined {m['residual_records']}; in artifacts {m['residual_in_artifacts']}"]
    lines += [f"  risk            {r['id']}: {r['residual_risk']} (severity {r['severity']}, likelihood {r['likelihood']})"
              f"{' raised: ' + r['raised_by_evidence'] if r['raised_by_evidence'] else ''}" for r in rec["risks"]]
    advice, decision = rec["dpo_advice"], rec["decision"]
    lines.append(f"  DPO advice      {advice['advice'] + ' by ' + advice['dpo'] if advice['status'] == 'signed' else 'awaiting'}")
    lines.append(f"  decision        {decision['status']}{' by ' + decision['approver'] if decision['approver'] else ''}")
    return lines
