"""The torch builders of the mapping table.

Each builder takes a NumPy call's parameters, bound to the NumPy function's names (arrays
already torch nodes, cast by the spec's dtype rule), and emits the torch ops that compute
the same values; a parameter value without a faithful twin raises _Unmapped.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from fxgrad.passes.numpy_round_trip.emitter import _Emitter
from fxgrad.passes.numpy_round_trip.helpers import _Unmapped


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if not axes:
        raise _Unmapped("an empty axis tuple")
    return tuple(a % ndim if ndim else a for a in axes)


def _keep(e: _Emitter, t: fx.Node, p: dict, ndim: int) -> fx.Node:
    """Give an all-axes reduction NumPy's `keepdims=True` shape (1, ..., 1)."""
    if p.get("keepdims") and p.get("axis") is None and ndim:
        return e.m("reshape", t, (1,) * ndim)
    return t


def _reduction(fn: Callable, multi_dim: bool = True) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        t, axis, keep = p["a"], p.get("axis"), bool(p.get("keepdims"))
        nd = e.ndim(t)
        if axis is None:
            return _keep(e, e.f(fn, t), p, nd)
        axes = _axes(axis, nd)
        kw = {"keepdim": True} if keep else {}
        if multi_dim or len(axes) == 1:
            return e.f(fn, t, dim=axes[0] if len(axes) == 1 else axes, **kw)
        for a in sorted(axes, reverse=True):  # one axis at a time, last first
            t = e.f(fn, t, dim=a, **kw)
        return t

    return build


def _b_std(fn: Callable) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        ddof = p.get("correction") if p.get("correction") is not None else p.get("ddof", 0)
        if not isinstance(ddof, int):
            raise _Unmapped("a non-integer ddof")
        t, nd = p["a"], e.ndim(p["a"])
        if p.get("axis") is None:
            if p.get("keepdims") and nd:
                return e.f(fn, t, dim=tuple(range(nd)), correction=ddof, keepdim=True)
            return e.f(fn, t, correction=ddof)
        axes = _axes(p["axis"], nd)
        dim = axes[0] if len(axes) == 1 else axes
        kw = {"keepdim": True} if p.get("keepdims") else {}
        return e.f(fn, t, dim=dim, correction=ddof, **kw)

    return build


def _b_arg(fn: Callable) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        t = p["a"]
        if e.val(t).dtype == torch.bool:  # torch.argmax takes no bool; uint8 keeps the order
            t = e.m("to", t, torch.uint8)
        if p.get("axis") is None:
            return _keep(e, e.f(fn, t), p, e.ndim(t))
        kw = {"keepdim": True} if p.get("keepdims") else {}
        return e.f(fn, t, dim=p["axis"], **kw)

    return build


def _b_cumulative(fn: Callable) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        t = p["a"]
        if p.get("axis") is None:
            return e.f(fn, e.m("reshape", t, -1), dim=0)
        return e.f(fn, t, dim=p["axis"])

    return build


def _unary(fn: Callable) -> Callable:
    return lambda e, p: e.f(fn, p["x0"])


def _op(fn: Callable) -> Callable:
    """A Python operator: works with a scalar on either side, reads as `a + 2`."""
    return lambda e, p: e.f(fn, *[p[f"x{i}"] for i in range(len(p))])


def _tensor_like(e: _Emitter, x: Any, like: fx.Node) -> Any:
    return x if isinstance(x, fx.Node) else e.m("new_tensor", like, x)


def _binary(fn: Callable) -> Callable:
    """A torch function that needs tensors on both sides (`torch.maximum`)."""

    def build(e: _Emitter, p: dict) -> fx.Node:
        x, y = p["x0"], p["x1"]
        like = x if isinstance(x, fx.Node) else y
        return e.f(fn, _tensor_like(e, x, like), _tensor_like(e, y, like))

    return build


def _b_sign(e: _Emitter, p: dict) -> fx.Node:
    t = p["x0"]
    s = e.f(torch.sign, t)
    if e.val(t).is_floating_point():  # np.sign(nan) is nan, torch.sign(nan) is 0
        return e.f(torch.where, e.f(torch.isnan, t), t, s)
    return s


def _float_only(fn: Callable) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        if not e.val(p["x0"]).is_floating_point():
            raise _Unmapped("NumPy computes it in integers here")
        return e.f(fn, p["x0"])

    return build


def _b_round(e: _Emitter, p: dict) -> fx.Node:
    t, d = p["a"], p.get("decimals", 0)
    if not isinstance(d, int):
        raise _Unmapped("non-integer decimals")
    if not e.val(t).is_floating_point():
        if d >= 0:
            return t  # rounding integers to >= 0 decimals changes nothing
        raise _Unmapped("integers rounded to negative decimals")
    return e.f(torch.round, t, decimals=d) if d else e.f(torch.round, t)


def _b_clip(e: _Emitter, p: dict) -> fx.Node:
    lo = p.get("a_min") if p.get("a_min") is not None else p.get("min")
    hi = p.get("a_max") if p.get("a_max") is not None else p.get("max")
    if lo is None and hi is None:
        raise _Unmapped("a clip without bounds")
    kwargs = {}
    if lo is not None:
        kwargs["min"] = lo
    if hi is not None:
        kwargs["max"] = hi
    return e.f(torch.clamp, p["a"], **kwargs)


def _b_where(e: _Emitter, p: dict) -> fx.Node:
    c, x, y = p["condition"], p.get("x"), p.get("y")
    if x is None or y is None:
        raise _Unmapped("one-argument np.where returns indices")
    if isinstance(c, fx.Node) and e.val(c).dtype != torch.bool:
        c = e.m("bool", c)
    return e.f(torch.where, c, x, y)


def _b_reshape(e: _Emitter, p: dict) -> fx.Node:
    shape = p.get("shape") if p.get("shape") is not None else p.get("newshape")
    if p.get("order", "C") != "C":
        raise _Unmapped("a Fortran-order reshape")
    return e.m("reshape", p["a"], tuple(shape) if isinstance(shape, list) else shape)


def _b_transpose(e: _Emitter, p: dict) -> fx.Node:
    t, axes = p["a"], p.get("axes")
    nd = e.ndim(t)
    if axes is None:
        if nd < 2:
            return t
        axes = tuple(reversed(range(nd)))
    if tuple(axes) == (1, 0):
        return e.f(builtins.getattr, t, "T")
    return e.m("permute", t, tuple(axes))


def _b_expand_dims(e: _Emitter, p: dict) -> fx.Node:
    t = p["a"]
    axis = p["axis"]
    n = len(axis) if isinstance(axis, (tuple, list)) else 1
    for a in sorted(_axes(axis, e.ndim(t) + n)):
        t = e.m("unsqueeze", t, a)
    return t


def _b_squeeze(e: _Emitter, p: dict) -> fx.Node:
    if p.get("axis") is None:
        return e.f(torch.squeeze, p["a"])
    axes = _axes(p["axis"], e.ndim(p["a"]))
    return e.f(torch.squeeze, p["a"], axes[0] if len(axes) == 1 else axes)


def _arrays(e: _Emitter, seq: Any) -> list[fx.Node]:
    if not isinstance(seq, (list, tuple)) or not all(a in e.tensors for a in seq):
        raise _Unmapped("an operand that does not come from a traced tensor")
    return list(seq)


def _b_concatenate(e: _Emitter, p: dict) -> fx.Node:
    ts = _arrays(e, p["arrays"])
    if p.get("axis", 0) is None:
        return e.f(torch.cat, [e.m("reshape", t, -1) for t in ts])
    return e.f(torch.cat, ts, dim=p.get("axis", 0))


def _b_stack(e: _Emitter, p: dict) -> fx.Node:
    return e.f(torch.stack, _arrays(e, p["arrays"]), dim=p.get("axis", 0))


def _seq_fn(fn: Callable) -> Callable:
    return lambda e, p: e.f(fn, _arrays(e, p["tup"]))


def _b_split(e: _Emitter, p: dict) -> fx.Node:
    sections = p["indices_or_sections"]
    if isinstance(sections, (tuple, list)):
        sections = list(sections)
    elif not isinstance(sections, int):
        raise _Unmapped("split points that are not Python ints")
    return e.f(torch.tensor_split, p["ary"], sections, dim=p.get("axis", 0))


def _b_flip(e: _Emitter, p: dict) -> fx.Node:
    return e.f(torch.flip, p["m"], _axes(p.get("axis"), e.ndim(p["m"])))


def _b_tile(e: _Emitter, p: dict) -> fx.Node:
    reps = p["reps"]
    return e.f(torch.tile, p["A"], tuple(reps) if isinstance(reps, (tuple, list)) else (reps,))


def _b_repeat(e: _Emitter, p: dict) -> fx.Node:
    if not isinstance(p["repeats"], int):
        raise _Unmapped("repeats that are not one Python int")
    if p.get("axis") is None:
        return e.f(torch.repeat_interleave, p["a"], p["repeats"])
    return e.f(torch.repeat_interleave, p["a"], p["repeats"], dim=p["axis"])


def _b_broadcast_to(e: _Emitter, p: dict) -> fx.Node:
    shape = p["shape"]
    if isinstance(shape, int):
        shape = (shape,)
    return e.f(torch.broadcast_to, p["array"], tuple(shape) if isinstance(shape, list) else shape)


def _b_ravel(e: _Emitter, p: dict) -> fx.Node:
    if p.get("order", "C") != "C":
        raise _Unmapped("a Fortran-order ravel")
    return e.m("reshape", p["a"], -1)


def _b_same(name: str) -> Callable:
    """`np.asarray(a)`, `np.copy(a)`: the array itself, not one made from a sequence of them."""

    def build(_e: _Emitter, p: dict) -> fx.Node:
        a = p[name]
        if not isinstance(a, fx.Node):
            raise _Unmapped("an array made from a sequence of values")
        return a

    return build


def _b_dot(e: _Emitter, p: dict) -> fx.Node:
    a, b = p["a"], p["b"]
    na, nb = e.ndim(a), e.ndim(b)
    if na == 0 or nb == 0:
        return e.f(operator.mul, a, b)
    if na <= 2 and nb <= 2:
        return e.f(torch.matmul, a, b)
    return e.f(torch.tensordot, a, b, dims=([na - 1], [max(nb - 2, 0)]))


def _b_einsum(e: _Emitter, p: dict) -> fx.Node:
    ops = p["operands"]
    if not ops or not isinstance(ops[0], str):
        raise _Unmapped("the interleaved einsum form")
    return e.f(torch.einsum, ops[0], *_arrays(e, ops[1:]))


def _b_outer(e: _Emitter, p: dict) -> fx.Node:
    return e.f(torch.outer, e.m("reshape", p["a"], -1), e.m("reshape", p["b"], -1))


def _b_tensordot(e: _Emitter, p: dict) -> fx.Node:
    axes = p.get("axes", 2)
    if isinstance(axes, (tuple, list)):
        x, y = axes
        axes = (
            [x] if isinstance(x, int) else list(x),
            [y] if isinstance(y, int) else list(y),
        )
    return e.f(torch.tensordot, p["a"], p["b"], dims=axes)


def _b_norm(e: _Emitter, p: dict) -> fx.Node:
    t, ord_, axis, keep = p["x"], p.get("ord"), p.get("axis"), bool(p.get("keepdims"))
    nd = e.ndim(t)
    if axis is None and (ord_ is None or nd == 1):
        kwargs = {"keepdim": True} if keep else {}
        return e.f(torch.linalg.vector_norm, t, 2 if ord_ is None else ord_, **kwargs)
    if axis is None:
        if nd != 2:
            raise _Unmapped("np.linalg.norm with ord on a array that is not 1-D or 2-D")
        axis = (0, 1)
    axes = _axes(axis, nd)
    if len(axes) == 1:
        if isinstance(ord_, str):
            raise _Unmapped(f"vector norm ord={ord_!r}")
        return e.f(
            torch.linalg.vector_norm, t, 2 if ord_ is None else ord_, dim=axes[0], keepdim=keep
        )
    return e.f(torch.linalg.matrix_norm, t, "fro" if ord_ is None else ord_, dim=axes, keepdim=keep)


def _b_like(fn: Callable, fill: bool = False) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        if p.get("shape") is not None:
            raise _Unmapped("a new shape")
        dtype = e.out_dtype
        if fill:
            if isinstance(p["fill_value"], fx.Node):
                raise _Unmapped("an array fill value")
            return e.f(fn, p["a"], p["fill_value"], dtype=dtype)
        return e.f(fn, p["a"], dtype=dtype)

    return build


def _b_astype(e: _Emitter, p: dict) -> fx.Node:
    return e.m("to", p["a"], e.out_dtype)


def _b_getitem(e: _Emitter, p: dict) -> fx.Node:
    key = p["key"]
    _check_key(e, key)
    return e.f(operator.getitem, p["a"], key)


def _b_sort(e: _Emitter, p: dict) -> fx.Node:
    if p.get("order") is not None:
        raise _Unmapped("sorting by field names")
    t, axis = p["a"], p.get("axis")
    if axis is None:
        t, axis = e.m("reshape", t, -1), 0
    # Stability only orders equal values, which are indistinguishable in the result.
    return e.f(builtins.getattr, e.f(torch.sort, t, dim=axis), "values")


def _size_arg(e: _Emitter, shape: Any) -> Any:
    if isinstance(shape, fx.Node) and shape in e.tensors:
        raise _Unmapped("a shape given as an array")
    return tuple(shape) if isinstance(shape, list) else shape


def _number(e: _Emitter, x: Any, what: str) -> Any:
    if isinstance(x, fx.Node) and x in e.tensors:
        raise _Unmapped(f"{what} given as an array")
    return x


def _b_factory(fn: Callable, arbitrary: bool = False) -> Callable:
    """np.zeros/ones/empty: made on the device the detour runs on, with NumPy's dtype."""

    def build(e: _Emitter, p: dict) -> fx.Node:
        node = e.f(fn, _size_arg(e, p["shape"]), dtype=e.out_dtype, device=e.device())
        if arbitrary:  # np.empty: whatever memory held; only later writes give it values
            e.arbitrary.add(node)
        return node

    return build


def _b_full(e: _Emitter, p: dict) -> fx.Node:
    fill = _number(e, p["fill_value"], "a fill value")
    return e.f(torch.full, _size_arg(e, p["shape"]), fill, dtype=e.out_dtype, device=e.device())


def _b_eye(e: _Emitter, p: dict) -> fx.Node:
    if p.get("k", 0) != 0:
        raise _Unmapped("an eye with its diagonal off the middle (k != 0)")
    sizes = [p["N"] if "N" in p else p["n"]]
    if p.get("M") is not None:
        sizes.append(p["M"])
    sizes = [_number(e, s, "a size") for s in sizes]
    return e.f(torch.eye, *sizes, dtype=e.out_dtype, device=e.device())


def _b_arange(e: _Emitter, p: dict) -> fx.Node:
    bounds = [p["start_or_stop"]]
    if p.get("stop") is not None:
        bounds += [p["stop"], p.get("step", 1)]
    elif p.get("step", 1) != 1:
        raise _Unmapped("a step without a stop")
    bounds = [_number(e, b, "a bound") for b in bounds]
    return e.f(torch.arange, *bounds, dtype=e.out_dtype, device=e.device())


def _b_linspace(e: _Emitter, p: dict) -> fx.Node:
    if not p.get("endpoint", True) or p.get("retstep") or p.get("axis", 0) != 0:
        raise _Unmapped("np.linspace with endpoint, retstep or axis set")
    if not (e.out_dtype or torch.float64).is_floating_point:
        raise _Unmapped("an integer np.linspace (NumPy floors, torch truncates)")
    start, stop = _number(e, p["start"], "a bound"), _number(e, p["stop"], "a bound")
    return e.f(torch.linspace, start, stop, p.get("num", 50), dtype=e.out_dtype, device=e.device())


def _check_key(e: _Emitter, key: Any) -> None:
    for k in key if isinstance(key, tuple) else (key,):
        if (
            isinstance(k, slice)
            and k.step is not None
            and not (isinstance(k.step, int) and k.step > 0)
        ):
            raise _Unmapped("a slice with a negative or unknown step")
        if isinstance(k, fx.Node) and k not in e.tensors and not isinstance(e.val(k), int):
            raise _Unmapped("an index that is not a Python int or a translated array")
