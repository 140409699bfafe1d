"""Two real tiny-model runs, compared in the real MLflow UI in headless Chromium (Debian's chromium
and chromium-driver, installed by .ci/install)."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from flows.cli import main as cli
from flows.cli import experiment_url, ui_command
from flows.finetune import finetune
from tasks.governance import gate
from tasks.config import load_config
from tasks.tracking import client_for
from tests.conftest import CHROMEDRIVER, CHROMIUM, LENIENT_GATE, browser_for, update_params



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def _scrolled_text(browser) -> str:
    """The page's text, including the rows of its virtualized metric tables (rendered only when
    scrolled into view)."""
    body = browser.find_element("tag name", "body")
    text = body.text
    for _ in range(100):
        moved = browser.execute_script(
            "let moved = false; document.querySelectorAll('.ReactVirtualized__Grid').forEach(g => {"
            " if (g.scrollTop + g.clientHeight < g.scrollHeight) { g.scrollTop += 120; moved = true; } });"
            " return moved;")
        time.sleep(0.2)
        text += "\n" + body.text
        if not moved:
            return text
    return text


def _two_runs(workspace: Path):
    """A first run approved into production, then a second with another LoRA rank via the CLI."""
    update_params(workspace, gate=LENIENT_GATE)
    before = (workspace / "params.yaml").read_bytes()
    first = finetune(str(workspace))
    cfg = load_config(workspace / "params.yaml")
    gate.approve(cfg, workspace, first.model_name, first.version, "reviewer-b", "first baseline release")
    assert cli(["run", "--workspace", str(workspace), "--set", "lora.r=8"]) == 0
    assert (workspace / "params.yaml").read_bytes() == before  # --set applied to that run only
    client = client_for(cfg, workspace)
    runs = client.search_runs([client.get_experiment_by_name(cfg.registry.experiment).experiment_id],
                              order_by=["attributes.start_time ASC"])
    return cfg, client, runs


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver")
def test_two_runs_side_by_side_in_the_mlflow_compare_view(workspace, prefect_server, tmp_path):
    cfg, client, runs = _two_runs(workspace)
    first, second = runs
    assert first.info.run_name.endswith("-lora first run") and second.info.run_name.endswith("-lora r=8")
    m = second.data.metrics
    for stage in ("baseline", "finetuned", "delta", "vs_champion"):
        assert m[f"{stage}/rougeL_ci_low"] <= m[f"{stage}/rougeL"] <= m[f"{stage}/rougeL_ci_high"], stage
    held = len((workspace / "data/splits/holdout.jsonl").read_text().splitlines())
    assert second.data.tags["loragate.champion_version"] == "1" and m["vs_champion/rows"] == min(12, held)
    assert second.data.params["metric.bertscore.num_layers"] == "6"
    artifacts = {a.path for a in client.list_artifacts(second.info.run_id, "plots")}
    assert {"plots/training_loss.png", "plots/scores.png"} <= artifacts
    report = Path(client.download_artifacts(second.info.run_id, "eval/report.html", str(tmp_path))).read_text()
    assert "delta" in report and "vs champion" in report and second.info.run_name in report
    # what the UI's panels read: the experiment's kind, each run's datasets and creator, the versions' descriptions
    assert client.get_experiment(first.info.experiment_id).tags["mlflow.experimentKind"] == "finetuning"
    inputs = {d.dataset.name: d for d in client.get_run(second.info.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"anonymized", "train", "holdout"}
    assert inputs["train"].dataset.digest == second.data.tags["loragate.data.train"]
    assert second.data.tags["mlflow.user"] == "test-initiator"
    described = {str(v.version): v.description for v in client.search_model_versions(f"name='{cfg.registry.model_name}'")}
    assert described["1"].startswith("**approved** by reviewer-b") and "ROUGE-L" in described["1"]
    assert described["2"].startswith("**pending**") and "pre-checks passed" in described["2"]

    port = _free_port()
    server = subprocess.Popen(ui_command(cfg, workspace, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health")
        ids = json.dumps([first.info.run_id, second.info.run_id])
        exp = json.dumps([first.info.experiment_id])
        url = (f"http://127.0.0.1:{port}/#/compare-runs?runs={urllib.parse.quote(ids)}"
               f"&experiments={urllib.parse.quote(exp)}")
        browser = browser_for(tmp_path)
        try:
            browser.get(url)
            wanted = [first.info.run_name, second.info.run_name, "lora.r", "metric.bertscore.num_layers",
                      "delta/rougeL", "delta/rougeL_ci_low", "finetuned/bertscore_f1", "vs_champion/rougeL"]
            from selenium.webdriver.support.ui import WebDriverWait  # fails loudly after 60 s

            WebDriverWait(browser, 60).until(lambda b: second.info.run_name in b.find_element("tag name", "body").text)
            shot = tmp_path / "compare.png"
            browser.save_screenshot(str(shot))
            text = _scrolled_text(browser)
            browser.get(experiment_url(cfg, workspace, port))  # the link `loragate ui` prints opens on the runs
            WebDriverWait(browser, 60).until(lambda b: first.info.run_name in b.find_element("tag name", "body").text)
            browser.get(f"http://127.0.0.1:{port}/#/models/{cfg.registry.model_name}/versions/1")
            WebDriverWait(browser, 60).until(lambda b: "approved" in b.find_element("tag name", "body").text)
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    if os.environ.get("LORAGATE_SCREENSHOT_DIR"):  # to look at it: the test's tmp dir is gone afterwards
        shutil.copy(shot, Path(os.environ["LORAGATE_SCREENSHOT_DIR"]) / "mlflow_compare.png")
        (Path(os.environ["LORAGATE_SCREENSHOT_DIR"]) / "mlflow_compare.txt").write_text(text)
    assert [w for w in wanted if w not in text] == []
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
