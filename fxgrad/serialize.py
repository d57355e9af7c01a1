"""Pickling a fixed module: its graphs are stored node by node, never traced again.

fx pickles a GraphModule by tracing its generated code again with a plain tracer, which
would turn `z += 1` back into `z = z + 1` and drop grad-mode regions: exactly what fxgrad
captured on purpose. Here each node is stored as data (name, op, target, arguments), the
objects its `get_attr`/`call_module` nodes reach are stored with it, and the GraphModule is
rebuilt from those, so `torch.save(fixed)` / `torch.load` give back the same program.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, cast

from torch import fx

from fxgrad.runtime import function_apply, ufunc_method

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


def _ref(node: fx.Node) -> fx.node.Argument:
    # map_arg puts whatever this gives in the node's place; its stub wants an fx Argument.
    return cast(fx.node.Argument, _Ref(node.name))


def graph_state(graph: fx.Graph) -> list[tuple]:
    """The nodes of a graph as plain data."""
    nodes = []
    for n in graph.nodes:
        args = fx.node.map_arg(n.args, _ref)
        kwargs = fx.node.map_arg(n.kwargs, _ref)
        meta = {k: n.meta[k] for k in _KEPT_META if k in n.meta}
        if meta.get("fxgrad_loc"):
            file, line = meta["fxgrad_loc"]
            meta["fxgrad_loc"] = (_portable(file), line)
        nodes.append((n.name, n.op, _target_state(n.target), args, kwargs, n.type, meta))
    return nodes


def _portable(file: str) -> str:
    """A source file's path without the machine's folders: relative to the sys.path entry
    that holds it, which is where linecache looks for a relative name (the error notes of
    a loaded module show the line), else the file's name alone."""
    if not os.path.isabs(file):
        return file
    best = None
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        root = os.path.abspath(entry or os.curdir)
        if os.path.dirname(root) == root:
            continue  # the file system's root: relative to it is the whole path
        try:
            rel = os.path.relpath(file, root)
        except ValueError:  # another drive
            continue
        if not rel.startswith(os.pardir) and (best is None or len(rel) < len(best)):
            best = rel
    return best or os.path.basename(file)


def graph_from_state(nodes: list[tuple]) -> fx.Graph:
    """Rebuild a graph from `graph_state()` output."""
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}

    def resolve(a: Any) -> Any:
        return env[a.name] if isinstance(a, _Ref) else a

    for name, op, target, args, kwargs, type_expr, meta in nodes:
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
    return graph


def variant_state(v: Any) -> dict[str, Any]:
    """A fixed module's variant as data: its graph node by node and what calls it serves."""
    return {
        "nodes": graph_state(v.gm.graph),
        "call": v.call,
        "out_spec": v.out_spec,
        "leaf_index": v.leaf_index,
        "report": v.report,
        "constants": v.constants,
        "key": v.key,
    }


def variant_parts(state: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments that bind a stored variant to a module again."""
    parts = dict(state)
    parts["graph"] = graph_from_state(parts.pop("nodes"))
    return parts
