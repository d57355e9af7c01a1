"""Helpers that rewritten graphs call at run time.

Generated code and saved fixed modules refer to these by module path, so they stay here,
small and stable: moving one would break fixed modules saved by an earlier release.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from fxgrad.errors import FxgradError


def writable_piece(
    base: torch.Tensor, op: Any, args: tuple, kwargs: dict, index: int
) -> torch.Tensor:
    """Output `index` of `base.<op>(*args, **kwargs)` (split, chunk, unbind...) as a plain view.

    Autograd refuses in-place writes into outputs of functions that return several views;
    the same memory reached through `narrow`/`select` can be written. The offsets are read
    from this call's piece, so the view is right for inputs of any size.
    """
    if isinstance(base, fx.Proxy):  # a fixed graph being traced again: stay one call
        return base.tracer.create_proxy(
            "call_function", writable_piece, (base, op, args, kwargs, index), {}
        )
    pieces = (
        getattr(base, op)(*args, **kwargs) if isinstance(op, str) else op(base, *args, **kwargs)
    )
    piece = pieces[index]
    if piece.dim() == base.dim():
        dims = [d for d in range(base.dim()) if piece.shape[d] != base.shape[d]]
        d = dims[0] if dims else 0
        stride = base.stride(d)
        offset = (piece.storage_offset() - base.storage_offset()) // stride if stride else 0
        return base.narrow(d, offset, piece.shape[d])
    # unbind: one dimension fewer; find which one is gone
    for d in range(base.dim()):
        if base.shape[:d] + base.shape[d + 1 :] == piece.shape and (
            base.stride(d) == 0
            or (piece.storage_offset() - base.storage_offset()) == index * base.stride(d)
        ):
            return base.select(d, index)
    raise RuntimeError(f"cannot find output {index} of {op} as a view of its input")


# ---------------------------------------------------------------------------------------
# Guards: Python-level answers baked into the graph, checked on every call


class GuardError(FxgradError, RuntimeError):
    """A fixed module was called with inputs its captured graph was not specialised for."""


# How a Python-level question about a traced size is answered from its example value.
ANSWERS: dict[str, Callable[[Any], Any]] = {
    "bool": bool,
    "len": len,
    "index": operator.index,
    "int": int,
    "float": float,
    "value": lambda v: v,  # a dtype or device handed to torch.finfo / torch.iinfo
    "size": lambda v: v,  # a size turned into text (`str(x.shape[0])`, f"{h}x{w}")
}


def fxgrad_guard(value: Any, expected: Any, kind: str, where: str) -> None:
    """Check that a Python-level answer baked in at capture time still holds."""
    if isinstance(value, fx.Proxy):  # re-tracing a fixed graph: keep the guard
        value.tracer.create_proxy("call_function", fxgrad_guard, (value, expected, kind, where), {})
        return
    actual = ANSWERS[kind](value)
    if actual != expected:
        raise GuardError(
            f"The captured graph assumed {kind}(...) == {expected!r} at {where}, "
            f"but this call gives {actual!r}.",
            hint="A fixed module decides such a call on its own; this graph (one variant, "
            "run by itself, or a size that depends on the data) cannot serve it. Call the "
            "fixed module, or fxgrad.fix() again with inputs like this call's.",
        )


fxgrad_guard._fxgrad_side_effect = True  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------
# Custom autograd.Function calls become one opaque node

_apply_wrappers: dict[type[torch.autograd.Function], Callable] = {}


def function_apply(cls: type[torch.autograd.Function]) -> Callable:
    """Return a stable, importable-by-reference callable that runs `cls.apply`."""
    wrapper = _apply_wrappers.get(cls)
    if wrapper is None:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return cls.apply(*args, **kwargs)

        wrapper.__name__ = f"{cls.__name__}_apply"
        wrapper.__qualname__ = wrapper.__name__
        wrapper.__module__ = __name__
        wrapper._fxgrad_function = cls  # type: ignore[attr-defined]
        _apply_wrappers[cls] = wrapper
    return wrapper


# ---------------------------------------------------------------------------------------
# NumPy ufunc methods and dtype arguments, in a form generated code can hold

_ufunc_method_wrappers: dict[tuple[Any, str], Callable] = {}


def ufunc_method(ufunc: Any, method: str) -> Callable:
    """Return a stable callable for `ufunc.method` (`np.add.reduce`); fx cannot name bound ones."""
    key = (ufunc, method)
    wrapper = _ufunc_method_wrappers.get(key)
    if wrapper is None:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return getattr(ufunc, method)(*args, **kwargs)

        wrapper.__name__ = f"{ufunc.__name__}_{method}"
        wrapper.__qualname__ = wrapper.__name__
        wrapper.__module__ = __name__
        wrapper._fxgrad_ufunc = ufunc  # type: ignore[attr-defined]
        wrapper._fxgrad_ufunc_method = method  # type: ignore[attr-defined]
        _ufunc_method_wrappers[key] = wrapper
    return wrapper


# ---------------------------------------------------------------------------------------
# Autocast left on by a call that raised

_AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_state() -> tuple | None:
    """Autocast as it is now, to put back after a call that raised; None when it is off
    everywhere (the common case, one C call)."""
    if not torch._C._is_any_autocast_enabled():
        return None
    return (
        tuple(
            (d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d))
            for d in _AUTOCAST_DEVICES
        ),
        torch.is_autocast_cache_enabled(),
        _autocast_nesting(),
    )


def _autocast_nesting() -> int:
    level = torch.autocast_increment_nesting()
    torch.autocast_decrement_nesting()
    return level - 1


def restore_autocast(before: tuple | None) -> None:
    """Undo the autocast regions a generated forward entered and never left (it raised
    inside one): a model's error must not leave autocast on for the whole process."""
    if before is None and not torch._C._is_any_autocast_enabled():
        return
    devices, cache, nesting = before or (
        tuple((d, False, torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES),
        torch.is_autocast_cache_enabled(),
        0,
    )
    for device, enabled, dtype in devices:
        torch.set_autocast_enabled(device, enabled)
        torch.set_autocast_dtype(device, dtype)
    torch.set_autocast_cache_enabled(cache)
    for _ in range(_autocast_nesting() - nesting):
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
