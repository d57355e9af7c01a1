"""Faithful capture of an nn.Module's forward as a torch.fx graph.

Plain `torch.fx.symbolic_trace` loses or refuses what matters for autograd: item
assignment, augmented assignment (`z += 1` is recorded as `z + 1`), NumPy detours, custom
`autograd.Function`s (inlined, dropping their backward), grad-mode blocks, structured
inputs and outputs, and the shape idioms of real model code. `FxgradTracer` records all of
them, and with example inputs it also runs every recorded op on real values as it goes, so
Python-level questions (`len(x)`, `for t in x.chunk(3)`, `if x.dim() == 4`) get the answer
eager PyTorch would give, and a guard node in the graph says so loudly if a later call
would answer differently.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import copy
import dataclasses
import functools
import inspect
import itertools
import math
import operator
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
import torch.utils.checkpoint as _checkpoint_module
from torch import fx

from fxgrad.errors import FxgradError, TraceError
from fxgrad.graph_utils import (
    ENTER_AUTOCAST,
    ENTER_INFERENCE_MODE,
    EXIT_AUTOCAST,
    EXIT_INFERENCE_MODE,
    INPLACE_OPERATORS,
    SIDE_EFFECT_FUNCTIONS,
    _is_internal,
    find_submodule,
    user_frame_location,
)
from fxgrad.runtime import (  # noqa: F401  (re-exported: older pickles name them here)
    _ANSWERS,
    GuardError,
    function_apply,
    fxgrad_guard,
    ufunc_method,
)
from fxgrad.state import plain_tensor_attributes

CAPTURE_DOC = """\
# What capture records

fxgrad's tracer records what plain torch.fx.symbolic_trace loses or refuses:

- item assignment (`y[0] = 10`, `y[mask] = 0`) and augmented assignment (`z += 1`) as
  writes, so aliases see them;
- buffer reads and writes in forward (`self.calls += 1`, `self.ema = ...`);
- NumPy calls on traced values (`.numpy()`, `np.asarray(t)`, ufuncs, ndarray methods) and
  the way back (`torch.from_numpy`, `torch.tensor`, `torch.as_tensor`);
- custom `autograd.Function.apply` as one opaque call (its backward is kept);
- `torch.no_grad()`, `enable_grad()`, `set_grad_enabled()`, `inference_mode()` and
  `torch.autocast()` regions, as blocks or decorators, restoring the caller's mode;
- namedtuple / dict / list / dataclass inputs and outputs;
- shape idioms: `b, c, h, w = x.shape`, `for t in x.chunk(3)`, `len(x)`, `int(...)` of a
  size, `torch.zeros(b, t)` sized from shapes, `torch.finfo(x.dtype)`: answered from the
  example inputs, sizes kept symbolic, with a guard that raises if a later call differs;
- `self.training` branches: both modes are captured, `train()`/`eval()` pick the graph.

Kept as one call, not looked inside: torch.nn's own modules, a submodule with hooks (so
the hooks still run), and a submodule passed to `torch.utils.checkpoint.checkpoint`.

Cannot be captured: Python control flow on tensor values (`if x.sum() > 0:`), or code
that needs a real tensor where a traced value is (`isinstance(t, torch.Tensor)` asserts).
Remedies: move that code into a function marked with `torch.fx.wrap`, make its module a
leaf, use `torch.where` or masking so both branches are computed, or pass example inputs
when the question is about sizes.
"""

# ---------------------------------------------------------------------------------------
# Names the generated code reads

# The module whose forward was captured, as generated code reads it: `self._fxgrad_root`.
# Plain tensor attributes of that module (`self.n = torch.zeros(())` in `__init__`) are
# read and written through it on every call, so the fixed module shares them with the
# user's module rather than keeping a copy from capture time.
ROOT_ATTR = "_fxgrad_root"
# Objects fx cannot spell in code, kept as constants of the graph.
STOWED_PREFIX = "_fxgrad_const"
_STOWED_PREFIXES = (STOWED_PREFIX, "_tensor_constant", "_torchbind_obj", "_tree_spec_constant")


def _is_stowed_name(name: str) -> bool:
    """Whether fx (or fxgrad) made this attribute name to hold a constant of the graph."""
    return name.startswith(_STOWED_PREFIXES) or (name.startswith("_") and "_constant_" in name)


# ---------------------------------------------------------------------------------------
# What generated code calls lives in fxgrad.runtime (stable names for saved fixed modules);
# the names stay importable from here for code and pickles that used them.

SIDE_EFFECT_FUNCTIONS.add(fxgrad_guard)


# NumPy functions patched while tracing, recorded as calls when given a traced value.
_NUMPY_RECORDED = (
    "asarray",
    "array",
    "ascontiguousarray",
    "zeros",
    "ones",
    "empty",
    "full",
    "eye",
    "identity",
    "arange",
    "linspace",
)


def _numpy_dtype_names(tree: Any) -> Any:
    """Replace dtype-like leaves (`np.float32`, `float`, `np.dtype("int8")`) by their names.

    NumPy reads the name as the same dtype, and fx can put a string into generated code.
    """

    def name(a: Any) -> Any:
        if not (isinstance(a, type) or type(a).__module__.startswith("numpy")):
            return a
        if isinstance(a, type) and not (
            a in (bool, int, float, complex) or a.__module__.startswith("numpy")
        ):
            return a
        import numpy as np

        try:
            dt = np.dtype(a)
        except TypeError:
            return a
        return dt.name if np.dtype(dt.name) == dt else a

    return pytree.tree_map(name, tree)


def _takes_numpy_dtypes(kind: str, target: Any) -> bool:
    if kind == "call_method":
        return target == "astype"
    module = getattr(target, "__module__", None) or ""
    return kind == "call_function" and (
        type(target).__name__ == "ufunc"
        or module.startswith("numpy")
        or hasattr(target, "_fxgrad_ufunc")
    )


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
_META_METHODS = {
    "size",
    "dim",
    "numel",
    "ndimension",
    "nelement",
    "stride",
    "get_device",
    "is_floating_point",
    "is_complex",
    "is_signed",
    "is_contiguous",
    "element_size",
}
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
    if node.op == "call_method" and node.target in _META_METHODS:
        ok = True
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

    def __len__(self) -> int:
        return self.tracer.proxy_len(self)

    def __index__(self) -> int:
        return self.tracer.concretize(self, "index")

    def __int__(self) -> int:  # `int(x.shape[1] / 2)`
        return self.tracer.concretize(self, "int")

    def __float__(self) -> float:  # `float(x.size(-1))`
        return self.tracer.concretize(self, "float")

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


# ---------------------------------------------------------------------------------------
# Functions patched while tracing


def _has_proxy(tree: Any) -> bool:
    return any(isinstance(a, fx.Proxy) for a in pytree.tree_leaves(tree))


_ACTIVE: list[FxgradTracer] = []

_HOST_FUNCTIONS = ("from_numpy", "tensor", "as_tensor", "asarray")
# Functions that make a tensor. Called from model code they are recorded as calls whatever
# their arguments, so the fixed module makes a fresh tensor on every call, as eager does:
# a tensor made once at capture time and kept as a graph constant would be shared between
# calls (`mask = torch.ones(4); mask[i] = 0` writes into the same tensor every time,
# `acc = torch.zeros(4); acc += x` accumulates across calls) and a random draw would be
# the same on every call. Sizes read from `x.shape` stay symbolic as well.
_FACTORY_FUNCTIONS = (
    "zeros",
    "ones",
    "empty",
    "full",
    "rand",
    "randn",
    "randint",
    "randperm",
    "arange",
    "linspace",
    "logspace",
    "eye",
    "tril_indices",
    "triu_indices",
    "tensor",
    "as_tensor",
    "scalar_tensor",
    "empty_strided",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
    "rand_like",
    "randn_like",
    "randint_like",
    "normal",
)
_RECORDED_FUNCTIONS = tuple(dict.fromkeys(_HOST_FUNCTIONS + _FACTORY_FUNCTIONS))
# Factories whose values differ from call to call: a Python question about their data
# cannot be answered once for all calls.
_RANDOM_FACTORIES = {
    getattr(torch, n)
    for n in ("rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like")
    + ("normal",)
}
# Functions of a dtype that must return a real object (`torch.finfo(x.dtype).min`): given
# a traced dtype, they get the example's, and a guard checks it on every call.
_CONCRETE_FUNCTIONS = ("finfo", "iinfo")


def _concrete_if_traced(orig: Callable) -> Callable:
    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _ACTIVE and _has_proxy((args, kwargs)):
            tracer = _ACTIVE[-1]
            args, kwargs = pytree.tree_map(
                lambda a: tracer.concretize(a, "value") if isinstance(a, fx.Proxy) else a,
                (args, kwargs),
            )
        return orig(*args, **kwargs)

    return wrapper


_ORIG_CHECKPOINT = _checkpoint_module.checkpoint


@functools.wraps(_ORIG_CHECKPOINT)
def _traced_checkpoint(function: Any, *args: Any, **kwargs: Any) -> Any:
    """`checkpoint(self.block, x)` stays one checkpointed call in the fixed module.

    Traced through, the block's activations would be stored instead of recomputed: the same
    values and gradients, but the memory checkpointing saves would be gone, silently. A
    submodule is kept as a call; any other function is traced through and the report says so.
    """
    if not (_ACTIVE and not _ACTIVE[-1].in_propagation and _has_proxy((args, kwargs))):
        return _ORIG_CHECKPOINT(function, *args, **kwargs)
    return _ACTIVE[-1].record_checkpoint(function, args, kwargs)


def _record_if_traced(orig: Callable) -> Callable:
    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _ACTIVE and _has_proxy((args, kwargs)):
            return _ACTIVE[-1].create_proxy("call_function", orig, args, kwargs)
        return orig(*args, **kwargs)

    return wrapper


def _record_factory(orig: Callable) -> Callable:
    """A factory called from model code becomes a call node, constant arguments or not."""

    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _ACTIVE and not _ACTIVE[-1].in_propagation:
            if _has_proxy((args, kwargs)) or (
                _caller_is_model_code() and not _has_array((args, kwargs))
            ):
                made = _ACTIVE[-1].record_factory(orig, args, kwargs)
                if made is not None:
                    return made
        return orig(*args, **kwargs)

    return wrapper


def _has_array(tree: Any) -> bool:
    """Whether a NumPy array is among the arguments: NumPy on constants, computed once."""
    return any(
        type(a).__module__ == "numpy" and type(a).__name__ == "ndarray"
        for a in pytree.tree_leaves(tree)
    )


def _caller_is_model_code() -> bool:
    """Whether the function calling the patched factory is model code (not torch's own)."""
    return not _is_internal(sys._getframe(2).f_code.co_filename)


def _traced_apply(cls: type, *args: Any, **kwargs: Any) -> Any:
    if _ACTIVE and _has_proxy((args, kwargs)):
        return _ACTIVE[-1].create_proxy("call_function", function_apply(cls), args, kwargs)
    return _ORIG_APPLY.__get__(None, cls)(*args, **kwargs)


_ORIG_APPLY = torch.autograd.function.Function.__dict__["apply"]


def _traced_module_setattr(orig: Callable[[Any, str, Any], None]) -> Callable:
    """`self.buf = f(self.buf)` in a forward: module state the caller observes."""

    def __setattr__(mod: torch.nn.Module, name: str, value: Any) -> None:
        if _ACTIVE and not _ACTIVE[-1].in_propagation:
            tracer = _ACTIVE[-1]
            if not _is_stowed_name(name):  # fx stowing a constant
                # Ops recorded so far run on the example values before the module
                # changes, as in eager PyTorch (a leaf module may read what is rebound).
                tracer.run_pending()
            if isinstance(value, fx.Proxy) and tracer.record_module_setattr(mod, name, value):
                return
        orig(mod, name, value)

    return __setattr__


def _called_from_user_code(depth: int = 3) -> bool:
    """True when the grad-mode switch comes from model code, not from torch itself.

    `depth` counts frames from this function to the caller of the switch; the context
    manager and decorator machinery in between is skipped.
    """
    frame = sys._getframe(depth)
    while frame is not None and frame.f_code.co_filename.endswith(
        ("_contextlib.py", "grad_mode.py", "contextlib.py", "autocast_mode.py")
    ):
        frame = frame.f_back
    return frame is not None and not _is_internal(frame.f_code.co_filename)


def _record_grad_mode(mode: Any) -> bool:
    if _ACTIVE and not _ACTIVE[-1].in_propagation and _called_from_user_code():
        _ACTIVE[-1].enter_grad_mode(mode)
        return True
    return False


def _record_grad_restore(recorded: bool) -> None:
    if recorded and _ACTIVE:
        _ACTIVE[-1].exit_grad_mode()


_NoGrad, _EnableGrad, _SetGradEnabled = torch.no_grad, torch.enable_grad, torch.set_grad_enabled
_IS_GRAD_ENABLED, _SET_GRAD_ENABLED = torch.is_grad_enabled, torch._C._set_grad_enabled


def _from_generated_code() -> bool:
    return sys._getframe(2).f_code.co_filename.startswith("<eval_with_key")


def _traced_is_grad_enabled() -> Any:
    if _ACTIVE and not _ACTIVE[-1].in_propagation and _from_generated_code():
        return _ACTIVE[-1].create_proxy("call_function", _IS_GRAD_ENABLED, (), {})
    return _IS_GRAD_ENABLED()


def _traced_set_grad_enabled(mode: Any) -> Any:
    """Grad-mode switches in a fixed graph's own code, when that graph is traced again."""
    if _ACTIVE and not _ACTIVE[-1].in_propagation:
        if isinstance(mode, fx.Proxy) or _from_generated_code():
            return _ACTIVE[-1].create_proxy("call_function", _SET_GRAD_ENABLED, (mode,), {})
    return _SET_GRAD_ENABLED(mode)


def _grad_mode_methods() -> dict[tuple[type, str], Callable]:
    """Recording versions of the grad-mode context managers' methods.

    The classes themselves are patched (not the names `torch.no_grad` & co.), so every use
    records: a `with` block, `from torch import no_grad`, and methods decorated with
    `@torch.no_grad()` at import time, whose wrapper builds instances of the original class.
    The nested `torch.set_grad_enabled` calls these methods make come from fxgrad's frames,
    so they are not recorded twice.
    """

    def entering(mode: bool, enter: Callable) -> Callable:
        def method(self: Any) -> None:
            self._fxgrad_recorded = _record_grad_mode(mode)
            enter(self)

        return method

    def exiting(exit_: Callable) -> Callable:
        def method(self: Any, *exc: Any) -> None:
            _record_grad_restore(self.__dict__.pop("_fxgrad_recorded", False))
            exit_(self, *exc)

        return method

    sg_init = _SetGradEnabled.__init__

    def set_grad_init(self: Any, mode: Any) -> None:
        # A plain call (`torch.set_grad_enabled(False)`) switches for good; as a `with`
        # block, __exit__ restores the mode recorded here.
        self._fxgrad_recorded = _record_grad_mode(mode)
        sg_init(self, True if isinstance(mode, fx.Proxy) else bool(mode))
        self.mode = mode

    return {
        (_NoGrad, "__enter__"): entering(False, _NoGrad.__enter__),
        (_NoGrad, "__exit__"): exiting(_NoGrad.__exit__),
        (_EnableGrad, "__enter__"): entering(True, _EnableGrad.__enter__),
        (_EnableGrad, "__exit__"): exiting(_EnableGrad.__exit__),
        (_SetGradEnabled, "__init__"): set_grad_init,
        (_SetGradEnabled, "__exit__"): exiting(_SetGradEnabled.__exit__),
    }


_GRAD_MODE_METHODS = _grad_mode_methods()

_Autocast = torch.amp.autocast_mode.autocast


def _autocast_methods() -> dict[tuple[type, str], Callable]:
    """Recording versions of `torch.autocast`'s __enter__/__exit__.

    Plain tracing drops an autocast block, so the fixed module would compute it in the
    wrong precision: with example inputs the capture check refused the model, without
    them the change went unnoticed. From model code (a block or a decorated method) the
    region becomes enter/exit nodes; torch's own uses still switch autocast as usual.
    """
    enter, exit_, init = _Autocast.__enter__, _Autocast.__exit__, _Autocast.__init__

    def method_init(self: Any, *args: Any, **kwargs: Any) -> None:
        # `torch.autocast(device_type=x.device.type)`: answered from the example, guarded
        if _ACTIVE and _has_proxy((args, kwargs)):
            tracer = _ACTIVE[-1]
            args, kwargs = pytree.tree_map(
                lambda a: tracer.concretize(a, "value") if isinstance(a, fx.Proxy) else a,
                (args, kwargs),
            )
        init(self, *args, **kwargs)

    def method_enter(self: Any) -> Any:
        if _ACTIVE and not _ACTIVE[-1].in_propagation and _called_from_user_code(2):
            args = (self.device, self.fast_dtype, self._enabled, self._cache_enabled)
            self._fxgrad_handle = _ACTIVE[-1].create_proxy(
                "call_function", ENTER_AUTOCAST, args, {}
            )
            return self
        return enter(self)

    def method_exit(self: Any, *exc: Any) -> Any:
        handle = self.__dict__.pop("_fxgrad_handle", None)
        if handle is None:
            return exit_(self, *exc)
        if _ACTIVE:
            _ACTIVE[-1].create_proxy("call_function", EXIT_AUTOCAST, (handle,), {})
        return False

    return {
        (_Autocast, "__init__"): method_init,
        (_Autocast, "__enter__"): method_enter,
        (_Autocast, "__exit__"): method_exit,
    }


_GRAD_MODE_METHODS.update(_autocast_methods())


_INFERENCE_MODE = torch._C._InferenceMode
# Recorded mode switches that value propagation skips: it runs under no_grad and in full
# precision, which gives the same shapes.
_MODE_SWITCHES = (
    _SET_GRAD_ENABLED,
    ENTER_INFERENCE_MODE,
    EXIT_INFERENCE_MODE,
    ENTER_AUTOCAST,
    EXIT_AUTOCAST,
)


class _TracedInferenceMode:
    """Stands in for `torch._C._InferenceMode` while tracing.

    `torch.inference_mode()` (as a block, a decorator or `_enter_inference_mode`) builds one
    of these; from model code it records the region as enter/exit nodes, so the fixed module
    computes it without autograd as eager does. Dropping it would let gradients flow where
    eager has none.
    """

    def __init__(self, mode: bool = True) -> None:
        self.mode = mode
        self._handle: Any = None
        self._real: Any = None

    def __enter__(self) -> None:
        if _ACTIVE and not _ACTIVE[-1].in_propagation and _called_from_user_code(2):
            self._handle = _ACTIVE[-1].create_proxy(
                "call_function", ENTER_INFERENCE_MODE, (self.mode,), {}
            )
        else:
            self._real = _INFERENCE_MODE(self.mode)
            self._real.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            if _ACTIVE:
                _ACTIVE[-1].create_proxy("call_function", EXIT_INFERENCE_MODE, (self._handle,), {})
            self._handle = None
        elif self._real is not None:
            self._real.__exit__(*exc)
            self._real = None


_WRAPPERS: dict[tuple[Callable, int], tuple[Callable, Callable]] = {}


def _wrapped(kind: Callable[[Callable], Callable], orig: Callable) -> Callable:
    """kind(orig), made once per function: the wrappers only act while a trace is active."""
    key = (kind, id(orig))
    hit = _WRAPPERS.get(key)
    if hit is None or hit[0] is not orig:
        hit = _WRAPPERS[key] = (orig, kind(orig))
    return hit[1]


@contextlib.contextmanager
def _patched(modules: list[torch.nn.Module]) -> Iterator[None]:
    """Patch torch entry points that plain tracing cannot see, for the trace's duration."""
    replacements: dict[Any, Any] = {
        getattr(torch, n): _wrapped(_record_factory, getattr(torch, n))
        for n in _RECORDED_FUNCTIONS
        if hasattr(torch, n)
    }
    replacements.update(
        {
            getattr(torch, n): _wrapped(_concrete_if_traced, getattr(torch, n))
            for n in _CONCRETE_FUNCTIONS
        }
    )
    replacements[_ORIG_CHECKPOINT] = _traced_checkpoint
    # `np.asarray(t.detach())` reads the tensor through __array__, which a traced value
    # cannot serve; recorded as a call, it enters the graph like `.numpy()` does. NumPy's
    # factories given a traced size (`np.zeros(a.shape)`, `np.eye(n)`, `np.arange(n)`) are
    # recorded too: NumPy would read the size as the example's number, baking it in.
    np = sys.modules.get("numpy")
    np_names = _NUMPY_RECORDED if np is not None else ()
    for n in np_names:
        replacements[getattr(np, n)] = _wrapped(_record_if_traced, getattr(np, n))
    undo: list[tuple[Any, str, Any]] = []
    originals: list[tuple[type, str, Any]] = []
    names = (*_RECORDED_FUNCTIONS, *_CONCRETE_FUNCTIONS)
    targets = [(torch, n, getattr(torch, n)) for n in names if hasattr(torch, n)]
    targets.append((_checkpoint_module, "checkpoint", _ORIG_CHECKPOINT))
    targets.extend((np, n, getattr(np, n)) for n in np_names)
    # Model code may have imported them by name (`from torch import tensor`).
    seen: set[int] = set()
    for mod in modules:
        if type(mod).__module__.startswith("torch."):
            continue  # torch.nn modules are leaves: their code is not traced
        g = getattr(getattr(type(mod), "forward", None), "__globals__", None)
        if g is not None and id(g) not in seen:
            seen.add(id(g))
            for name, value in g.items():
                if callable(value) and not isinstance(value, type(torch)):
                    with contextlib.suppress(TypeError):
                        if value in replacements:
                            targets.append((g, name, value))
    try:
        for ns, name, value in targets:
            new = replacements.get(value)
            if new is None:
                continue
            undo.append((ns, name, value))
            if isinstance(ns, dict):
                ns[name] = new
            else:
                setattr(ns, name, new)
        torch.autograd.function.Function.apply = classmethod(_traced_apply)
        # Patched on the classes in the model, not on nn.Module: assigning to nn.Module
        # invalidates the attribute caches of its hundreds of subclasses, which cost more
        # than the rest of capturing a small model.
        classes = list(dict.fromkeys(type(m) for m in modules))
        setattrs = [(cls, cls.__dict__.get("__setattr__"), cls.__setattr__) for cls in classes]
        for cls, _own, resolved in setattrs:
            originals.append((cls, "__setattr__", _own))
            cls.__setattr__ = _traced_module_setattr(resolved)
        torch.is_grad_enabled = _traced_is_grad_enabled
        torch._C._set_grad_enabled = _traced_set_grad_enabled
        torch._C._InferenceMode = _TracedInferenceMode
        for (cls, name), method in _GRAD_MODE_METHODS.items():
            originals.append((cls, name, cls.__dict__[name]))
            setattr(cls, name, method)
        yield
    finally:
        for cls, name, method in reversed(originals):
            if method is None:
                delattr(cls, name)  # it was inherited
            else:
                setattr(cls, name, method)
        torch._C._InferenceMode = _INFERENCE_MODE
        torch.is_grad_enabled = _IS_GRAD_ENABLED
        torch._C._set_grad_enabled = _SET_GRAD_ENABLED
        torch.autograd.function.Function.apply = _ORIG_APPLY
        for ns, name, value in reversed(undo):
            if isinstance(ns, dict):
                ns[name] = value
            else:
                setattr(ns, name, value)


# ---------------------------------------------------------------------------------------
# The tracer


def has_hooks(m: torch.nn.Module) -> bool:
    """Whether a module has forward or backward hooks of its own registered."""
    return any(
        getattr(m, name, None)
        for name in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    )


class FxgradTracer(fx.Tracer):
    """A Tracer that records mutations, NumPy calls and grad modes, and propagates values.

    With `values` (example leaves by placeholder), recorded ops are also run on real values
    under `no_grad`, which answers `len()`, iteration and shape branches exactly. They run
    lazily, in recording order, when the forward first asks such a question: a forward
    that never asks one (most models) costs no extra run of the model.
    """

    def __init__(self, leaves: list[Any] | None, in_spec: pytree.TreeSpec, sig_kinds: Any):
        super().__init__()  # autowraps `math` functions, as plain fx does
        self.proxy_buffer_attributes = True  # buffer reads and writes become graph nodes
        self._leaves = leaves
        self._in_spec = in_spec
        self._call = sig_kinds
        self._values: dict[fx.Node, Any] = {}
        self._pending: list[fx.Node] = []  # recorded, not yet run on the example values
        self._propagate = leaves is not None
        self.in_propagation = False
        self.propagation_error: BaseException | None = None
        self.propagation_node: fx.Node | None = None
        self._grad_stack: list[fx.Proxy] = []
        self.notes: list[str] = []
        self._meta_memo: dict[fx.Node, bool] = {}
        self.out_spec: pytree.TreeSpec | None = None
        self.placeholder_leaf_index: list[int] = []
        # (id(module), name) of plain tensor attributes, held in the buffer table while
        # tracing so that reading them gives a traced value (see capture()).
        self.plain_attributes: set[tuple[int, str]] = set()

    # -- nodes ----------------------------------------------------------------------------

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return FxgradProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, *rest, **kw):  # noqa: ANN001
        if _takes_numpy_dtypes(kind, target):
            args, kwargs = _numpy_dtype_names((args, kwargs))
        return super().create_proxy(kind, target, args, kwargs, *rest, **kw)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):  # noqa: ANN001
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind not in ("placeholder", "output"):
            loc = user_frame_location(2)
            if loc is not None:
                node.meta["fxgrad_loc"] = loc
        if self._propagate and kind not in ("placeholder", "output"):
            if kind == "get_attr":
                self._run_node(node)  # read now: the forward may rebind the attribute later
            else:
                self._pending.append(node)
        return node

    def run_pending(self) -> None:
        """Run the recorded ops not yet run on the example values, in recording order.

        In-place ops and RNG draws happen in the order the forward made them, so every
        value is what eager PyTorch computes at that point of the forward.
        """
        pending, self._pending = self._pending, []
        for node in pending:
            if not self._propagate:
                break
            self._run_node(node)

    def _run_node(self, node: fx.Node) -> None:
        def value_of(a: Any) -> Any:
            if isinstance(a, fx.Node):
                if a not in self._values:
                    raise KeyError(a)
                return self._values[a]
            return a

        try:
            args = fx.node.map_aggregate(node.args, value_of)
            kwargs = fx.node.map_aggregate(node.kwargs, value_of)
        except KeyError:
            return
        self.in_propagation = True
        # Under no_grad, switched by the C functions themselves: torch.no_grad() is patched
        # to record, and entering it once per node was a good part of propagation's cost.
        prev = torch._C.is_grad_enabled()
        _SET_GRAD_ENABLED(False)
        try:
            if node.op == "get_attr":
                obj: Any = self.root
                for atom in str(node.target).removeprefix(ROOT_ATTR + ".").split("."):
                    obj = getattr(obj, atom)
                value = obj
            elif node.op == "call_module":
                value = find_submodule(self.root, node.target)(*args, **kwargs)
            elif node.op == "call_method":
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
            elif node.target in _MODE_SWITCHES:
                value = None  # keep propagation itself under no_grad
            else:
                value = node.target(*args, **kwargs)
        except Exception as e:  # the capture check reproduces this against eager
            self._propagate = False
            self.propagation_error = e
            self.propagation_node = node
            return
        finally:
            _SET_GRAD_ENABLED(prev)
            self.in_propagation = False
        self._values[node] = value

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self.in_propagation:
            return attr_val  # running real values: modules see their real parameters
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_arg(self, a: Any) -> Any:
        try:
            return super().create_arg(a)
        except (NotImplementedError, NameError):  # NameError: a parameter of no submodule
            # An object fx cannot spell in code (a torch.Generator, a NumPy array, a user
            # object passed to a recorded call): kept as a constant the graph reads, the
            # very object eager would use, as fx does for tensors.
            qualname = self.get_fresh_qualname(STOWED_PREFIX)
            object.__setattr__(self.root, qualname, a)
            return self.create_node("get_attr", qualname, (), {})

    def record_factory(self, fn: Callable, args: tuple, kwargs: dict) -> fx.Proxy | None:
        """Record a tensor factory called from model code; None if it cannot be recorded."""
        try:
            proxy = self.create_proxy("call_function", fn, args, kwargs)
        except Exception:
            return None  # an argument fx cannot hold: made once, as before
        if not self._propagate and fn not in _RANDOM_FACTORIES and not _has_proxy((args, kwargs)):
            # Without example inputs its value is still known (it depends on no input), so
            # `len()` of it or iterating over it is answered as eager would.
            with contextlib.suppress(Exception):
                prev = torch._C.is_grad_enabled()
                _SET_GRAD_ENABLED(False)
                try:
                    self._values[proxy.node] = fn(*args, **kwargs)
                finally:
                    _SET_GRAD_ENABLED(prev)
        return proxy

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if super().is_leaf_module(m, module_qualified_name):
            return True
        if module_qualified_name and has_hooks(m):
            # Traced through, its hooks would never run in the fixed module (a feature
            # extractor's forward hook, a weight-norm pre-hook): kept as one call instead.
            note = (
                f"self.{module_qualified_name} has hooks, so it is kept as one call and its "
                "hooks still run; fxgrad does not look inside it"
            )
            if note not in self.notes:
                self.notes.append(note)
            return True
        return False

    def call_module(self, m, forward, args, kwargs):  # noqa: ANN001
        if self.in_propagation:
            return forward(*args, **kwargs)
        try:
            self.path_of_module(m)
        except NameError:
            return self._call_unowned(m, forward, args, kwargs)
        return super().call_module(m, forward, args, kwargs)

    def _call_unowned(self, m, forward, args, kwargs):  # noqa: ANN001
        """A module that is no submodule of the model: held in a global, built inline.

        torch.nn's own modules (`nn.ReLU()(x)` in a forward) and modules with hooks become
        one call of that very module object, kept as a constant of the graph; any other
        module's forward is traced through, as the model's own code is.
        """
        if super().is_leaf_module(m, "") or has_hooks(m):
            name = self.get_fresh_qualname(STOWED_PREFIX)
            object.__setattr__(self.root, name, m)
            return self.create_proxy("call_module", name, args, kwargs)
        return forward(*args, **kwargs)

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):  # noqa: ANN001
        in_spec, call = self._in_spec, self._call
        n_leaves = in_spec.num_leaves
        consts = call.constants
        placeholders: list[Any] = []
        for i in range(n_leaves):
            if i in consts:
                placeholders.append(consts[i])
                continue
            name = call.leaf_names[i]
            proxy = self.create_proxy("placeholder", name, (), {})
            self.placeholder_leaf_index.append(i)
            if self._leaves is not None:
                self._values[proxy.node] = self._leaves[i]
            placeholders.append(proxy)

        own = self.root.__dict__.get("forward") if isinstance(self.root, torch.nn.Module) else None
        if callable(own):  # `self.forward = self.forward_fast` in __init__ wins, as in eager

            def root_fn(root: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
                return root.__dict__["forward"](*args, **kwargs)

        def flat_forward(root: torch.nn.Module, *_: Any) -> tuple[Any, ...]:
            args, kwargs = pytree.tree_unflatten(placeholders, in_spec)
            out = root_fn(root, *args, **kwargs)
            _register_dataclasses(out)
            leaves, self.out_spec = pytree.tree_flatten(out)
            return tuple(leaves)

        return flat_forward, [self.root]

    # -- Python-level questions ------------------------------------------------------------

    def _where(self) -> str:
        loc = user_frame_location(3)
        if loc is None:
            return "an unknown line"
        import os

        return f"{os.path.basename(loc[0])}:{loc[1]}"

    def concretize(self, proxy: fx.Proxy, kind: str) -> Any:
        """Answer bool()/index() of a size-like proxy from the example values, guarded."""
        node = proxy.node
        if not _is_meta_expr(node, self._meta_memo):
            raise _control_flow_error(self._where(), kind)
        self.run_pending()
        if node not in self._values:
            raise TraceError(
                f"The forward needs a concrete {kind} of a shape, dtype or device at "
                f"{self._where()}, "
                "and without example inputs fxgrad cannot know it.",
                hint="Pass example inputs: fxgrad.fix(model, (x,)). The graph then "
                "checks on every call that the answer still holds.",
            )
        value = self._values[node]
        answer = _ANSWERS[kind](value)
        self.create_proxy("call_function", fxgrad_guard, (proxy, answer, kind, self._where()), {})
        return answer

    def to_bool(self, obj: fx.Proxy) -> bool:
        return self.concretize(obj, "bool")

    def _length(self, proxy: fx.Proxy) -> int:
        node = proxy.node
        self.run_pending()
        if node in self._values:
            try:
                n = len(self._values[node])
            except TypeError:
                n = None
            if n is not None:
                self.create_proxy(
                    "call_function", fxgrad_guard, (proxy, n, "len", self._where()), {}
                )
                return n
        static = _static_length(node)
        if static is not None:
            return static
        raise TraceError(
            f"The forward takes len() of, or iterates over, a traced value at {self._where()} "
            "and fxgrad cannot tell its length without example inputs.",
            hint="Pass example inputs: fxgrad.fix(model, (x,)); or unpack a fixed number "
            "of items (`a, b = x.chunk(2)`).",
        )

    def proxy_len(self, proxy: fx.Proxy) -> int:
        return self._length(proxy)

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        n = self._length(obj)
        return iter([obj[i] for i in range(n)])

    # -- module state written in forward -------------------------------------------------

    def record_module_setattr(self, mod: torch.nn.Module, name: str, value: fx.Proxy) -> bool:
        """Record `mod.name = value` as a graph node so the fixed module keeps the write."""
        try:
            path = self.path_of_module(mod)
        except NameError:
            return False
        plain = (id(mod), name) in self.plain_attributes
        if name in mod._buffers and not plain:
            target = f"{path}._buffers" if path else "_buffers"
            holder = self.create_proxy("get_attr", target, (), {})
            self.create_proxy("call_function", operator.setitem, (holder, name, value), {})
            mod._buffers[name] = value  # later reads in this forward see the new value
            return True
        # The module itself, as generated code reads it: a plain attribute the forward
        # rebinds (`self.state = h.detach()`) is rebound on the user's module, as in eager.
        owner = self.create_proxy("get_attr", path or ROOT_ATTR, (), {})
        self.create_proxy("call_function", builtins.setattr, (owner, name, value), {})
        if plain:
            mod._buffers[name] = value  # read back through the buffer table while tracing
        else:
            mod.__dict__[name] = value
        return True

    # -- activation checkpointing -----------------------------------------------------------

    def record_checkpoint(self, function: Any, args: tuple, kwargs: dict) -> Any:
        path = None
        if isinstance(function, torch.nn.Module):
            with contextlib.suppress(NameError):
                path = self.path_of_module(function)
        if path:
            holder = self.create_proxy("get_attr", path, (), {})
            return self.create_proxy("call_function", _ORIG_CHECKPOINT, (holder, *args), kwargs)
        self.notes.append(
            f"torch.utils.checkpoint at {self._where()} was traced through: the fixed module "
            "computes the same values and gradients but keeps the activations checkpointing "
            "would recompute (more memory); pass a submodule to checkpoint() to keep it"
        )
        own = {"use_reentrant", "context_fn", "determinism_check", "debug", "preserve_rng_state"}
        return function(*args, **{k: v for k, v in kwargs.items() if k not in own})

    # -- grad-mode regions ------------------------------------------------------------------

    def enter_grad_mode(self, mode: Any) -> None:
        prev = self.create_proxy("call_function", _IS_GRAD_ENABLED, (), {})
        self._grad_stack.append(prev)
        self.create_proxy("call_function", _SET_GRAD_ENABLED, (mode,), {})

    def exit_grad_mode(self) -> None:
        if self._grad_stack:
            prev = self._grad_stack.pop()
            self.create_proxy("call_function", _SET_GRAD_ENABLED, (prev,), {})


def _static_length(node: fx.Node) -> int | None:
    """Length of a call result that its arguments alone determine (`x.split([2, 3])`)."""
    target = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if node.op not in ("call_method", "call_function"):
        return None
    if target in ("split", "split_with_sizes"):
        sizes = node.kwargs.get("split_size_or_sections", node.kwargs.get("split_sizes"))
        if sizes is None and len(node.args) > 1:
            sizes = node.args[1]
        if isinstance(sizes, (list, tuple)):
            return len(sizes)
    return None


def _control_flow_error(where: str, kind: str) -> TraceError:
    return TraceError(
        f"The forward uses the value of a tensor in Python control flow at {where} "
        f"({kind}() of data computed by the model), which a graph cannot capture.",
        hint="Move the data-dependent part into a function marked with torch.fx.wrap, "
        "make its module a leaf module, fix the branch with concrete_args, or use "
        "torch.where / masking so both branches are computed.",
    )


def _register_dataclasses(tree: Any) -> None:
    """Make dataclass outputs and inputs pytree nodes so they are rebuilt exactly."""
    stack = [tree]
    while stack:
        obj = stack.pop()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            if cls not in pytree.SUPPORTED_NODES:
                with contextlib.suppress(ValueError, TypeError):
                    pytree.register_dataclass(cls)
            stack.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())


# ---------------------------------------------------------------------------------------
# Capture entry point


@dataclass
class CallSpec:
    """How one call's arguments map to graph placeholders and baked constants.

    It describes the call as it was made, positional and keyword arguments as the caller
    passed them, with no default filled in: the forward is traced by calling it that way,
    so decorators that merge defaults of their own see what eager PyTorch gives them.
    """

    signature: inspect.Signature | None
    in_spec: pytree.TreeSpec
    leaf_names: list[str]
    constants: dict[int, Any] = field(default_factory=dict)

    def unflatten(self, leaves: list[Any]) -> tuple[tuple, dict]:
        """Rebuild (args, kwargs) of a call from its non-constant leaves, in order."""
        it = iter(leaves)
        full = [
            self.constants[i] if i in self.constants else next(it)
            for i in range(self.in_spec.num_leaves)
        ]
        return pytree.tree_unflatten(full, self.in_spec)

    def flatten(self, args: tuple, kwargs: dict) -> list[Any]:
        """The non-constant leaves of a call made with this structure, in placeholder order."""
        leaves = pytree.tree_leaves((args, kwargs))
        return [leaf for i, leaf in enumerate(leaves) if i not in self.constants]


def _same_constant(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return a is b


def _leaf_names(
    spec: pytree.TreeSpec, signature: inspect.Signature | None, args: tuple, n: int
) -> list[str]:
    """Name each input leaf after its forward parameter: `x`, `batch_image`, `xs_1`."""
    paths, _ = pytree.tree_flatten_with_path(pytree.tree_unflatten([0] * n, spec))
    params = list(signature.parameters.values()) if signature is not None else []
    star = next((i for i, p in enumerate(params) if p.kind == p.VAR_POSITIONAL), None)
    positional_params = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]

    def positional(k: int) -> str:
        if star is not None and k >= star:
            return f"{params[star].name}_{k - star}"
        return positional_params[k].name if k < len(positional_params) else f"arg{k}"

    names = []
    for path, _leaf in paths:
        parts: list[str] = []
        for i, entry in enumerate(path[1:]):
            key = getattr(entry, "idx", getattr(entry, "key", getattr(entry, "name", None)))
            if i == 0 and path[0].idx == 0 and isinstance(key, int):
                parts.append(positional(key))
            else:
                parts.append(str(key))
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in "_".join(parts))
        if not name or not (name[0].isalpha() or name[0] == "_"):
            name = f"input_{name}"
        names.append(name)
    return names


def _signature(model: torch.nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None


def call_spec(
    model: torch.nn.Module, args: tuple | None, kwargs: dict | None = None
) -> tuple[CallSpec, list]:
    """Describe a call of the forward: pytree structure, placeholder names, baked constants.

    With `args` None (no example inputs) every parameter of forward without a default gets
    a placeholder, and the others keep their defaults.
    """
    signature = _signature(model)
    kwargs = dict(kwargs or {})
    if args is None:
        static = []
        for p in signature.parameters.values() if signature is not None else ():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is p.empty:
                static.append(_StaticLeaf(p.name))
        args = tuple(static)
    else:
        _register_dataclasses((args, kwargs))
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as e:
                raise FxgradError(
                    f"The example inputs do not match the model's forward signature: {e}.",
                    hint=f"Pass one entry per argument of forward{signature}: "
                    "fxgrad.fix(model, (x,)) or fxgrad.fix(model, (x,), {'mask': m}).",
                ) from None
    leaves, spec = pytree.tree_flatten((tuple(args), kwargs))
    constants = {
        i: leaf
        for i, leaf in enumerate(leaves)
        if not isinstance(leaf, (torch.Tensor, _StaticLeaf)) and not _is_array(leaf)
    }
    names = _dedupe(_leaf_names(spec, signature, args, len(leaves)))
    return CallSpec(signature, spec, names, constants), leaves


def _is_array(x: Any) -> bool:
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray"


class _StaticLeaf:
    def __init__(self, name: str) -> None:
        self.name = name


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}_{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def twin(
    module: torch.nn.Module, memo: dict[int, torch.nn.Module] | None = None
) -> torch.nn.Module:
    """Shallow-copy a module tree: new module objects, the same parameter and buffer tensors.

    The copy's `train()`/`eval()` and attribute changes never reach the user's module, while
    parameters and buffers stay shared, so an optimizer over either updates both.
    """
    memo = {} if memo is None else memo
    if id(module) in memo:
        return memo[id(module)]
    cls = type(module)
    new = None
    if not _plain_copy(cls):
        with contextlib.suppress(Exception):  # parametrized modules refuse to be copied
            new = copy.copy(module)  # the class copies itself its own way
    if new is None:  # what copy.copy does for a module, without the generic protocol
        new = cls.__new__(cls)
        new.__dict__.update(module.__dict__)
    memo[id(module)] = new
    for k, v in module.__dict__.items():
        # `self.forward = self.forward_fast` in __init__: bound to the twin, not the user's
        if isinstance(v, types.MethodType) and v.__self__ is module:
            new.__dict__[k] = types.MethodType(v.__func__, new)
    # Python containers the forward may fill (a cache dict, a list of past states) are the
    # twin's own: capturing and probing write proxies and probe tensors into them, which
    # must never reach the user's module. nn.Module's own tables (hooks above all) stay
    # shared, so hooks registered later still run.
    for k, v in module.__dict__.items():
        if type(v) in _CONTAINERS and k not in _MODULE_INTERNALS:
            new.__dict__[k] = copy.copy(v)
    new.__dict__["_parameters"] = module._parameters.copy()
    new.__dict__["_buffers"] = module._buffers.copy()
    new.__dict__["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    new.__dict__["_modules"] = {
        k: (twin(v, memo) if v is not None else None) for k, v in module._modules.items()
    }
    return new


_CONTAINERS = (dict, list, set, collections.OrderedDict, collections.defaultdict)
_MODULE_INTERNALS = frozenset(torch.nn.Module().__dict__)


@functools.cache
def _plain_copy(cls: type) -> bool:
    """Whether copy.copy of this module class just copies its __dict__ (nn.Module's way)."""
    return (
        cls.__reduce_ex__ is object.__reduce_ex__
        and cls.__reduce__ is object.__reduce__
        and cls.__getstate__ is torch.nn.Module.__getstate__
        and getattr(cls, "__copy__", None) is None
    )


@dataclass
class Captured:
    """A captured graph with what is needed to call it like the original forward."""

    gm: fx.GraphModule
    call: CallSpec
    out_spec: pytree.TreeSpec
    leaf_index: list[int]
    propagation_error: BaseException | None = None
    notes: list[str] = field(default_factory=list)


def capture(
    root: torch.nn.Module,
    call: CallSpec,
    leaves: list | None,
) -> Captured:
    """Trace `root` (a twin of the user's module) into a GraphModule.

    Raises TraceError naming the user's line when the forward cannot be captured.
    """
    tracer = FxgradTracer(leaves, call.in_spec, call)
    modules = list(root.modules())
    state = [(m, m._buffers.copy(), m.__dict__.copy()) for m in modules]
    # Plain tensor attributes (`self.n = torch.zeros(())` in __init__) are read as traced
    # values, like buffers: fx would run `self.n.add_(1)` once at capture time on the real
    # tensor and record nothing. They sit in the buffer table while tracing, and the graph
    # reads and writes them as the plain attributes they are.
    for m in modules:
        for name in plain_tensor_attributes(m):
            m._buffers[name] = m.__dict__.pop(name)
            tracer.plain_attributes.add((id(m), name))
    _ACTIVE.append(tracer)
    error: Exception | None = None
    try:
        with _patched(modules):
            graph = tracer.trace(root)
    except Exception as e:
        error = e
    finally:
        _ACTIVE.pop()
        for m, buffers, attrs in state:  # undo what tracing assigned to the twin
            if _same_items(m._buffers, buffers) and _same_items(m.__dict__, attrs):
                continue  # most modules: nothing assigned
            m._buffers.clear()
            m._buffers.update(buffers)
            added = [k for k in m.__dict__ if k not in attrs and not _is_stowed_name(k)]
            for k in added:
                del m.__dict__[k]
            for k, v in attrs.items():
                if m.__dict__.get(k) is not v:
                    m.__dict__[k] = v
    if error is not None:
        # Did the model itself fail on the example values before capture did? Then that
        # is the error to report (the twin is restored, so the ops see the real modules).
        with contextlib.suppress(Exception):
            tracer.run_pending()
    tracer._values.clear()
    if error is not None:
        if tracer.propagation_error is not None:
            raise _model_error(tracer.propagation_error, tracer.propagation_node) from error
        if isinstance(error, FxgradError):
            raise error
        raise _trace_error(error) from error
    # Built empty and given the graph afterwards: fx would copy every module the graph
    # calls into a hierarchy of its own (a third of tracing time on a model of many small
    # modules), and the graph resolves targets through the shared module tree instead, so
    # .to()/.cuda() on the fixed module (which replaces buffer objects) is seen by it.
    gm = fx.GraphModule({}, fx.Graph(), class_name=type(root).__name__)
    gm.training = root.training
    gm.__dict__["_modules"] = root._modules
    gm.__dict__["_parameters"] = root._parameters
    gm.__dict__["_buffers"] = root._buffers
    gm.__dict__[ROOT_ATTR] = root
    _place_attribute_reads(graph, root, gm)
    gm.graph = graph  # generates and compiles the code
    if graph._tracer_cls is not None and "<locals>" not in graph._tracer_cls.__qualname__:
        gm._tracer_cls = graph._tracer_cls  # as fx.GraphModule.__init__ records it
    return Captured(
        gm,
        call,
        tracer.out_spec,
        tracer.placeholder_leaf_index,
        tracer.propagation_error,
        tracer.notes,
    )


_CONSTANT_IDS = itertools.count()


def fresh_constant_name() -> str:
    """A process-wide unique attribute name for a constant a graph reads."""
    return f"{STOWED_PREFIX}{next(_CONSTANT_IDS)}"


def _place_attribute_reads(graph: fx.Graph, root: torch.nn.Module, gm: fx.GraphModule) -> None:
    """Point each get_attr node at what the fixed module will read on every call.

    Constants fx stowed on the root (a global tensor, a generator) move to the graph module
    under names unique in the process, so fixed modules of several calls can hold them side
    by side. A plain attribute of the root (`self.n`) is read through the root itself, so
    the fixed module reads and writes the user's attribute, not a copy from capture time.
    """
    for node in graph.nodes:
        if node.op not in ("get_attr", "call_module"):
            continue
        name = str(node.target)
        first = name.split(".", 1)[0]
        if _is_stowed_name(first) and first in root.__dict__:
            value = root.__dict__.pop(first)
            new = fresh_constant_name()
            gm.__dict__[new] = value
            node.target = new + name[len(first) :]
        elif (
            node.op == "get_attr"
            and first in root.__dict__
            and not (
                first in root._parameters
                or first in root._buffers
                or first in root._modules
                or first in ("_buffers", "_parameters", "_modules", ROOT_ATTR)
            )
        ):
            node.target = f"{ROOT_ATTR}.{name}"


def _same_items(now: dict, before: dict) -> bool:
    """Whether a dict holds the very same keys and objects as its earlier copy (C speed)."""
    return now.keys() == before.keys() and all(map(operator.is_, now.values(), before.values()))


def _trace_error(e: Exception) -> TraceError:
    where = _innermost_user_line(e)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "symbolically traced variables cannot be used as inputs to control flow" in str(e):
        return _control_flow_error(where, "bool")
    if "Proxy" in msg and ("iter" in msg or "len" in msg):
        hint = (
            "Pass example inputs so fxgrad can tell lengths, or unpack a fixed number "
            "of items (`a, b = x.chunk(2)`)."
        )
    else:
        hint = (
            "Make the module that does this a leaf module, wrap the function with "
            "torch.fx.wrap, or fix the value with concrete_args; `fxgrad explain capture` "
            "says what capture supports."
        )
    return TraceError(
        f"fxgrad could not capture the forward at {where}: {type(e).__name__}: {msg}", hint=hint
    )


def _model_error(e: BaseException, node: fx.Node | None) -> FxgradError:
    import os

    loc = node.meta.get("fxgrad_loc") if node is not None else None
    where = f"{os.path.basename(loc[0])}:{loc[1]}" if loc else "an unknown line"
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return FxgradError(
        f"The model raises {type(e).__name__} in forward on the example inputs at {where}: {first}",
        hint="Check that the example inputs have the shapes, dtypes and devices the model "
        "expects; fxgrad needs a forward that runs in eager PyTorch.",
    )


def _innermost_user_line(e: BaseException) -> str:
    import os
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    for fr in reversed(frames):
        if not _is_internal(fr.filename):
            return f"{os.path.basename(fr.filename)}:{fr.lineno}"
    return "an unknown line"
