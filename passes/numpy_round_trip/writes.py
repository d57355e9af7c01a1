"""The torch twin of each NumPy write: the written array's new value, computed functionally."""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from fxgrad.graph_utils import INPLACE_OPERATORS
from fxgrad.passes.numpy_round_trip.aliasing import _is_basic_key, _View, _Write
from fxgrad.passes.numpy_round_trip.builders import _b_sort
from fxgrad.passes.numpy_round_trip.helpers import _function, _np, _Unmapped
from fxgrad.passes.numpy_round_trip.mappings import _bind

if TYPE_CHECKING:
    from fxgrad.passes.numpy_round_trip.memory import _Memory


def _sort_method(axis: Any = -1, kind: Any = None, order: Any = None, *, stable: Any = None):  # noqa: ANN202
    """ndarray.sort's parameters, for binding."""


def _put_method(ind: Any, v: Any, mode: Any = "raise"):  # noqa: ANN202
    """ndarray.put's parameters, for binding."""


def _fill_method(value: Any):  # noqa: ANN202
    """ndarray.fill's parameters, for binding."""


def _params(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    p = _bind(fn, args, kwargs)
    p.pop("__defaults__")
    return p


def _advanced_item(k: Any, values: dict) -> bool:
    """An index item index_put takes: an integer or boolean array, a list, an int."""
    np = _np()
    if isinstance(k, (list, int)) and not isinstance(k, bool):
        return True
    v = values.get(k) if isinstance(k, fx.Node) else None
    return isinstance(v, (np.ndarray, np.integer, int)) and not isinstance(v, (bool, np.bool_))


def _w_setitem(m: _Memory, w: _Write) -> fx.Node:
    """`a[key] = v`: masked_fill, index_put, or a clone written through the key."""
    e, values = m.e, m.values
    _, key, v = w.node.args
    cur = m.read(w.target)
    if _is_own_view(m, w.target, key, v):
        return cur  # `a[i] += 1` ends in `a[i] = <a[i], already written>`: nothing to do
    key_t = m.key(key)
    items = key if isinstance(key, tuple) else (key,)
    if not _is_basic_key(key, values):
        mask = values.get(items[0]) if isinstance(items[0], fx.Node) else None
        if (
            len(items) == 1
            and isinstance(mask, _np().ndarray)
            and mask.dtype == bool
            and mask.ndim == e.ndim(cur)
            and m.is_scalar(v)
        ):
            return e.m("masked_fill", cur, m.tensor(items[0], cur, torch.bool), m.scalar(v, w))
        if all(_advanced_item(k, values) for k in items):
            idx = tuple(_index_tensor(m, k, cur) for k in items)
            dtype = e.env[cur].dtype
            return e.m("index_put", cur, idx, m.tensor(m.stored(v, w), cur, dtype))
    base = e.m("clone", cur)
    e.f(operator.setitem, base, key_t, m.operand(m.stored(v, w)))
    return base


def _is_own_view(m: _Memory, a: fx.Node, key: Any, v: Any) -> bool:
    """Whether `v` is the very view `a[key]`, so that `a[key] = v` changes nothing."""
    lay = m.lay
    if not isinstance(v, fx.Node) or lay.root.get(v) is not lay.root.get(a):
        return False
    chain = list(lay.chain[v])
    while chain and lay.view_kind[chain[-1]] is _View.SAME:
        chain.pop()
    if not chain or tuple(chain[:-1]) != lay.chain[a]:
        return False
    last = chain[-1]
    return lay.view_kind[last] is _View.GETITEM and last.args[0] is a and last.args[1] == key


def _index_tensor(m: _Memory, k: Any, like: fx.Node) -> fx.Node:
    np = _np()
    v = m.values.get(k) if isinstance(k, fx.Node) else np.asarray(k)
    is_bool = getattr(v, "dtype", None) == np.dtype(bool)
    return m.tensor(k, like, torch.bool if is_bool else torch.int64)


def _w_augmented(m: _Memory, w: _Write) -> fx.Node:
    """`a += b`: the result of `a + b` as NumPy computes it, stored into `a`."""
    n = w.node
    result = m.call(n, "call_function", INPLACE_OPERATORS[_function(n)], n.args, {})
    return m.into(w, result, n.args)


def _w_out(m: _Memory, w: _Write) -> fx.Node:
    """`np.add(a, b, out=a)`, `a.clip(0, 1, out=a)`: the result, stored into `out`."""
    n, e = w.node, m.e
    kwargs = {k: v for k, v in n.kwargs.items() if k not in ("out", "where")}
    result = m.call(n, n.op, n.target, n.args, kwargs)
    new = m.into(w, result, (n.args, kwargs))
    where = n.kwargs.get("where", True)
    if where is not True:
        cur = m.read(w.target)
        new = e.f(torch.where, m.tensor(where, cur, torch.bool), new, cur)
    return new


def _w_sort(m: _Memory, w: _Write) -> fx.Node:
    """`a.sort(axis)`: the sorted values."""
    p = _params(_sort_method, w.node.args[1:], dict(w.node.kwargs))
    return _b_sort(m.e, {"a": m.read(w.target), "axis": p["axis"], "order": p["order"]})


def _filled(m: _Memory, w: _Write, v: Any) -> fx.Node:
    """An array of w.target's shape and dtype holding `v` (broadcast), as NumPy stores it."""
    e = m.e
    cur = m.read(w.target)
    v = m.stored(v, w)
    array = isinstance(v, list) or (
        isinstance(v, fx.Node) and (v in m.tv or isinstance(m.values.get(v), torch.Tensor))
    )
    if not array:
        return e.f(torch.full_like, cur, v)
    return e.m("expand_as", m.tensor(v, cur, e.env[cur].dtype), cur)


def _w_fill(m: _Memory, w: _Write) -> fx.Node:
    """`a.fill(v)`."""
    return _filled(m, w, _params(_fill_method, w.node.args[1:], dict(w.node.kwargs))["value"])


def _w_copyto(m: _Memory, w: _Write) -> fx.Node:
    """`np.copyto(dst, src, where=...)`."""
    p = _params(_np().copyto, w.node.args, dict(w.node.kwargs))
    new = _filled(m, w, p["src"])
    if p["where"] is not True:
        cur = m.read(w.target)
        new = m.e.f(torch.where, m.tensor(p["where"], cur, torch.bool), new, cur)
    return new


def _w_put(m: _Memory, w: _Write) -> fx.Node:
    """`a.put(ind, v)`, `np.put(a, ind, v)`: values at flat indices."""
    n, e = w.node, m.e
    p = _params(_put_method, n.args[1:], {k: v for k, v in n.kwargs.items() if k != "a"})
    if p["mode"] != "raise":
        raise _Unmapped(f"np.put(..., mode={p['mode']!r})", n)
    cur = m.read(w.target)
    flat = e.m("reshape", cur, -1)
    ind = p["ind"] if not isinstance(p["ind"], int) else [p["ind"]]
    idx = e.m("reshape", _index_tensor(m, ind, cur), -1)
    vals = e.m("reshape", m.tensor(m.stored(p["v"], w), cur, e.env[cur].dtype), -1)
    # NumPy repeats `v` when it is shorter than `ind`; index_put broadcasts only a single
    # value and raises otherwise, so a call where the two differ fails loudly.
    put = e.m("index_put", flat, (idx,), vals)
    return e.m("reshape", put, e.f(builtins.getattr, cur, "shape"))


def _w_putmask(m: _Memory, w: _Write) -> fx.Node:
    """`np.putmask(a, mask, values)`: values where mask, matched by flat position."""
    e = m.e
    p = _params(_np().putmask, w.node.args, dict(w.node.kwargs))
    cur = m.read(w.target)
    mask = m.tensor(p["mask"], cur, torch.bool)
    if m.is_scalar(p["values"]):
        return e.m("masked_fill", cur, mask, m.scalar(p["values"], w))
    values = m.tensor(m.stored(p["values"], w), cur, e.env[cur].dtype)
    # putmask pairs a.flat[i] with values.flat[i]: a reshape of equal sizes does exactly
    # that, and raises where NumPy would repeat a shorter `values`.
    values = e.m("reshape", values, e.f(builtins.getattr, cur, "shape"))
    return e.f(torch.where, mask, values, cur)


def _w_place(m: _Memory, w: _Write) -> fx.Node:
    """`np.place(arr, mask, vals)` with one value."""
    p = _params(_np().place, w.node.args, dict(w.node.kwargs))
    vals = p["vals"]
    if isinstance(vals, (list, tuple)) and len(vals) == 1:
        vals = vals[0]
    if not m.is_scalar(vals):
        raise _Unmapped(
            "np.place repeats vals over the masked positions, a count known only at run time",
            w.node,
        )
    cur = m.read(w.target)
    return m.e.m("masked_fill", cur, m.tensor(p["mask"], cur, torch.bool), m.scalar(vals, w))


def _w_fill_diagonal(m: _Memory, w: _Write) -> fx.Node:
    """`np.fill_diagonal(a, v)` on a matrix."""
    e = m.e
    p = _params(_np().fill_diagonal, w.node.args, dict(w.node.kwargs))
    cur = m.read(w.target)
    if e.ndim(cur) != 2 or p["wrap"]:
        raise _Unmapped("np.fill_diagonal of more than two dimensions, or with wrap=True", w.node)
    if not m.is_scalar(p["val"]):
        raise _Unmapped("np.fill_diagonal with several values", w.node)
    diagonal = e.m("diagonal", cur)
    val = m.scalar(p["val"], w)
    if isinstance(val, fx.Node) and val in e.tensors:
        filled = e.m("expand_as", val, diagonal)
    else:
        filled = e.f(torch.full_like, diagonal, val)
    return e.f(torch.diagonal_scatter, cur, filled)


def _w_flat(m: _Memory, w: _Write) -> fx.Node:
    """`a.flat[k] = v`: the write on the flattened array (C order), reshaped back."""
    e = m.e
    _, key, v = w.node.args
    if isinstance(key, tuple):
        raise _Unmapped("a.flat indexed with a tuple", w.node)
    lay = m.lay
    if isinstance(v, fx.Node) and v in lay.root:
        if lay.root[v] in lay.linked(lay.root[w.target], lay.pos[w.node]):
            # a.flat assigns element by element, so a value that is a view of the array
            # reads elements it has just written; no torch op does that.
            raise _Unmapped("a.flat is assigned a view of the array itself", w.node)
    cur = m.read(w.target)
    flat = e.m("clone", e.m("reshape", cur, -1))
    # NumPy repeats a shorter `v` over the positions; torch broadcasts only a single value
    # and raises otherwise, so a call where the sizes differ fails loudly.
    e.f(operator.setitem, flat, m.key(key), m.operand(m.stored(v, w)))
    return e.m("reshape", flat, e.f(builtins.getattr, cur, "shape"))


def _w_put_along_axis(m: _Memory, w: _Write) -> fx.Node:
    """`np.put_along_axis(a, idx, v, axis)`: torch.scatter, negative indices wrapped first."""
    e = m.e
    p = _params(_np().put_along_axis, w.node.args, dict(w.node.kwargs))
    axis = p["axis"]
    if not isinstance(axis, int):
        raise _Unmapped("np.put_along_axis without an integer axis", w.node)
    cur = m.read(w.target)
    idx = _index_tensor(m, p["indices"], cur)
    idx = e.m("remainder", idx, e.m("size", cur, axis))
    if m.is_scalar(p["values"]) and not isinstance(p["values"], fx.Node):
        return e.m("scatter", cur, axis, idx, m.stored(p["values"], w))
    values = m.tensor(m.stored(p["values"], w), cur, e.env[cur].dtype)
    # At a repeated index NumPy does not promise which value stays (advanced assignment),
    # and neither does scatter: where NumPy's own result is unspecified, so is the twin's.
    return e.m("scatter", cur, axis, idx, e.m("expand_as", values, idx))


def _w_ufunc_at(m: _Memory, w: _Write) -> fx.Node:
    """`np.add.at(a, idx, v)`: index_put accumulating, as NumPy adds at repeated indices."""
    e = m.e
    wrapper: Any = w.node.target  # fxgrad.runtime.ufunc_method's, which carries the ufunc
    ufunc = wrapper._fxgrad_ufunc
    np = _np()
    if ufunc not in (np.add, np.subtract) or len(w.node.args) != 3 or w.node.kwargs:
        raise _Unmapped(f"np.{ufunc.__name__}.at has no accumulating torch twin", w.node)
    _, key, v = w.node.args
    items = key if isinstance(key, tuple) else (key,)
    if not all(_advanced_item(k, m.values) for k in items):
        raise _Unmapped(f"np.{ufunc.__name__}.at with slices in its index", w.node)
    cur = m.read(w.target)
    idx = tuple(_index_tensor(m, k, cur) for k in items)
    values = m.tensor(m.stored(v, w), cur, e.env[cur].dtype)
    if ufunc is np.subtract:
        values = e.f(operator.neg, values)
    return e.m("index_put", cur, idx, values, accumulate=True)


# Each NumPy write kind: its handler, or why it has no faithful torch twin.
_WRITES: dict[str, Callable[[_Memory, _Write], fx.Node] | str] = {
    "setitem": _w_setitem,
    "augmented": _w_augmented,
    "out": _w_out,
    "sort": _w_sort,
    "fill": _w_fill,
    "put": _w_put,
    "copyto": _w_copyto,
    "putmask": _w_putmask,
    "place": _w_place,
    "fill_diagonal": _w_fill_diagonal,
    "flat": _w_flat,
    "ufunc.at": _w_ufunc_at,
    "put_along_axis": _w_put_along_axis,
    "setattr": "it sets an attribute of the array (its shape, dtype or data) in place",
    "partition": "NumPy leaves the order on each side of kth unspecified, so no torch op "
    "gives the same array",
    "resize": "it changes the array's size in place",
    "itemset": "it writes one element in place (ndarray.itemset)",
    "setfield": "it writes a field of a structured array",
    "byteswap": "it swaps the bytes of every element in place",
    "several outputs": "it writes several outputs at once",
}
