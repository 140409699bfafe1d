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

from flows.cli import main as cli
from flows.finetune import finetune
from tasks.config import load_config
from tasks.governance import gate

ROOT = Path(__file__).resolve().parents[1]
EMAIL, IBAN = "lena.vogt@example.org", "DE89 3704 0044 0532 0130 00"

from tests.conftest import LENIENT_GATE, update_params


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
    update_params(workspace, gate=LENIENT_GATE | {"max_regression_vs_champion": 1.0})
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

    update_params(workspace, lora={"r": 8})
    second = finetune(str(workspace))
    gate.approve(cfg, workspace, second.model_name, second.version, "reviewer-b", "ok")  # moves the alias
    assert _served(workspace, text) == _direct(cfg, workspace, second.run_dir, text)
    assert json.loads(log.read_text().splitlines()[-1])["version"] == second.version


@pytest.mark.slow
def test_drift_flags_out_of_distribution_requests_and_passes_in_distribution_ones(workspace, prefect_server, sample,
                                                                                 monkeypatch, capfd):
    from faker import Faker

    from tasks.governance import serving
    from tasks.tracking import client_for

    update_params(workspace, gate=LENIENT_GATE)
    cfg = load_config(workspace / "params.yaml")
    run = finetune(str(workspace))
    gate.approve(cfg, workspace, run.model_name, run.version, "reviewer-b", "ok")
    log = workspace / "mlflow" / "requests" / f"{cfg.registry.model_name}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv(serving.REQUEST_LOG_ENV, str(log))  # what `loragate serve` sets for the server
    monkeypatch.setenv(serving.PARAMS_ENV, str(workspace / "params.yaml"))
    monkeypatch.setenv(serving.VERSION_ENV, run.version)
    serving._masking.cache_clear()

    unseen = [m["content"] for r in sample[200:240] for m in r["messages"] if m["role"] == "user"]
    serving.log_requests(unseen, ["ok"] * len(unseen))  # tickets like the training ones, never trained on
    ws = ["--workspace", str(workspace)]
    assert cli(["drift", *ws]) == 0
    said = capfd.readouterr().out
    assert "no drift beyond the thresholds" in said, said
    client = client_for(cfg, workspace)
    assert client.get_model_version(run.model_name, run.version).tags["loragate.drift.retrain_recommended"] == "false"

    log.unlink()
    fake = Faker("en_US")
    Faker.seed(3)
    other = [f"{fake.catch_phrase()} for the {fake.word()} festival: bring {fake.color_name()} {fake.word()}s" for _ in range(40)]
    serving.log_requests(other, ["ok"] * len(other))
    assert cli(["drift", *ws]) == 0
    out = capfd.readouterr().out
    assert "RETRAIN RECOMMENDED" in out, out
    version = client.get_model_version(run.model_name, run.version)
    assert version.tags["loragate.drift.retrain_recommended"] == "true"
    drift_run = client.get_run(version.tags["loragate.drift.run_id"])
    assert drift_run.data.metrics["drift/requests"] == 40 and drift_run.data.metrics["drift/retrain_recommended"] == 1.0
    assert {a.path for a in client.list_artifacts(drift_run.info.run_id, "drift")} >= {
        "drift/report.html", "drift/nearest_similarity.png", "drift/report.json"}
