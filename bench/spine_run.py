"""Measure the README's main job end to end on this machine: wall time per stage, and the
baseline vs fine-tuned hold-out scores.

    python bench/spine_run.py            # ~8-12 min on 2 cores; writes bench/results/spine_run.json

It clones the repo into a temporary folder (so every DVC stage really runs), uses a fresh model
cache (so the one-time GGUF conversion is counted), runs `loragate run` there, and reads the
per-stage times (`time/*_s`) and scores the flow logged to that clone's MLflow store.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "loragate"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        cache = Path(tmp) / "models"
        cmd = [str(Path(sys.executable).parent / "loragate"), "run", "--set", f"model.cache_dir={cache}"]
        started = time.perf_counter()
        subprocess.run(cmd, cwd=clone, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - started
        client = MlflowClient(f"sqlite:///{clone}/mlflow/mlflow.db")
        (run,) = client.search_runs(client.get_experiment_by_name("loragate").experiment_id)
        metrics = run.data.metrics
    result = {
        "wall_seconds_total": round(wall, 1),
        "stages_seconds": {k[5:-2]: v for k, v in sorted(metrics.items()) if k.startswith("time/")},
        "scores": {k: round(v, 4) for k, v in sorted(metrics.items())
                   if k.split("/")[0] in {"baseline", "finetuned", "delta"}},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    out = ROOT / "bench" / "results" / "spine_run.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
