"""What the pass's modules share: which nodes hold NumPy values, where a detour enters NumPy
from a tensor and leaves it for torch, and the error a call without a faithful torch twin
raises.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from fxgrad import ops

# The package's __init__ holds it too, as the literal the docs reader reads without torch.
CODE = "FXG301"

# Torch functions that bring host data back (the tracer records the unpatched originals).
_EXITS = tuple(getattr(torch, n) for n in ("from_numpy", "tensor", "as_tensor", "asarray"))
# ndarray methods whose result leaves NumPy for plain Python: the chain cannot be translated.
_ESCAPE_METHODS = {"item", "tolist", "tobytes", "tofile", "dump", "dumps"}


class _Unmapped(Exception):
    """A NumPy call in the chain has no faithful torch twin here; the message says why."""

    def __init__(self, message: str, node: fx.Node | None = None) -> None:
        super().__init__(message)
        self.node = node


def _np() -> Any:
    import numpy as np

    return np


def _is_numpy_target(target: Any) -> bool:
    if hasattr(target, "_fxgrad_ufunc"):
        return True
    return type(target).__name__ == "ufunc" or (
        (getattr(target, "__module__", None) or "").startswith("numpy")
    )


def _is_numpy_call(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target == "numpy":
        return True
    return node.op == "call_function" and _is_numpy_target(node.target)


def _is_np_value(v: Any) -> bool:
    np = _np()
    if isinstance(v, (np.ndarray, np.generic)):
        return True
    return isinstance(v, (tuple, list)) and bool(v) and all(isinstance(i, np.ndarray) for i in v)


def _copy(v: Any) -> Any:
    """A NumPy value as it is now: arrays are written in place later, their copies are not."""
    np = _np()
    if isinstance(v, np.ndarray):
        return v.copy()
    if isinstance(v, (tuple, list)) and v and all(isinstance(i, np.ndarray) for i in v):
        copies = [i.copy() for i in v]
        return type(v)(*copies) if hasattr(v, "_fields") else type(v)(copies)
    return v


def _is_exit(node: fx.Node, src: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in _EXITS:
        return False
    data = node.args[0] if node.args else node.kwargs.get("data", node.kwargs.get("obj"))
    if isinstance(data, (list, tuple)):
        return src in data
    return data is src


def _node_arg(n: fx.Node, i: int = 0) -> fx.Node:
    """`n.args[i]` where the call's form makes it a node: the array of a method call, the
    operand of `a[k]`, `a.T` or `a.flat`, the tensor under `.detach()` or `.cpu()`."""
    a = n.args[i]
    assert isinstance(a, fx.Node), f"{n.format_node()}: argument {i} is not a node"
    return a


def _method(n: fx.Node) -> str:
    """The method a `call_method` node calls: fx names it."""
    assert isinstance(n.target, str), n.format_node()
    return n.target


def _function(n: fx.Node) -> Callable[..., Any]:
    """The function a `call_function` node calls (fx keeps names for the other ops)."""
    assert callable(n.target), n.format_node()
    return n.target


def _attr_read(n: Any) -> str | None:
    """The attribute `n` reads when it is `x.name` (`getattr(x, "name")`), else None."""
    if isinstance(n, fx.Node) and n.op == "call_function" and n.target is builtins.getattr:
        name = n.args[1]
        return name if isinstance(name, str) else None
    return None


def _is_meta_use(user: fx.Node, node: fx.Node) -> bool:
    """`a.shape`, `a.ndim`, `a.size`, and the tracer's `len()` guards: sizes, not data."""
    if user.op == "call_function" and user.target is builtins.getattr:
        return user.args[0] is node and user.args[1] in ("shape", "ndim", "size")
    return user.op == "call_function" and getattr(user.target, "__name__", "") == "fxgrad_guard"


def _keeps_values(src: fx.Node) -> bool:
    """An op between a tensor and `.numpy()` that hands back the same values (detach, cpu,
    clone, contiguous), called with no arguments that could change them."""
    return ops.keeps_values(src.target) and len(src.args) == 1


def _entry_source(node: fx.Node) -> tuple[fx.Node, bool]:
    """The tensor a `.numpy()` reads, seen through detach/cpu/.data; and whether it went `.cpu()`."""
    src = _node_arg(node)
    host = False
    while True:
        if src.op == "call_method" and _keeps_values(src):
            host = host or src.target == "cpu"
        elif src.op == "call_method" and src.target == "to" and _is_cpu_move(src):
            host = True
        elif _attr_read(src) == "data":
            pass
        else:
            return src, host
        src = _node_arg(src)


def _is_cpu_move(node: fx.Node) -> bool:
    args = list(node.args[1:]) + list(node.kwargs.values())
    return len(args) == 1 and args[0] in ("cpu", torch.device("cpu"))


def _is_array_value(v: Any) -> bool:
    np = _np()
    return isinstance(v, np.ndarray) or (
        isinstance(v, (tuple, list)) and bool(v) and all(isinstance(i, np.ndarray) for i in v)
    )


def _array_entries() -> tuple[Any, ...]:
    """NumPy functions that read a tensor through __array__ (`np.asarray(t.detach())`)."""
    np = _np()
    return (np.asarray, np.array, np.ascontiguousarray)


def _entry_source_tensor(n: fx.Node) -> fx.Node | None:
    """The tensor `np.asarray(t.detach())` reads; None for one of a sequence (`[a, b]`)."""
    src = n.args[0]
    while isinstance(src, fx.Node) and src.op == "call_method" and _keeps_values(src):
        src = src.args[0]
    return src if isinstance(src, fx.Node) else None
