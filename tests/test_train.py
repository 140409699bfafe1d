import json

import pytest
import torch

from tasks.config import config_from_dict
from tasks.train import bnb_config, build_trainer, train
from tests.conftest import tiny_params


@pytest.fixture
def train_file(tmp_path, sample):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), **r}) + "\n" for i, r in enumerate(sample[:24])))
    return path


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().float() for n, p in model.named_parameters()}


def test_lora_moves_the_adapter_and_leaves_the_base_frozen(tmp_path, tiny_model, train_file):
    cfg = config_from_dict(tiny_params(tiny_model))
    trainer = build_trainer(cfg, tiny_model, train_file, tmp_path / "run")
    before = _snapshot(trainer.model)
    report = train(cfg, tiny_model, train_file, tmp_path / "run", trainer=trainer)
    after = _snapshot(trainer.model)
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base and report.steps == 4
    assert all(torch.equal(before[n], after[n]) for n in base)
    assert any(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)
    assert all(not p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" not in n)
    assert (tmp_path / "run/adapter/adapter_model.safetensors").exists()
    history = json.loads((tmp_path / "run/log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]


def test_training_resumes_from_the_last_checkpoint(tmp_path, tiny_model, train_file):
    cfg = config_from_dict(tiny_params(tiny_model, train={"max_steps": 10}))
    train(cfg, tiny_model, train_file, tmp_path / "run")  # saves a checkpoint at step 10
    longer = config_from_dict(tiny_params(tiny_model, train={"max_steps": 12}))
    report = train(longer, tiny_model, train_file, tmp_path / "run")
    history = json.loads((tmp_path / "run/log_history.json").read_text())
    assert report.steps == 12
    assert [e["step"] for e in history if "loss" in e][-2:] == [11, 12]


def test_quantization_block_decides_qlora():
    assert bnb_config(config_from_dict({}).quantization) is None
    q = bnb_config(config_from_dict({"quantization": {"enabled": True, "quant_type": "fp4"}}).quantization)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and q.bnb_4bit_use_double_quant


def test_qlora_trains_in_4bit_on_cpu(tmp_path, tiny_model, train_file):
    cfg = config_from_dict(tiny_params(tiny_model, quantization={"enabled": True}, train={"max_steps": 2}))
    trainer = build_trainer(cfg, tiny_model, train_file, tmp_path / "q")
    assert getattr(trainer.model, "is_loaded_in_4bit", False) or any(
        "4bit" in type(m).__name__ for m in trainer.model.modules())
    before = _snapshot(trainer.model)
    report = train(cfg, tiny_model, train_file, tmp_path / "q", trainer=trainer)
    after = _snapshot(trainer.model)
    assert report.quantized and report.steps == 2
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fast", [{}, {"liger_kernels": True, "optimizer": "adamw_torch_fused",
                                       "gradient_checkpointing": True}], ids=["defaults", "liger-fused-ckpt"])
def test_qlora_on_gpu_in_bf16(tmp_path, tiny_model, train_file, fast):
    if fast.get("liger_kernels"):
        pytest.importorskip("liger_kernel")
    cfg = config_from_dict(tiny_params(tiny_model, quantization={"enabled": True, "compute_dtype": "bfloat16"},
                                       train=fast))
    trainer = build_trainer(cfg, tiny_model, train_file, tmp_path / "g")
    assert any(type(m).__name__ == "Linear4bit" for m in trainer.model.modules())
    before = _snapshot(trainer.model)
    train(cfg, tiny_model, train_file, tmp_path / "g", trainer=trainer)
    after = _snapshot(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
