"""The torch twin of one NumPy call: resolve it to its mapping spec, bind and cast its
parameters as NumPy would, build, and check the result against what NumPy computed.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from fxgrad.graph_utils import target_name
from fxgrad.passes.numpy_round_trip.builders import _b_astype
from fxgrad.passes.numpy_round_trip.emitter import _Emitter, _torch_dtype
from fxgrad.passes.numpy_round_trip.helpers import (
    _array_entries,
    _attr_read,
    _entry_source,
    _entry_source_tensor,
    _is_np_value,
    _np,
    _Unmapped,
)
from fxgrad.passes.numpy_round_trip.mappings import (
    _bind,
    _check_allowed,
    _Rule,
    _Spec,
    _tables,
    _ufunc_method_spec,
)
from fxgrad.passes.numpy_round_trip.render import _render_call_name


def _map_args(a: Any, tv: dict, values: dict) -> Any:
    np = _np()

    def one(n: fx.Node) -> Any:
        if n in tv:
            return tv[n]
        v = values.get(n)
        if isinstance(v, np.ndarray) or (_is_np_value(v) and not isinstance(v, float)):
            raise _Unmapped("a NumPy operand that does not come from a traced tensor", n)
        return n

    return fx.node.map_arg(a, one)


def _np_dtype_of(a: Any, values: dict) -> Any:
    np = _np()
    if isinstance(a, fx.Node):
        v = values.get(a)
        if isinstance(v, (np.ndarray, np.generic)):
            return v.dtype
        if isinstance(v, bool):
            return np.dtype(bool)
        if isinstance(v, (int, float, complex)):
            return type(v)
        raise _Unmapped("an operand whose dtype is unknown", a)
    if isinstance(a, np.generic):  # np.float64(0.5) is a float, but it has NumPy's dtype
        return a.dtype
    if isinstance(a, bool):
        return np.dtype(bool)
    if isinstance(a, (int, float, complex)):
        return type(a)
    raise _Unmapped(f"an operand of type {type(a).__name__}")


@dataclass
class _Call:
    """A NumPy call as its mapping spec reads it."""

    spec: _Spec
    target: Any  # the NumPy function whose parameters the call binds to; None for `.astype`
    args: tuple  # as NumPy got them: their dtypes pick a ufunc's loop
    kwargs: dict
    mapped_args: tuple = ()  # with torch nodes for the arrays
    mapped_kwargs: dict = field(default_factory=dict)


def _translate_node(
    e: _Emitter,
    n: fx.Node,
    tv: dict,
    values: dict,
    call: tuple[str, Any, tuple, dict] | None = None,
    want: Any = None,
) -> Any:
    """The torch twin of node `n`, or of `call` (op, target, args, kwargs) made at `n`.

    `want` is what NumPy computed for `call`; for `n` itself it is `n`'s example value.
    """
    out_value = values[n] if want is None else want
    if call is None:
        source = _translate_source(e, n, tv)
        if source is not None:
            return source
        call = (n.op, n.target, n.args, n.kwargs)
    op, target, args, kwargs = call[0], call[1], call[2], dict(call[3])
    c = _CALL_FORMS.get(op, _function_call)(target, args, kwargs)
    c.mapped_args = _map_args(c.args, tv, values)
    c.mapped_kwargs = _map_args(c.kwargs, tv, values)
    e.out_dtype = _torch_dtype(out_value.dtype) if hasattr(out_value, "dtype") else None
    result = c.spec.build(e, _PARAMETERS[c.spec.rule](e, c, values))
    if e.out_dtype is not None and isinstance(e.env.get(result), torch.Tensor):
        if e.env[result].dtype != e.out_dtype:
            result = e.m("to", result, e.out_dtype)
    return result


def _table_call(target: Any, args: tuple, kwargs: dict) -> _Call:
    spec = _tables()[0].get(target)
    if spec is None:
        raise _Unmapped("it has no torch twin in the mapping table")
    return _Call(spec, target, args, kwargs)


def _function_call(target: Any, args: tuple, kwargs: dict) -> _Call:
    """`np.sum(a)`, `a + b`, `a.T`, `np.add.reduce(a)`: the spec of the function it calls."""
    if target is builtins.getattr:
        if args[1] != "T":
            raise _Unmapped(f"ndarray attribute .{args[1]}")
        return _table_call(_np().transpose, (args[0],), {})
    if hasattr(target, "_fxgrad_ufunc"):
        ufm = _ufunc_method_spec(target)
        if ufm is None:
            raise _Unmapped("this ufunc method is not mapped")
        spec, target = ufm
        if len(args) < 2 and "axis" not in kwargs:
            kwargs["axis"] = 0  # ufunc.reduce/accumulate default to the first axis
        return _Call(spec, target, args, kwargs)
    return _table_call(target, args, kwargs)


def _method_call(target: Any, args: tuple, kwargs: dict) -> _Call:
    """`a.sum(1)`, `a.reshape(2, 3)`, `a.astype(t)`: the NumPy function of the same meaning."""
    np = _np()
    if target == "astype":
        return _Call(_Spec(_b_astype, rule=_Rule.NONE), None, (args[0],), {})
    methods = _tables()[1]
    if target not in methods:
        raise _Unmapped(f"ndarray method .{target}() is not mapped")
    target = methods[target]
    if target in (np.reshape, np.transpose) and len(args) > 2:
        args = (args[0], tuple(args[1:]))
    if target is np.reshape and "shape" not in kwargs and len(args) == 1:
        raise _Unmapped("a reshape without shape")
    return _table_call(target, args, kwargs)


# How a NumPy call is resolved to its mapping spec, by how the graph calls it.
_CALL_FORMS: dict[str, Callable[[Any, tuple, dict], _Call]] = {
    "call_function": _function_call,
    "call_method": _method_call,
}


def _ufunc_parameters(e: _Emitter, c: _Call, values: dict) -> dict[str, Any]:
    """x0, x1, ... cast to the loop dtypes NumPy resolves for the operands' dtypes."""
    ufunc: Any = c.spec.signature or c.target  # a NumPy ufunc (NumPy is imported untyped)
    if c.mapped_kwargs:
        raise _Unmapped(f"ufunc keyword arguments {sorted(c.mapped_kwargs)}")
    if not hasattr(ufunc, "resolve_dtypes") or ufunc.nout != 1:
        raise _Unmapped("a ufunc with more than one output")
    try:
        loop = ufunc.resolve_dtypes(tuple(_np_dtype_of(a, values) for a in c.args) + (None,))
    except (TypeError, ValueError) as err:
        raise _Unmapped(f"NumPy resolves no loop for these dtypes ({err})") from None
    p = {}
    for i, (a, dt) in enumerate(zip(c.mapped_args, loop)):
        p[f"x{i}"] = e.cast(a, _torch_dtype(dt))
    return p


def _bound_parameters(_e: _Emitter, c: _Call, _values: dict) -> dict[str, Any]:
    """The call bound to its NumPy function's parameter names, uncast."""
    if c.target is None:
        return {"a": c.mapped_args[0]}
    if c.target is operator.getitem:
        return {"a": c.mapped_args[0], "key": c.mapped_args[1]}
    p = _bind(c.target, c.mapped_args, c.mapped_kwargs)
    _check_allowed(p, c.spec, target_name(c.target))
    return p


def _out_parameters(e: _Emitter, c: _Call, values: dict) -> dict[str, Any]:
    """The bound parameters, arrays cast to the dtype of NumPy's result."""
    p = _bound_parameters(e, c, values)
    if e.out_dtype is None:
        return p
    dt = e.out_dtype
    for k, v in p.items():
        if k in c.spec.nocast:
            continue
        if isinstance(v, (list, tuple)):
            p[k] = type(v)(e.cast(x, dt) for x in v)
        else:
            p[k] = e.cast(v, dt)
    return p


# The builder's parameters, by the spec's dtype rule.
_PARAMETERS: dict[_Rule, Callable[[_Emitter, _Call, dict], dict[str, Any]]] = {
    _Rule.UFUNC: _ufunc_parameters,
    _Rule.OUT: _out_parameters,
    _Rule.NONE: _bound_parameters,
}


def _translate_source(e: _Emitter, n: fx.Node, tv: dict) -> fx.Node | None:
    """Where NumPy data comes from: a tensor, a constant array, an array input; else None."""
    if n.op == "call_method" and n.target == "numpy":
        return _entry_source(n)[0]
    if n.op == "call_function" and n.target in _array_entries():
        src = _entry_source_tensor(n)  # np.asarray(t, dtype=...): the tensor, cast
        # `np.asarray([a, b])` reads no tensor: it is translated as the NumPy call it is.
        if src is not None and n.args[0] not in tv:
            dtype = n.kwargs.get("dtype", n.args[1] if len(n.args) > 1 else None)
            return src if dtype is None else e.m("to", src, _torch_dtype(dtype))
    if n.op == "get_attr":  # a constant array (`W = np.full(...)` at module level)
        return e.m("to", e.constant(e.env[n]), e.device())
    if n.op == "placeholder":  # an array passed to forward
        return e.f(torch.as_tensor, n, device=e.device())
    return None


def _translate_meta(e: _Emitter, u: fx.Node, t: fx.Node) -> fx.Node:
    attr = u.args[1]
    if attr == "size":
        return e.m("numel", t)
    return e.f(builtins.getattr, t, attr)


def _is_device_move(u: fx.Node) -> bool:
    if u.op != "call_method":
        return False
    if u.target == "cuda":
        return True
    if u.target != "to":
        return False
    if "device" in u.kwargs:
        return True
    first = u.args[1] if len(u.args) > 1 else None
    if isinstance(first, (str, torch.device)):
        return True
    return _attr_read(first) == "device"


def _translate_exit(
    e: _Emitter, x: fx.Node, tv: dict, entries: list[fx.Node], values: dict
) -> fx.Node:
    data = x.args[0] if x.args else x.kwargs.get("data", x.kwargs.get("obj"))
    extra = dict(x.kwargs)
    extra.pop("data", None)
    extra.pop("obj", None)
    extra.pop("requires_grad", None)  # the result already carries the chain's gradient
    device = extra.pop("device", None)
    extra.pop("dtype", None)  # the recorded result's dtype is applied below
    extra.pop("copy", None)
    if x.target is torch.tensor:
        extra.pop("pin_memory", None)
    if extra or len(x.args) > 1:
        raise _Unmapped(f"{_render_call_name(x)} arguments {sorted(extra)}", x)
    if isinstance(data, (list, tuple)):
        if not all(d in tv for d in data):
            raise _Unmapped("a list mixing NumPy values with other data", x)
        shapes = {tuple(e.env[tv[d]].shape) for d in data}
        if len(shapes) != 1:
            raise _Unmapped("a list of arrays of different shapes", x)
        result = e.f(torch.stack, [tv[d] for d in data])
    else:
        result = tv[data]
    want = values[x]
    if e.env[result].dtype != want.dtype:
        result = e.m("to", result, want.dtype)
    if device is not None:
        result = e.m("to", result, device)
    elif any(_entry_source(n)[1] for n in entries) and not (
        x.users and all(_is_device_move(u) for u in x.users)
    ):
        result = e.m("cpu", result)  # NumPy results live on the CPU
    return result


def _tolerance(dtype: torch.dtype) -> dict:
    if dtype in (torch.float16, torch.bfloat16):
        return {"rtol": 1e-2, "atol": 1e-3}
    if dtype in (torch.float32, torch.complex64):
        return {"rtol": 1e-4, "atol": 1e-5}
    return {"rtol": 1e-7, "atol": 1e-9}


def _check_same(got: Any, want: Any, n: fx.Node, values: bool = True) -> None:
    """The torch twin must reproduce what NumPy computed: dtype, shape and values.

    `values=False` compares dtype and shape only (`np.empty`: whatever memory held).
    """
    np = _np()
    if isinstance(want, (tuple, list)) and not isinstance(want, torch.Size):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            raise _Unmapped("its torch twin gives a different number of pieces", n)
        for g, w in zip(got, want):
            _check_same(g, w, n, values)
        return
    if isinstance(want, (np.ndarray, np.generic)):
        want = torch.from_numpy(np.array(want, copy=True))
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        raise _Unmapped("its torch twin gives a different kind of value", n)
    if got.dtype != want.dtype or got.shape != want.shape:
        raise _Unmapped(
            f"its torch twin gives {str(got.dtype)[6:]}{list(got.shape)} where NumPy gives "
            f"{str(want.dtype)[6:]}{list(want.shape)}",
            n,
        )
    if not values:
        return
    try:
        torch.testing.assert_close(
            got.detach().cpu(), want.detach().cpu(), equal_nan=True, **_tolerance(want.dtype)
        )
    except AssertionError:
        raise _Unmapped("its torch twin gives different values on the example inputs", n) from None
