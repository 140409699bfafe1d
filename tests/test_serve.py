"""`loragate serve` on a real MLflow model server: the alias holder answers over HTTP, the request
log holds the request only anonymized, and after an approval moves the alias a restart serves the
new version."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.cli import main as cli
from flows.finetune import finetune
from tasks.config import load_config
from tasks.governance import gate

ROOT = Path(__file__).resolve().parents[1]
EMAIL, IBAN = "lena.vogt@example.org", "DE89 3704 0044 0532 0130 00"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(port: int, text: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, "the model server did not come up"
            time.sleep(1)
    body = json.dumps({"inputs": [text]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=timeout).read())["predictions"][0]


def _served(workspace: Path, text: str) -> str:
    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--workspace",
                               str(workspace)], cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        return _ask(port, text)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _direct(cfg, workspace: Path, run_dir: str, text: str) -> str:
    from tasks.data.validate import system_prompt
    from tasks.evaluation.holdout import generate, load_for_inference

    system = system_prompt(workspace / "data/splits/holdout.jsonl")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    model = load_for_inference(cfg.model.base, str(Path(run_dir) / "train" / "adapter"))
    return generate(*model, [messages], cfg.eval.max_new_tokens, 8)[0]


@pytest.mark.slow
def test_the_alias_holder_is_served_and_requests_are_logged_anonymized(workspace, prefect_server, capfd):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["gate"] = {"min_delta_rougeL": -1.0, "min_delta_bertscore_f1": -1.0, "max_regression_vs_champion": 1.0}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(workspace / "params.yaml")
    assert cli(["serve", "--workspace", str(workspace)]) == 2  # nothing approved yet
    assert "no such registered model version or alias" in capfd.readouterr().err

    first = finetune(str(workspace))
    gate.approve(cfg, workspace, first.model_name, first.version, "reviewer-b", "ok")
    text = f"Hi, I am Lena Vogt, write to {EMAIL}; refund to {IBAN}. My router is broken."
    assert _served(workspace, text) == _direct(cfg, workspace, first.run_dir, text)

    log = workspace / "mlflow" / "requests" / f"{cfg.registry.model_name}.jsonl"
    raw = log.read_text()
    assert EMAIL not in raw and IBAN not in raw and IBAN.replace(" ", "") not in raw and "Lena Vogt" not in raw
    entry = json.loads(raw.splitlines()[-1])
    assert entry["version"] == first.version and "<EMAIL_ADDRESS" in entry["request"] and "router" in entry["request"]

    params["lora"] = {"r": 8}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    second = finetune(str(workspace))
    gate.approve(cfg, workspace, second.model_name, second.version, "reviewer-b", "ok")  # moves the alias
    assert _served(workspace, text) == _direct(cfg, workspace, second.run_dir, text)
    assert json.loads(log.read_text().splitlines()[-1])["version"] == second.version
