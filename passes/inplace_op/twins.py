"""The out-of-place twin of an in-place write, and the dtype it must keep.

`h.mul_(2)` becomes `h.mul(2)`, `nn.ReLU(inplace=True)` becomes `F.relu`; an in-place op
keeps its target's dtype where its twin may promote, so the twin is cast back when needed.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from fxgrad import ops
from fxgrad.graph_utils import INPLACE_OPERATORS, inplace_param_index, submodule
from fxgrad.tracing import has_hooks

# The functional op an in-place activation module runs, with its settings, from the module.
_MODULE_FUNCTIONAL: dict[type, Callable[[nn.Module], tuple[Callable, dict]]] = {
    nn.ReLU: lambda _m: (F.relu, {}),
    nn.ReLU6: lambda _m: (F.relu6, {}),
    nn.LeakyReLU: lambda m: (F.leaky_relu, {"negative_slope": m.negative_slope}),
    nn.Hardtanh: lambda m: (F.hardtanh, {"min_val": m.min_val, "max_val": m.max_val}),
    nn.ELU: lambda m: (F.elu, {"alpha": m.alpha}),
    nn.CELU: lambda m: (F.celu, {"alpha": m.alpha}),
    nn.SELU: lambda _m: (F.selu, {}),
    nn.SiLU: lambda _m: (F.silu, {}),
    nn.Hardswish: lambda _m: (F.hardswish, {}),
    nn.Hardsigmoid: lambda _m: (F.hardsigmoid, {}),
    nn.Mish: lambda _m: (F.mish, {}),
    nn.Threshold: lambda m: (F.threshold, {"threshold": m.threshold, "value": m.value}),
}


def _twin(gm: fx.GraphModule, w: fx.Node, base: fx.Node) -> fx.Node | None:
    """Insert (before w) the out-of-place op computing w's result from `base`, or None."""
    kwargs = dict(w.kwargs)
    if "out" in kwargs and isinstance(kwargs["out"], fx.Node):
        del kwargs["out"]
        return gm.graph.create_node(w.op, w.target, tuple(w.args), kwargs)
    twin = _TWINS.get(w.op)
    return twin(gm, w, base) if twin is not None else None


def _method_twin(gm: fx.GraphModule, w: fx.Node, base: fx.Node) -> fx.Node | None:
    """`x.mul_(2)` -> `base.mul(2)`; `zero_`, `fill_(v)` -> `base.masked_fill(True, v)`.

    Filling keeps `base` in the graph (a zero gradient flows to it, and to a tensor `v`),
    as eager's in-place fill does: a fresh `zeros_like` would not require grad, and a
    caller's `loss.backward()` would then fail where eager's runs.
    """
    graph = gm.graph
    name = str(w.target)
    rest = tuple(w.args[1:])
    if name in ("zero_", "fill_"):
        value = 0 if name == "zero_" else (rest[0] if rest else w.kwargs.get("value"))
        if not isinstance(value, (int, float, bool, fx.Node)):
            return None
        every = graph.create_node("call_method", "new_ones", (base, ()), {"dtype": torch.bool})
        return graph.create_node("call_method", "masked_fill", (base, every, value), {})
    # The schema's out-of-place op of the same arguments. None where torch has none
    # (`normal_`, `copy_`, `set_`, `resize_`), and none for random fills either: those are
    # rewritten as the same fill on a clone, so the RNG stream is kept.
    plain = ops.functional_counterpart(name)
    if plain is None or ops.is_random(name) or not hasattr(torch.Tensor, plain):
        return None
    return graph.create_node("call_method", plain, (base, *rest), dict(w.kwargs))


def _function_twin(gm: fx.GraphModule, w: fx.Node, base: fx.Node) -> fx.Node | None:
    """`x += 1`, `F.relu(x, inplace=True)`, `torch.relu_(x)` -> the out-of-place call."""
    graph = gm.graph
    args, kwargs = list(w.args), dict(w.kwargs)
    if w.target in INPLACE_OPERATORS:
        return graph.create_node(
            "call_function", INPLACE_OPERATORS[w.target], (base, *args[1:]), kwargs
        )
    if w.target in (operator.setitem, builtins.setattr):
        return None
    if "inplace" in kwargs:
        kwargs.pop("inplace")
        return graph.create_node("call_function", w.target, (base, *args[1:]), kwargs)
    plain = ops.functional_counterpart(w.target)
    if plain is not None:
        mod = getattr(w.target, "__module__", None) or "torch"
        for ns in (F, torch) if mod.startswith("torch.nn") else (torch, F):
            fn = getattr(ns, plain, None)
            if callable(fn):
                return graph.create_node("call_function", fn, (base, *args[1:]), kwargs)
        return None
    index = inplace_param_index(w.target)
    if index is not None and index < len(args):
        args[index] = False
        return graph.create_node("call_function", w.target, (base, *args[1:]), kwargs)
    return None


def _module_twin(gm: fx.GraphModule, w: fx.Node, base: fx.Node) -> fx.Node:
    """`nn.ReLU(inplace=True)` -> `F.relu`; any other module runs on a copy of its input."""
    graph = gm.graph
    mod = submodule(gm, str(w.target))
    make = _MODULE_FUNCTIONAL.get(type(mod))
    if make is not None and not has_hooks(mod):
        fn, kw = make(mod)
        return graph.create_node("call_function", fn, (base,), kw)
    # The module itself, on a copy of its input: its hooks still run and see the
    # module they were registered on, and Dropout follows train()/eval() as before.
    copied = graph.call_method("clone", (base,))
    return graph.create_node("call_module", w.target, (copied, *w.args[1:]), dict(w.kwargs))


# The out-of-place twin of an in-place write, by how the write is called.
_TWINS: dict[str, Callable[[fx.GraphModule, fx.Node, fx.Node], fx.Node | None]] = {
    "call_method": _method_twin,
    "call_function": _function_twin,
    "call_module": _module_twin,
}


def _meta_result(node: fx.Node, values: dict, memo: dict[fx.Node, Any]) -> Any:
    """What `node` computes, on meta tensors: from the observed value of each input, or,
    for a node an earlier rewrite made (`h = h.mul(2)` for `h.mul_(2)`), from its own
    inputs in turn, so a second rewrite sees the dtypes the first one produces."""

    def meta(a: Any) -> Any:
        if not isinstance(a, fx.Node):
            return a
        if a in memo:
            return memo[a]
        v = values.get(a)
        if isinstance(v, torch.Tensor):
            memo[a] = torch.empty_like(v, device="meta")
        elif v is not None or a.op not in ("call_function", "call_method"):
            memo[a] = v
        else:
            memo[a] = _meta_result(a, values, memo)
        return memo[a]

    args = fx.node.map_aggregate(node.args, meta)
    kwargs = fx.node.map_aggregate(node.kwargs, meta)
    target = node.target
    if node.op == "call_method" and isinstance(target, str):
        return getattr(args[0], target)(*args[1:], **kwargs)
    if node.op == "call_function" and callable(target):
        return target(*args, **kwargs)
    return None


def _keep_dtype(gm: fx.GraphModule, new: fx.Node, target: fx.Node, values: dict | None) -> fx.Node:
    """In-place ops keep their target's dtype; out-of-place ones promote. Cast back if so."""
    if values is None:
        return new
    tv = values.get(target)
    if not isinstance(tv, torch.Tensor):
        return new

    memo: dict[fx.Node, Any] = {}
    try:
        res = _meta_result(new, values, memo)
    except Exception:
        return new
    if isinstance(res, torch.Tensor) and res.dtype != tv.dtype:
        # Cast to the written tensor's dtype as it is on each call, not the example's.
        with gm.graph.inserting_after(new):
            dtype = gm.graph.call_function(builtins.getattr, (target, "dtype"))
        with gm.graph.inserting_after(dtype):
            cast = gm.graph.call_method("to", (new, dtype))
        return cast
    return new
