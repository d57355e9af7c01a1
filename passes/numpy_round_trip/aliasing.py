"""NumPy writes, and which NumPy values share memory.

A NumPy write (`a.sort()`, `a[m] = 0`, `a += 1`, `np.add(a, b, out=a)`, `np.copyto(a, b)`)
changes every array that shares the written memory: the array itself, its base, and each
view of either. The translation is functional: each write gives the written array a new
torch value, written back through the views that lead to it from the array that owns the
memory, and an array read later is rebuilt from its owner's latest value. Which arrays
share memory is decided by what NumPy documents for each operation, never by the example
run alone: `a.reshape(...)` is a view or a copy depending on strides, which can differ on
a call with other sizes, so a write that such an uncertain alias could see is refused.
"""

from __future__ import annotations

import builtins
import enum
import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from torch import fx

from fxgrad.graph_utils import INPLACE_OPERATORS
from fxgrad.passes.numpy_round_trip.helpers import (
    _attr_read,
    _is_array_value,
    _is_numpy_target,
    _method,
    _node_arg,
    _np,
)
from fxgrad.passes.numpy_round_trip.mappings import _tables

if TYPE_CHECKING:
    from fxgrad.passes.numpy_round_trip.detours import _Detours
    from fxgrad.passes.numpy_round_trip.recording import _Run


@dataclass(frozen=True)
class _Write:
    """A NumPy call that writes into the array `target`."""

    node: fx.Node
    target: fx.Node
    kind: str  # a key of _WRITES


# ndarray methods NumPy documents as writing into the array itself.
_INPLACE_METHODS = ("sort", "fill", "put", "partition", "resize", "itemset", "setfield")


@functools.cache
def _writing_functions() -> dict[Any, str]:
    np = _np()
    return {
        np.copyto: "copyto",
        np.put: "put",
        np.place: "place",
        np.putmask: "putmask",
        np.fill_diagonal: "fill_diagonal",
        np.put_along_axis: "put_along_axis",
    }


def _numpy_write(n: fx.Node, values: dict[fx.Node, Any]) -> _Write | None:
    """The write `n` makes into a NumPy array, if it makes one."""
    if n.op not in ("call_function", "call_method"):
        return None
    np = _np()

    def array(a: Any) -> TypeGuard[fx.Node]:
        return isinstance(a, fx.Node) and isinstance(values.get(a), np.ndarray)

    out = n.kwargs.get("out")
    if out is not None and (n.op == "call_method" or _is_numpy_target(n.target)):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if outs and array(outs[0]):
            return _Write(n, outs[0], "out" if len(outs) == 1 else "several outputs")
        return None
    first = n.args[0] if n.args else None
    if n.op == "call_method":
        method = _method(n)
        writes = method in _INPLACE_METHODS or (
            method == "byteswap" and (n.kwargs.get("inplace") or n.args[1:2] == (True,))
        )
        return _Write(n, first, method) if writes and array(first) else None
    if n.target is operator.setitem or n.target in INPLACE_OPERATORS:
        kind = "setitem" if n.target is operator.setitem else "augmented"
        if array(first):
            return _Write(n, first, kind)
        base = _flat_base(first)  # `a.flat[k] = v`
        if kind == "setitem" and array(base):
            return _Write(n, base, "flat")
        return None
    if n.target is builtins.setattr:  # `a.shape = ...`, `a.flat = v`: the array changes
        return _Write(n, first, "setattr") if array(first) else None
    if getattr(n.target, "_fxgrad_ufunc_method", None) == "at":  # `np.add.at(a, i, v)`
        return _Write(n, first, "ufunc.at") if array(first) else None
    function_kind = _writing_functions().get(n.target)
    if function_kind is None:
        return None
    target = first if first is not None else next(iter(n.kwargs.values()), None)
    return _Write(n, target, function_kind) if array(target) else None


def _flat_base(n: Any) -> fx.Node | None:
    """The array `a` of an `a.flat` node."""
    return _node_arg(n) if _attr_read(n) == "flat" else None


class _Kind(enum.Enum):
    """How a NumPy array's memory relates to the arrays it was made from."""

    FRESH = "fresh"  # new memory
    VIEW = "view"  # always a view of its parent (basic indexing, transpose, `a += 1`'s result)
    MAYBE = "maybe"  # a view or a copy depending on strides (reshape, ravel)
    SHARED = "shared"  # memory the detour does not own: a tensor's, a constant's, an input's


class _View(enum.Enum):
    """How a view is read again from its parent's new value, and written back into it."""

    SAME = "same"  # the array itself (`a += b` gives back `a`)
    GETITEM = "getitem"  # basic indexing: written back into a clone of the parent
    PIECE = "piece"  # one array of np.split's list
    PERMUTE = "permute"  # transpose, swapaxes, moveaxis, `.T`
    RESHAPE = "reshape"  # expand_dims, squeeze
    FLIP = "flip"  # flip, fliplr, flipud
    BROADCAST = "broadcast"  # broadcast_to
    SPLIT = "split"  # split, array_split


_V = _View


_VIEW_FUNCTIONS = {
    "transpose": _V.PERMUTE, "swapaxes": _V.PERMUTE, "moveaxis": _V.PERMUTE,
    "expand_dims": _V.RESHAPE, "squeeze": _V.RESHAPE,
    "flip": _V.FLIP, "fliplr": _V.FLIP, "flipud": _V.FLIP,
    "broadcast_to": _V.BROADCAST, "split": _V.SPLIT, "array_split": _V.SPLIT,
}  # fmt: skip


_VIEW_METHODS = {"transpose": _V.PERMUTE, "swapaxes": _V.PERMUTE, "squeeze": _V.RESHAPE}


# Mapped calls that may return a view, depending on strides, dtype or operands.
_MAYBE_FUNCTIONS = ("reshape", "ravel", "asarray", "ascontiguousarray", "asanyarray", "einsum")


_MAYBE_METHODS = ("reshape", "ravel", "view")


_FRESH_METHODS = ("copy", "flatten", "astype")


def _basic_index(k: Any, values: dict) -> bool:
    """An index item NumPy reads as basic indexing (a view), not advanced (a copy)."""
    np = _np()
    if k is None or k is Ellipsis:
        return True
    if isinstance(k, slice):
        return all(_basic_index(b, values) for b in (k.start, k.stop, k.step) if b is not None)
    v = values.get(k) if isinstance(k, fx.Node) else k
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_basic_key(key: Any, values: dict) -> bool:
    return all(_basic_index(k, values) for k in (key if isinstance(key, tuple) else (key,)))


def _alias(
    n: fx.Node, values: dict, entries: set[fx.Node], writes: dict[fx.Node, _Write]
) -> tuple[_Kind, _View | None, list[fx.Node]]:
    """(kind, view kind, parents) of a NumPy value node of a detour."""
    np = _np()
    parents = [a for a in n.all_input_nodes if _is_array_value(values.get(a))]
    if n in entries:
        copies = n.target is np.array and n.kwargs.get("copy", True) is not False
        return (_Kind.FRESH if copies else _Kind.SHARED), None, []
    if n.op in ("get_attr", "placeholder"):
        return _Kind.SHARED, None, []
    if not _is_array_value(values.get(n)):
        return _Kind.FRESH, None, []  # scalars: immutable, nothing shares them
    w = writes.get(n)
    if w is not None:  # `a += b` and `out=a` give back the array they wrote
        return _Kind.VIEW, _View.SAME, [w.target]
    by_form = _ALIAS_FORMS.get(n.op)
    found = by_form(n, values, parents) if by_form is not None else None
    if found is not None:
        return found
    specs, methods = _tables()
    known = (n.op == "call_method" and n.target in methods) or (
        n.op == "call_function" and (n.target in specs or hasattr(n.target, "_fxgrad_ufunc"))
    )
    # Everything the mapping table knows makes new memory; anything else might not.
    return (_Kind.FRESH if known else _Kind.MAYBE), None, parents


_Aliasing = tuple[_Kind, _View | None, list[fx.Node]]


def _method_alias(n: fx.Node, _values: dict, parents: list[fx.Node]) -> _Aliasing | None:
    """What NumPy documents for `a.transpose()`, `a.copy()`, `a.reshape()`; None if unlisted."""
    target = n.target
    if target in _VIEW_METHODS:
        return _Kind.VIEW, _VIEW_METHODS[target], [_node_arg(n)]
    if target in _FRESH_METHODS and n.kwargs.get("copy", True) is not False:
        return _Kind.FRESH, None, []
    if target in _MAYBE_METHODS or target in _FRESH_METHODS:
        return _Kind.MAYBE, None, parents
    return None


def _function_alias(n: fx.Node, values: dict, parents: list[fx.Node]) -> _Aliasing | None:
    """What NumPy documents for `a.T`, `a[i]`, `np.flip(a)`, `np.reshape(a)`; None if unlisted."""
    np = _np()
    target, args = n.target, n.args
    if target is builtins.getattr and args[1] == "T":
        return _Kind.VIEW, _View.PERMUTE, parents
    if target is operator.getitem:
        array = _node_arg(n)
        if isinstance(values.get(array), (tuple, list)):
            return _Kind.VIEW, _View.PIECE, [array]  # one array of np.split's list
        if _is_basic_key(args[1], values):
            return _Kind.VIEW, _View.GETITEM, [array]
        return _Kind.FRESH, None, []
    name = getattr(target, "__name__", "")
    numpy_function = (getattr(target, "__module__", "") or "").startswith("numpy")
    if numpy_function and name in _VIEW_FUNCTIONS:
        return _Kind.VIEW, _VIEW_FUNCTIONS[name], parents[:1]
    if numpy_function and name in _MAYBE_FUNCTIONS:
        if name == "einsum" and len(parents) > 1:
            return _Kind.FRESH, None, []
        return _Kind.MAYBE, None, parents
    if target is np.array:
        copies = n.kwargs.get("copy", True) is not False
        return (_Kind.FRESH if copies else _Kind.MAYBE), None, parents
    return None


_ALIAS_FORMS: dict[str, Callable[[fx.Node, dict, list[fx.Node]], _Aliasing | None]] = {
    "call_method": _method_alias,
    "call_function": _function_alias,
}


@dataclass
class _Layout:
    """Static facts about a detour's memory, decided once before anything is translated."""

    pos: dict[fx.Node, int]  # graph order
    writes: dict[fx.Node, _Write]
    root: dict[fx.Node, fx.Node]  # array -> the array that owns its memory
    chain: dict[fx.Node, tuple[fx.Node, ...]]  # views leading from the root to the array
    parent: dict[fx.Node, fx.Node]  # view -> what it is a view of
    view_kind: dict[fx.Node, _View]
    shared: set[fx.Node]  # roots of memory the detour does not own
    links: list[tuple[fx.Node, fx.Node, int]]  # roots that may share memory, from a position
    last_use: dict[fx.Node, int]  # root -> last position any array of it is used at
    deps: dict[fx.Node, set[fx.Node]]  # node -> region nodes (reads and writes) it depends on
    traced: set[fx.Node]  # nodes a traced tensor flows into

    def linked(self, root: fx.Node, before: int) -> set[fx.Node]:
        """Roots that may share memory with `root`, through links made before `before`."""
        out, stack = {root}, [root]
        while stack:
            r = stack.pop()
            for a, b, at in self.links:
                if at < before and r in (a, b):
                    other = b if r is a else a
                    if other not in out:
                        out.add(other)
                        stack.append(other)
        return out

    def uncertain(self, a: fx.Node, b: fx.Node) -> fx.Node:
        """The array whose view-or-copy question ties roots `a` and `b` together."""
        return next((y for x, y, _ in self.links if {x, y} == {a, b}), b)

    def writes_into(self, roots: set[fx.Node], lo: int, hi: int) -> list[fx.Node]:
        """Writes into the memory of `roots` at positions in (lo, hi)."""
        return [
            w.node
            for w in self.writes.values()
            if w.target in self.root and self.root[w.target] in roots and lo < self.pos[w.node] < hi
        ]


def _layout(gm: fx.GraphModule, d: _Detours, seen: _Run) -> _Layout:
    values = seen.values
    pos = {n: i for i, n in enumerate(gm.graph.nodes)}
    region = set(d.region)
    writes = {n: w for n in d.region if (w := _numpy_write(n, values)) is not None}
    lay = _Layout(pos, writes, {}, {}, {}, {}, set(), [], {}, {}, set())
    for n in d.region:
        if not _is_array_value(values.get(n)):
            continue
        kind, view, parents = _alias(n, values, d.entries, writes)
        parents = [p for p in parents if p in lay.root]
        if kind is _Kind.VIEW and len(parents) == 1:
            p = parents[0]
            lay.root[n], lay.chain[n] = lay.root[p], (*lay.chain[p], n)
            lay.parent[n], lay.view_kind[n] = p, view or _View.SAME
            continue
        lay.root[n], lay.chain[n] = n, ()
        if kind is _Kind.SHARED:
            lay.shared.add(n)
        elif kind is not _Kind.FRESH:  # MAYBE, or a view of several arrays
            lay.links.extend((lay.root[p], n, pos[n]) for p in parents)
    for a, r in lay.root.items():
        last = max((pos[u] for u in a.users), default=pos[a])
        lay.last_use[r] = max(lay.last_use.get(r, -1), last)
    order = sorted(region | set(d.exits), key=pos.__getitem__)
    for n in order:
        reads = [a for a in n.all_input_nodes if a in region]
        deps = set(reads)
        for a in reads:
            if a in lay.root:
                roots = lay.linked(lay.root[a], pos[n])
                deps.update(lay.writes_into(roots, -1, pos[n]))
        lay.deps[n] = deps
        if n in d.entries or any(x in lay.traced for x in deps):
            lay.traced.add(n)
    return lay
