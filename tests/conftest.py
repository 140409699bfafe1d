"""Shared fixtures: a tiny random causal LM + tokenizer built offline in seconds, a temporary
DVC workspace with an MLflow store inside it, and a real (temporary) Prefect server."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import tasks  # noqa: F401  (offline environment defaults)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")  # .ci/install puts them there
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def load_generator(name: str = "generate"):
    """A seeded generator of data/sample/ (the sample tickets, or pii_synth's labelled messages)."""
    spec = importlib.util.spec_from_file_location(f"sample_{name}", ROOT / f"data/sample/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    """Keep DVC's and Hugging Face's global state out of the user's home."""
    home = tmp_path_factory.mktemp("home")
    for key, sub in {"DVC_GLOBAL_CONFIG_DIR": "dvc-global", "DVC_SITE_CACHE_DIR": "dvc-site",
                     "HF_MODULES_CACHE": "hf-modules"}.items():
        os.environ[key] = str(home / sub)
    os.environ["LORAGATE_USER"] = "test-initiator"
    os.environ["LORAGATE_ID_KEY"] = "test-record-id-key-0123456789"  # no key file written into the checkout
    yield


@pytest.fixture(scope="session")
def generated():
    return load_generator().generate()


@pytest.fixture(scope="session")
def sample(generated) -> list[dict]:
    return generated[0]


@pytest.fixture(scope="session")
def personal_values(generated) -> set[str]:
    """Every personal value the seeded generator injected into the sample."""
    return generated[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, sample) -> str:
    """A 2-layer Llama with a BPE tokenizer trained on the sample texts, saved as an HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    import torch

    texts = [m["content"] for r in sample[:200] for m in r["messages"]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<pad>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


LENIENT_GATE = {"min_delta_rougeL": -1.0, "min_delta_bertscore_f1": -1.0}  # a few-step tiny model need not beat its base


def update_params(workspace: Path, **sections: dict) -> dict:
    """Merge sections into the workspace's params.yaml; returns the whole params."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    for name, values in sections.items():
        params.setdefault(name, {}).update(values)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def tiny_params(model_dir: str, **extra) -> dict:
    params = {
        "data": {"raw": "data/raw/tickets.jsonl", "min_records": 40},
        "model": {"base": model_dir},
        "train": {"max_steps": 4, "batch_size": 4, "max_length": 192, "logging_steps": 1, "learning_rate": 0.003},
        "eval": {"max_new_tokens": 12, "batch_size": 8, "max_examples": 12},
    }
    for section, values in extra.items():
        params.setdefault(section, {}).update(values)
    return params


@pytest.fixture
def workspace(tmp_path, tiny_model, sample) -> Path:
    """A fresh git + DVC repo holding dvc.yaml, the stage code, params for the tiny model, and 80 sample records."""
    ws = tmp_path / "ws"
    (ws / "data" / "raw").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", ws / "dvc.yaml")
    shutil.copytree(ROOT / "tasks", ws / "tasks", ignore=shutil.ignore_patterns("__pycache__"))  # stage code is a DVC dep
    (ws / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model)))
    (ws / "data/raw/tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sample[:80]))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=ws, check=True, env=env)
    return ws


class Background:
    """fn run in a thread; result() returns its value, re-raises its error, and fails loudly when
    it has not finished in time instead of reading a result that is not there."""

    def __init__(self, fn):
        self.done, self.value, self.error = threading.Event(), None, None
        threading.Thread(target=self._run, args=(fn,), daemon=True).start()

    def _run(self, fn) -> None:
        try:
            self.value = fn()
        except BaseException as err:  # handed to the test thread by result()
            self.error = err
        finally:
            self.done.set()

    def result(self, timeout: float):
        if not self.done.wait(timeout):
            raise AssertionError(f"the call did not finish within {timeout} s (hang)")
        if self.error is not None:
            raise self.error
        return self.value


def paused_flow_run_id(timeout: float = 60):
    """The id of the flow run that pauses for input on the test's Prefect server; the server only
    reports states when asked, so this asks until the deadline and then fails loudly."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            paused = [r for r in client.read_flow_runs() if r.state and r.state.is_paused()]
            if paused:
                return paused[0].id
            time.sleep(0.5)
    raise AssertionError(f"no flow run paused within {timeout} s")


def browser_for(tmp_path: Path):
    """Headless Debian Chromium driven by selenium; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run", "--window-size=1600,1400",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
