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


class ViewOp(enum.Enum):
    """What a node of the shape f(x, ...) makes of x, as far as its op tells."""

    VIEW = "view"  # a view, whatever x is (transpose, select, `.T`)
    MAYBE = "maybe"  # a view or a copy, depending on x (reshape, contiguous, to)
    MULTI = "multi"  # several views (unbind, split, chunk)
    DATA = "data"  # `.data`: the same memory, outside autograd
    GETITEM = "getitem"  # indexing: a view, a copy, or one output of a MULTI call


_VIEW_METHODS = {
    "view", "view_as", "transpose", "t", "permute", "unsqueeze", "squeeze", "select",
    "narrow", "diagonal", "expand", "expand_as", "broadcast_to", "unflatten", "movedim",
    "moveaxis", "swapaxes", "swapdims", "unfold", "as_strided", "detach", "alias",
    "view_as_real", "view_as_complex",
}  # fmt: skip
# Ops that return a view or the tensor itself on some inputs and a copy on others.
_MAYBE_VIEW_METHODS = {
    "reshape", "reshape_as", "contiguous", "flatten", "to", "type", "type_as", "float",
    "double", "half", "bfloat16", "cpu", "cuda", "ravel",
}  # fmt: skip
_MULTI_VIEW = {
    "unbind", "split", "chunk", "tensor_split", "split_with_sizes", "hsplit", "vsplit", "dsplit",
}  # fmt: skip
_VIEW_ATTRS = {"T", "mT", "H", "mH", "real", "imag"}
# Each view op by name (a method, or a torch function of the same name).
_VIEW_OPS: dict[str, ViewOp] = {
    **dict.fromkeys(_VIEW_METHODS, ViewOp.VIEW),
    **dict.fromkeys(_MAYBE_VIEW_METHODS, ViewOp.MAYBE),
    **dict.fromkeys(_MULTI_VIEW, ViewOp.MULTI),
}
# Attributes that are views: `x.T`, `x.real`, and `x.data` outside autograd.
_VIEW_ATTR_OPS: dict[str, ViewOp] = {**dict.fromkeys(_VIEW_ATTRS, ViewOp.VIEW), "data": ViewOp.DATA}


def _fn_name(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", "") or ""
        name = getattr(node.target, "__name__", "")
        if mod.startswith("torch"):
            return name
    return None


def _view_kind(node: fx.Node) -> ViewOp | None:
    """What a node of the shape f(x, ...) makes of x; None when it is no view op."""
    if node.op not in ("call_method", "call_function") or not node.args:
        return None
    if not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_function" and node.target is builtins.getattr:
        return _VIEW_ATTR_OPS.get(node.args[1])
    if node.op == "call_function" and node.target is operator.getitem:
        return ViewOp.GETITEM
    return _VIEW_OPS.get(_fn_name(node))


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
