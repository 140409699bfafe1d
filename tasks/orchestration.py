"""The one place stages become Prefect tasks. Caching is off: stages talk through files and DVC
decides what is stale, so Prefect's input-hash cache would only skip work wrongly.

Prefect is optional at import time so that a GPU host that only trains or benches (no orchestrator
installed) can import the stage modules; the flow itself needs it.
"""
from __future__ import annotations

from typing import Callable


def stage_task(fn: Callable, name: str):
    """fn as a Prefect task named `name`, or fn itself where Prefect is not installed."""
    try:
        from prefect import task
        from prefect.cache_policies import NO_CACHE
    except ImportError:
        return fn
    return task(fn, name=name, cache_policy=NO_CACHE)
