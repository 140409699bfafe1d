"""The MLflow record of one pipeline run: store location, run start, params, metrics, curves,
tables and plots. Callers pass run ids explicitly, so Prefect's threads never share fluent state.

The store is local by default (sqlite under mlflow/, artifacts beside it); `registry.tracking_uri`
can name a server instead.
"""
from __future__ import annotations

import functools
import getpass
import os
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from tasks.config import Config


def _store_uri(cfg: Config, root: str | Path) -> str:
    """sqlite paths in params are relative to the workspace; made absolute."""
    uri = cfg.registry.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(root).resolve() / uri[len('sqlite:///'):]}"
    return uri


def tracking_uri(cfg: Config, root: str | Path) -> str:
    """The store's URI, its sqlite folder created."""
    uri = _store_uri(cfg, root)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def client_for(cfg: Config, root: str | Path) -> MlflowClient:
    uri = tracking_uri(cfg, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def initiator() -> str:
    """Who started the run (recorded at start; the gate compares reviewers against it)."""
    return os.environ.get("LORAGATE_USER") or getpass.getuser()


# MLflow 3 opens an experiment of unknown kind on its GenAI traces page; this kind opens it on its runs
EXPERIMENT_KIND = {"mlflow.experimentKind": "finetuning"}


def experiment_id(client: MlflowClient, cfg: Config, root: str | Path) -> str:
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    if exp:
        return exp.experiment_id
    artifacts = (Path(root).resolve() / cfg.registry.artifact_root).as_uri()
    return client.create_experiment(cfg.registry.experiment, artifact_location=artifacts, tags=EXPERIMENT_KIND)


def package_version() -> str:
    """The installed loragate's version, tagged on every run: stage code is part of what a run was."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loragate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def start_run(cfg: Config, root: str | Path, run_name: str, tags: dict[str, str]) -> str:
    client = client_for(cfg, root)
    exp = experiment_id(client, cfg, root)
    if "mlflow.experimentKind" not in client.get_experiment(exp).tags:  # an experiment made before loragate set it
        client.set_experiment_tag(exp, *next(iter(EXPERIMENT_KIND.items())))
    run = client.create_run(exp, run_name=run_name, tags={"loragate.initiator": initiator(), "mlflow.user": initiator(),
                                                          "loragate.version": package_version(), **tags})
    params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in cfg.flat().items()]
    client.log_batch(run.info.run_id, params=params)
    return run.info.run_id


_CONTEXT = {"anonymized": "anonymized", "train": "training", "holdout": "evaluation"}


def log_datasets(client: MlflowClient, run_id: str, hashes: dict[str, str]) -> None:
    """The run's datasets as MLflow inputs (its Datasets panel): each DVC output the run read,
    digest = DVC's md5, source = the workspace path. The raw file is left out: it is personal data."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [DatasetInput(Dataset(name=Path(path).stem, digest=md5, source_type="dvc", source=path),
                           tags=[InputTag("mlflow.data.context", _CONTEXT[Path(path).stem])])
              for path, md5 in sorted(hashes.items()) if Path(path).stem in _CONTEXT]
    client.log_inputs(run_id, datasets=inputs)


def previous_params(cfg: Config, root: str | Path) -> dict[str, str] | None:
    """The params of the experiment's latest run, or None before the first."""
    client = client_for(cfg, root)
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1) if exp else []
    return dict(runs[0].data.params) if runs else None


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], prefix: str = "", step: int = 0) -> None:
    entities = [mlflow.entities.Metric(f"{prefix}{k}", float(v), 0, step) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=entities)


def log_memory_plan(client: MlflowClient, run_id: str, plan: dict[str, Any] | None) -> None:
    """What train.memory_budget_gib chose on this card, as tags train.plan.<key>. Tags, not params:
    a run resumed after a kill may get another plan (the card's free memory moves), and a param
    once logged refuses a new value."""
    for key, value in (plan or {}).items():
        client.set_tag(run_id, f"train.plan.{key}", str(value))


def log_loss_curve(client: MlflowClient, run_id: str, history: list[dict[str, Any]]) -> None:
    """trainer log history -> metric histories `train/loss`, `train/learning_rate`, ... by step."""
    entities = [mlflow.entities.Metric(f"train/{k}", float(v), 0, int(entry.get("step", 0)))
                for entry in history for k, v in entry.items()
                if k in {"loss", "learning_rate", "grad_norm", "mean_token_accuracy"}]
    if entities:
        client.log_batch(run_id, metrics=entities)


def finish(client: MlflowClient, run_id: str, ok: bool) -> None:
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


class NotResumable(Exception):
    """`loragate run --resume` named no run that can go on."""


def resumable_run(cfg: Config, root: str | Path, wanted: str | None) -> str:
    """The run `--resume` continues: the one named, or the newest one with a training folder; never
    one MLflow shows finished (its version is registered: start a new run instead)."""
    runs = Path(root) / "runs"
    folders = sorted((p for p in runs.glob("*") if (p / "train").is_dir()), key=lambda p: p.stat().st_mtime)
    if wanted:
        folders = [p for p in folders if p.name == wanted]
        if not folders:
            raise NotResumable(f"--resume {wanted}: no such run with a training folder in {runs}")
    if not folders:
        raise NotResumable(f"--resume: no run with a training folder in {runs}; start one with `loragate run`")
    run_id = folders[-1].name
    if client_for(cfg, root).get_run(run_id).info.status == "FINISHED":
        raise NotResumable(f"--resume: run {run_id} finished (its version is registered); start a new run")
    return run_id


def check_store(cfg: Config, root: str | Path) -> None:
    """The MLflow store answers and takes writes: a server that is down or a sqlite file another
    process holds locked is one line here instead of a stack of retries later (ConfigError)."""
    import sqlite3

    from tasks.config import ConfigError
    from tasks.orchestration import answers

    uri = _store_uri(cfg, root)  # not tracking_uri(): a check creates no folder
    if uri.startswith(("http://", "https://")):
        if not answers(uri):
            raise ConfigError(f"registry.tracking_uri {uri}: the MLflow server does not answer; start it, or use "
                              "a sqlite store (sqlite:///mlflow/mlflow.db)")
    elif uri.startswith("sqlite:///") and Path(uri[len("sqlite:///"):]).exists():
        db = uri[len("sqlite:///"):]
        try:
            with sqlite3.connect(db, timeout=2) as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.rollback()
        except sqlite3.OperationalError as err:
            raise ConfigError(f"registry.tracking_uri: {db} is {'locked by another process' if 'locked' in str(err) else str(err)}"
                              "; wait for it to finish, or stop it") from None


# params that change how a run goes, not what it makes: the same run key with any value of these
_OPERATIONAL = {"pii.n_process", "pii.batch_size", "train.logging_steps", "train.checkpoint_steps", "model.cache_dir",
                "gate.approval_timeout_s"}
RUN_KEY_TAG = "loragate.run_key"


@functools.lru_cache(maxsize=1)  # the CLI, the flow, registration and the baseline cache each ask within one run
def code_digest() -> str:
    """sha256 over loragate's own code and templates as installed, and the libraries that compute."""
    import hashlib
    from importlib.metadata import version

    import flows
    import tasks

    digest = hashlib.sha256()
    for package in (tasks, flows):
        base = Path(package.__file__).parent
        for path in sorted(p for p in base.rglob("*") if p.suffix in {".py", ".j2", ".json"} and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes())
    for name in ("torch", "transformers", "peft", "trl", "presidio-analyzer", "evaluate"):
        digest.update(f"{name}=={version(name)}".encode())
    return digest.hexdigest()


def run_key(cfg: Config, hashes: dict[str, str]) -> str:
    """What a model version is a function of: the data (DVC hashes), the params and the code."""
    import hashlib
    import json

    params = {k: v for k, v in cfg.flat().items() if k not in _OPERATIONAL}
    blob = json.dumps({"data": dict(sorted(hashes.items())), "params": params, "code": code_digest()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def built_version(cfg: Config, root: str | Path, key: str):
    """The registered version already built from exactly these inputs, or None."""
    client = client_for(cfg, root)
    try:
        versions = client.search_model_versions(f"name='{cfg.registry.model_name}'")
    except Exception:  # no registered model yet
        return None
    same = [v for v in versions if v.tags.get(RUN_KEY_TAG) == key]
    return max(same, key=lambda v: int(v.version)) if same else None
