"""`loragate doctor`: is this machine and workspace ready for a run? Each problem comes with its fix.

    loragate doctor [--workspace DIR] [--params FILE]     # exit 1 when a problem would stop a run
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from tasks.config import Config

PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "mlflow", "dvc", "prefect",
            "evaluate", "presidio-analyzer", "presidio-anonymizer", "spacy")
MIN_FREE_GIB = 2.0  # a small-model run with its DVC cache, checkpoints and MLflow artifacts


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str  # what was found, or the problem and its fix
    fatal: bool = True  # a failed fatal check stops a run; others are warnings


def _packages() -> Finding:
    missing, found = [], []
    for name in PACKAGES:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            missing.append(name)
    if missing:
        return Finding("packages", False, f"missing: {', '.join(missing)}; run `bash .ci/install`")
    return Finding("packages", True, ", ".join(found[:4]) + f" and {len(found) - 4} more")


def _guarded(name: str, check: Callable[[], str], fatal: bool = True) -> Finding:
    """A check that raises with its own one-line message when something is wrong."""
    try:
        return Finding(name, True, check())
    except Exception as err:  # each check's refusal is already a sentence with its fix
        return Finding(name, False, str(err).removeprefix("params: "), fatal)


def _ner_model(cfg: Config) -> str:
    from tasks.data.anonymize import spacy_source

    source = spacy_source(cfg.pii.spacy_model)
    return f"{cfg.pii.spacy_model} at {source}" if source != cfg.pii.spacy_model else source


def _base_model(cfg: Config) -> str:
    from tasks.training.models import check_model

    check_model(cfg.model.base)
    return cfg.model.base


def _disk(root: Path) -> Finding:
    free = shutil.disk_usage(root).free / 2**30
    if free < MIN_FREE_GIB:
        return Finding("disk", False, f"{free:.1f} GiB free in {root}, a run needs ~{MIN_FREE_GIB:g}; free space "
                                      "or move the workspace")
    return Finding("disk", True, f"{free:.1f} GiB free in {root}")


def _store(cfg: Config, root: Path) -> str:
    from tasks.tracking import check_store

    check_store(cfg, root)
    return cfg.registry.tracking_uri


def _prefect() -> str:
    from prefect.settings import get_current_settings

    from tasks.orchestration import check_prefect

    check_prefect()
    return get_current_settings().api.url or "none set: each run starts a temporary local server"


def _gpu(cfg: Config) -> Finding:
    import torch

    if torch.cuda.is_available():
        return Finding("gpu", True, f"{torch.cuda.get_device_name(0)}, bitsandbytes {version('bitsandbytes')}")
    if cfg.quantization.enabled:
        return Finding("gpu", False, "no CUDA GPU: QLoRA (quantization.enabled) runs on the CPU, slowly; fine for "
                                     "a tiny model, not for a 7B", fatal=False)
    return Finding("gpu", True, "none; LoRA trains on the CPU (small models)")


def diagnose(cfg: Config, root: str | Path) -> list[Finding]:
    root = Path(root).resolve()
    python = sys.version_info >= (3, 11)
    return [Finding("python", python, sys.version.split()[0] if python else f"{sys.version.split()[0]}: needs >= 3.11"),
            _packages(), _guarded("ner model", lambda: _ner_model(cfg)), _guarded("base model", lambda: _base_model(cfg)),
            _disk(root), _guarded("mlflow store", lambda: _store(cfg, root)), _guarded("prefect api", _prefect),
            _gpu(cfg)]
