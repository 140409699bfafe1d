"""The EU AI Act technical file of a compliance run's model version, under Annex IV's headings,
filled from the run: what the model is for, what it was built from and how, what it scored, who
oversees it, what changed since the previous version and what is watched after deployment.

    loragate dpia show MODEL VERSION   # lists it beside the DPIA

Attached like the DPIA (tasks/governance/records.py): JSON checked against
schemas/technical_file.schema.json, an HTML page, the JSON's sha256 in the audit log.
"""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from statistics import quantiles
from typing import Any

from tasks.config import Config
from tasks.data.split import HOLDOUT, TRAIN
from tasks.governance import audit
from tasks.governance.records import attach, run_facts, weights_sha256
from tasks.io import read_jsonl
from tasks.tracking import client_for, package_version

KIND = "technical_file"
LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pl", "pt")
WATTS_PER_CPU_CORE, WATTS_PER_GPU = 10.0, 700.0  # nominal draw behind the energy estimate (H100 SXM board power)


def language(text: str) -> str:
    """The language whose common words the text uses most (wordfreq's Zipf frequencies); 'unknown'
    when no word is common anywhere. Cheap, and enough for a datasheet's distribution."""
    from wordfreq import tokenize, zipf_frequency

    words = [w for w in tokenize(text, "en") if w.isalpha()][:40]
    scores = {lang: sum(zipf_frequency(w, lang) for w in words) for lang in LANGUAGES}
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else "unknown"


def _spread(values: list[int]) -> dict[str, int]:
    if len(values) < 2:
        return {"p10": values[0] if values else 0, "p50": values[0] if values else 0, "p90": values[0] if values else 0,
                "max": max(values, default=0)}
    deciles = quantiles(values, n=10, method="inclusive")
    return {"p10": round(deciles[0]), "p50": round(deciles[4]), "p90": round(deciles[8]), "max": max(values)}


def datasheet(root: Path, f: dict[str, Any], cfg: Config) -> dict[str, Any]:
    rep, t = f["reports"], f["run_tags"]
    rows = {"train": read_jsonl(root / TRAIN), "holdout": read_jsonl(root / HOLDOUT)}
    langs: dict[str, int] = {}
    for r in rows["train"] + rows["holdout"]:
        lang = language(" ".join(m["content"] for m in r["messages"] if m["role"] == "user"))
        langs[lang] = langs.get(lang, 0) + 1
    return {
        "provenance": {"input": cfg.data.raw, "format": rep["validation"]["format"],
                       **{f"dvc_{k}": t.get(f"loragate.data.{k}", "-") for k in ("clean", "anonymized", "train", "holdout")}},
        "counts": {"records_in": rep["validation"]["records_in"], "records_out": rep["validation"]["records_out"],
                   "train": rep["split"]["train"], "holdout": rep["split"]["holdout"]},
        "length_chars": {f"{split}_{part}": _spread([len(m["content"]) for r in rs for m in r["messages"]
                                                     if (m["role"] == "assistant") == (part == "answer")])
                         for split, rs in rows.items() for part in ("prompt", "answer")},
        "languages": dict(sorted(langs.items())),
        "personal_data": {"entities_masked": dict(rep["pii"]["entities"]),
                          "quarantined": dict(rep["pii"].get("quarantined", {})),
                          "residual_records": rep["pii"].get("residual_records", 0)},
        "cleaning_steps": [
            f"validate: {rep['validation']['format']} records normalized, {rep['validation']['duplicates_dropped']} duplicates dropped",
            f"anonymize: {sum(rep['pii']['entities'].values())} personal values masked ({rep['pii']['operator']}), "
            f"recognizers {rep['pii']['engine'].get('loragate-recognizers')}, {rep['pii'].get('residual_records', 0)} records quarantined",
            f"split: frozen hold-out of {rep['split']['holdout']} records by keyed record id, "
            f"{rep['split'].get('leakage_dropped', 0)} training records asking a hold-out question and "
            f"{rep['split'].get('near_duplicates_dropped', 0)} asking nearly the same left out"],
    }


def compute(f: dict[str, Any]) -> dict[str, Any]:
    import torch

    m = f["metrics"]
    seconds = round(sum(v for k, v in m.items() if k.startswith("time/")), 1)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    watts = WATTS_PER_GPU if gpu else WATTS_PER_CPU_CORE * (os.cpu_count() or 1)
    return {"hardware": gpu or f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores",
            "wall_time_s": seconds, "stage_seconds": {k.removeprefix("time/"): v for k, v in sorted(m.items()) if k.startswith("time/")},
            "energy_kwh_estimate": round(seconds * watts / 3.6e6, 5),
            "energy_basis": f"wall time x nominal {watts:.0f} W ({'GPU board power' if gpu else f'{WATTS_PER_CPU_CORE:.0f} W per core'})"}


def _previous(client, model: str, version: str) -> Any:
    earlier = [v for v in client.search_model_versions(f"name='{model}'") if int(v.version) < int(version)]
    return max(earlier, key=lambda v: int(v.version)) if earlier else None


def changes(cfg: Config, root: Path, client, f: dict[str, Any]) -> dict[str, Any]:
    """Params, data and headline scores against the version registered before this one."""
    prev = _previous(client, f["model"], f["version"])
    if prev is None:
        return {"previous_version": "", "params_changed": {}, "data_changed": {}, "score_changes": {}}
    mine, theirs = client.get_run(f["run_id"]).data, client.get_run(prev.run_id).data
    keep = ("data.", "pii.", "split.", "model.", "lora.", "quantization.", "train.", "eval.")
    params = {k: {"before": theirs.params.get(k, "-"), "now": v} for k, v in sorted(mine.params.items())
              if k.startswith(keep) and theirs.params.get(k) != v}
    data = {k.removeprefix("loragate.data."): {"before": theirs.tags.get(k, "-"), "now": v}
            for k, v in sorted(mine.tags.items()) if k.startswith("loragate.data.") and theirs.tags.get(k) != v}
    scores = {k: {"before": round(theirs.metrics[k], 6), "now": round(v, 6)} for k, v in sorted(mine.metrics.items())
              if k in {"finetuned/rougeL", "finetuned/bertscore_f1"} and k in theirs.metrics}
    return {"previous_version": str(prev.version), "params_changed": params, "data_changed": data, "score_changes": scores}


def build(cfg: Config, root: Path, client, f: dict[str, Any], model_dir: str) -> dict[str, Any]:
    c, m = cfg.compliance, f["metrics"]
    events = [e.event for e in audit.read(root / cfg.gate.audit_log)
              if e.data.get("model") == f["model"] and e.data.get("version") == f["version"]]
    return {
        "schema": "loragate/technical_file/1", "revision": 1,
        "template": "EU AI Act (Regulation (EU) 2024/1689) Annex IV headings",
        "general_description": {"model": f["model"], "version": f["version"], "run_id": f["run_id"],
                                "intended_purpose": c.purpose, "ai_act_role": c.ai_act_role,
                                "risk_class": c.ai_act_risk_class, "provider": c.controller,
                                "base_model": cfg.model.base, "base_weights_sha256": weights_sha256(model_dir),
                                "serving_base": f["tags"].get("loragate.serving_base", ""),
                                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "tool": f"loragate {package_version()}"},
        "design_choices": {"lora": cfg.to_dict()["lora"], "quantization": cfg.to_dict()["quantization"],
                           "training": {k: v for k, v in cfg.to_dict()["train"].items()
                                        if k in {"learning_rate", "max_steps", "batch_size", "grad_accum", "max_length",
                                                 "seed", "optimizer", "packing"}}},
        "datasheet": datasheet(root, f, cfg),
        "compute": compute(f),
        "validation": {"holdout_examples": f["reports"]["split"]["holdout"],
                       "scores": {k: round(v, 6) for k, v in sorted(m.items()) if k.split("/")[0] in {"baseline", "finetuned", "delta"}},
                       "metric_config": {k.removeprefix("metric."): v for k, v in sorted(f["run_params"].items()) if k.startswith("metric.")},
                       "memorisation": {k.removeprefix("memorisation/"): v for k, v in sorted(m.items()) if k.startswith("memorisation/")}},
        "human_oversight": {"gate_alias": cfg.gate.alias, "pre_checks": f["tags"].get("loragate.checks", ""),
                            "approval_state": f["tags"].get("loragate.approval_status", ""), "initiator": f["initiator"],
                            "rule": "a reviewer other than the initiator approves, after the DPO signed the DPIA",
                            "audit_events": events},
        "changes": changes(cfg, root, client, f),
        "post_market_monitoring": [
            {"what": "integrity of the decision record and the serving alias (`loragate audit verify`)", "in_force": True},
            {"what": "alias history: which version served when, moved by whom (`loragate status`)", "in_force": True},
            {"what": "erasure requests and the versions they block (`loragate erasure`)", "in_force": True},
            {"what": "anonymized log of served requests (`loragate serve`)", "in_force": True},
            {"what": "drift of served requests against the training data, retrain flag (`loragate drift`)",
             "in_force": True}],
    }


def record(cfg: Config, root: str | Path, model: str, version: str, model_dir: str) -> str:
    root, client = Path(root).resolve(), client_for(cfg, root)
    facts = run_facts(cfg, root, client, model, version)
    return attach(cfg, root, client, build(cfg, root, client, facts, model_dir), KIND, "technical_file_recorded", "loragate")
