"""`loragate`: the command line, a thin shell over the flows and tasks.

    loragate run [--data PATH] [--params FILE] [--set section.key=value ...] [--workspace DIR]
    loragate status [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import tasks  # noqa: F401  (offline defaults before any library import)
from tasks.config import ConfigError, apply_overrides, load_config
from tasks.models import ModelNotFound
from tasks.versioning import StageFailed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loragate", description="Auditable LoRA/QLoRA fine-tuning pipeline.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline; ends with a model version pending approval")
    run.add_argument("--data", help="input JSONL (sets data.raw)")
    run.add_argument("--params", default="params.yaml", help="params file, relative to the workspace")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a param; written into the params file, as `dvc exp run -S` does")
    run.add_argument("--workspace", default=".", help="the DVC/git workspace holding dvc.yaml (default: .)")
    status = sub.add_parser("status", help="registered versions, approval states, aliases")
    status.add_argument("--json", action="store_true")
    status.add_argument("--params", default="params.yaml")
    status.add_argument("--workspace", default=".")
    return p


def cmd_run(args) -> int:
    from flows.finetune import finetune
    from tasks.tracking import tracking_uri

    root = Path(args.workspace).resolve()
    sets = list(args.sets) + ([f"data.raw={args.data}"] if args.data else [])
    cfg = apply_overrides(root / args.params, sets)
    if not Path(root / cfg.data.raw).is_file():
        raise ConfigError(f"data.raw: {cfg.data.raw}: no such file")
    summary = finetune(str(root), args.params)
    m = summary.metrics
    print(f"\nhold-out ROUGE-L {m['baseline/rougeL']:.3f} -> {m['finetuned/rougeL']:.3f}, "
          f"BERTScore F1 {m['baseline/bertscore_f1']:.3f} -> {m['finetuned/bertscore_f1']:.3f}")
    print(f"registered {summary.model_name} version {summary.version}: approval pending (MLflow run {summary.run_id})")
    print(f"next: review it in the MLflow UI  `mlflow ui --backend-store-uri {tracking_uri(cfg, root)}`"
          f"  and see the state with `loragate status`")
    return 0


def version_rows(cfg, root: Path) -> list[dict]:
    from tasks.register import APPROVAL_TAG
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
             "initiator": v.tags.get("loragate.initiator", ""), "base_model": v.tags.get("loragate.base_model", "")}
            for v in sorted(versions, key=lambda v: int(v.version))]


def cmd_status(args) -> int:
    root = Path(args.workspace).resolve()
    rows = version_rows(load_config(root / args.params), root)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no model versions registered yet: run `loragate run`")
    else:
        print(f"{'model':<20} {'version':>7}  {'status':<20} {'aliases':<14} initiator")
        for r in rows:
            print(f"{r['model']:<20} {r['version']:>7}  {r['status']:<20} {','.join(r['aliases']) or '-':<14} {r['initiator']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "status": cmd_status}[args.command](args)
    except (ConfigError, ModelNotFound, StageFailed) as err:
        print(f"loragate: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
