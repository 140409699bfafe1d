"""q, k and v as one product, gate and up as another, LoRA sums inside (`train.merged_projections`).

A Llama-like decoder layer has seven projections, and fused LoRA (fused_lora.py) runs each as its
own pair of autograd functions in the forward, the recompute and the backward: a 7B step is bound
by the host in places, and k and v are narrow products (512 wide on Qwen2.5-7B). Three of the
seven read one input (q, k, v), two another (gate, up). Merged, each group is one product over the
stacked frozen weights, the adapters stacked beside them:

    a = x [A_q; A_k; A_v]^T                  (rows x 3r)
    out = a blockdiag(s B_q, s B_k, s B_v)^T + x [W_q; W_k; W_v]^T (+ b), rounded once (summed_once)

the members' outputs being column slices of `out`. Their gradients come back as one buffer (torch's
split joins them; Liger's gate-up SwiGLU writes them in place), so x's gradient is again one
product, g_a [A] + g [W], and each B's gradient its own slice's. The stacked weights are written
into one buffer each time (dequantized, or cast to FP8 with the scales fp8_base uses, the
transposed copy sharing one scale per input channel across the group), never kept.

Attention calls q_proj, k_proj and v_proj in turn on one tensor: q_proj runs the group and leaves
k's and v's outputs for the next calls with that very tensor (any other call runs its own product).
The MLP's forward becomes down(act(gate) * up) over the merged output, through Liger's fused
gate-up SwiGLU on CUDA. Taken where every member takes fused LoRA (one plain adapter, autocast, no
dropout mask) on alike 4-bit bases; otherwise each member runs alone, as before.

    python -m pytest -q tests/test_train.py -k merged
"""
from __future__ import annotations

import types

import torch

from tasks.training import fused_lora

ATTENTION = ("q_proj", "k_proj", "v_proj")
MLP = ("gate_proj", "up_proj")


def _stamp(tensors) -> tuple:
    """What a copy made from `tensors` depends on: any optimizer step, their versions and storage."""
    return (fused_lora._UPDATES[0], *((t._version, t.data_ptr()) for t in tensors))


class StackedWeight:
    """A group's frozen 4-bit weights as one (sum of outs, in) weight, written into one buffer on
    each use: dequantized (fused_lora.base_weight) or in e4m3 (fp8_base.weight_fp8)."""

    def __init__(self, weights: list):
        self.weights = weights
        self.sizes = [w.quant_state.shape[0] for w in weights]
        self.n_in = weights[0].quant_state.shape[1]
        self._scales: tuple = (None, None)
        self._ones = None

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        first = self.weights[0]
        if not first.is_cuda or first.quant_state.dtype != dtype:  # bitsandbytes writes into a buffer on CUDA only
            return torch.cat([fused_lora.dequantized(w, dtype) for w in self.weights])
        out = torch.empty(sum(self.sizes), self.n_in, dtype=dtype, device=first.device)
        for w, part in zip(self.weights, out.split(self.sizes)):
            s = w.quant_state
            torch.ops.bitsandbytes.dequantize_4bit.out(w.data, fused_lora.block_scales(w), s.blocksize, s.quant_type,
                                                       s.shape, s.dtype, out=part)
        return out

    def _into(self, out: torch.Tensor, inverses) -> torch.Tensor:
        """Each weight into its rows of out[:, :in] (bf16 with unit inverses, or e4m3) by fp8_kernels."""
        from tasks.training.fp8_kernels import nf4_to_fp8

        for w, part, inverse in zip(self.weights, out[:, :self.n_in].split(self.sizes), inverses):
            s = w.quant_state
            nf4_to_fp8(w.data, fused_lora.block_scales(w), s.code, s.shape, s.blocksize, inverse, False, out=part)
        return out

    def dense_joined(self, extra: torch.Tensor) -> torch.Tensor:
        """[W | extra] (outs, in + extra's columns) in extra's dtype (bf16)."""
        if self._ones is None or self._ones.device != extra.device:
            self._ones = torch.ones(sum(self.sizes), device=extra.device)
        out = torch.empty(sum(self.sizes), self.n_in + extra.shape[1], dtype=extra.dtype, device=extra.device)
        out[:, self.n_in:].copy_(extra)
        return self._into(out, self._ones.split(self.sizes))

    def fp8_joined(self, extra_q: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        """[W | extra] in e4m3 (outs, in + extra's columns), W scaled by `inverse` per output channel;
        extra_q: the extra columns already cast with those scales."""
        out = torch.empty(sum(self.sizes), self.n_in + extra_q.shape[1], dtype=torch.float8_e4m3fn,
                          device=extra_q.device)
        out[:, self.n_in:].copy_(extra_q)
        return self._into(out, inverse.split(self.sizes))

    def fp8_scales(self) -> tuple[torch.Tensor, ...]:
        """Per output channel scales, stacked, and one per input channel shared by the group (the
        input gradient sums over all its outputs), with their inverses; made once."""
        from tasks.training import fp8_base

        states = tuple(w.quant_state for w in self.weights)
        if self._scales[0] != states:
            per = [fp8_base._channel_scales(w) for w in self.weights]
            rows, cols = torch.cat([r for r, _ in per]), torch.stack([c for _, c in per]).amax(0)
            self._scales = (states, (rows, cols, 1.0 / rows, 1.0 / cols))
        return self._scales[1]

    def fp8(self, transpose: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """As fp8_base.weight_fp8: (outs, in) scaled per output channel, or (in, outs) per input channel."""
        from tasks.training.fp8_kernels import nf4_to_fp8

        rows, cols, inv_rows, inv_cols = self.fp8_scales()
        first, total = self.weights[0], sum(self.sizes)
        out = torch.empty((self.n_in, total) if transpose else (total, self.n_in), device=first.device,
                          dtype=torch.float8_e4m3fn)
        inverses = [inv_cols] * len(self.weights) if transpose else inv_rows.split(self.sizes)
        for w, part, inverse in zip(self.weights, out.split(self.sizes, dim=1 if transpose else 0), inverses):
            s = w.quant_state
            nf4_to_fp8(w.data, fused_lora.block_scales(w), s.code, s.shape, s.blocksize, inverse, transpose, out=part)
        return out, (cols if transpose else rows).view(1, -1)


class Group:
    """Projections of one module that read one input, run as one product. It stands in for a base
    layer where fused_lora and fp8_base take one (weight, bias, FP8 routing)."""

    def __init__(self, members: list):
        self.members = members
        self.sizes = [m.base_layer.out_features for m in members]
        self.weight = StackedWeight([m.base_layer.weight for m in members])
        self.fp32_out = members[0]._fp32_out
        self.stash = None  # (input, its version, {member index: output}) left by the first member
        self._bias: tuple = (None, None)
        self._adapters: dict = {}

    @property
    def bias(self) -> torch.Tensor | None:
        biases = [m.base_layer.bias for m in self.members]
        if all(b is None for b in biases):
            return None
        stamp = _stamp([b for b in biases if b is not None])
        if self._bias[0] != stamp:
            like = next(b for b in biases if b is not None)
            self._bias = (stamp, torch.cat([like.new_zeros(n) if b is None else b.detach()
                                            for b, n in zip(biases, self.sizes)]))
        return self._bias[1]

    @property
    def _fp8_base(self) -> str | None:
        modes = {getattr(m.base_layer, "_fp8_base", None) for m in self.members}
        return modes.pop() if len(modes) == 1 else None

    _fp8_shared = False  # the group casts its input once anyway

    def adapters(self, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[A_1; A_2; ...] and blockdiag(s_1 B_1, s_2 B_2, ...) in `dtype`, made once per optimizer update."""
        a_weights = [m.lora_A[name].weight for m in self.members]
        b_weights = [m.lora_B[name].weight for m in self.members]
        stamp = _stamp(a_weights + b_weights)
        cached = self._adapters.get((name, dtype))
        if cached is None or cached[0] != stamp:
            scaled = [b.detach().to(dtype, copy=True).mul_(m.scaling[name]) for b, m in zip(b_weights, self.members)]
            cached = (stamp, (torch.cat([a.detach() for a in a_weights]).to(dtype), torch.block_diag(*scaled)))
            self._adapters[(name, dtype)] = cached
        return cached[1]

    def joins(self, x: torch.Tensor) -> bool:
        """The adapter's term can ride in the base product as extra inner columns: bf16 out, on CUDA."""
        return x.is_cuda and x.dtype == torch.bfloat16 and not self.fp32_out

    def joined_product(self, x: torch.Tensor, a: torch.Tensor, name: str) -> torch.Tensor:
        """[x | a] [W | blockdiag(s B)]^T + b: base, adapter and bias summed in one GEMM's fp32
        accumulator and epilogue, rounded once; no pass over the output to add the adapter's term
        (the FP8 product cannot accumulate onto one, and in bf16 that pass costs as much)."""
        pad = -a.shape[1] % 16  # zero columns keep the inner size a multiple of 16, as FP8 products need
        xa = torch.empty(x.shape[0], x.shape[1] + a.shape[1] + pad, dtype=x.dtype, device=x.device)
        xa[:, :x.shape[1]].copy_(x)
        xa[:, x.shape[1]:x.shape[1] + a.shape[1]].copy_(a)
        if pad:
            xa[:, -pad:].zero_()
        bias = self.bias
        bias = None if bias is None else bias.to(x.dtype)
        if fused_lora._in_fp8(self, x):
            from tasks.training import fp8_base
            from tasks.training.fp8_kernels import rowwise_fp8

            rows, inverse, extra_q = self.joined_fp8_adapter(name, x.dtype)
            xq, x_scale = rowwise_fp8(xa)
            return torch._scaled_mm(xq, self.weight.fp8_joined(extra_q, inverse).t(), scale_a=x_scale,
                                    scale_b=rows.view(1, -1), bias=bias, out_dtype=torch.bfloat16,
                                    use_fast_accum=fp8_base.FORWARD_FAST_ACCUM)[:x.shape[0]]
        weight = self.weight.dense_joined(torch.nn.functional.pad(self.adapters(name, x.dtype)[1], (0, pad)))
        return xa @ weight.t() if bias is None else torch.addmm(bias, xa, weight.t())

    def joined_fp8_adapter(self, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Per output channel scales covering W's and s B's values, their inverses, and blockdiag(s B)
        cast with them: made once per optimizer update."""
        diag = self.adapters(name, dtype)[1]
        stamp = self._adapters[(name, dtype)][0]
        cached = self._adapters.get(("fp8", name, dtype))
        if cached is None or cached[0] != stamp:
            rows = torch.maximum(self.weight.fp8_scales()[0], diag.abs().amax(1).float() / torch.finfo(torch.float8_e4m3fn).max)
            inverse = 1.0 / rows
            diag = torch.nn.functional.pad(diag, (0, -diag.shape[1] % 16))
            cached = (stamp, (rows, inverse, (diag.float() * inverse[:, None]).to(torch.float8_e4m3fn)))
            self._adapters[("fp8", name, dtype)] = cached
        return cached[1]

    def adapter_name(self, x: torch.Tensor) -> str | None:
        """The one plain adapter all members run fused on x, or None where one must run alone."""
        names = {fused_lora.single_plain_adapter(m, {}) for m in self.members}
        name = names.pop() if len(names) == 1 else None
        if name is None or not all(fused_lora._fusable(m, name, x) for m in self.members):
            return None
        return name

    def run(self, x: torch.Tensor) -> torch.Tensor | None:
        """The members' outputs side by side, (..., sum of outs), or None (see adapter_name)."""
        name = self.adapter_name(x)
        if name is None:
            return None
        flat = x.reshape(-1, x.shape[-1]).to(torch.get_autocast_dtype(x.device.type))
        a = _StackedAdapterIn.apply(flat, self, name, *(m.lora_A[name].weight for m in self.members))
        out = _StackedOut.apply(flat, a, self, name, *(m.lora_B[name].weight for m in self.members))
        return out.view(*x.shape[:-1], out.shape[-1])


class _StackedAdapterIn(torch.autograd.Function):
    """a = x [A]^T; saves x and hands back each A's gradient (x's comes from _StackedOut)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group, name: str, *a_weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.ranks, ctx.dtypes = [w.shape[0] for w in a_weights], [w.dtype for w in a_weights]
        return x @ group.adapters(name, x.dtype)[0].t()

    @staticmethod
    def backward(ctx, grad_a: torch.Tensor):
        (x,) = ctx.saved_tensors
        grads = (grad_a.t() @ x).split(ctx.ranks)
        return None, None, None, *(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))


class _StackedOut(torch.autograd.Function):
    """out = a blockdiag(s B)^T + x [W]^T (+ b), as fused_lora's _BaseAndAdapterOut for one layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, group: Group, name: str, *b_weights) -> torch.Tensor:
        if group.fp32_out:  # fp32 out, as the recipe's bnb layers hand it to fp32 norms
            out = fused_lora.base_product(group, x)
            out.addmm_(a.float(), group.adapters(name, torch.float32)[1].t())
        elif group.joins(x):
            out = group.joined_product(x, a, name)
        else:
            out = fused_lora.summed_once(group, x, a, group.adapters(name, x.dtype)[1])
        # held, not saved: a is rows x r per member, and the saved-tensor hooks must not see this function
        ctx.a, ctx.group, ctx.name, ctx.b_weights = a, group, name, b_weights
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group, a = ctx.group, ctx.a
        grad = grad.to(a.dtype)
        a_stack, b_diag = group.adapters(ctx.name, grad.dtype)
        grad_a = grad @ b_diag
        grads_b = [torch.mul(g.t() @ a_part, m.scaling[ctx.name], out=torch.empty_like(b))
                   for g, a_part, b, m in zip(grad.split(group.sizes, 1), a.split([w.shape[1] for w in ctx.b_weights], 1),
                                              ctx.b_weights, group.members)]
        grad_x = fused_lora.input_grad(group, grad, grad_a, a_stack) if ctx.needs_input_grad[0] else None
        return grad_x, grad_a, None, None, *grads_b


def _first_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """q_proj: the whole group, k's and v's outputs left for their calls on this same x."""
    group = self._merged_group
    out = None if args or kwargs else group.run(x)
    group.stash = None
    if out is None:
        return self._single_forward(x, *args, **kwargs)
    parts = out.split(group.sizes, dim=-1)
    group.stash = (x, x._version, dict(enumerate(parts[1:], start=1)))
    return parts[0]


def _later_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """k_proj, v_proj: the output q_proj's call left for this x, else this layer's own product."""
    group, index = self._merged_group, self._merged_index
    stash = group.stash
    if stash is None or stash[0] is not x or stash[1] != x._version or index not in stash[2] or args or kwargs:
        return self._single_forward(x, *args, **kwargs)
    out = stash[2].pop(index)
    if not stash[2]:
        group.stash = None
    return out


def _liger_gate_up():
    try:
        from liger_kernel.ops.swiglu import LigerFusedGateUpSiLUMulFunction
    except ImportError:
        return None
    return LigerFusedGateUpSiLUMulFunction


def _silu(mlp) -> bool:
    """The MLP's activation is SiLU: HF's act_fn, or Liger's SwiGLU MLP (which has none)."""
    act = getattr(mlp, "act_fn", None)
    return type(act).__name__ in ("SiLU", "SiLUActivation") or (act is None and "SwiGLU" in type(mlp).__name__)


def _mlp_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """down(act(gate) * up) over gate and up's merged output."""
    group = self._merged_group
    gate_up = None if args or kwargs else group.run(x)
    if gate_up is None:
        return self._unmerged_forward(x, *args, **kwargs)
    fused = _liger_gate_up() if gate_up.is_cuda and _silu(self) else None
    if fused is not None:
        # in place: the gate-up gradient overwrites the saved output it is computed from, as Liger's
        # two-input SwiGLU does (one backward a forward: a recompute makes its own)
        hidden = fused.apply(gate_up.view(-1, gate_up.shape[-1]), True).view(*gate_up.shape[:-1], -1)
    else:
        gate, up = gate_up.split(group.sizes, dim=-1)
        hidden = (torch.nn.functional.silu(gate) if getattr(self, "act_fn", None) is None else self.act_fn(gate)) * up
    return self.down_proj(hidden)


def _alike(members: list) -> bool:
    """Fused LoRA layers on 4-bit bases that one stacked weight can stand for."""
    if not all(hasattr(m, "_unfused_forward") and hasattr(m, "base_layer") for m in members):
        return False
    states = [getattr(m.base_layer.weight, "quant_state", None) for m in members]
    return (all(s is not None for s in states)
            and len({(s.blocksize, s.quant_type, s.dtype, s.shape[1]) for s in states}) == 1
            and len({m._fp32_out for m in members}) == 1 and len({m.base_layer.weight.device for m in members}) == 1)


def _merge(module, names: tuple[str, ...]) -> bool:
    members = [getattr(module, n, None) for n in names]
    if not _alike(members) or hasattr(members[0], "_merged_group") or hasattr(module, "_merged_group"):
        return False
    group = Group(members)
    if names == MLP:
        if not hasattr(module, "down_proj"):
            return False
        module._merged_group, module._unmerged_forward = group, module.forward
        module.forward = types.MethodType(_mlp_forward, module)
        return True
    for index, member in enumerate(members):
        member._merged_group, member._merged_index, member._single_forward = group, index, member.forward
        member.forward = types.MethodType(_later_forward if index else _first_forward, member)
    return True


def merge_projections(model) -> int:
    """Run every attention's q/k/v and every MLP's gate/up of `model` as one product each, where
    fuse_lora has given them its forward on alike 4-bit bases; returns how many groups (idempotent)."""
    return sum(_merge(module, names) for module in list(model.modules()) for names in (ATTENTION, MLP)
               if all(hasattr(module, n) for n in names))
