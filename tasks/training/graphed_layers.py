"""Each decoder layer's forward, and its recompute with the backward, replayed as CUDA graphs
(`train.cuda_graphs`), where every layer is recomputed anyway (gradient checkpointing on all).

A 7B QLoRA step launches ~3,000 kernels from Python (7 fused-LoRA products a layer, each with its
FP8 casts, the norms, rope, attention), and on an H200 the host issues them barely as fast as the
GPU runs them: the step follows the host's speed. Captured once, a layer's forward is one graph
launch, and its recompute + backward another: the host's work per layer drops to a few copies.

What a graph replays is fixed at capture: the addresses it reads and writes. All layers are
captured at the first training forward, with that call's tensors (the position embeddings, the
attention mask's tensors and those its mask function closes over) kept as the ones every graph
reads; each later step copies its own into them once, and each call copies the hidden states into
a buffer shared by all layers; the graphs write into shared outputs, cloned out. The layer input
is saved for the backward as the checkpoint saves it (trl's offloader takes it to host memory
where the plan says so). The adapter's gradients are summed inside the backward graph into
buffers that are the parameters' .grad. Anything that does not fit (other shapes than the first
call's, a cache, not training) runs the layer eagerly under torch's checkpoint, as without graphs.

    python -m pytest -q tests/test_train.py -k graphed       # GPU: same losses and adapter updates as eagerly
"""
from __future__ import annotations

import contextlib
import functools
import logging

import torch
from torch.autograd.graph import saved_tensors_hooks

from tasks.training import fp8_base, mix_in

_log = logging.getLogger(__name__)


class Ungraphable(Exception):
    """A layer call whose inputs a graph cannot take (an object other than tensors and plain values)."""


def _flatten(obj, tensors: list, depth: int = 0):
    """obj's tensors appended to `tensors` (a BlockMask's and those its mask function closes over
    included); returns a signature of the rest: two calls with equal signatures differ only in the
    values their tensors hold."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return ("tensor", tuple(obj.shape), obj.dtype, obj.device)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.dtype, torch.device)):
        return obj
    if depth > 40:  # mask functions nest (and_masks of closures over closures), but not this far
        raise Ungraphable("inputs nested too deep")
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_flatten(o, tensors, depth + 1) for o in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((k, _flatten(v, tensors, depth + 1)) for k, v in obj.items()))
    if type(obj).__name__ == "BlockMask":
        return ("BlockMask", _flatten(obj.as_tuple(), tensors, depth + 1))
    if isinstance(obj, functools.partial):
        return ("partial", _flatten((obj.func, obj.args, obj.keywords), tensors, depth + 1))
    if hasattr(obj, "__code__"):  # a Python function: its code and what it closes over
        cells = tuple(c.cell_contents for c in obj.__closure__ or ())
        return ("fn", obj.__code__, _flatten(cells, tensors, depth + 1))
    raise Ungraphable(type(obj).__name__)


def _same_objects(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


class _Shared:
    """What every layer's graphs of one model read and write: the memory pool, the hidden states
    in and out, the output gradient in and the input gradient out, and the call's other tensors."""

    def __init__(self, hidden: torch.Tensor):
        self.pool = torch.cuda.graph_pool_handle()
        self.x, self.y = torch.empty_like(hidden), torch.empty_like(hidden)
        self.grad_y, self.grad_x = torch.zeros_like(hidden), torch.empty_like(hidden)
        self.signature, self.inputs, self.loaded = None, [], []
        self.graphs: list[LayerGraphs] = []  # the layers captured so far

    def load(self, tensors: list) -> None:
        """Copy a call's tensors into the captured ones, once for all the layers that share them."""
        if not _same_objects(tensors, self.loaded):
            for static, new in zip(self.inputs, tensors):
                if static is not new:
                    static.copy_(new)
            self.loaded = list(tensors)


@contextlib.contextmanager
def _capturing(autocast_dtype):
    """Inside a layer's capture or warm-up: saved tensors kept as they are (not trl's offload
    hooks), autocast as the trainer's but without its cache, which graphs must not use."""
    with saved_tensors_hooks(lambda t: t, lambda t: t), torch.autocast(
            "cuda", dtype=autocast_dtype, enabled=autocast_dtype is not None, cache_enabled=False):
        yield


class LayerGraphs:
    """One decoder layer's forward graph and recompute + backward graph."""

    def __init__(self, layer, shared_holder: list):
        self.layer, self.holder = layer, shared_holder
        self.params = [p for p in layer.parameters() if p.requires_grad]
        self.grads: list[torch.Tensor] = []  # the adapter's gradient sums, made at the capture
        self.forward_graph = self.backward_graph = None
        self.broken: str | None = None  # why the layer runs eagerly

    def _call(self, x: torch.Tensor, args, kwargs):
        return super(GraphedLayer, self.layer).forward(x, *args, **kwargs)

    def _backward_body(self, args, kwargs) -> list[torch.Tensor]:
        shared = self.holder[0]
        x = shared.x.detach().requires_grad_()
        with torch.enable_grad(), fp8_base.recomputing():
            out = self._call(x, args, kwargs)
            grads = torch.autograd.grad(out, [x, *self.params], shared.grad_y)
        shared.grad_x.copy_(grads[0])
        return grads[1:]

    def capture(self, args, kwargs, autocast_dtype) -> None:
        """Warm up on a side stream (compiles, autotunes and fills every per-weight cache), then
        capture both graphs into the shared pool."""
        shared, side = self.holder[0], torch.cuda.Stream()
        self.grads = [torch.zeros_like(p) for p in self.params]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _capturing(autocast_dtype):
            for _ in range(2):
                with torch.no_grad():
                    out = self._call(shared.x, args, kwargs)
                if not isinstance(out, torch.Tensor) or out.shape != shared.x.shape:
                    raise Ungraphable(f"a layer output of type {type(out).__name__}")
                self._backward_body(args, kwargs)
        torch.cuda.current_stream().wait_stream(side)
        fp8_base.forget_shared_cast()
        self.forward_graph, self.backward_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.forward_graph, pool=shared.pool), _capturing(autocast_dtype), torch.no_grad():
            shared.y.copy_(self._call(shared.x, args, kwargs))
        with torch.cuda.graph(self.backward_graph, pool=shared.pool), _capturing(autocast_dtype):
            torch._foreach_add_(self.grads, self._backward_body(args, kwargs))
        fp8_base.forget_shared_cast()

    def release(self, why: str) -> None:
        """Run eagerly from now on: the graphs go, and the shared buffers and pool with the last of them."""
        self.broken, self.forward_graph, self.backward_graph = why, None, None
        if self.holder and not any(g.forward_graph is not None for g in self.holder[0].graphs):
            self.holder.clear()

    def own_grads(self) -> None:
        """Make the graph's gradient sums the parameters' .grad (zeroed where the trainer cleared it)."""
        cleared = [g for p, g in zip(self.params, self.grads) if p.grad is None]
        if cleared:
            torch._foreach_zero_(cleared)
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:
                if p.grad is not None:
                    g.copy_(p.grad)
                p.grad = g


class _Replayed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, graphs: LayerGraphs, tensors: list, hidden: torch.Tensor, *params):
        shared = graphs.holder[0]
        shared.load(tensors)
        shared.x.copy_(hidden)
        graphs.forward_graph.replay()
        ctx.graphs, ctx.tensors = graphs, tensors
        ctx.save_for_backward(hidden)
        return shared.y.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (hidden,) = ctx.saved_tensors
        graphs = ctx.graphs
        shared = graphs.holder[0]
        shared.load(ctx.tensors)
        shared.x.copy_(hidden)
        shared.grad_y.copy_(grad)
        graphs.own_grads()
        graphs.backward_graph.replay()
        return (None, None, shared.grad_x.clone(), *(None for _ in graphs.params))


class GraphedLayer:
    """Mixed into a decoder layer (a transformers GradientCheckpointingLayer): its forward replays
    graphs while training, and the trainer's checkpointing is kept off it (the graphs recompute)."""

    @property
    def gradient_checkpointing(self) -> bool:
        return False

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, _value) -> None:
        pass  # the trainer turns checkpointing on at train(): the backward graph is the recompute

    def forward(self, hidden_states, *args, **kwargs):
        graphs = self._loragate_graphs
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(hidden_states, *args, **kwargs)
        kwargs = _without_cache(self, kwargs)
        if hidden_states.is_cuda and graphs.broken is None:
            try:
                return _replay(graphs, hidden_states, args, kwargs)
            except Ungraphable as why:
                graphs.release(str(why))
                _log.warning("train.cuda_graphs: a decoder layer runs eagerly from here on: %s", why)
        return torch.utils.checkpoint.checkpoint(super().forward, hidden_states, *args, use_reentrant=False, **kwargs)


def _without_cache(layer, kwargs: dict) -> dict:
    """kwargs without a KV cache to write, as transformers' checkpointing passes them: the graphs recompute too."""
    if getattr(layer, "_can_checkpoint_with_cache", False):
        return kwargs
    dropped = {k: None for k in ("past_key_values", "layer_past") if kwargs.get(k) is not None}
    return {**kwargs, **dropped, **({"use_cache": False} if kwargs.get("use_cache") else {})}


def _replay(graphs: LayerGraphs, hidden: torch.Tensor, args, kwargs):
    """The layer's output through its graphs (captured at the first call); Ungraphable where this
    call's inputs differ in kind or shape from the captured call's."""
    tensors: list = []
    signature = (tuple(hidden.shape), hidden.dtype, _flatten((args, kwargs), tensors))
    holder = graphs.holder
    if not holder:
        holder.append(_Shared(hidden))
    shared = holder[0]
    if shared.signature is None:
        shared.signature, shared.inputs, shared.loaded = signature, tensors, list(tensors)
    elif signature != shared.signature:
        raise Ungraphable("inputs unlike the captured call's")
    if graphs.forward_graph is None:
        if not _same_objects(tensors, shared.inputs):
            raise Ungraphable("a layer first called after the others were captured")  # its BlockMask holds other tensors
        shared.x.copy_(hidden)
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        shared.graphs.append(graphs)
        graphs.capture(args, kwargs, dtype)
    return _Replayed.apply(graphs, tensors, hidden, *graphs.params)


def decoder_layers(model) -> list:
    """The model's decoder layers, those transformers checkpoints (GradientCheckpointingLayer)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def graph_layers(model) -> int:
    """Give every decoder layer of `model` (on CUDA, adapter attached) graphed forward and
    backward; returns how many (0 on the CPU, or where the model has no such layers)."""
    layers = decoder_layers(model)
    if not torch.cuda.is_available() or not layers or next(model.parameters()).device.type != "cuda":
        return 0
    holder: list = []  # one _Shared for all the layers, made at the first call
    # a forward of the layer's own (accelerate's hook, where a device map spreads the model over
    # devices) would bypass the class's; one set of shared buffers serves one device anyway
    plain = [layer for layer in layers if "forward" not in vars(layer)]
    for layer in plain:
        if mix_in(layer, GraphedLayer):
            layer._loragate_graphs = LayerGraphs(layer, holder)
    return len(plain)
