"""Rendering detours as short Python for the report, with the shared `render_node`: a detour
as the user wrote it, its translation as short statements, a call by the name a note gives it.
"""

from __future__ import annotations

import builtins
import operator

from torch import fx

from fxgrad.graph_utils import OPERATOR_SYMBOLS, render_node, source_line, target_name
from fxgrad.passes.numpy_round_trip.helpers import _is_numpy_target


def _with_sizes(nodes: set[fx.Node]) -> set[fx.Node]:
    """Add the size reads of `nodes` (`a.shape`, `a.shape[0]`) so renders spell them out."""
    out = set(nodes)
    stack = list(nodes)
    while stack:  # host scalars computed from sizes: `np.sqrt(a.shape[-1])`
        n = stack.pop()
        for a in n.all_input_nodes:
            if (
                a not in out
                and a.op == "call_function"
                and (_is_numpy_target(a.target) or a.target in (operator.getitem, builtins.getattr))
            ):
                out.add(a)
                stack.append(a)
    for n in nodes:
        for u in n.users:
            if (
                u.op == "call_function"
                and u.target is builtins.getattr
                and u.args[1] in ("shape", "ndim")
            ):
                out.add(u)
                out.update(g for g in u.users if g.target is operator.getitem)
    return out


def _render_call_name(n: fx.Node) -> str:
    if n.op == "call_method":
        return f".{n.target}()"
    if n.op == "call_function" and n.target is builtins.getattr:
        return f".{n.args[1]}"
    if n.op == "call_function" and n.target in OPERATOR_SYMBOLS:
        return f"`{OPERATOR_SYMBOLS[n.target]}`"
    if n.op == "call_function" and n.target is operator.getitem:
        return "indexing"
    return target_name(n.target) if n.op == "call_function" else n.name


def _source_text(x: fx.Node, nodes: set[fx.Node]) -> str:
    """A detour as the user wrote it: each source line once, in program order."""
    order = {n: i for i, n in enumerate(x.graph.nodes)}
    lines: list[str] = []
    for n in sorted(nodes | {x}, key=order.__getitem__):
        line = source_line(n)
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines) if lines else render_node(x, _with_sizes(nodes))


def _render_after(final: fx.Node, shown: set[fx.Node]) -> str:
    """The translation as short statements: a value used twice, or written, gets its name."""
    order = {n: i for i, n in enumerate(final.graph.nodes)}
    written = {n.args[0] for n in shown if n.target is operator.setitem}
    needed: set[fx.Node] = set()
    stack = [final]
    while stack:
        n = stack.pop()
        if n in needed or (n not in shown and n is not final):
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
        if n in written:
            stack.extend(u for u in n.users if u.target is operator.setitem)
    named = written | {
        n
        for n in needed
        if n is not final
        and n.op != "get_attr"
        and not (n.target is builtins.getattr and n.args[1] in ("shape", "device", "T"))
        and sum(u in needed for u in n.users) > 1
    }
    inline = shown - named
    lines = []
    for n in sorted(needed, key=order.__getitem__):
        if n is final and n not in written:
            continue
        if n in named:
            lines.append(f"{n.name} = {render_node(n, inline)}")
        elif n.target is operator.setitem:
            lines.append(render_node(n, inline))
    last = final.name if final in written else render_node(final, inline)
    return "; ".join([*lines, last])
