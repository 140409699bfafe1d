"""LoRA with its sums inside the GEMMs: out = base(x) + s * (x A^T) B^T in one output buffer, and
the input gradient g W + s (g B) A in one input-gradient buffer (`train.fused_lora`).

peft (and adapter_first.py, which only reorders peft's arithmetic) builds the adapter's term as
separate tensors and adds it to the base output: a pass over an output as large as the layer's in
the forward and again in the recompute under gradient checkpointing; in the backward autograd
scales the output gradient (another pass) and adds the adapter's input gradient to the base's
(another). Here two autograd functions do the same products with the sums in the GEMM epilogues
(cuBLAS's beta = 1), and the scaling on rank-r tensors only:

- _AdapterIn: a = x A^T. It saves x, the one activation the adapter needs, and hands back A's
  gradient only; x's whole gradient comes from the next function.
- _BaseAndAdapterOut: out = s a B^T, then out += x W^T (addmm_), then + b: the base product is
  accumulated onto the adapter's term, rounded once (summed_once). It keeps the small a (rows x r)
  itself and saves nothing through autograd's saved-tensor hooks, so a recomputed layer (non-
  reentrant checkpoint, early stop) still stops before its last base product, as adapter_first's
  order does. Backward: g_a = s g B; B's gradient s g^T a; x's gradient g_a A, then += g W (addmm_).

Same parameters, same products; the two sums round once (fp32 epilogue) where peft rounds twice, so
results match peft's to bf16 rounding, not bit for bit. Taken only where it is exact in intent:
autocast on with the input in its dtype, one plain adapter, no dropout (dropout's mask would sit
between the two shares of x's gradient), a 4-bit or plain Linear base; elsewhere the layer runs
adapter first (4-bit) or peft's forward. A base routed through FP8 (train.fp8_base) has both of its
products, x W^T and g W, taken by fp8_base.layer_product / input_grad, with the adapter's sums added after.

    python -m pytest -q tests/test_train.py -k fused     # same outputs and gradients as peft's, to bf16 rounding
"""
from __future__ import annotations

import types

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from tasks.training import fp8_base


def _plain(layer, name: str) -> bool:
    """Only vanilla LoRA (no DoRA or other variant, no LoRA bias) on a plain Linear-like base."""
    return (name in layer.lora_A and name not in getattr(layer, "lora_variant", {})
            and not getattr(layer, "use_dora", {}).get(name, False)
            and not getattr(layer, "lora_bias", {}).get(name, False)
            and isinstance(layer.lora_A[name], torch.nn.Linear))


def single_plain_adapter(layer, kwargs: dict) -> str | None:
    """The one active vanilla adapter of a LoRA layer in plain use (not merged or disabled, no
    per-row adapters); None where peft's own forward must run."""
    adapters = [n for n in layer.active_adapters if n in layer.lora_A]
    usable = (not layer.disable_adapters and not layer.merged and "adapter_names" not in kwargs
              and len(adapters) == 1 and _plain(layer, adapters[0]))
    return adapters[0] if usable else None


def replace_forward(model, kind, forward, keep: str = "_peft_forward") -> int:
    """Give every LoRA module of `kind` in `model` `forward`, keeping the one it had under `keep`
    for the cases the new one does not take; a layer replaced once is left alone. Returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, kind) and not hasattr(module, keep) and hasattr(module, "base_layer"):
            setattr(module, keep, module.forward)
            module.forward = types.MethodType(forward, module)
            count += 1
    return count


def unnested_scales(state) -> torch.Tensor:
    """A 4-bit weight's per-block scales in fp32 (double quantization stores them 8-bit)."""
    if not state.nested:
        return state.absmax.float()
    import bitsandbytes.functional as F

    return (F.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()


def per_weight(weight, name: str, make):
    """make(weight) once per frozen 4-bit weight, kept on it under `name` (made again if the weight
    is quantized anew)."""
    cached = getattr(weight, name, None)
    if cached is None or cached[0] is not weight.quant_state:
        cached = (weight.quant_state, make(weight))
        setattr(weight, name, cached)
    return cached[1]


def block_scales(weight) -> torch.Tensor:
    """unnested_scales, once per weight: undoing the nesting costs two more kernels at every
    dequantization; kept, the fp32 scales cost ~0.4 GiB on a 7B (counted by budget.py)."""
    return per_weight(weight, "_fp32_scales", lambda w: unnested_scales(w.quant_state))


def dequantized(weight, dtype: torch.dtype) -> torch.Tensor:
    """A frozen 4-bit weight (out, in) in `dtype`, from its kept fp32 block scales."""
    state = weight.quant_state
    return torch.ops.bitsandbytes.dequantize_4bit.default(
        weight.data, block_scales(weight), state.blocksize, state.quant_type, state.shape, state.dtype).to(dtype)


def base_weight(base, dtype: torch.dtype) -> torch.Tensor:
    """The frozen base weight (out, in) in `dtype`: dequantized where it is 4-bit, as bitsandbytes'
    own product does for large inputs."""
    weight = base.weight
    return weight.to(dtype) if getattr(weight, "quant_state", None) is None else dequantized(weight, dtype)


_UPDATES = [0]  # optimizer steps taken in this process (any optimizer)


def _count_update(*_):
    _UPDATES[0] += 1


register_optimizer_step_post_hook(_count_update)


def compute_copy(param: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """scale * param in the compute dtype, cast once per optimizer update instead of at every
    product (the forward, the recompute and the backward each cast the adapter's weights otherwise).
    The copy is stale once any optimizer steps (fused AdamW writes the weights without moving their
    version counter), a write moves the version (load_state_dict) or the storage changes."""
    if param.is_cuda and torch.cuda.is_current_stream_capturing():  # a graph casts at every replay
        return param.detach().to(dtype, copy=True).mul_(scale)
    stamp = (_UPDATES[0], param._version, param.data_ptr())
    cached = getattr(param, "_compute_copy", {})
    if cached.get((scale, dtype), (None,))[0] != stamp:
        # a new tensor even in param's own dtype, where .to() would hand back (and mul_ scale) param itself
        copy = param.detach().to(dtype, copy=True)
        cached[(scale, dtype)] = (stamp, copy.mul_(scale) if scale != 1.0 else copy)
        param._compute_copy = cached
    return cached[(scale, dtype)][1]


def _known_base(base) -> bool:
    """A 4-bit base with its quantization state (FP8-routed or not), or a plain Linear (not 8-bit)."""
    weight = getattr(base, "weight", None)
    four_bit = getattr(weight, "quant_state", None) is not None
    plain = type(weight) is torch.nn.Parameter and weight.is_floating_point()
    return isinstance(base, torch.nn.Linear) and (four_bit or plain)


def _in_fp8(base, rows: torch.Tensor, backward: bool = False) -> bool:
    """The base product runs in FP8 (train.fp8_base) for bf16 rows; a handful (generation) gains nothing."""
    return fp8_base.routed(base, backward) and rows.dtype == torch.bfloat16 and rows.shape[0] >= 16


def base_product(base, x: torch.Tensor) -> torch.Tensor:
    """x W^T + b for the frozen base in fp32, as bitsandbytes' layer returns it to an fp32 input:
    FP8 where it is routed so (the product written in bf16, then widened), else on CUDA cuBLAS
    writes its fp32 accumulator; elsewhere the bf16 result widened."""
    bias = None if base.bias is None else base.bias.to(torch.float32)
    if _in_fp8(base, x):  # row-wise scaled FP8 products write bf16 only (some torch versions)
        out = fp8_base.layer_product(base, x).float()
    elif x.is_cuda:
        out = torch.mm(x, base_weight(base, x.dtype).t(), out_dtype=torch.float32)
    else:
        out = (x @ base_weight(base, x.dtype).t()).float()
    return out if bias is None else out.add_(bias)


def input_grad(base, grad: torch.Tensor, grad_a: torch.Tensor, a_weight: torch.Tensor) -> torch.Tensor:
    """x's gradient, grad W + grad_a A: in FP8 where the base is routed so (its product rounded,
    the adapter's share added after), else the base's product summed onto the adapter's (as summed_once)."""
    if _in_fp8(base, grad, backward=True):
        return fp8_base.input_grad(grad, base.weight).addmm_(grad_a, a_weight)
    return (grad_a @ a_weight).addmm_(grad, base_weight(base, grad.dtype))


class _AdapterIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, a_weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.a_dtype = a_weight.dtype
        return x @ compute_copy(a_weight, x.dtype).t()

    @staticmethod
    def backward(ctx, grad_a: torch.Tensor):
        (x,) = ctx.saved_tensors
        return None, (grad_a.t() @ x).to(ctx.a_dtype)


def summed_once(base, x: torch.Tensor, a: torch.Tensor, b_weight: torch.Tensor) -> torch.Tensor:
    """a B^T + x W^T (+ b) with one rounding: the base product accumulates onto the adapter's
    term inside the GEMM (cuBLAS's beta = 1, fp32 epilogue). Rounded first and summed after, a
    young adapter's share, far below half a bf16 step of the base output, rounds away every time;
    summed inside, the rounding keeps it on average. The bias comes last for the same reason.
    Where the base is FP8-routed, its product writes its own rounded output and the adapter's
    term accumulates onto that."""
    bias = None if base.bias is None else base.bias.to(x.dtype)
    if _in_fp8(base, x):
        out = fp8_base.layer_product(base, x)
        out = out if bias is None else out.add_(bias)
        return out.addmm_(a, b_weight.t())
    out = (a @ b_weight.t()).addmm_(x, base_weight(base, x.dtype).t())
    return out if bias is None else out.add_(bias)


class _BaseAndAdapterOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b_weight: torch.Tensor, layer, name: str) -> torch.Tensor:
        wide, scaling = getattr(layer, "_fp32_out", False), layer.scaling[name]
        if wide:  # fp32 out, as the recipe's bnb layers hand it to fp32 norms
            out = base_product(layer.base_layer, x)
            out.addmm_(a.float(), compute_copy(b_weight, torch.float32, scaling).t())
        else:
            out = summed_once(layer.base_layer, x, a, compute_copy(b_weight, x.dtype, scaling))
        # held, not saved: a is rows x r, and the saved-tensor hooks must not see this function
        ctx.a, ctx.b_weight, ctx.layer, ctx.name = a, b_weight, layer, name
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layer, scaling = ctx.layer, ctx.layer.scaling[ctx.name]
        grad = grad.to(ctx.a.dtype)  # an fp32 output's gradient: the products run in the compute dtype
        grad_a = grad @ compute_copy(ctx.b_weight, grad.dtype, scaling)
        grad_b = torch.mul(grad.t() @ ctx.a, scaling, out=torch.empty_like(ctx.b_weight))
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = input_grad(layer.base_layer, grad, grad_a, compute_copy(layer.lora_A[ctx.name].weight, grad.dtype))
        return grad_x, grad_a, grad_b, None, None


def _fusable(layer, name: str, x: torch.Tensor) -> bool:
    """Autocast on with x in its dtype or fp32 (the GPU training path), no dropout mask, a base whose
    product this module knows (4-bit, FP8-routed or not, or plain Linear)."""
    dropout = layer.lora_dropout[name]
    no_mask = isinstance(dropout, torch.nn.Identity) or not dropout.training or dropout.p == 0
    autocast = torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.get_autocast_dtype(x.device.type),
                                                                         torch.float32)
    return no_mask and autocast and _known_base(layer.base_layer)


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = single_plain_adapter(self, kwargs)
    if name is None or args or kwargs or not _fusable(self, name, x):
        return self._unfused_forward(x, *args, **kwargs)
    # an fp32 input (fp32 residual, a norm not hooked) is cast as autocast would cast it for the product
    flat = x.reshape(-1, x.shape[-1]).to(torch.get_autocast_dtype(x.device.type))
    a = _AdapterIn.apply(flat, self.lora_A[name].weight)
    out = _BaseAndAdapterOut.apply(flat, a, self.lora_B[name].weight, self, name)
    return out.view(*x.shape[:-1], out.shape[-1])


# projections whose outputs attention takes: it computes in bf16 whatever it gets
ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv")
# projections whose outputs the MLP's nonlinearity takes. Left bf16 (the benches' resout / fp32_out=residual),
# SmolLM2 on the H200 lagged the recipe: 0.845 vs 0.815 over the last 10 of 40 steps (noise 0.006)
MLP_INPUTS = ("gate_proj", "up_proj", "gate_up_proj", "w1", "w3")
RESIDUAL_FEEDERS_ONLY = ATTENTION_INPUTS + MLP_INPUTS  # narrowed so, only o/down return fp32
NARROW_OUTPUTS = ATTENTION_INPUTS  # fuse_lora leaves these bf16 under fp32_out


def fuse_lora(model, fp32_out: bool = False) -> int:
    """Give every LoRA layer of `model` the fused forward (4-bit layers fall back to adapter first,
    the others to peft's); returns how many. `fp32_out` (train.fp32_residual): the projections
    that feed the residual or the MLP's nonlinearity return fp32, base and adapter summed there,
    as the recipe's bnb layers return them to its fp32 norms. On the CPU under autocast from bf16
    SmolLM2 (bench/train_equivalence.py --cpu-autocast) loss at step 2: recipe 4.095, all outputs
    bf16 4.326, these fp32 4.086, attention's inputs too 4.049 (their cost bought nothing the
    recipe has)."""
    from peft.tuners.lora import LoraLayer

    from tasks.training.adapter_first import adapter_first

    adapter_first(model)
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            module._fp32_out = fp32_out and not name.endswith(NARROW_OUTPUTS)
    return replace_forward(model, LoraLayer, _fused_forward, keep="_unfused_forward")
