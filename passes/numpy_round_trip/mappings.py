"""The mapping table: NumPy callable -> (torch builder, dtype rule), and binding a call to
the NumPy function's parameter names.

After the builder, a result whose dtype still differs from NumPy's is cast to it.
"""

from __future__ import annotations

import enum
import functools
import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fxgrad.graph_utils import INPLACE_OPERATORS
from fxgrad.passes.numpy_round_trip.builders import (
    _b_arange,
    _b_arg,
    _b_broadcast_to,
    _b_clip,
    _b_concatenate,
    _b_cumulative,
    _b_dot,
    _b_einsum,
    _b_expand_dims,
    _b_eye,
    _b_factory,
    _b_flip,
    _b_full,
    _b_getitem,
    _b_like,
    _b_linspace,
    _b_norm,
    _b_outer,
    _b_ravel,
    _b_repeat,
    _b_reshape,
    _b_round,
    _b_same,
    _b_sign,
    _b_sort,
    _b_split,
    _b_squeeze,
    _b_stack,
    _b_std,
    _b_tensordot,
    _b_tile,
    _b_transpose,
    _b_where,
    _binary,
    _float_only,
    _op,
    _reduction,
    _seq_fn,
    _unary,
)
from fxgrad.passes.numpy_round_trip.emitter import _Emitter
from fxgrad.passes.numpy_round_trip.helpers import _np, _Unmapped


class _Rule(enum.Enum):
    """How a mapped call's array inputs are cast before its builder runs."""

    # To the loop dtypes NumPy itself resolves (`ufunc.resolve_dtypes`, Python scalars weak
    # as in NEP 50), so `int / int` and `sqrt(int)` compute in float64.
    UFUNC = "ufunc"
    # To the dtype NumPy's result has (sum of int32 -> int64, mean of int -> float64,
    # concatenate of float32 and int64 -> float64).
    OUT = "out"
    # Not at all (shape functions, max/min, argmax, all/any, indexing).
    NONE = "none"


@dataclass(frozen=True)
class _Spec:
    build: Callable[[_Emitter, dict[str, Any]], Any]
    rule: _Rule = _Rule.OUT
    # Parameters that may take a non-default value; any other non-default one is unmapped.
    allowed: tuple[str, ...] = ()
    nocast: tuple[str, ...] = ()
    signature: Callable | None = None  # where the parameter names come from


@functools.cache
def _tables() -> tuple[dict[Any, _Spec], dict[str, Any]]:
    np = _np()
    specs: dict[Any, _Spec] = {}

    def add(targets: Any, spec: _Spec) -> None:
        for t in targets if isinstance(targets, tuple) else (targets,):
            specs[t] = spec

    def uf(build: Callable) -> _Spec:
        return _Spec(build, rule=_Rule.UFUNC)

    unary: dict[Any, Callable[..., Any]] = {
        np.sin: torch.sin, np.cos: torch.cos, np.tan: torch.tan,
        np.arcsin: torch.asin, np.arccos: torch.acos, np.arctan: torch.atan,
        np.sinh: torch.sinh, np.cosh: torch.cosh, np.tanh: torch.tanh,
        np.arcsinh: torch.asinh, np.arccosh: torch.acosh, np.arctanh: torch.atanh,
        np.exp: torch.exp, np.exp2: torch.exp2, np.expm1: torch.expm1,
        np.log: torch.log, np.log2: torch.log2, np.log10: torch.log10, np.log1p: torch.log1p,
        np.sqrt: torch.sqrt, np.square: torch.square, np.absolute: torch.abs,
        np.floor: torch.floor, np.ceil: torch.ceil, np.trunc: torch.trunc,
        np.rint: torch.round, np.deg2rad: torch.deg2rad, np.rad2deg: torch.rad2deg,
        np.isnan: torch.isnan, np.isinf: torch.isinf, np.isfinite: torch.isfinite,
        np.signbit: torch.signbit, np.logical_not: torch.logical_not,
    }  # fmt: skip
    for k, fn in unary.items():
        add(k, uf(_unary(fn)))
    add((np.radians,), uf(_unary(torch.deg2rad)))
    add((np.degrees,), uf(_unary(torch.rad2deg)))
    add(np.fabs, uf(_unary(torch.abs)))
    add(np.reciprocal, uf(_float_only(torch.reciprocal)))
    add(np.sign, uf(_b_sign))
    ops: dict[Any, Callable[..., Any]] = {
        np.add: operator.add, np.subtract: operator.sub, np.multiply: operator.mul,
        np.true_divide: operator.truediv, np.floor_divide: operator.floordiv,
        np.remainder: operator.mod, np.power: operator.pow, np.matmul: operator.matmul,
        np.negative: operator.neg, np.positive: operator.pos,
        np.greater: operator.gt, np.greater_equal: operator.ge, np.less: operator.lt,
        np.less_equal: operator.le, np.equal: operator.eq, np.not_equal: operator.ne,
        np.bitwise_and: operator.and_, np.bitwise_or: operator.or_,
        np.bitwise_xor: operator.xor, np.invert: operator.invert,
    }  # fmt: skip
    for k, fn in ops.items():
        add(k, uf(_op(fn)))
    binary = {
        np.maximum: torch.maximum, np.minimum: torch.minimum, np.fmax: torch.fmax,
        np.fmin: torch.fmin, np.arctan2: torch.atan2, np.hypot: torch.hypot,
        np.logaddexp: torch.logaddexp, np.logical_and: torch.logical_and,
        np.logical_or: torch.logical_or, np.logical_xor: torch.logical_xor,
    }  # fmt: skip
    for k, fn in binary.items():
        add(k, uf(_binary(fn)))
    # Python operators on ndarrays resolve to the same ufuncs.
    for k, fn in ops.items():
        specs[fn] = _Spec(specs[k].build, rule=_Rule.UFUNC, signature=k)
    specs[operator.abs] = _Spec(specs[np.absolute].build, rule=_Rule.UFUNC, signature=np.absolute)
    # `s += 1` on a NumPy scalar rebinds `s`; on an array it is a write (see _WRITES).
    for iop, op in INPLACE_OPERATORS.items():
        if op in specs:
            specs[iop] = specs[op]

    red = ("axis", "keepdims", "dtype")
    add((np.sum,), _Spec(_reduction(torch.sum), allowed=red))
    add((np.mean,), _Spec(_reduction(torch.mean), allowed=red))
    add((np.prod,), _Spec(_reduction(torch.prod, multi_dim=False), allowed=red))
    add((np.max, np.amax), _Spec(_reduction(torch.amax), rule=_Rule.NONE, allowed=red))
    add((np.min, np.amin), _Spec(_reduction(torch.amin), rule=_Rule.NONE, allowed=red))
    add((np.all,), _Spec(_reduction(torch.all), rule=_Rule.NONE, allowed=red))
    add((np.any,), _Spec(_reduction(torch.any), rule=_Rule.NONE, allowed=red))
    add((np.argmax,), _Spec(_b_arg(torch.argmax), rule=_Rule.NONE, allowed=red))
    add((np.argmin,), _Spec(_b_arg(torch.argmin), rule=_Rule.NONE, allowed=red))
    std = ("axis", "keepdims", "dtype", "ddof", "correction")
    add((np.std,), _Spec(_b_std(torch.std), allowed=std))
    add((np.var,), _Spec(_b_std(torch.var), allowed=std))
    add((np.cumsum,), _Spec(_b_cumulative(torch.cumsum), allowed=("axis", "dtype")))
    add((np.cumprod,), _Spec(_b_cumulative(torch.cumprod), allowed=("axis", "dtype")))

    add((np.round, np.around), _Spec(_b_round, rule=_Rule.NONE, allowed=("decimals",)))
    add((np.clip,), _Spec(_b_clip, allowed=("a_min", "a_max", "min", "max")))
    add((np.where,), _Spec(_b_where, allowed=("x", "y"), nocast=("condition",)))

    add((np.reshape,), _Spec(_b_reshape, rule=_Rule.NONE, allowed=("shape", "newshape", "order")))
    add((np.transpose,), _Spec(_b_transpose, rule=_Rule.NONE, allowed=("axes",)))
    sw = lambda e, p: e.f(torch.swapaxes, p["a"], p["axis1"], p["axis2"])  # noqa: E731
    add((np.swapaxes,), _Spec(sw, rule=_Rule.NONE))
    mv = lambda e, p: e.f(torch.moveaxis, p["a"], p["source"], p["destination"])  # noqa: E731
    add((np.moveaxis,), _Spec(mv, rule=_Rule.NONE))
    add((np.expand_dims,), _Spec(_b_expand_dims, rule=_Rule.NONE))
    add((np.squeeze,), _Spec(_b_squeeze, rule=_Rule.NONE, allowed=("axis",)))
    add((np.ravel,), _Spec(_b_ravel, rule=_Rule.NONE, allowed=("order",)))
    add((np.concatenate,), _Spec(_b_concatenate, allowed=("axis", "dtype")))
    add((np.stack,), _Spec(_b_stack, allowed=("axis", "dtype")))
    add((np.hstack,), _Spec(_seq_fn(torch.hstack), allowed=("dtype",)))
    add((np.vstack,), _Spec(_seq_fn(torch.vstack), allowed=("dtype",)))
    add((np.split, np.array_split), _Spec(_b_split, rule=_Rule.NONE, allowed=("axis",)))
    add((np.flip,), _Spec(_b_flip, rule=_Rule.NONE, allowed=("axis",)))
    add((np.fliplr,), _Spec(lambda e, p: e.f(torch.fliplr, p["m"]), rule=_Rule.NONE))
    add((np.flipud,), _Spec(lambda e, p: e.f(torch.flipud, p["m"]), rule=_Rule.NONE))
    add((np.tile,), _Spec(_b_tile, rule=_Rule.NONE))
    add((np.repeat,), _Spec(_b_repeat, rule=_Rule.NONE, allowed=("axis",)))
    add((np.broadcast_to,), _Spec(_b_broadcast_to, rule=_Rule.NONE))
    add((np.copy,), _Spec(_b_same("a"), rule=_Rule.NONE))
    add((np.asarray, np.ascontiguousarray), _Spec(_b_same("a"), allowed=("dtype",)))
    add((np.array,), _Spec(_b_same("object"), allowed=("dtype", "copy")))
    specs[operator.getitem] = _Spec(_b_getitem, rule=_Rule.NONE, nocast=("key",))
    add((np.sort,), _Spec(_b_sort, rule=_Rule.NONE, allowed=("axis", "kind", "order", "stable")))

    # Factories: new arrays of sizes given (often read from `a.shape`), on the detour's device.
    make = ("dtype", "order")
    add((np.zeros,), _Spec(_b_factory(torch.zeros), rule=_Rule.NONE, allowed=make))
    add((np.ones,), _Spec(_b_factory(torch.ones), rule=_Rule.NONE, allowed=make))
    add((np.empty,), _Spec(_b_factory(torch.empty, arbitrary=True), rule=_Rule.NONE, allowed=make))
    add((np.full,), _Spec(_b_full, rule=_Rule.NONE, allowed=make))
    add((np.eye,), _Spec(_b_eye, rule=_Rule.NONE, allowed=("M", "k", *make)))
    add((np.identity,), _Spec(_b_eye, rule=_Rule.NONE, allowed=make))
    add((np.arange,), _Spec(_b_arange, rule=_Rule.NONE, allowed=("stop", "step", "dtype")))
    lin = ("num", "endpoint", "retstep", "dtype", "axis")
    add((np.linspace,), _Spec(_b_linspace, rule=_Rule.NONE, allowed=lin))

    add((np.dot,), _Spec(_b_dot))
    add((np.einsum,), _Spec(_b_einsum, allowed=("operands",)))
    add((np.outer,), _Spec(_b_outer))
    add((np.tensordot,), _Spec(_b_tensordot, allowed=("axes",)))
    add((np.linalg.norm,), _Spec(_b_norm, allowed=("ord", "axis", "keepdims")))
    like = ("dtype",)
    add((np.zeros_like,), _Spec(_b_like(torch.zeros_like), rule=_Rule.NONE, allowed=like))
    add((np.ones_like,), _Spec(_b_like(torch.ones_like), rule=_Rule.NONE, allowed=like))
    add((np.full_like,), _Spec(_b_like(torch.full_like, fill=True), rule=_Rule.NONE, allowed=like))

    # ndarray methods: the function of the same meaning, with the array as first argument.
    methods = {
        "sum": np.sum, "mean": np.mean, "prod": np.prod, "max": np.max, "min": np.min,
        "all": np.all, "any": np.any, "argmax": np.argmax, "argmin": np.argmin,
        "std": np.std, "var": np.var, "cumsum": np.cumsum, "cumprod": np.cumprod,
        "round": np.round, "clip": np.clip, "reshape": np.reshape, "transpose": np.transpose,
        "swapaxes": np.swapaxes, "squeeze": np.squeeze, "ravel": np.ravel,
        "flatten": np.ravel, "repeat": np.repeat, "copy": np.copy, "dot": np.dot,
    }  # fmt: skip
    return specs, methods


def _ufunc_method_spec(target: Any) -> tuple[_Spec, Callable] | None:
    """`np.add.reduce` -> np.sum with NumPy's default axis=0, and friends."""
    np = _np()
    ufunc, method = target._fxgrad_ufunc, target._fxgrad_ufunc_method
    as_function = {
        (np.add, "reduce"): np.sum, (np.multiply, "reduce"): np.prod,
        (np.maximum, "reduce"): np.max, (np.minimum, "reduce"): np.min,
        (np.logical_and, "reduce"): np.all, (np.logical_or, "reduce"): np.any,
        (np.add, "accumulate"): np.cumsum, (np.multiply, "accumulate"): np.cumprod,
    }.get((ufunc, method))  # fmt: skip
    if as_function is None:
        return None
    return _tables()[0][as_function], as_function


def _bind(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    np = _np()
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise _Unmapped(f"arguments it does not take here ({e})") from None
    out = {}
    for name, param in sig.parameters.items():
        if name in bound.arguments:
            value = bound.arguments[name]
            if param.kind is param.VAR_KEYWORD:
                if value:
                    raise _Unmapped(f"keyword arguments {sorted(value)}")
                continue
        else:
            value = param.default
        if value is np._NoValue or value is inspect.Parameter.empty:
            value = None
        out[name] = value
    out["__defaults__"] = {
        name: (None if p.default is np._NoValue else p.default)
        for name, p in sig.parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return out


def _check_allowed(p: dict, spec: _Spec, what: str) -> None:
    defaults = p.pop("__defaults__")
    for name, default in defaults.items():
        if name in spec.allowed or name not in p:
            continue
        value = p[name]
        if value is not default and not (
            isinstance(value, (bool, int, float, str, type(None))) and value == default
        ):
            raise _Unmapped(f"{what}(..., {name}=...) has no torch twin here")
