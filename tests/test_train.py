import ast
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from tasks.config import ConfigError, config_from_dict
from tasks.training.train import bnb_config, build_trainer, train
from tests.conftest import ROOT, tiny_params


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


def _train_cmd(tmp_path, tiny_model, train_file, out, **train_params):
    params = tmp_path / f"params-{len(list(tmp_path.glob('params-*')))}.yaml"
    params.write_text(yaml.safe_dump(tiny_params(tiny_model, train={"logging_steps": 1, **train_params})))
    return [sys.executable, "-m", "tasks.training.train", tiny_model, str(train_file), str(out), "--params", str(params)]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_adapter(tmp_path, tiny_model, train_file):
    """SIGKILL at a random point after a random checkpoint; started again, training continues from
    the last complete checkpoint (not step 0) and ends with the uninterrupted run's adapter. A resume
    with another learning rate is refused in one line."""
    from tasks.training.train import COMPLETE

    steps = {"max_steps": 40, "checkpoint_steps": 4}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(_train_cmd(tmp_path, tiny_model, train_file, whole, **steps), cwd=ROOT, check=True, capture_output=True)
    rng = random.Random()
    target = cut / "checkpoints" / f"checkpoint-{4 * rng.randint(1, 3)}" / COMPLETE
    proc = subprocess.Popen(_train_cmd(tmp_path, tiny_model, train_file, cut, **steps), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not target.exists():
        assert proc.poll() is None, "training ended before the checkpoint the test waits for"
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.15))
    assert proc.poll() is None, "training finished before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "adapter").exists()

    changed = subprocess.run(_train_cmd(tmp_path, tiny_model, train_file, cut, **steps, learning_rate=0.001), cwd=ROOT,
                             capture_output=True, text=True)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert changed.stderr.startswith("loragate: resume refused: train.learning_rate changed (0.003 -> 0.001) since "
                                     "the checkpoint at step "), changed.stderr
    resumed = subprocess.run(_train_cmd(tmp_path, tiny_model, train_file, cut, **steps), cwd=ROOT,
                             capture_output=True, text=True, check=True)
    report = ast.literal_eval(resumed.stdout.strip().splitlines()[-1])
    assert report["steps"] == 40 and report["resumed_from_step"] >= int(target.parent.name.split("-")[1])
    history = json.loads((cut / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 41))
    torch.testing.assert_close(_adapter(cut), _adapter(whole))


def test_a_checkpoint_cut_off_mid_write_is_passed_over(tmp_path):
    from tasks.training.train import COMPLETE, last_complete_checkpoint

    for step, complete in ((4, True), (8, True), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / COMPLETE).write_text(str(step))
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-8"


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
    # scored (and served) on the 4-bit base it was trained on, not on the full-precision one
    from tasks.evaluation.holdout import evaluate_holdout, load_for_inference
    from tasks.governance.register import serving_base

    scored = evaluate_holdout(cfg, tiny_model, train_file, tmp_path / "eval", str(tmp_path / "q" / "adapter"))
    model, _ = load_for_inference(tiny_model, str(tmp_path / "q" / "adapter"), bnb_config(cfg.quantization))
    assert scored.examples > 0 and any("4bit" in type(m).__name__ for m in model.modules())
    assert serving_base(cfg).endswith("(nf4 4-bit, compute float32)")
    from types import SimpleNamespace

    from tasks.governance.serving import AdapterChatModel

    served = AdapterChatModel()
    served.load_context(SimpleNamespace(artifacts={"adapter": str(tmp_path / "q" / "adapter")}, model_config={
        "base_model": tiny_model, "max_new_tokens": 4, "quantization": dataclasses.asdict(cfg.quantization)}))
    assert any("4bit" in type(m).__name__ for m in served.model.modules())


def _lora_model(model_dir: str, quantized: bool, dropout: float, dtype: str = "float32", device: str = "cpu"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    quant = bnb_config(config_from_dict({"quantization": {"enabled": True, "compute_dtype": dtype}}).quantization)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), device_map={"": device},
                                                 **({"quantization_config": quant} if quantized else {}))
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give the adapter term weight so a wrong one shows
            p.data.normal_(0, 0.05)
    return model


def _checkpointed_step(model, ids):
    """One forward/backward under non-reentrant gradient checkpointing; the logits, the adapter's
    gradients, and how often each projection's base product ran."""
    import collections

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    calls = collections.Counter()
    for name, module in model.named_modules():
        if name.endswith("base_layer"):
            module.register_forward_hook(lambda *_, kind=name.split(".")[-2]: calls.update([kind]))
    model.train()
    torch.manual_seed(3)  # the same dropout masks in every run
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, calls


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_adapter_first_equals_peft_and_skips_the_last_base_product_of_a_recompute(tiny_model, dropout):
    from tasks.training.adapter_first import adapter_first

    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1))
    ref = _checkpointed_step(_lora_model(tiny_model, True, dropout), ids)
    first = _lora_model(tiny_model, True, dropout)
    assert adapter_first(first) == 7 * 2 and adapter_first(first) == 0  # 4-bit layers only; idempotent
    assert adapter_first(_lora_model(tiny_model, False, dropout)) == 0  # full-precision LoRA keeps peft's
    got = _checkpointed_step(first, ids)
    assert torch.equal(ref[0], got[0])  # same arithmetic; gradients differ only by fp32 summation order
    assert ref[1].keys() == got[1].keys() and all(torch.allclose(ref[1][n], got[1][n], rtol=1e-5, atol=1e-7)
                                                  for n in ref[1])
    # forward + recompute for every projection of the 2 layers, but the recompute stops before down_proj's
    assert ref[2] == {k: 4 for k in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    assert got[2] == ref[2] | {"down_proj": 2}


def _close(ref: torch.Tensor, got: torch.Tensor, tol: float = 2e-2) -> bool:
    """Equal to bf16 rounding: the difference is small against the tensor as a whole."""
    return bool((got.float() - ref.float()).norm() <= tol * ref.float().norm())


def _fp32_reference(model):
    """The same LoRA model computed in fp32 throughout (the truth bf16 paths are judged against)."""
    for module in model.modules():
        if hasattr(module, "compute_dtype"):
            module.compute_dtype = torch.float32
    for p in model.parameters():
        if p.dtype == torch.bfloat16:
            p.data = p.data.float()
    return model


def _rel(ref: dict, got: dict) -> float:
    return max(((got[n].float() - ref[n].float()).norm() / ref[n].float().norm()).item() for n in ref)


@pytest.mark.parametrize("quantized", [True, False], ids=["4bit", "plain"])
def test_fused_lora_matches_adapter_first_and_skips_the_same_product(tiny_model, quantized, monkeypatch):
    """Under bf16 autocast (the GPU path, here on the CPU): logits and adapter gradients as close to
    the fp32 computation as adapter first's (the fused sums round once, in fp32), and a recomputed
    layer still stops before down_proj's base product."""
    import collections

    from tasks.training import fused_lora
    from tasks.training.adapter_first import adapter_first
    from tasks.training.train import fp32_adapter

    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1))
    products, weight = collections.Counter(), fused_lora.base_weight
    monkeypatch.setattr(fused_lora, "base_weight", lambda base, dtype: products.update([base]) or weight(base, dtype))
    reference = _checkpointed_step(_fp32_reference(_lora_model(tiny_model, quantized, 0.0, "bfloat16")), ids)
    runs = []
    for fuse in (False, True):
        model = _lora_model(tiny_model, quantized, 0.0, dtype="bfloat16")
        fp32_adapter(model)  # as make_trainer keeps it
        replaced = fused_lora.fuse_lora(model) if fuse else adapter_first(model)
        assert replaced == (7 * 2 if fuse or quantized else 0)  # adapter first takes 4-bit layers only
        products.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append((*_checkpointed_step(model, ids), products.copy(), model))
    (logits_r, grads_r, _, _, _), (logits_f, grads_f, _, products, model) = runs
    assert grads_r.keys() == grads_f.keys() == reference[1].keys() and len(grads_f) == 28
    assert all(grads_f[n].dtype == torch.float32 for n in grads_f)
    error_r, error_f = _rel(reference[1], grads_r), _rel(reference[1], grads_f)
    assert error_f < 3e-2 and error_f <= 1.1 * error_r, (error_f, error_r)  # bf16 rounding, no worse than peft's order
    assert _close(reference[0], logits_f) and _close(logits_r, logits_f)
    kinds = {name.split(".")[-2]: products[m] for name, m in model.named_modules() if name.endswith("base_layer")}
    # forward, recompute and backward for each projection; no recompute of down_proj's
    assert kinds == {k: 3 for k in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")} | {"down_proj": 2}
    assert sum(products.values()) == 2 * (6 * 3 + 2)  # 2 layers: every product went through the fused path
    with model.disable_adapter(), torch.autocast("cpu", dtype=torch.bfloat16):  # adapters off: the bare base
        assert not _close(model(input_ids=ids).logits, logits_f, 1e-3)


def test_fused_lora_takes_fp32_inputs_under_autocast(tiny_model, monkeypatch):
    """An fp32 input (a residual stream in fp32 through a norm left unhooked) still takes the fused
    path, cast as autocast casts it for peft's product, with peft's result to bf16 rounding."""
    from tasks.training import fused_lora

    model = _lora_model(tiny_model, False, 0.0, dtype="bfloat16")
    fused_lora.fuse_lora(model, fp32_out=True)
    wide = {n.split(".")[-1] for n, m in model.named_modules() if getattr(m, "_fp32_out", False)}
    assert wide == {"o_proj", "gate_proj", "up_proj", "down_proj"}  # not attention's inputs
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    fused = []
    monkeypatch.setattr(fused_lora._BaseAndAdapterOut, "apply", lambda *a, f=fused_lora._BaseAndAdapterOut.apply:
                        fused.append(1) or f(*a))
    x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = layer(x), layer._unfused_forward(x)
    assert fused == [1] and out.dtype == ref.dtype == torch.bfloat16 and _close(ref, out)
    # fp32 outputs (train.fp32_residual): base and adapter summed in fp32, as peft sums them for an
    # fp32 input; the adapter's weights untouched by the fp32 copies the product takes of them
    b = layer.lora_B["default"].weight
    b.data = b.data.float()
    before = b.detach().clone()
    layer._fp32_out = True
    x = x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wide = layer(x)
        share = layer.lora_B["default"](layer.lora_A["default"](x)).float() * layer.scaling["default"]
        ref = layer.base_layer(x).float() + share
    wide.sum().backward()
    assert wide.dtype == torch.float32 and torch.equal(b.detach(), before) and x.grad.dtype == torch.float32
    assert (wide - ref).abs().max() <= 0.02 * share.abs().max()  # the adapter's share kept, not rounded to bf16


def _kept_share(out: torch.Tensor, base: torch.Tensor, share: torch.Tensor) -> float:
    """How much of the adapter's share an output holds on average: the least-squares slope of
    (out - base) on the share (1: all of it, 0: rounded away)."""
    diff, share = (out.float() - base.float()).flatten(), share.float().flatten()
    return float(diff @ share / (share @ share))


@pytest.mark.parametrize("quantized", [True, False], ids=["4bit", "plain"])
def test_fused_lora_keeps_a_young_adapters_share_in_bf16_outputs(tiny_model, quantized):
    """A young adapter's share, far below half a bf16 step of the base output: peft's order (base
    rounded, then the share added and rounded again) loses it every time; the fused sum (the base
    product accumulated onto the share inside the GEMM, rounded once) keeps it on average."""
    from tasks.training import fused_lora

    model = _lora_model(tiny_model, quantized, 0.0, dtype="bfloat16")
    fused_lora.fuse_lora(model)
    layer = model.base_model.model.model.layers[0].mlp.gate_proj
    layer.lora_B["default"].weight.data.normal_(0, 1e-5)
    x = torch.randn(64, layer.in_features, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)  # the base's own product: the bare 4-bit layer's CPU kernel rounds differently
        base = torch.nn.functional.linear(x.bfloat16(), fused_lora.base_weight(layer.base_layer, torch.bfloat16))
        share = layer.lora_B["default"](layer.lora_A["default"](x)).float() * layer.scaling["default"]
    step = base.float().abs().mean() * 2 ** -8
    assert out.dtype == torch.bfloat16 and share.abs().mean() < 0.1 * step  # the share is far below a step
    assert 0.8 < _kept_share(out, base, share) < 1.2
    assert abs(_kept_share((base.float() + share).bfloat16(), base, share)) < 0.2  # summed after: lost


@pytest.mark.parametrize("optimizer", ["fused", "foreach"])
def test_fused_lora_cached_copies_follow_the_optimizer(tiny_model, optimizer):
    """The bf16 copies of the adapter's weights, cast once per update, are the updated weights after
    every optimizer step (in-place updates move the version counter), and a reload replaces them."""
    from tasks.training import fused_lora
    from tasks.training.train import fp32_adapter

    model = _lora_model(tiny_model, True, 0.0, dtype="bfloat16")
    fp32_adapter(model)
    fused_lora.fuse_lora(model)
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, **({"fused": True} if optimizer == "fused" else {"foreach": True}))
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        for p in params:
            assert torch.equal(fused_lora.compute_copy(p, torch.bfloat16, 2.0), (p.detach().to(torch.bfloat16) * 2.0))
    model.load_state_dict({n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}, strict=False)
    assert all(not fused_lora.compute_copy(p, torch.bfloat16).any() for p in params)


@pytest.fixture
def untied_model(tiny_model, tmp_path) -> str:
    """The tiny model with a head of its own, so its input table may leave the GPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "untied")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "untied")
    return str(tmp_path / "untied")


def test_host_embedding_gives_the_same_step_and_leaves_a_shared_table(tiny_model, untied_model):
    from tasks.training.host_embedding import HostEmbedding, embedding_on_host

    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1))
    ref = _checkpointed_step(_lora_model(untied_model, False, 0.0), ids)
    moved = _lora_model(untied_model, False, 0.0)
    moved.enable_input_require_grads()  # hooked before the move, as the trainer does: the hook must follow
    table = moved.get_input_embeddings().weight.numel()
    embedding_on_host(moved)
    host = moved.get_input_embeddings()
    assert isinstance(host, HostEmbedding) and host.table.numel() == table
    assert not any(p is host.table for p in moved.parameters()) and len(host._forward_hooks) == 1
    got = _checkpointed_step(moved, ids)
    assert torch.equal(ref[0], got[0]) and all(torch.equal(ref[1][n], got[1][n]) for n in ref[1])
    tied = _lora_model(tiny_model, False, 0.0)
    assert embedding_on_host(tied) == 0 and isinstance(tied.get_input_embeddings(), torch.nn.Embedding)


def test_a_plan_with_the_table_on_host_trains(tmp_path, untied_model, train_file, monkeypatch):
    from tasks.training import budget
    from tasks.training.host_embedding import HostEmbedding

    on_host = budget.Plan(4, 1, 2, False, 1.0, 1.0, embedding_on_host=True)
    monkeypatch.setattr(budget, "plan_for", lambda cfg, model: on_host)
    cfg = config_from_dict(tiny_params(untied_model, train={"max_steps": 2}))
    trainer = build_trainer(cfg, untied_model, train_file, tmp_path / "h")
    host = trainer.model.get_input_embeddings()
    assert isinstance(host, HostEmbedding)
    threads = []  # where each lookup's rows were gathered: ahead (the host thread) or in the forward
    gather = host.gather
    monkeypatch.setattr(host, "gather", lambda ids: threads.append(threading.current_thread().name) or gather(ids))
    report = train(cfg, untied_model, train_file, tmp_path / "h", trainer=trainer)
    assert report.steps == 2 and report.plan["embedding_on_host"] is True
    assert len(threads) >= 2 and all(t.startswith("host-embedding") for t in threads), threads
    ids = torch.randint(0, 500, (1, 30), generator=torch.Generator().manual_seed(3))
    host.pending = host.ahead(ids)
    assert torch.equal(host(ids), host(ids)) and host.pending is None  # ahead and in the forward alike
    from transformers import AutoModelForCausalLM

    base = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(untied_model).parameters())
    assert report.total_params == base + report.trainable_params  # the table on the host still counts


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
def test_packed_rows_do_not_attend_to_each_other(tiny_model, attn):
    """Two rows packed into one bin (positions restart at 0) give the logits each gets alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn).eval()
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, 500, (n,), generator=g) for n in (9, 14, 5)]
    packed = torch.cat(rows)[None]
    positions = torch.cat([torch.arange(len(r)) for r in rows])[None]
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0]  # as in training
        alone = torch.cat([model(input_ids=r[None]).logits[0] for r in rows])
    assert torch.allclose(together, alone, atol=1e-4)
    with torch.no_grad():  # and the check can fail: one causal sequence over the bin differs
        assert not torch.allclose(model(input_ids=packed, use_cache=False).logits[0], alone, atol=1e-2)


@pytest.mark.parametrize("cuda", [True, False])
def test_auto_packing_and_attention_follow_the_device(monkeypatch, cuda):
    from tasks.training.train import attention, packs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert attention("auto") == {True: "flex_attention", False: "sdpa"}[cuda]
    assert packs(config_from_dict({})) == {True: True, False: False}[cuda]  # packed only where flex skips other rows
    assert packs(config_from_dict({"train": {"packing": True}})) is True
    assert packs(config_from_dict({"train": {"packing": False}})) is False
    assert attention("eager") == "eager"
    with pytest.raises(ConfigError, match="train.packing: must be auto, true or false"):
        config_from_dict({"train": {"packing": "sometimes"}})
    if not cuda:
        with pytest.raises(ConfigError, match="train.attn_implementation: flex_attention trains on CUDA only"):
            attention("flex_attention")


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


def test_rows_over_max_length_are_counted_or_refuse_the_run(tmp_path, tiny_model, train_file):
    from tasks.training.train import OverlongRows

    cfg = config_from_dict(tiny_params(tiny_model, train={"max_length": 140, "max_steps": 1}))
    report = train(cfg, tiny_model, train_file, tmp_path / "cut")
    assert 0 < report.rows_over_max_length <= 24
    strict = config_from_dict(tiny_params(tiny_model, train={"max_length": 140, "max_steps": 1, "overlong": "reject"}))
    with pytest.raises(OverlongRows, match=rf"^{train_file}: {report.rows_over_max_length} of 24 rows are longer than "
                                           r"train.max_length \(140 tokens; the longest has \d+\)"):
        train(strict, tiny_model, train_file, tmp_path / "strict")
    assert not (tmp_path / "strict" / "adapter").exists()


QWEN_7B = dict(layers=28, hidden=3584, intermediate=18944, quantized_params=6_530_000_000,
               other_params=1_090_000_000, lora_params=40_370_176, embedding_params=544_997_376)


def test_memory_plan_fits_the_budget_fastest_first():
    from tasks.training.budget import Shape, estimate_bytes, plan

    s = Shape(**QWEN_7B)
    plans = [plan(s, 16, 512, gib) for gib in (73.0, 30.0, 9.3, 7.6, 6.4)]
    assert plans[0].recomputed_layers == 0 and plans[0].micro_batch == 16  # a roomy card recomputes nothing
    assert 0 < plans[1].recomputed_layers < 28 and not plans[1].offload  # spends the room it has
    assert plans[2].recomputed_layers == 28 and plans[2].micro_batch == 16
    assert plans[3].micro_batch * plans[3].grad_accum == 16 and (plans[3].offload or plans[3].micro_batch < 16)
    # 7.6 GiB: the whole batch still fits with the input table (~1 GiB) in host memory; 9.3 GiB keeps it
    assert plans[3].embedding_on_host and plans[3].micro_batch == 16 and not plans[2].embedding_on_host
    freed = estimate_bytes(s, 8192, 28, True) - estimate_bytes(s, 8192, 28, True, host_table=True)
    assert freed == 2 * QWEN_7B["embedding_params"]
    assert not plan(dataclasses.replace(s, embedding_params=0), 16, 512, 7.6).embedding_on_host  # a tied table stays
    assert plans[4].micro_batch < plans[3].micro_batch or (plans[4].offload and not plans[3].offload)
    for p, gib in zip(plans, (73.0, 30.0, 9.3, 7.6, 6.4)):
        assert p.estimate_gib <= gib and p.micro_batch * p.grad_accum == 16
    # the estimate agrees with the H100's measured peaks (16 rows of 512: 43.03 GiB recomputing nothing,
    # 7.92 GiB recomputing every layer with offload, 6.95 with the input table on the host too) within 3%,
    # erring high
    for recomputed, offload, host, measured in ((0, False, False, 43.03), (28, True, False, 7.92), (28, True, True, 6.95)):
        assert 0 <= estimate_bytes(s, 8192, recomputed, offload, host) / 2**30 / measured - 1 < 0.03
    with pytest.raises(ConfigError, match=r"^params: train.memory_budget_gib: 4.0 GiB cannot train this model"):
        plan(s, 16, 512, 4.0)


def test_fp32_residual_widens_the_stream_not_the_weights(tiny_model):
    """From a bf16 checkpoint the hidden states run in fp32 (a young adapter's updates would round
    away in bf16); the weights stay bf16, and fp32 weights need no hook. The budget counts it."""
    import dataclasses

    from transformers import AutoModelForCausalLM

    from tasks.training import budget
    from tasks.training.train import fp32_residual

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    assert {h.dtype for h in model(input_ids=ids, output_hidden_states=True).hidden_states} == {torch.bfloat16}
    assert fp32_residual(model) and not fp32_residual(AutoModelForCausalLM.from_pretrained(tiny_model))
    inputs = []  # what the projections get: bf16, as fused LoRA and FP8 need (each norm casts back)
    for name, module in model.named_modules():
        if name.endswith("_proj"):
            module.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the GPU trainer runs (bf16 products)
        stream = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert {h.dtype for h in stream[:-1]} == {torch.float32} and stream[-1].dtype == torch.bfloat16  # last: normed
    assert set(inputs) == {torch.bfloat16} and len(inputs) == 2 * 7
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    narrow = budget.shape_of(model, 8, ["q_proj"])
    assert narrow.residual_bytes == 2 and budget.shape_of(model, 8, ["q_proj"], fp32_residual=True).residual_bytes == 4
    s = budget.Shape(**QWEN_7B)
    extra = budget.estimate_bytes(dataclasses.replace(s, residual_bytes=4), 8192, 28, True) - budget.estimate_bytes(s, 8192, 28, True)
    assert extra == 8192 * s.hidden * (4 + 2 * budget.OFFLOAD_STASH)  # the layer's input and output, the stash
    wide = budget.estimate_bytes(dataclasses.replace(s, fp32_outputs=True), 8192, 28, True) - budget.estimate_bytes(s, 8192, 28, True)
    assert wide == 8192 * (budget.WIDE_HIDDEN * s.hidden + budget.WIDE_MLP * s.intermediate)  # one layer's, recomputed
    # the default (fp32 stream and outputs, fp32 block scales) at 16 x 512, measured 8.43 GiB on an H200: erring high
    default = dataclasses.replace(s, residual_bytes=4, fp32_outputs=True, fp32_scale_params=s.quantized_params)
    assert 0 <= budget.estimate_bytes(default, 8192, 28, True, True) / 2**30 / 8.43 - 1 < 0.06


def test_memory_budget_and_fp8_params_are_checked(monkeypatch):
    from tasks.training.train import fp8_base

    for bad in ("lots", -1, 0):
        with pytest.raises(ConfigError, match="train.memory_budget_gib: must be auto, off or a number"):
            config_from_dict({"train": {"memory_budget_gib": bad}})
    assert config_from_dict({"train": {"memory_budget_gib": 12}}).train.memory_budget_gib == 12.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fp8_base(config_from_dict({"quantization": {"enabled": True}})) is None  # auto: off without the GPU
    with pytest.raises(ConfigError, match="train.fp8_base: true needs a GPU with FP8 tensor cores"):
        fp8_base(config_from_dict({"train": {"fp8_base": True}, "quantization": {"enabled": True}}))


def test_partial_recompute_keeps_the_gradients(tiny_model):
    """Layers left out of gradient checkpointing keep their activations: same loss and gradients."""
    from tasks.training.budget import recompute_only

    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = []
    for recomputed in (None, 1):
        model = _lora_model(tiny_model, quantized=False, dropout=0.0)
        if recomputed is not None:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
            assert recompute_only(model, recomputed) == 1  # of the tiny model's 2 layers
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


FP8_GPU = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                             reason="needs a GPU with FP8 tensor cores")


@pytest.mark.gpu
@FP8_GPU
def test_fp8_base_product_is_close_to_the_bf16_one():
    import bitsandbytes as bnb

    from tasks.training.fp8_base import use_fp8_base

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(512, 1024, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
    x = torch.randn(3, 67, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ref = layer(x)
    ref.float().square().sum().backward()
    ref_grad, x.grad = x.grad.clone(), None
    holder = torch.nn.Sequential(layer)
    assert use_fp8_base(holder) == 1 and use_fp8_base(holder) == 0
    out = layer(x)
    out.float().square().sum().backward()
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()  # noqa: E731
    assert rel(out, ref) < 0.05 and rel(x.grad, ref_grad) < 0.05
    assert rel(out, ref) > 0  # the FP8 path really ran


@pytest.mark.gpu
@FP8_GPU
def test_fp8_kernels_match_the_torch_casts():
    """nf4 -> e4m3 in one pass (either layout) and the row-wise activation cast give what the
    dequantize-then-cast route gives, scales included, with the padding rows zero."""
    import bitsandbytes as bnb

    from tasks.training import fp8_base
    from tasks.training.fp8_kernels import rowwise_fp8
    from tasks.training.fused_lora import block_scales

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(576, 1536, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
    state, packed = layer.weight.quant_state, layer.weight.data.flatten().long()
    codes = torch.stack([packed >> 4, packed & 15], 1).flatten()  # the high nibble first
    w = (state.code[codes] * block_scales(layer.weight).repeat_interleave(state.blocksize)).view(state.shape)
    rows, cols = fp8_base._channel_scales(layer.weight)
    assert torch.allclose(rows * 448, w.abs().amax(1), rtol=1e-2) and torch.allclose(cols * 448, w.abs().amax(0), rtol=1e-2)
    for transpose, scale, ref in ((False, rows[:, None], w), (True, cols[:, None], w.t())):
        q, s = fp8_base.weight_fp8(layer.weight, transpose)
        expected = (ref * (1.0 / scale)).to(torch.float8_e4m3fn).float()
        assert q.shape == ref.shape and torch.equal(s.view(-1, 1), scale)
        assert (q.float() != expected).float().mean() < 1e-4  # the same arithmetic; a rare tie may round apart
    x = torch.randn(37, 1536, device="cuda", dtype=torch.bfloat16) * torch.logspace(-2, 2, 37, device="cuda")[:, None]
    xq, xs = rowwise_fp8(x)
    assert xq.shape == (48, 1536) and not xq[37:].float().any()
    assert ((xq[:37].float() * xs[:37] - x.float()).norm() / x.float().norm()) < 0.04


@pytest.mark.gpu
@FP8_GPU
def test_fp8_kernels_launched_directly_give_triton_calls_results(monkeypatch):
    """After the first call of a key, the kernels go straight to their compiled launcher
    (fp8_kernels._Launcher); results equal those of Triton's own call bit for bit, for a new
    shape (a new key) too, and for an input whose rows are not a multiple of 16."""
    import bitsandbytes as bnb

    from tasks.training import fp8_base, fp8_kernels

    assert fp8_kernels._launch.usable, "this Triton's launcher API is not the one _Launcher knows"
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(576, 1536, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
    x = torch.randn(37, 1536, device="cuda", dtype=torch.bfloat16)
    first = [fp8_base.weight_fp8(layer.weight, t)[0] for t in (False, True)] + list(fp8_kernels.rowwise_fp8(x))
    direct = len(fp8_kernels._launch.kernels)
    assert direct >= 3  # two layouts and one cast compiled, kept
    calls = []
    monkeypatch.setattr(fp8_kernels._Launcher, "__call__", lambda self, *a, _f=fp8_kernels._Launcher.__call__:
                        calls.append(a[0]) or _f(self, *a))
    again = [fp8_base.weight_fp8(layer.weight, t)[0] for t in (False, True)] + list(fp8_kernels.rowwise_fp8(x))
    assert len(calls) == 3 and all(key in fp8_kernels._launch.kernels for key in calls)
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(first, again))
    y = torch.randn(48, 1552, device="cuda", dtype=torch.bfloat16)  # rows % 16 == 0: another specialization
    for _ in range(2):
        yq, _ = fp8_kernels.rowwise_fp8(y)
    assert len(fp8_kernels._launch.kernels) == direct + 1
    ref = (y.float() / (y.float().abs().amax(1, keepdim=True) / 448)).to(torch.float8_e4m3fn)
    assert (yq.float() != ref.float()).float().mean() < 1e-3


@pytest.mark.gpu
@FP8_GPU
def test_projections_reading_one_input_share_its_fp8_cast(monkeypatch):
    """q, k and v (and gate and up) read one input: it is cast to e4m3 once; a write to it, or a
    product of another input, casts anew; results equal those of separate casts."""
    import bitsandbytes as bnb

    from tasks.training import fp8_base, fp8_kernels

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({name: bnb.nn.Linear4bit(512, 256, bias=False, compute_dtype=torch.bfloat16)
                                 for name in ("q_proj", "k_proj", "o_proj")}).cuda()
    assert fp8_base.use_fp8_base(model) == 3
    assert [fp8_base.shares_input(model[n]) for n in ("q_proj", "k_proj", "o_proj")] == [True, True, False]
    casts = []
    monkeypatch.setattr(fp8_kernels, "rowwise_fp8", lambda t, _f=fp8_kernels.rowwise_fp8: casts.append(1) or _f(t))
    x = torch.randn(64, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        q, k = model["q_proj"](x), model["k_proj"](x)
        assert len(casts) == 1
        x.mul_(2)  # a new version of the same storage: cast again
        assert torch.allclose(model["k_proj"](x), 2 * k, rtol=0.02, atol=0.02) and len(casts) == 2
        model["o_proj"](x)  # not shared: casts, and lets the kept input go
        assert len(casts) == 3 and fp8_base._LAST_CAST[0] is None
        assert torch.equal(model["q_proj"](x), fp8_base.product(x, model["q_proj"].weight)) and len(casts) == 5


@pytest.mark.gpu
@FP8_GPU
def test_fused_lora_with_fp8_base_products_stays_near_the_fp32_truth(tiny_model, monkeypatch):
    """Fused LoRA with the base in FP8: "all" takes the forward, the recompute and the input
    gradient in FP8, "grads" the last two only, so its logits (the loss) are bf16's bit for bit;
    adapter gradients within a few percent of fp32 either way."""
    import collections

    from tasks.training import fp8_base, fused_lora
    from tasks.training.train import fp32_adapter

    calls = collections.Counter()
    for name in ("product", "input_grad"):
        real = getattr(fp8_base, name)
        monkeypatch.setattr(fp8_base, name, lambda *a, _f=real, _n=name: calls.update([_n]) or _f(*a))
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1)).cuda()
    reference = _checkpointed_step(_fp32_reference(_lora_model(tiny_model, True, 0.0, "bfloat16", "cuda")), ids)
    errors, logits, counts = {}, {}, {}
    for mode in (None, "all", "grads"):
        model = _lora_model(tiny_model, True, 0.0, "bfloat16", "cuda")
        fp32_adapter(model)
        fused_lora.fuse_lora(model)
        if mode:
            assert fp8_base.use_fp8_base(model, mode) == 7 * 2
        calls.clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits[mode], grads, _ = _checkpointed_step(model, ids)
        errors[mode], counts[mode] = _rel(reference[1], grads), dict(calls)
        assert _close(reference[0], logits[mode], 5e-2)
    # 2 layers: forward 7 products, recompute 6 (not down_proj's), backward 7 input gradients
    assert counts == {None: {}, "all": {"product": 2 * 13, "input_grad": 2 * 7},
                      "grads": {"product": 2 * 6, "input_grad": 2 * 7}}
    assert torch.equal(logits["grads"], logits[None]) and not torch.equal(logits["all"], logits[None])
    assert errors[None] < 3e-2 and errors["all"] < 0.1 and errors["grads"] < 0.1, errors


def test_a_tight_memory_budget_splits_the_batch_and_is_reported(tmp_path, tiny_model, train_file, monkeypatch):
    """The plan reaches the trainer (micro-batch x accumulation = the batch, partial recompute) and
    the report; the GPU's free memory is stood in for by a budget just above one row's estimate."""
    from tasks.training import budget

    cfg = config_from_dict(tiny_params(tiny_model))
    probe = build_trainer(config_from_dict(tiny_params(tiny_model, train={"memory_budget_gib": "off"})),
                          tiny_model, train_file, tmp_path / "probe")
    shape = budget.shape_for(cfg, probe.model.get_base_model())
    tight = budget.estimate_bytes(shape, cfg.train.max_length, shape.layers, False) / budget.GIB * 1.001
    monkeypatch.setattr(budget, "budget_gib", lambda cfg: tight)
    trainer = build_trainer(cfg, tiny_model, train_file, tmp_path / "run")
    plan = trainer.memory_plan
    assert plan.micro_batch < cfg.train.batch_size and plan.micro_batch * plan.grad_accum == cfg.train.batch_size
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (
        plan.micro_batch, plan.grad_accum)
    assert plan.estimate_gib <= tight + 0.01 and plan.recomputed_layers > 0
    assert trainer.args.gradient_checkpointing is True  # transformers >= 5.2x: through its new name too
    report = train(cfg, tiny_model, train_file, tmp_path / "run", trainer=trainer)
    assert report.steps == cfg.train.max_steps and report.plan == dataclasses.asdict(plan)


def test_the_memory_plan_is_tagged_on_the_run_and_a_resume_may_change_it(tmp_path):
    from tasks.tracking import client_for, log_memory_plan, start_run

    cfg = config_from_dict({})
    run_id = start_run(cfg, tmp_path, "plan-test", {})
    client = client_for(cfg, tmp_path)
    log_memory_plan(client, run_id, {"micro_batch": 16, "offload": False, "budget_gib": 72.29})
    log_memory_plan(client, run_id, {"micro_batch": 8, "offload": True, "budget_gib": 7.1})  # resumed elsewhere
    tags = client.get_run(run_id).data.tags
    assert (tags["train.plan.micro_batch"], tags["train.plan.offload"], tags["train.plan.budget_gib"]) == ("8", "True", "7.1")
    log_memory_plan(client, run_id, None)  # no GPU: nothing to say


def test_bench_stream_gaps_tell_a_late_host_from_a_wait_for_copies_too():
    """A gap before a kernel or a copy counts as the host's lateness up to when the host launched
    it (a kernel launch or cudaMemcpyAsync), the rest as waiting; before 2026-12-04 copies counted
    as waiting whole, so a host late with a batch's rows read as a dependency."""
    from bench.train_throughput import stream_gaps

    cuda, cpu, ms = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU, 1_000_000

    class Event:
        def __init__(self, device, name, start, end, corr):
            self._d, self._n, self._s, self._e, self._c = device, name, start, end, corr

        def device_type(self): return self._d  # noqa: E704
        def duration_ns(self): return self._e - self._s  # noqa: E704
        def correlation_id(self): return self._c  # noqa: E704
        def start_ns(self): return self._s  # noqa: E704
        def end_ns(self): return self._e  # noqa: E704
        def device_resource_id(self): return 7  # noqa: E704
        def name(self): return self._n  # noqa: E704

    events = [Event(cuda, "gemm", 0, 100 * ms, 1), Event(cpu, "cudaMemcpyAsync", 140 * ms, 150 * ms, 2),
              Event(cuda, "Memcpy HtoD (Pinned -> Device)", 200 * ms, 210 * ms, 2),  # 100 ms idle: 50 late
              Event(cpu, "cudaLaunchKernel", 150 * ms, 160 * ms, 3), Event(cuda, "addmm", 230 * ms, 300 * ms, 3)]
    gaps = stream_gaps(events, steps=1)  # ... then 20 ms waiting: the kernel was launched before the copy ended
    assert (gaps["main_idle_late_ms"], gaps["main_idle_waiting_ms"]) == (50.0, 70.0)
    assert [(g["us"], g["late_us"]) for g in gaps["largest_gaps"]] == [(100_000, 50_000), (20_000, 0)]


def test_bench_results_are_plotted_beside_their_json_and_other_files_refused(tmp_path):
    """A loss-curve result and a throughput result each get a PNG beside them; any other file is
    one error line naming it, exit != 0, no PNG written."""
    equivalence = tmp_path / "train_equivalence-x.json"
    equivalence.write_text(json.dumps({"device": "cpu", "recipe_losses": [3.0, 2.0, 1.5],
                                       "recipe_other_init_losses": [3.0, 2.1, 1.4], "loragate_losses": [3.0, 2.05, 1.5],
                                       "noise": {"mean_abs_diff": 0.07}}))
    throughput = tmp_path / "train_throughput-x.json"
    throughput.write_text(json.dumps({"device": "cpu", "headline": {
        "unsloth-fixed": {"tokens_per_s": 100.0, "peak_allocated_gib": 7.6},
        "loragate-fixed-m7.6": {"tokens_per_s": 126.0, "peak_allocated_gib": 7.0},
        "recipe-fixed": {"case": "recipe-fixed", "error": "out of memory"}}}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": 3}))
    run = [sys.executable, str(Path(__file__).resolve().parents[1] / "bench/plot_results.py")]
    done = subprocess.run([*run, str(equivalence), str(throughput)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for path in (equivalence, throughput):
        assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = subprocess.run([*run, str(other)], capture_output=True, text=True)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == f"error: {other}: neither a train_equivalence nor a train_throughput result"
    assert not other.with_suffix(".png").exists()


def test_throughput_rounds_report_the_median_round_and_skip_failed_ones():
    from bench.train_throughput import median_run, ratios, round_fits

    runs = [{"tokens_per_s": 90.0, "peak_allocated_gib": 7.0}, {"case": "c", "error": "out of memory"},
            {"tokens_per_s": 120.0, "peak_allocated_gib": 7.2}, {"tokens_per_s": 100.0, "peak_allocated_gib": 7.1}]
    assert median_run(runs) == {"tokens_per_s": 100.0, "peak_allocated_gib": 7.1,
                                "tokens_per_s_rounds": [90.0, 120.0, 100.0]}
    assert median_run(runs[:1]) == runs[0]  # one round: as before, no rounds listed
    assert median_run([runs[1]]) == runs[1]  # every round failed: the failure is the result
    rounds = {"loragate-fixed": runs, "unsloth-fixed": [{"tokens_per_s": 100.0}] * 2 + [{"tokens_per_s": 80.0}]}
    got = ratios({n: median_run(r) for n, r in rounds.items()}, rounds)["loragate-fixed / unsloth-fixed"]
    assert got["tokens_per_s"] == 1.0 and got["tokens_per_s_rounds"] == [0.9, 1.5]  # round by round, failed one left out
    assert round_fits(0.0, 0.0, 10.0) and round_fits(500.0, 0.0, 10.0)  # the first round always runs
    assert round_fits(200.0, 190.0, 400.0) and not round_fits(200.0, 210.0, 400.0) and round_fits(9e9, 1.0, None)


def test_the_offloader_keeps_the_allocator_cache_and_everything_else_of_torch_cuda(monkeypatch):
    from types import SimpleNamespace

    from tasks.training.offload import CacheKept, keep_allocator_cache

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    trainer = SimpleNamespace(maybe_activation_offload_context=SimpleNamespace(device_module=torch.cuda))
    assert keep_allocator_cache(trainer) and not keep_allocator_cache(trainer)  # wrapped once
    seen = trainer.maybe_activation_offload_context.device_module
    assert isinstance(seen, CacheKept) and seen.Stream is torch.cuda.Stream and seen.stream is torch.cuda.stream
    seen.empty_cache()
    torch.cuda.empty_cache()
    assert emptied == [1]  # only torch.cuda's own call emptied it
    assert not keep_allocator_cache(SimpleNamespace())  # no offloader: nothing to change


def _logged_metrics(trainer) -> list[dict]:
    trainer.train()
    keys = ("loss", "entropy", "mean_token_accuracy", "num_tokens")
    return [{k: e[k] for k in keys if k in e} for e in trainer.state.log_history if "loss" in e]


def test_lean_bookkeeping_logs_what_trl_logs_and_waits_for_the_device_only_when_logging(tmp_path, tiny_model,
                                                                                       train_file, monkeypatch):
    import tasks.training.train as train_module
    from tasks.training.bookkeeping import LeanBookkeeping

    cfg = config_from_dict(tiny_params(tiny_model, train={"max_steps": 4, "logging_steps": 2}))
    lean = build_trainer(cfg, tiny_model, train_file, tmp_path / "d")
    kept, counted = [], []  # what the metrics hold between logs (tensors, not yet read); parameter counts
    log = LeanBookkeeping.log
    monkeypatch.setattr(LeanBookkeeping, "log", lambda self, *a: kept.append(
        {type(v) for v in self._metrics["train"].get("entropy", [])}) or log(self, *a))
    count = lean.model.num_parameters
    monkeypatch.setattr(lean.model, "num_parameters", lambda **k: counted.append(k) or count(**k), raising=False)
    got = _logged_metrics(lean)
    monkeypatch.setattr(train_module, "lean_bookkeeping", lambda trainer: False)
    trl_own = build_trainer(cfg, tiny_model, train_file, tmp_path / "t")
    want = _logged_metrics(trl_own)
    assert isinstance(lean, LeanBookkeeping) and kept[:2] == [{torch.Tensor}, {torch.Tensor}]
    assert hasattr(lean.model, "_lean_walks")  # grad_norm below: clipped over its list, as trl's own walk
    assert [sorted(e) for e in got] == [sorted(e) for e in want] and len(got) == 2
    for g, w in zip(got, want):
        assert g["num_tokens"] == w["num_tokens"] > 0
        assert all(g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-7) for k in g)
    assert lean.state.total_flos == trl_own.state.total_flos > 0 and len(counted) == 1  # counted once, not per step
    json.dumps(lean.state.log_history)  # numbers only: the history is written as JSON


def _adapter_after(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_counted_labels_train_as_trl_does_scoring_only_the_positions_counted_at_collation(tmp_path, tiny_model,
                                                                                         train_file, monkeypatch):
    from types import SimpleNamespace

    import tasks.training.train as train_module
    from tasks.training import counted_labels

    cfg = config_from_dict(tiny_params(tiny_model, train={"max_steps": 4, "logging_steps": 2}))
    counted = build_trainer(cfg, tiny_model, train_file, tmp_path / "c")
    picked = []  # per micro-batch: positions scored
    scoring = counted_labels.scoring
    monkeypatch.setattr(counted_labels, "scoring", lambda idx: picked.append(idx.numel()) or scoring(idx))
    apply = counted_labels._LIBRARY["_ChunkedLogProbFunction"].apply
    rows = []  # rows trl's scoring function was given
    monkeypatch.setitem(counted_labels._LIBRARY, "_ChunkedLogProbFunction", SimpleNamespace(
        apply=lambda h, *a: rows.append(h.shape[0]) or apply(h, *a)))
    got, got_adapter = _logged_metrics(counted), _adapter_after(counted)
    monkeypatch.setattr(train_module, "counted_labels", lambda trainer: False)
    trl_own = build_trainer(cfg, tiny_model, train_file, tmp_path / "t")
    rows_picked, rows[:] = list(rows), []
    want, want_adapter = _logged_metrics(trl_own), _adapter_after(trl_own)
    assert isinstance(counted, counted_labels.CountedLoss) and not isinstance(trl_own, counted_labels.CountedLoss)
    assert len(picked) == 4 and rows_picked == picked  # every micro-batch scored just the counted rows ...
    assert all(r > p for r, p in zip(rows, picked))  # trl scores every row on the CPU (its index only with Triton)
    assert [sorted(e) for e in got] == [sorted(e) for e in want] and len(got) == 2
    for g, w in zip(got, want):
        assert all(g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-7) for k in g)
    assert all(torch.allclose(got_adapter[n], want_adapter[n], rtol=1e-5, atol=1e-7) for n in want_adapter)


def test_a_count_that_disagrees_with_the_labels_stops_training_at_the_next_log(tmp_path, tiny_model, train_file):
    from tasks.training.counted_labels import KEY, CountingCollator, CountMismatch

    cfg = config_from_dict(tiny_params(tiny_model, train={"max_steps": 4, "logging_steps": 2}))
    trainer = build_trainer(cfg, tiny_model, train_file, tmp_path / "d")
    counting = trainer.data_collator
    assert isinstance(counting, CountingCollator) and counting.padding_free == counting.inner.padding_free

    def one_short(examples):  # as if something changed the labels after they were counted
        return {**counting(examples), KEY: counting(examples)[KEY] - 1}

    trainer.data_collator = one_short
    with pytest.raises(CountMismatch, match=r"^training stopped at step 2: .* in 2 micro-batch\(es\)"):
        trainer.train()
    shifted = CountingCollator(lambda ex: {"labels": torch.zeros(1, 4, dtype=torch.long), "shift_labels": 1})([])
    assert KEY not in shifted  # pre-shifted labels: trl's own path


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_counted_labels_score_as_trl_on_the_gpu_without_its_host_wait(tiny_model):
    """trl's boolean index waits for the GPU (with Triton it picks the labelled rows itself); the
    counted pick does not, and gives trl's scores and gradients."""
    from trl.trainer.utils import add_fused_lm_head

    from tasks.training import counted_labels

    model = _lora_model(tiny_model, False, 0.0, device="cuda")
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    counted_labels._patch_trl()
    ids = torch.randint(0, 500, (4, 256), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :170], labels[1, 200:] = -100, -100  # prompts masked, one row padded
    n, ids, labels = counted_labels.count_labelled(labels), ids.cuda(), labels.cuda()
    # from the backbone's output on, which is where trl picks the rows, a host wait raises
    watching = [True]
    model.get_base_model().model.register_forward_hook(
        lambda *_: torch.cuda.set_sync_debug_mode("error" if watching[0] else 0))
    runs = []
    for counted in (False, True):
        model.zero_grad()
        watching[0] = True
        try:
            torch.cuda.set_sync_debug_mode("error")  # the pick itself (CountedLoss.compute_loss's) must not wait
            picked = counted_labels.pick(labels, n)
            torch.cuda.set_sync_debug_mode(0)
            with counted_labels.scoring(picked) if counted else contextlib.nullcontext():
                out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        except RuntimeError as waited:  # waited for the GPU: trl's own; run it again to compare
            assert not counted, waited
            torch.cuda.set_sync_debug_mode(0)
            watching[0] = False
            out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        else:
            assert counted, "trl's own pick did not wait: nothing to remove"
        finally:
            torch.cuda.set_sync_debug_mode(0)
        (-out.log_probs.sum() / n).backward()
        runs.append((out.log_probs.detach(), out.entropy, out.is_top1,
                     {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}))
    (lp0, e0, t0, g0), (lp1, e1, t1, g1) = runs
    assert torch.equal(t0, t1) and torch.allclose(lp0, lp1, atol=1e-5) and torch.allclose(e0, e1, atol=1e-5)
    assert all(torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-6) for k in g0)


def test_lean_walks_follow_the_model_as_it_changes(tiny_model):
    """train() is skipped only where it would change nothing; the lists follow a submodule or
    parameter registered later; zero_grad clears every gradient, the new parameter's too."""
    from tasks.training.bookkeeping import lean_walks

    model = _lora_model(tiny_model, False, 0.0)
    walks = lean_walks(model)
    model.train()
    assert walks.in_mode(True) and not walks.in_mode(False)
    mlp = model.base_model.model.model.layers[0].mlp
    mlp.eval()  # a submodule switched by hand: the next train() must walk again
    assert not walks.in_mode(True)
    model.train()
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules()) and walks.in_mode(False)
    mlp.extra = torch.nn.Linear(4, 4)  # registered after the lists were taken
    assert [id(p) for p in walks.parameters()] == [id(p) for p in model.parameters()]
    assert any(p is mlp.extra.weight for p in walks.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())

    class OwnTrain(torch.nn.Linear):  # a train() with its own work (as DoRA's) is never skipped
        def train(self, mode=True):
            self.calls = getattr(self, "calls", 0) + 1
            return super().train(mode)

    mlp.extra = OwnTrain(4, 4)
    model.train()
    model.train()
    assert mlp.extra.calls == 2 and not walks.in_mode(True)


def test_packed_sequence_ids_without_the_host_wait_give_the_same_logits(tiny_model, monkeypatch):
    """While gradients are taken, transformers' packed-sequence detection returns the sequence ids
    without asking the GPU whether any row is packed: packed rows (three sequences in one, two in
    another) and unpacked ones give transformers' logits; generation (no grad) goes to its own."""
    from transformers import AutoModelForCausalLM, masking_utils

    from tasks.training import packed_mask

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(5))
    rows = {"packed": torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]]),
            "plain": torch.arange(12).expand(2, 12)}
    logits = lambda pos: model(input_ids=ids, position_ids=pos, use_cache=False).logits  # noqa: E731
    ref = {name: logits(pos) for name, pos in rows.items()}
    real, asked = masking_utils.find_packed_sequence_indices, []
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda p: None)
    assert not torch.equal(logits(rows["packed"]), ref["packed"])  # the sequence ids do change the attention
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda p: asked.append(1) or real(p))
    monkeypatch.setattr(packed_mask, "_ASKS", [])
    assert packed_mask.without_packed_wait() and not packed_mask.without_packed_wait()
    for name, pos in rows.items():
        assert torch.equal(logits(pos), ref[name]), name
    assert not asked  # never transformers' own while gradients are taken
    with torch.no_grad():
        assert torch.equal(logits(rows["packed"]), ref["packed"]) and asked == [1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_packed_sequence_ids_need_no_host_wait_on_the_gpu(monkeypatch):
    from transformers import masking_utils

    from tasks.training import packed_mask

    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]], device="cuda")
    monkeypatch.setattr(packed_mask, "_ASKS", [])
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", masking_utils.find_packed_sequence_indices)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):  # transformers' own asks the GPU
            masking_utils.find_packed_sequence_indices(pos)
        packed_mask.without_packed_wait()
        ids = masking_utils.find_packed_sequence_indices(pos)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]


def test_the_next_offloaded_tensor_is_the_latest_saved_still_on_the_host():
    """What fetch_ahead copies back next: saved before the one just handed back, offloaded (not
    kept on the GPU in trl's forward stash or as too small), not fetched already."""
    import contextlib
    from types import SimpleNamespace

    from tasks.training.offload import _next_on_host, fetch_ahead

    host, gpu = torch.zeros(2), torch.zeros(2, device="meta")
    ctx = SimpleNamespace(tracker={1: (host, True), 2: (host, False), 3: (gpu, True), 4: (host, True), 6: (host, True),
                                   7: (host, True)}, fwd_stash={4: None})
    assert _next_on_host(ctx, 7) == 6 and _next_on_host(ctx, 6) == 1 and _next_on_host(ctx, 1) is None
    assert not fetch_ahead(SimpleNamespace())  # no offloader: nothing to change
    # through the hook, as trl's unpack pops each entry: one copy on its way at a time, started
    # after the wait trl's unpack makes (the "meta" device stands in for the GPU here)
    ctx.tracker = {i: (torch.full((2,), float(i)), True) for i in range(1, 6)}
    events = []
    ctx.use_streams, ctx.fwd_stash, ctx.s1, ctx.accelerator_type = True, {5: None}, None, "meta"
    ctx.device_module = SimpleNamespace(stream=lambda _: contextlib.nullcontext())
    ctx.unpack_hook = lambda i: events.append(("wait for", i, ctx.tracker[i][0].device.type)) or ctx.tracker.pop(i)[0]
    assert fetch_ahead(SimpleNamespace(maybe_activation_offload_context=ctx))
    for i in (5, 4, 3, 2, 1):
        ctx.unpack_hook(i)
        events.append(("on their way", sorted(j for j, e in ctx.tracker.items() if e[0].device.type == "meta")))
    assert events == [("wait for", 5, "cpu"), ("on their way", [4]), ("wait for", 4, "meta"), ("on their way", [3]),
                      ("wait for", 3, "meta"), ("on their way", [2]), ("wait for", 2, "meta"), ("on their way", [1]),
                      ("wait for", 1, "meta"), ("on their way", [])]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_offloader_fetches_the_next_layer_input_ahead_with_the_same_gradients(tiny_model):
    """Under gradient checkpointing (the offload plan's path) offloaded tensors are mostly back on
    the GPU already when the backward asks for them; gradients equal those of trl's own order."""
    from types import SimpleNamespace

    from trl.models.activation_offloading import get_act_offloading_ctx_manager

    from tasks.training import offload

    model = _lora_model(tiny_model, False, 0.0, device="cuda")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    ids = torch.randint(0, 500, (4, 256), generator=torch.Generator().manual_seed(1)).cuda()
    grads, handed = [], []
    for ahead in (False, True):
        ctx = get_act_offloading_ctx_manager(model, max_fwd_stash_size=1)
        trainer = SimpleNamespace(maybe_activation_offload_context=ctx)
        if ahead:
            assert offload.fetch_ahead(trainer) and not offload.fetch_ahead(trainer)  # changed once
            unpack = ctx.unpack_hook
            ctx.unpack_hook = lambda i: (handed.append(ctx.tracker[i][0].device.type)  # where an offloaded one is
                                         if ctx.tracker[i][1] and i not in ctx.fwd_stash else None) or unpack(i)
        model.zero_grad()
        with ctx:
            model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert handed.count("cuda") > handed.count("cpu"), handed  # most were on their way before asked for
    assert grads[0].keys() == grads[1].keys() and all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_offloader_ends_a_step_in_stream_order_without_a_host_wait(tiny_model):
    from types import SimpleNamespace

    from trl.models.activation_offloading import get_act_offloading_ctx_manager

    from tasks.training.offload import InStreamOrder, exit_without_host_wait

    model = _lora_model(tiny_model, False, 0.0, device="cuda")
    ids = torch.randint(0, 500, (4, 256), generator=torch.Generator().manual_seed(1)).cuda()
    grads = []
    for ours in (False, True):
        trainer = SimpleNamespace(maybe_activation_offload_context=get_act_offloading_ctx_manager(model))
        if ours:
            assert exit_without_host_wait(trainer) and not exit_without_host_wait(trainer)  # changed once
        model.zero_grad()
        with trainer.maybe_activation_offload_context:
            model(input_ids=ids, labels=ids).loss.backward()
            torch.cuda.set_sync_debug_mode("error" if ours else 0)  # a host wait in __exit__ raises
        torch.cuda.set_sync_debug_mode(0)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert isinstance(trainer.maybe_activation_offload_context, InStreamOrder)
    assert not trainer.maybe_activation_offload_context.fwd_stash  # emptied all the same
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7) for n in grads[0])
    assert not exit_without_host_wait(SimpleNamespace())  # no offloader: nothing to change


def _fixed_rows(n: int, length: int) -> "Dataset":
    """Rows of one length, so every batch has the shape the layers' graphs were captured with."""
    from datasets import Dataset

    gen = torch.Generator().manual_seed(3)
    return Dataset.from_list([{"input_ids": torch.randint(4, 500, (length,), generator=gen).tolist()} for _ in range(n)])


def _graphed_trainer(tmp_path, tiny_model, graphs: bool, **train_params):
    from transformers import AutoTokenizer

    from tasks.training.fp8_base import supported
    from tasks.training.train import load_base, make_trainer

    cfg = config_from_dict(tiny_params(tiny_model, quantization={"enabled": True, "compute_dtype": "bfloat16"}, train={
        "max_steps": 5, "batch_size": 4, "max_length": 128, "gradient_checkpointing": True, "packing": False,
        "optimizer": "adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch", "memory_budget_gib": "off",
        "fp8_base": "grads" if supported() else False, "cuda_graphs": graphs, **train_params}))
    torch.manual_seed(0)
    return make_trainer(cfg, load_base(cfg, tiny_model), AutoTokenizer.from_pretrained(tiny_model), _fixed_rows(24, 128),
                        tmp_path / f"graphs-{graphs}", save_strategy="no")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fp32_residual", [False, True], ids=["bf16-stream", "fp32-stream"])
def test_graphed_layers_train_as_the_eager_layers_do(tmp_path, tiny_model, fp32_residual):
    """4-bit base, fused LoRA, FP8 recompute and input gradients, flex attention, checkpointing:
    replayed as CUDA graphs, the same losses and adapter as run eagerly; a batch of another shape
    runs eagerly and still trains."""
    from tasks.training.graphed_layers import decoder_layers

    runs = []
    for graphs in (False, True):
        trainer = _graphed_trainer(tmp_path, tiny_model, graphs, fp32_residual=fp32_residual)
        start = _adapter_after(trainer)
        runs.append((start, _logged_metrics(trainer), _adapter_after(trainer), trainer))
    (eager_start, eager_log, eager_adapter, eager), (graph_start, graph_log, graph_adapter, graphed) = runs
    layers = decoder_layers(graphed.model)
    assert eager.graphed_layers == 0 and graphed.graphed_layers == len(layers) == 2
    assert [layer._loragate_graphs.broken for layer in layers] == [None, None]  # replayed throughout
    assert all(layer._loragate_graphs.backward_graph is not None for layer in layers)
    assert len(graph_log) == len(eager_log) == 5
    assert [e["loss"] for e in graph_log] == pytest.approx([e["loss"] for e in eager_log], rel=1e-3)
    assert all(torch.equal(graph_start[n], eager_start[n]) for n in eager_start)
    # Adam turns a gradient's last-bit noise into whole steps where it is near 0, so the updates are
    # compared in direction and size: a layer whose gradients went missing would not move at all
    for n in eager_adapter:
        moved_e, moved_g = (eager_adapter[n] - eager_start[n]).flatten(), (graph_adapter[n] - graph_start[n]).flatten()
        assert moved_e.norm() > 0 and torch.cosine_similarity(moved_e, moved_g, dim=0) > 0.98, n
        assert moved_g.norm() == pytest.approx(moved_e.norm().item(), rel=0.05), n
    model = graphed.model
    ids = torch.randint(4, 500, (2, 64), device="cuda")
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    assert all("unlike the captured" in layer._loragate_graphs.broken for layer in layers)  # eager from then on
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_graphed_layers_stay_off_on_the_cpu_and_inputs_outside_tensors_are_refused(tmp_path, tiny_model):
    from types import SimpleNamespace

    from tasks.training.graphed_layers import Ungraphable, _flatten

    trainer = _graphed_trainer(tmp_path, tiny_model, True, max_steps=1)
    assert trainer.graphed_layers == 0  # no GPU: the layers run as before
    trainer.train()
    mask = torch.ones(2, 3, dtype=torch.bool)
    def padding_mask(m):  # as transformers' padding mask function closes over the mask
        return lambda b, h, q, k: m[b, q]

    closes_over = padding_mask(mask)
    found: list = []
    signature = _flatten(({"mask_mod": closes_over, "cos": torch.zeros(4)}, None, 3), found)
    assert found[0] is mask and found[1].shape == (4,)
    again: list = []
    assert _flatten(({"mask_mod": padding_mask(mask.clone()), "cos": torch.ones(4)}, None, 3),
                    again) == signature  # other values, same kind and shapes: the same graph
    assert _flatten(({"mask_mod": closes_over, "cos": torch.zeros(5)}, None, 3), []) != signature
    with pytest.raises(Ungraphable):
        _flatten({"past_key_values": SimpleNamespace(layers=[])}, [])
    nested = closes_over
    for _ in range(10):  # and_masks of closures over closures, as packed rows' mask functions nest
        nested = (lambda inner: lambda *a: inner(*a))((nested,))
    deep: list = []
    _flatten({"mask_mod": nested}, deep)
    assert len(deep) == 1 and deep[0] is mask


def test_graphed_layers_own_the_gradients_the_trainer_cleared_or_kept():
    """The backward graph sums into fixed buffers: they become .grad, zeroed where the trainer set
    .grad to None, holding the gradient so far where it kept one (accumulation); a cache is dropped."""
    from types import SimpleNamespace

    from tasks.training.graphed_layers import LayerGraphs, _without_cache

    layer = torch.nn.Linear(3, 2)
    graphs = LayerGraphs(layer, [])
    graphs.grads = [torch.full_like(p, 7.0) for p in graphs.params]  # last step's sums
    layer.bias.grad = torch.ones(2)  # accumulated this step so far, outside the graph
    graphs.own_grads()
    assert layer.weight.grad is graphs.grads[0] and float(layer.weight.grad.abs().sum()) == 0
    assert layer.bias.grad is graphs.grads[1] and torch.equal(layer.bias.grad, torch.ones(2))
    kwargs = _without_cache(SimpleNamespace(), {"past_key_values": object(), "use_cache": True, "x": 1})
    assert kwargs == {"past_key_values": None, "use_cache": False, "x": 1}
