"""Which ops make views of their first argument, read from the node's op alone.

The alias model (`aliases`) builds on these answers; whether a view op really made a view
on a given input is for the observed run to tell.
"""

from __future__ import annotations

import builtins
import enum
import operator
from typing import Any

import torch
from torch import fx

from fxgrad import ops


class ViewOp(enum.Enum):
    """What a node of the shape f(x, ...) makes of x, as far as its op tells."""

    VIEW = "view"  # a view, whatever x is (transpose, select, `.T`)
    MAYBE = "maybe"  # a view or a copy, depending on x (reshape, contiguous, to)
    MULTI = "multi"  # several views (unbind, split, chunk)
    DATA = "data"  # `.data`: the same memory, outside autograd
    GETITEM = "getitem"  # indexing: a view, a copy, or one output of a MULTI call


_OF_OUTPUT = {
    ops.Output.VIEW: ViewOp.VIEW,
    ops.Output.MAYBE_VIEW: ViewOp.MAYBE,
    ops.Output.VIEWS: ViewOp.MULTI,
}
# Views by their schema, but not of the call's first argument alone: a chain from args[0]
# would misname what each output shares memory with. broadcast_tensors and meshgrid return
# a view of *each* argument; einsum's first argument is its equation.
_NOT_OF_FIRST = frozenset({"broadcast_tensors", "meshgrid", "einsum"})


def _of_op(op: Any) -> ViewOp | None:
    """What fxgrad.ops says op makes of its first argument (a name, a torch callable)."""
    kind = ops.view_kind(op)
    if kind is None or 0 not in ops.views_input(op) or ops.facts(op).name in _NOT_OF_FIRST:
        return None
    return _OF_OUTPUT[kind]


def _fn_name(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", "") or ""
        name = getattr(node.target, "__name__", "")
        if mod.startswith("torch"):
            return name
    return None


def _attr_kind(attr: Any) -> ViewOp | None:
    """`x.T`, `x.real`: an attribute that is a view; `x.data`, the same memory outside
    autograd. A method read without a call (`x.transpose`) is no tensor at all."""
    if attr == "data":
        return ViewOp.DATA
    if not isinstance(attr, str) or callable(getattr(torch.Tensor, attr, None)):
        return None
    return _of_op(attr)


def _view_kind(node: fx.Node) -> ViewOp | None:
    """What a node of the shape f(x, ...) makes of x; None when it is no view op."""
    if node.op not in ("call_method", "call_function") or not node.args:
        return None
    if not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_function" and node.target is builtins.getattr:
        return _attr_kind(node.args[1])
    if node.op == "call_function" and node.target is operator.getitem:
        return ViewOp.GETITEM
    return _of_op(node.target)


def _basic_index(index: Any) -> bool | None:
    """True for int/slice/None/Ellipsis indexing (a view), False for advanced, None unknown."""
    items = index if isinstance(index, tuple) else (index,)
    unknown = False
    for it in items:
        if it is None or it is Ellipsis or isinstance(it, (int, slice)):
            if isinstance(it, slice) and any(
                isinstance(s, fx.Node) for s in (it.start, it.stop, it.step)
            ):
                unknown = True
            continue
        if isinstance(it, (list, torch.Tensor)):
            return False
        if isinstance(it, fx.Node):
            unknown = True
            continue
        return False
    return None if unknown else True
