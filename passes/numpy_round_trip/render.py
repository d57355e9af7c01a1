"""Rendering detours as short Python for the report."""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import Any

import torch
from fxgrad.passes.numpy_round_trip.helpers import _EXITS, _is_numpy_target
from torch import fx

from fxgrad.graph_utils import source_line, target_name


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
                and u.args[1]
                in (
                    "shape",
                    "ndim",
                )
            ):
                out.add(u)
                out.update(g for g in u.users if g.target is operator.getitem)
    return out


_SYMBOLS = {
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/",
    operator.floordiv: "//", operator.mod: "%", operator.pow: "**", operator.matmul: "@",
    operator.and_: "&", operator.or_: "|", operator.xor: "^", operator.eq: "==",
    operator.ne: "!=", operator.lt: "<", operator.le: "<=", operator.gt: ">", operator.ge: ">=",
}  # fmt: skip


_UNARY = {operator.neg: "-", operator.pos: "+", operator.invert: "~"}


_PRECEDENCE = {
    operator.pow: 6, operator.neg: 5, operator.pos: 5, operator.invert: 5,
    operator.mul: 4, operator.truediv: 4, operator.floordiv: 4, operator.mod: 4,
    operator.matmul: 4, operator.add: 3, operator.sub: 3, operator.and_: 2, operator.xor: 2,
    operator.or_: 2, operator.eq: 1, operator.ne: 1, operator.lt: 1, operator.le: 1,
    operator.gt: 1, operator.ge: 1,
}  # fmt: skip


_TORCH_NAMES = {
    torch.linalg.vector_norm: "torch.linalg.vector_norm",
    torch.linalg.matrix_norm: "torch.linalg.matrix_norm",
}


def _render_target(target: Any) -> str:
    if target in _TORCH_NAMES:
        return _TORCH_NAMES[target]
    if hasattr(target, "_fxgrad_ufunc"):
        return f"np.{target._fxgrad_ufunc.__name__}.{target._fxgrad_ufunc_method}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if type(target).__name__ == "ufunc" or module == "numpy":
        return f"np.{name}"
    if module.startswith("numpy."):
        sub = module.split(".")[1]
        return f"np.{sub}.{name}" if not sub.startswith("_") else f"np.{name}"
    if target in _EXITS:
        return f"torch.{name}"
    return target_name(target)


def _render_call_name(n: fx.Node) -> str:
    if n.op == "call_method":
        return f".{n.target}()"
    if n.op == "call_function" and n.target is builtins.getattr:
        return f".{n.args[1]}"
    if n.op == "call_function" and n.target in _SYMBOLS:
        return f"`{_SYMBOLS[n.target]}`"
    if n.op == "call_function" and n.target is operator.getitem:
        return "indexing"
    return _render_target(n.target) if n.op == "call_function" else n.name


def _source_text(x: fx.Node, nodes: set[fx.Node]) -> str:
    """A detour as the user wrote it: each source line once, in program order."""
    order = {n: i for i, n in enumerate(x.graph.nodes)}
    lines: list[str] = []
    for n in sorted(nodes | {x}, key=order.__getitem__):
        line = source_line(n)
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines) if lines else _render(x, _with_sizes(nodes))


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
            lines.append(f"{n.name} = {_render(n, inline)}")
        elif n.target is operator.setitem:
            lines.append(_render(n, inline))
    last = final.name if final in written else _render(final, inline)
    return "; ".join([*lines, last])


def _render(node: Any, inline: set[fx.Node]) -> str:
    """Render a node as one expression, with the nodes in `inline` written out in place."""
    r = _Renderer(inline)
    return r.expr(node) if isinstance(node, fx.Node) else r.lit(node)


class _Renderer:
    """Python text for nodes and their arguments; nodes in `inline` are written out in place."""

    def __init__(self, inline: set[fx.Node]) -> None:
        self.inline = inline

    def lit(self, a: Any) -> str:
        if isinstance(a, fx.Node):
            return self.expr(a) if a in self.inline else a.name
        if isinstance(a, tuple):
            inner = ", ".join(self.lit(x) for x in a)
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        if isinstance(a, list):
            return "[" + ", ".join(self.lit(x) for x in a) + "]"
        if isinstance(a, slice):
            parts = [
                "" if a.start is None else self.lit(a.start),
                "" if a.stop is None else self.lit(a.stop),
            ]
            if a.step is not None:
                parts.append(self.lit(a.step))
            return ":".join(parts)
        if a is Ellipsis:
            return "..."
        return repr(a)

    def operand(self, a: Any, outer: int = 9, right: bool = False) -> str:
        """`a` as an operand of an operator of precedence `outer`, parenthesized if need be."""
        text = self.lit(a)
        if isinstance(a, fx.Node) and a in self.inline and a.op == "call_function":
            inner = _PRECEDENCE.get(a.target, 9)
            if inner < outer or (inner == outer and (right or outer == 6)):
                return f"({text})"
        return text

    def call(self, args: tuple, kwargs: dict) -> str:
        return ", ".join(
            [self.lit(a) for a in args] + [f"{k}={self.lit(v)}" for k, v in kwargs.items()]
        )

    def index(self, a: Any) -> str:
        if isinstance(a, tuple):
            return ", ".join(self.lit(x) for x in a) if a else "()"
        return self.lit(a)

    def expr(self, n: fx.Node) -> str:
        args, kwargs = n.args, n.kwargs
        if n.op == "call_method":
            return f"{self.operand(args[0])}.{n.target}({self.call(args[1:], kwargs)})"
        if n.op != "call_function":
            return n.name
        special = _SPELLINGS.get(n.target)
        text = special(self, args, kwargs, n.target) if special is not None else None
        if text is not None:
            return text
        return f"{_render_target(n.target)}({self.call(args, kwargs)})"

    def binary(self, args: tuple, kwargs: dict, target: Any) -> str | None:
        if len(args) != 2 or kwargs:
            return None
        prec = _PRECEDENCE[target]
        left, right = self.operand(args[0], prec), self.operand(args[1], prec, right=True)
        return f"{left} {_SYMBOLS[target]} {right}"

    def unary(self, args: tuple, _kwargs: dict, target: Any) -> str | None:
        return f"{_UNARY[target]}{self.operand(args[0], 5)}" if len(args) == 1 else None


# Functions written as Python syntax rather than as calls: (renderer, args, kwargs, target)
# -> the text, or None to write the call.
_SPELLINGS: dict[Any, Callable[[_Renderer, tuple, dict, Any], str | None]] = {
    builtins.getattr: lambda r, args, _kw, _t: f"{r.operand(args[0])}.{args[1]}",
    operator.getitem: lambda r, args, _kw, _t: f"{r.operand(args[0])}[{r.index(args[1])}]",
    operator.setitem: lambda r, args, _kw, _t: (
        f"{r.operand(args[0])}[{r.index(args[1])}] = {r.lit(args[2])}"
    ),
    **dict.fromkeys(_SYMBOLS, _Renderer.binary),
    **dict.fromkeys(_UNARY, _Renderer.unary),
    operator.abs: lambda r, args, _kw, _t: f"abs({r.lit(args[0])})",
}
