"""Finding detours: the NumPy side of a graph that a traced tensor flows into, and the ways
back to torch. Without example inputs they are only reported.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxgrad.changes import Change
from fxgrad.graph_utils import closure, location
from fxgrad.passes.numpy_round_trip.aliasing import _flat_base, _numpy_write
from fxgrad.passes.numpy_round_trip.helpers import (
    _ESCAPE_METHODS,
    _EXITS,
    CODE,
    _array_entries,
    _entry_source,
    _entry_source_tensor,
    _is_array_value,
    _is_exit,
    _is_np_value,
    _is_numpy_target,
)
from fxgrad.passes.numpy_round_trip.render import _source_text


@dataclass
class _Detours:
    """The NumPy side of a graph that a traced tensor flows into, and the ways back."""

    region: list[fx.Node]  # NumPy values and NumPy writes, in graph order
    entries: set[fx.Node]  # `.numpy()` (or np.asarray of a tensor) nodes
    exits: list[fx.Node]  # torch.from_numpy / tensor / as_tensor / asarray nodes


def _find_detours(gm: fx.GraphModule, values: dict[fx.Node, Any]) -> _Detours:
    """Grow each detour from its entries: NumPy values read or written together belong to it.

    Arrays that do not come from a traced tensor join where they meet one: a constant
    (`a @ W`), a factory (`np.eye(n)`, `np.zeros(a.shape)`), an array written with traced
    values (`z[:, 0] = a[:, 1]`). A NumPy scalar made from sizes alone stays a host number.
    """
    entries = set()
    for n in gm.graph.nodes:
        if n.op == "call_method" and n.target == "numpy":
            if isinstance(values.get(n.args[0]), torch.Tensor):
                entries.add(n)
        elif n.op == "call_function" and n.target in _array_entries():
            if n.args and isinstance(values.get(n.args[0]), torch.Tensor):
                entries.add(n)
    region: set[fx.Node] = set()
    exits: set[fx.Node] = set()
    stack = list(entries)
    while stack:
        n = stack.pop()
        if n in region:
            continue
        region.add(n)
        for u in n.users:
            if _is_exit(u, n):
                exits.add(u)
            elif _is_np_value(values.get(u)) or _numpy_write(u, values) is not None:
                stack.append(u)
            elif _flat_base(u) is n:  # `a.flat[k] = v` writes into `a`
                stack.extend(v for v in u.users if _numpy_write(v, values) is not None)
        if n not in entries:
            stack.extend(a for a in n.all_input_nodes if _is_array_value(values.get(a)))
    order = list(gm.graph.nodes)
    return _Detours([n for n in order if n in region], entries, [n for n in order if n in exits])


def _report_static(gm: fx.GraphModule) -> list[Change]:
    """Without example inputs, name the detours; dtypes NumPy picks are unknown, so no rewrite."""
    held: set[fx.Node] = set()
    changes = []
    for n in gm.graph.nodes:
        if n.op == "call_method" and n.target == "numpy":
            held.add(n)
            continue
        ins = [a for a in n.all_input_nodes if a in held]
        if not ins:
            continue
        if n.op == "call_function" and n.target in _EXITS:
            chain_nodes = _upstream(n, held)
            changes.append(
                Change(
                    code=CODE,
                    node=n.name,
                    before=_source_text(n, chain_nodes | _entry_nodes(chain_nodes)),
                    after="",
                    where=location(n),
                    note="the gradient stops here; without example inputs the dtypes NumPy "
                    "picks are unknown, so the detour is only reported (pass example inputs)",
                    applied=False,
                )
            )
        elif n.op == "call_function" and (
            _is_numpy_target(n.target)
            or getattr(n.target, "__module__", None) in ("_operator", "operator")
        ):
            held.add(n)
        elif n.op == "call_function" and n.target is builtins.getattr and n.args[1] == "T":
            held.add(n)
        elif n.op == "call_method" and n.target not in _ESCAPE_METHODS:
            held.add(n)
    return changes


def _upstream(node: fx.Node, held: set[fx.Node]) -> set[fx.Node]:
    """The held nodes `node` reads, transitively: the NumPy chain that ends at it."""

    def held_inputs(n: fx.Node) -> list[fx.Node]:
        return [a for a in n.all_input_nodes if a in held]

    return closure(held_inputs(node), held_inputs)


def _entry_nodes(nodes: set[fx.Node]) -> set[fx.Node]:
    """The detach/cpu/.data nodes between each `.numpy()` in `nodes` and its tensor."""
    out: set[fx.Node] = set()
    for n in nodes:
        stop: fx.Node | None
        if n.op == "call_method" and n.target == "numpy":
            stop = _entry_source(n)[0]
        elif n.op == "call_function" and n.target in _array_entries() and n.args:
            stop = _entry_source_tensor(n)
        else:
            continue
        src = n.args[0]
        while isinstance(src, fx.Node) and src is not stop:
            out.add(src)
            src = src.args[0]
    return out
