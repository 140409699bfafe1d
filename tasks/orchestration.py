"""The one place stages become Prefect tasks. Caching is off: stages talk through files and DVC
decides what is stale, so Prefect's input-hash cache would only skip work wrongly.

Prefect is optional at import time so that a GPU host that only trains or benches (no orchestrator
installed) can import the stage modules; the flow itself needs it.
"""
from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def stage_task(fn: Callable, name: str, retries: int = 0):
    """fn as a Prefect task named `name`, or fn itself where Prefect is not installed. retries:
    for steps that talk to the MLflow store and are idempotent (a retry finds what the first
    attempt wrote), with backoff: 2 s, 10 s, 30 s."""
    try:
        from prefect import task
        from prefect.cache_policies import NO_CACHE
    except ImportError:
        return fn
    return task(fn, name=name, cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=[2, 10, 30][:retries] or 0)


def stage_main(argv: list[str], paths: tuple[str, ...], run: Callable, expected: tuple[type, ...] = (),
               prefix: str = "") -> int:
    """The DVC entry of a stage: `python -m tasks.data.X PATH... [--params FILE]` with the paths
    dvc.yaml gives it, then run(cfg, *paths). Expected errors (bad input, bad params) print one
    line for `dvc repro` and the CLI to pass on, and exit 2; anything else is a crash."""
    import argparse

    from tasks.config import ConfigError, load_config
    from tasks.io import DiskFull

    parser = argparse.ArgumentParser(description=run.__doc__)
    for name in paths:
        parser.add_argument(name)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = parser.parse_args(argv[1:])
    try:
        run(load_config(args.params), *(getattr(args, name) for name in paths))
    except (ConfigError, DiskFull, *expected) as err:
        print(f"loragate: {prefix if not isinstance(err, (ConfigError, DiskFull)) else ''}{err}", file=sys.stderr)
        return 2
    return 0


class WorkspaceBusy(Exception):
    """Another `loragate run` holds the workspace."""


_HELD: set[Path] = set()  # workspaces this process holds: the CLI takes the lock, the flow inside it finds it held


@contextmanager
def workspace_lock(root: str | Path) -> Iterator[None]:
    """One run per workspace at a time: DVC's stages, params.yaml overrides, the MLflow store and
    the audit log are shared. A second run is refused in one line naming the holder."""
    path = Path(root).resolve() / ".loragate" / "run.lock"
    if path in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise WorkspaceBusy(f"workspace {path.parent.parent} is busy: a run holds it ({holder}); "
                                "wait for it to finish, or stop it and `loragate run --resume`") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        _HELD.add(path)
        try:
            yield
        finally:
            _HELD.discard(path)


def answers(url: str) -> bool:
    """Whether the server at url (MLflow's or Prefect's API) answers its /health within 5 s."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
        return True
    except httpx.HTTPError:
        return False


def check_prefect() -> None:
    """A PREFECT_API_URL that does not answer would fail the flow after minutes of retries."""
    from prefect.settings import get_current_settings

    from tasks.config import ConfigError

    url = get_current_settings().api.url
    if url and not answers(url):
        raise ConfigError(f"PREFECT_API_URL {url}: the Prefect server does not answer; start it "
                          "(`prefect server start`) or unset PREFECT_API_URL for a temporary local one")
