"""The one place stages become Prefect tasks. Caching is off: stages talk through files and DVC
decides what is stale, so Prefect's input-hash cache would only skip work wrongly.

Prefect is optional at import time so that a GPU host that only trains or benches (no orchestrator
installed) can import the stage modules; the flow itself needs it.
"""
from __future__ import annotations

import sys
from typing import Callable


def stage_task(fn: Callable, name: str):
    """fn as a Prefect task named `name`, or fn itself where Prefect is not installed."""
    try:
        from prefect import task
        from prefect.cache_policies import NO_CACHE
    except ImportError:
        return fn
    return task(fn, name=name, cache_policy=NO_CACHE)


def stage_main(argv: list[str], paths: tuple[str, ...], run: Callable, expected: tuple[type, ...] = (),
               prefix: str = "") -> int:
    """The DVC entry of a stage: `python -m tasks.data.X PATH... [--params FILE]` with the paths
    dvc.yaml gives it, then run(cfg, *paths). Expected errors (bad input, bad params) print one
    line for `dvc repro` and the CLI to pass on, and exit 2; anything else is a crash."""
    import argparse

    from tasks.config import ConfigError, load_config

    parser = argparse.ArgumentParser(description=run.__doc__)
    for name in paths:
        parser.add_argument(name)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = parser.parse_args(argv[1:])
    try:
        run(load_config(args.params), *(getattr(args, name) for name in paths))
    except (ConfigError, *expected) as err:
        print(f"loragate: {prefix if not isinstance(err, ConfigError) else ''}{err}", file=sys.stderr)
        return 2
    return 0
