"""Pickling a fixed module: its graphs are stored node by node, never traced again.

fx pickles a GraphModule by tracing its generated code again with a plain tracer, which
would turn `z += 1` back into `z = z + 1` and drop grad-mode regions: exactly what fxgrad
captured on purpose. Here each node is stored as data (name, op, target, arguments), the
objects its `get_attr`/`call_module` nodes reach are stored with it, and the GraphModule is
rebuilt from those, so `torch.save(fixed)` / `torch.load` give back the same program.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import fx

from fxgrad.trace import Captured, function_apply, ufunc_method

# Node meta fxgrad reads later (the user's file and line); the rest is not needed to run.
_KEPT_META = ("fxgrad_loc",)


@dataclass(frozen=True)
class _Ref:
    """A reference to an earlier node, by name, inside stored arguments."""

    name: str


def _target_state(target: Any) -> tuple:
    cls = getattr(target, "_fxgrad_function", None)
    if cls is not None:  # wrappers made at capture time are rebuilt, not pickled
        return ("apply", cls)
    ufunc = getattr(target, "_fxgrad_ufunc", None)
    if ufunc is not None:
        return ("ufunc", ufunc, target._fxgrad_ufunc_method)
    return ("plain", target)


def _target(state: tuple) -> Any:
    if state[0] == "apply":
        return function_apply(state[1])
    if state[0] == "ufunc":
        return ufunc_method(state[1], state[2])
    return state[1]


def graph_module_state(gm: fx.GraphModule) -> dict[str, Any]:
    """The nodes of gm as plain data, and the objects its attribute nodes read."""
    nodes = []
    owned: dict[str, Any] = {}
    for n in gm.graph.nodes:
        if n.op in ("get_attr", "call_module"):
            owned[str(n.target)] = fx.graph_module._get_attr(gm, str(n.target))
        args = fx.node.map_arg(n.args, lambda a: _Ref(a.name))
        kwargs = fx.node.map_arg(n.kwargs, lambda a: _Ref(a.name))
        meta = {k: n.meta[k] for k in _KEPT_META if k in n.meta}
        nodes.append((n.name, n.op, _target_state(n.target), args, kwargs, n.type, meta))
    return {"nodes": nodes, "owned": owned, "class_name": type(gm).__name__}


def graph_module_from_state(state: dict[str, Any]) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}

    def resolve(a: Any) -> Any:
        return env[a.name] if isinstance(a, _Ref) else a

    for name, op, target, args, kwargs, type_expr, meta in state["nodes"]:
        node = graph.create_node(
            op,
            _target(target),
            fx.node.map_aggregate(args, resolve),
            fx.node.map_aggregate(kwargs, resolve),
            name=name,
            type_expr=type_expr,
        )
        node.meta.update(meta)
        env[name] = node
    return fx.GraphModule(state["owned"], graph, state["class_name"])


def captured_state(cap: Captured) -> dict[str, Any]:
    fields = {f.name: getattr(cap, f.name) for f in dataclasses.fields(cap)}
    fields["gm"] = graph_module_state(cap.gm)
    fields["propagation_error"] = None  # an exception object; only capture reads it
    return fields


def captured_from_state(state: dict[str, Any]) -> Captured:
    return Captured(**{**state, "gm": graph_module_from_state(state["gm"])})
