"""The traced value: records item and augmented assignment, attribute writes, NumPy calls."""

from __future__ import annotations

import bisect
import builtins
import dis
import functools
import inspect
import math
import operator
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.utils._pytree as pytree
from torch import fx

from fxgrad import ops
from fxgrad.graph_utils import (
    INPLACE_OPERATORS,
)
from fxgrad.runtime import ufunc_method

if TYPE_CHECKING:
    from fxgrad.tracing.tracer import FxgradTracer

# ---------------------------------------------------------------------------------------
# The proxy

_META_ATTRS = {
    "shape",
    "ndim",
    "dtype",
    "device",
    "is_cuda",
    "layout",
    "is_sparse",
    "is_nested",
    "requires_grad",
}
# Methods that return no tensor, read no values and write nothing (`size`, `dim`,
# `is_contiguous`) answer from metadata alone: a branch on one is answered from the example
# and guarded on every call. These three tell where the memory lies, which changes from
# call to call: a guard on them would fail as a guard on data would.
_STORAGE_READS = frozenset({"data_ptr", "storage_offset", "is_set_to"})


def _is_meta_method(name: str) -> bool:
    """A method whose Python value shapes, dtypes and devices decide, not data."""
    return (
        name not in _STORAGE_READS
        and not ops.returns_tensor(name)
        and not ops.is_data_dependent(name)
        and not ops.writes_args(name)
    )


_META_FUNCTIONS = {
    builtins.len,
    builtins.min,
    builtins.max,
    builtins.abs,
    builtins.int,
    operator.getitem,
    operator.index,
    operator.truth,
    operator.not_,
    *(getattr(operator, n) for n in ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg")),
    *(getattr(operator, n) for n in ("eq", "ne", "lt", "le", "gt", "ge", "pow", "and_", "or_")),
    builtins.round,
    builtins.float,
    builtins.bool,
    # size arithmetic: `math.ceil(x.shape[-1] / s)`, `math.sqrt(head_dim)` (fx records math
    # functions of traced values as calls)
    *(getattr(math, n) for n in dir(math) if not n.startswith("_") and callable(getattr(math, n))),
}


def _is_meta_expr(node: fx.Node, memo: dict[fx.Node, bool]) -> bool:
    """True when the node's value depends only on shapes, dtypes and devices, not data."""
    hit = memo.get(node)
    if hit is not None:
        return hit
    ok = False
    if node.op == "call_method" and _is_meta_method(str(node.target)):
        ok = True
    elif node.op == "get_attr" and node.meta.get("fxgrad_live"):
        ok = True  # a number the forward keeps on a module (`self.step`): guarded by value
    elif node.op == "call_function" and node.target is builtins.getattr:
        # `x.shape`, and any attribute of a shape, dtype or device (`x.device.type`,
        # `x.dtype.is_floating_point`)
        base = node.args[0]
        ok = node.args[1] in _META_ATTRS or (
            isinstance(base, fx.Node) and _is_meta_expr(base, memo)
        )
    elif node.op == "call_function" and node.target in _META_FUNCTIONS:
        ok = all(
            _is_meta_expr(a, memo)
            for a in pytree.tree_leaves((node.args, node.kwargs))
            if isinstance(a, fx.Node)
        )
    memo[node] = ok
    return ok


class FxgradProxy(fx.Proxy):
    """An fx Proxy that records item assignment, augmented assignment and NumPy calls."""

    __array_priority__ = 1000  # NumPy: defer binary operators to us
    tracer: FxgradTracer  # the only tracer that makes these (FxgradTracer.proxy)

    def __getattr__(self, k: str) -> FxgradAttribute:
        if k.startswith("__array") or k in ("__len__", "__iter__"):
            raise AttributeError(k)  # NumPy's protocol probes must not become graph nodes
        return FxgradAttribute(self, k)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("node", "tracer", "root", "attr") or name.startswith("_"):
            object.__setattr__(self, name, value)
        else:  # `x.data = y`, `x.requires_grad = True`: writes the graph must keep
            self.tracer.create_proxy("call_function", builtins.setattr, (self, name, value), {})

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __iter__(self) -> Any:
        # `a, b, c, d = y.unbind(0)`: fx reads the count from the caller's bytecode and
        # checks nothing; the count is the input's size here, so it is checked, and guarded.
        caller = inspect.currentframe().f_back  # type: ignore[union-attr]
        assert caller is not None
        offsets, counts = _instructions(caller.f_code)
        count = counts[bisect.bisect_left(offsets, caller.f_lasti)]
        if count is not None:  # UNPACK_SEQUENCE
            unpacked = getattr(self.tracer, "unpacked", None)
            if unpacked is not None:
                unpacked(self, count)
            # fx.Proxy's operators are set on it at import, unseen by its stubs
            return (self[i] for i in range(count))  # type: ignore[index]
        return self.tracer.iter(self)

    def __len__(self) -> int:
        return self.tracer.proxy_len(self)

    def __index__(self) -> int:
        return self.tracer.concretize(self, "index")

    def __int__(self) -> int:  # `int(x.shape[1] / 2)`
        return self.tracer.concretize(self, "int")

    def __float__(self) -> float:  # `float(x.size(-1))`
        return self.tracer.concretize(self, "float")

    def __str__(self) -> str:
        # `"x".join(str(d) for d in x.shape)`, f"{h}x{w}": a size's text is its value
        # (guarded), not the proxy's name; other traced values keep fx's text.
        size = self._size()
        return fx.Proxy.__repr__(self) if size is None else str(size)

    def __format__(self, spec: str) -> str:
        size = self._size()
        return format(fx.Proxy.__repr__(self) if size is None else size, spec)

    def _size(self) -> int | None:
        """The value of a size-like number (a dimension, a count), guarded; else None."""
        if not _is_meta_expr(self.node, self.tracer._meta_memo):
            return None
        known = getattr(self.tracer, "known_value", None)
        value = known(self) if known is not None else None
        if type(value) is not int:
            return None  # a device or dtype: its text stays what fx gives
        return self.tracer.concretize(self, "size")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a traced value cannot become a NumPy array here")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        target = ufunc if method == "__call__" else ufunc_method(ufunc, method)
        return self.tracer.create_proxy("call_function", target, inputs, kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return self.tracer.create_proxy("call_function", func, tuple(args), dict(kwargs))


def _inplace_operator(op: Callable) -> Callable:
    def method(self: FxgradProxy, other: Any) -> FxgradProxy:
        return self.tracer.create_proxy("call_function", op, (self, other), {})

    method.__name__ = f"__{op.__name__}__"
    return method


for _op in INPLACE_OPERATORS:
    setattr(FxgradProxy, f"__{_op.__name__}__", _inplace_operator(_op))


class FxgradAttribute(FxgradProxy, fx.proxy.Attribute):
    """`x.T`, `x.shape`, `x.data`: an attribute access that becomes a node only when used."""


@functools.lru_cache(maxsize=4096)
def _instructions(code: types.CodeType) -> tuple[list[int], list[int | None]]:
    """The offsets of a code object's instructions and, for each, the count it unpacks
    (None where it is no UNPACK_SEQUENCE). Disassembling is slow; a forward's code is
    read once however many times it unpacks a traced value."""
    insts = list(dis.get_instructions(code))
    counts = [i.argval if i.opname == "UNPACK_SEQUENCE" else None for i in insts]
    return [i.offset for i in insts], counts
