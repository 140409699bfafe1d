"""Wall time of the scheduled retraining, end to end through Prefect: a deployment served by
`loragate schedule --serve`, triggered twice on a temporary Prefect server. The first run builds a
version; the second finds nothing changed and must register nothing.

    python bench/scheduled_run.py [--quick]   # writes bench/results/scheduled_run.json

It clones the repo into a temporary folder; --quick sets train.max_steps=4 and 16 hold-out examples
in the clone's params (the main job's defaults otherwise).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _quick(clone: Path) -> None:
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["max_steps"], params["eval"]["max_examples"] = 4, 16
    (clone / "params.yaml").write_text(yaml.safe_dump(params))


def _wait_for_deployment(name: str, timeout: float = 120) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:  # the serve process has not registered it yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)


def main(argv: list[str]) -> int:
    from mlflow.tracking import MlflowClient
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        clone = Path(tmp) / "loragate"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        if "--quick" in argv:
            _quick(clone)
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        server = subprocess.Popen([sys.executable, "-m", "flows.cli", "schedule", "--serve", "--workspace", str(clone)],
                                  cwd=clone, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_deployment("loragate-finetune/quarterly-loragate")
            walls, states = [], []
            for _ in range(2):
                started = time.perf_counter()
                run = run_deployment("loragate-finetune/quarterly-loragate", timeout=3600)
                walls.append(round(time.perf_counter() - started, 1))
                states.append(run.state.name)
        finally:
            server.terminate()
            server.wait(timeout=60)
        client = MlflowClient(f"sqlite:///{clone}/mlflow/mlflow.db")
        versions = len(client.search_model_versions("name='loragate-triage'"))
    result = {"first_scheduled_run_s": walls[0], "unchanged_scheduled_run_s": walls[1], "states": states,
              "versions_after": versions, "quick": "--quick" in argv, "cpus": os.cpu_count()}
    (ROOT / "bench" / "results" / "scheduled_run.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if versions == 1 and states == ["Completed", "Completed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
