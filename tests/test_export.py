"""Export of approved versions: the adapter folder and the merged model of a real tiny-model run;
the merged model answers as base + adapter does; a pending version is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main as cli
from flows.finetune import finetune
from tasks.config import load_config
from tasks.governance import audit, gate

from tests.conftest import LENIENT_GATE, update_params


@pytest.mark.slow
def test_an_approved_version_exports_as_adapter_and_merged_and_a_pending_one_is_refused(workspace, prefect_server,
                                                                                       capfd):
    from tasks.evaluation.holdout import generate, load_for_inference

    update_params(workspace, gate=LENIENT_GATE)
    run = finetune(str(workspace))
    cfg = load_config(workspace / "params.yaml")
    ws = ["--workspace", str(workspace)]

    assert cli(["export", run.model_name, run.version, *ws]) == 2  # pending
    assert "only approved versions are exported" in capfd.readouterr().err
    gate.approve(cfg, workspace, run.model_name, run.version, "reviewer-b", "ok")

    assert cli(["export", run.model_name, "@production", *ws]) == 0
    adapter = workspace / "exports" / f"{run.model_name}-v{run.version}-adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    readme = (adapter / "README.md").read_text()
    assert cfg.model.base in readme and "sha256" in readme and "--enable-lora" in readme

    merged = workspace / "merged"
    assert cli(["export", run.model_name, run.version, "--format", "merged", "--out", str(merged), *ws]) == 0
    assert "answers equal base + adapter on" in capfd.readouterr().out
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    rows = [json.loads(x) for x in (workspace / "data/splits/holdout.jsonl").read_text().splitlines()[:5]]
    prompts = [r["messages"][:-1] for r in rows]
    direct = generate(*load_for_inference(cfg.model.base, str(Path(run.run_dir) / "train" / "adapter")), prompts, 12, 8)
    assert generate(*load_for_inference(str(merged)), prompts, 12, 8) == direct

    assert cli(["export", run.model_name, run.version, "--format", "gguf", *ws]) == 0
    gguf_dir = workspace / "exports" / f"{run.model_name}-v{run.version}-gguf"
    assert (gguf_dir / "model.gguf").stat().st_size > 100_000 and (gguf_dir / "Modelfile").exists()
    from tasks.governance.export import _load_gguf

    assert generate(*_load_gguf(gguf_dir / "model.gguf"), prompts, 12, 8) == direct

    exported = [e for e in audit.read(gate.audit_path(cfg, workspace)) if e.event == "exported"]
    assert [e.data["format"] for e in exported] == ["adapter", "merged", "gguf"]
    assert exported[1].data["files"]["model.safetensors"] == __import__("hashlib").sha256(
        (merged / "model.safetensors").read_bytes()).hexdigest()
    assert cli(["export", run.model_name, run.version, "--format", "merged", "--out", str(merged), *ws]) == 2  # not empty
    assert gate.verify(cfg, workspace) == []


def test_gguf_refuses_an_architecture_it_cannot_map(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tasks.governance.export import ExportError, write_gguf

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ExportError, match="gpt2 models cannot be mapped here"):
        write_gguf(tmp_path / "gpt2", tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()
