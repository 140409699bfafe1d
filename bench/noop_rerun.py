"""How long `loragate run` takes when nothing changed, against the run that built the version.

    python bench/noop_rerun.py [--full]   # writes bench/results/noop_rerun.json

It clones the repo into a temporary folder, runs the README's main job once (by default with a
short training budget, `train.max_steps=4` and 16 hold-out examples: the no-op path does not depend on
it; --full uses the params as they are), then runs the same command again and times it. The second
run must register nothing: the bench checks the store still holds one version and one run.
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
TARGET_S = 30.0


def _timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - started, done.stdout


def main(argv: list[str]) -> int:
    from mlflow.tracking import MlflowClient

    sets = [] if "--full" in argv else ["--set", "train.max_steps=4", "--set", "eval.max_examples=16"]
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "loragate"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        cmd = [str(Path(sys.executable).parent / "loragate"), "run", *sets]
        first_s, _ = _timed(cmd, clone)
        noop_s, out = _timed(cmd, clone)
        client = MlflowClient(f"sqlite:///{clone}/mlflow/mlflow.db")
        versions = client.search_model_versions("name='loragate-triage'")
        runs = client.search_runs(client.get_experiment_by_name("loragate").experiment_id)
    result = {"first_run_s": round(first_s, 1), "noop_rerun_s": round(noop_s, 1),
              "noop_over_first": round(noop_s / first_s, 3), "target_s": TARGET_S, "meets_target": noop_s <= TARGET_S,
              "versions_after": len(versions), "runs_after": len(runs), "said": out.strip().splitlines()[-1],
              "overrides": sets[1::2], "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    out_path = ROOT / "bench" / "results" / "noop_rerun.json"
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if len(versions) == 1 and len(runs) == 1 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
