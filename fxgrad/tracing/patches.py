"""torch, NumPy and grad-mode entry points patched while tracing, so model code is recorded."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import torch
import torch.utils._pytree as pytree
import torch.utils.checkpoint as _checkpoint_module
from torch import fx

from fxgrad import ops
from fxgrad.errors import TraceError
from fxgrad.graph_utils import (
    ENTER_AUTOCAST,
    ENTER_INFERENCE_MODE,
    EXIT_AUTOCAST,
    EXIT_INFERENCE_MODE,
    is_internal,
)
from fxgrad.runtime import function_apply
from fxgrad.tracing.callspec import is_array
from fxgrad.tracing.names import ThreadStack, _is_stowed_name, finish
from fxgrad.tracing.numpy_args import _NUMPY_DATA_FUNCTIONS, _NUMPY_RANDOM, _NUMPY_RECORDED
from fxgrad.tracing.reads import _LOGS, _MODULE_INTERNALS

# ---------------------------------------------------------------------------------------
# Functions patched while tracing


def _has_proxy(tree: Any) -> bool:
    return any(isinstance(a, fx.Proxy) for a in pytree.tree_leaves(tree))


# The captures in progress, each seen by its own thread only (see ThreadStack).
_ACTIVE = ThreadStack()

_HOST_FUNCTIONS = ("from_numpy", "tensor", "as_tensor", "asarray")
# Functions that make a tensor. Called from model code they are recorded as calls whatever
# their arguments, so the fixed module makes a fresh tensor on every call, as eager does:
# a tensor made once at capture time and kept as a graph constant would be shared between
# calls (`mask = torch.ones(4); mask[i] = 0` writes into the same tensor every time,
# `acc = torch.zeros(4); acc += x` accumulates across calls) and a random draw would be
# the same on every call. Sizes read from `x.shape` stay symbolic as well.
# `tensor`/`as_tensor` are no ATen ops: they are named here, the rest come from
# fxgrad.ops (a schema with TensorOptions and no tensor values to read).
_DATA_FACTORIES = ("tensor", "as_tensor")


@functools.cache
def _factory_functions() -> tuple[str, ...]:
    """torch's tensor factories (zeros, rand, arange, zeros_like, the windows), read once."""
    found = [
        n
        for n in dir(torch)
        if not n.startswith("_") and callable(f := getattr(torch, n)) and ops.is_factory(f)
    ]
    return (*sorted(found), *_DATA_FACTORIES)


def _recorded_functions() -> tuple[str, ...]:
    return tuple(dict.fromkeys(_HOST_FUNCTIONS + _factory_functions()))


def _is_random_factory(fn: Any) -> bool:
    """A factory whose values differ from call to call: a Python question about their data
    cannot be answered once for all calls."""
    return ops.is_factory(fn) and ops.is_random(fn)


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
            traced = _has_proxy((args, kwargs))
            if traced and not _named_by_caller(orig):
                _refuse_hidden_call(orig)
            if traced or (_caller_is_model_code() and not _has_array((args, kwargs))):
                made = _ACTIVE[-1].record_factory(orig, args, kwargs)
                if made is not None:
                    return made
        return orig(*args, **kwargs)

    return wrapper


def _named_by_caller(fn: Callable) -> bool:
    """Whether the Python line calling us names `fn`: false when compiled code the model
    called (NumPy's random Generator, written in Cython) calls it on the model's behalf."""
    frame = sys._getframe(2)
    name = getattr(fn, "__name__", "")
    if name not in frame.f_code.co_names:
        return False
    import linecache

    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return not line or name in line  # no source to read (`python -c`): the code names it


def _refuse_hidden_call(fn: Callable) -> None:
    """Compiled code handed a traced value to a patched function: its result would reach
    that code as a traced value (NumPy's C code then crashes the process). The capture
    stops here instead, and the Dynamo front-end takes the forward."""
    tracer = _ACTIVE[-1]
    raise TraceError(
        f"The forward passes a traced value (a size) into compiled code at {tracer._where()} "
        f"that calls {getattr(fn, '__module__', '')}.{getattr(fn, '__name__', fn)} itself, "
        "which fxgrad cannot record.",
        hint="Pass plain ints (`int(n)`) to that call, or fix with frontend='dynamo'.",
    )


def _has_array(tree: Any) -> bool:
    """Whether a NumPy array is among the arguments: NumPy on constants, computed once."""
    return any(is_array(a) for a in pytree.tree_leaves(tree))


def _caller_is_model_code() -> bool:
    """Whether the function calling the patched factory is model code (not torch's own)."""
    return not is_internal(sys._getframe(2).f_code.co_filename)


def _traced_apply(cls: type[torch.autograd.Function], *args: Any, **kwargs: Any) -> Any:
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
                _note_write(mod, name)
                return
            if (
                _plain_state_write(name, value)
                and name not in mod._parameters
                and name not in mod._modules
                and tracer.record_module_setattr(mod, name, value)
            ):
                _note_write(mod, name)
                return
        orig(mod, name, value)

    return __setattr__


def _plain_state_write(name: str, value: Any) -> bool:
    """`self.step = 3`, `self.seen = True` in a forward: Python state eager writes on every
    call (tensors, modules and fxgrad's own constants are handled on their own)."""
    return not (
        _is_stowed_name(name)
        or name in _MODULE_INTERNALS
        or isinstance(value, (torch.Tensor, torch.nn.Module))
        or callable(value)
    )


def _note_write(mod: Any, name: str) -> None:
    if _LOGS:
        _LOGS[-1][0].written.add((id(mod), name))


def _called_from_user_code(depth: int = 3) -> bool:
    """True when the grad-mode switch comes from model code, not from torch itself.

    `depth` counts frames from this function to the caller of the switch; the context
    manager and decorator machinery in between is skipped.
    """
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None and frame.f_code.co_filename.endswith(
        ("_contextlib.py", "grad_mode.py", "contextlib.py", "autocast_mode.py")
    ):
        frame = frame.f_back
    return frame is not None and not is_internal(frame.f_code.co_filename)


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


def _replacements() -> tuple[dict[Any, Any], list[tuple[Any, str, Any]]]:
    """What each patched function is replaced by, and where it lives (module, name, value)."""
    replacements: dict[Any, Any] = {
        getattr(torch, n): _wrapped(_record_factory, getattr(torch, n))
        for n in _recorded_functions()
        if hasattr(torch, n)
    }
    replacements.update(
        {
            getattr(torch, n): _wrapped(_concrete_if_traced, getattr(torch, n))
            for n in _CONCRETE_FUNCTIONS
        }
    )
    replacements[_ORIG_CHECKPOINT] = _traced_checkpoint
    names = (*_recorded_functions(), *_CONCRETE_FUNCTIONS)
    places: list[tuple[Any, str, Any]] = [
        (torch, n, getattr(torch, n)) for n in names if hasattr(torch, n)
    ]
    places.append((_checkpoint_module, "checkpoint", _ORIG_CHECKPOINT))
    # `np.asarray(t.detach())` reads the tensor through __array__, which a traced value
    # cannot serve; recorded as a call, it enters the graph like `.numpy()` does. NumPy's
    # factories are recorded whenever model code calls them, as torch's are: an array made
    # once at capture time would be shared by every call (`m = np.zeros(4); m += a` would
    # accumulate), and a traced size (`np.zeros(a.shape)`) would be baked in.
    np = sys.modules.get("numpy")
    if np is not None:
        for n in _NUMPY_RECORDED:
            kind = _record_if_traced if n in _NUMPY_DATA_FUNCTIONS else _record_factory
            replacements[getattr(np, n)] = _wrapped(kind, getattr(np, n))
        for n in _NUMPY_RANDOM:
            replacements[getattr(np.random, n)] = _wrapped(_record_factory, getattr(np.random, n))
        places.extend((np, n, getattr(np, n)) for n in _NUMPY_RECORDED)
        places.extend((np.random, n, getattr(np.random, n)) for n in _NUMPY_RANDOM)
    return replacements, places


def _imported_by_name(
    modules: list[torch.nn.Module], replacements: dict[Any, Any]
) -> list[tuple[Any, str, Any]]:
    """Patched functions model code imported by name (`from torch import tensor`)."""
    places = []
    seen: set[int] = set()
    for mod in modules:
        if type(mod).__module__.startswith("torch."):
            continue  # torch.nn modules are leaves: their code is not traced
        g = getattr(getattr(type(mod), "forward", None), "__globals__", None)
        if g is None or id(g) in seen:
            continue
        seen.add(id(g))
        for name, value in g.items():
            if callable(value) and not isinstance(value, type(torch)):
                with contextlib.suppress(TypeError):
                    if value in replacements:
                        places.append((g, name, value))
    return places


def _assign(ns: Any, name: str, value: Any) -> None:
    if isinstance(ns, dict):
        ns[name] = value
    else:
        setattr(ns, name, value)


def _patch_classes(modules: list[torch.nn.Module], originals: list[tuple[type, str, Any]]) -> None:
    """Patch the model's classes and torch's grad-mode classes, noting in `originals` what
    to put back as each is patched (an interrupt halfway leaves nothing unrecorded)."""
    # Patched on the classes in the model, not on nn.Module: assigning to nn.Module
    # invalidates the attribute caches of its hundreds of subclasses, which cost more
    # than the rest of capturing a small model.
    for cls in dict.fromkeys(type(m) for m in modules):
        originals.append((cls, "__setattr__", cls.__dict__.get("__setattr__")))
        # A method patched on purpose, for the trace's duration (put back by _unpatch).
        cls.__setattr__ = _traced_module_setattr(cls.__setattr__)  # type: ignore[method-assign]
    for (cls, name), method in _GRAD_MODE_METHODS.items():
        originals.append((cls, name, cls.__dict__[name]))
        setattr(cls, name, method)


@contextlib.contextmanager
def _patched(
    modules: list[torch.nn.Module], cleanups: list[Callable[[], None]] | None = None
) -> Iterator[None]:
    """Patch torch entry points that plain tracing cannot see, for the trace's duration.

    The putting back is also added to `cleanups`, for a caller's own clean-up to run again
    (it is idempotent): an interrupt can land in this one's before it starts."""
    replacements, places = _replacements()
    places += _imported_by_name(modules, replacements)
    undo: list[tuple[Any, str, Any]] = []
    originals: list[tuple[type, str, Any]] = []
    if cleanups is not None:
        cleanups.append(lambda: _unpatch(originals, undo))
    try:
        for ns, name, value in places:
            new = replacements.get(value)
            if new is not None:
                undo.append((ns, name, value))
                _assign(ns, name, new)
        torch.autograd.function.Function.apply = classmethod(_traced_apply)
        _patch_classes(modules, originals)
        torch.is_grad_enabled = _traced_is_grad_enabled
        # Stand-ins that also take and record traced values; the stubs type the C originals.
        torch._C._set_grad_enabled = _traced_set_grad_enabled  # type: ignore[assignment]
        torch._C._InferenceMode = _TracedInferenceMode  # type: ignore[misc, assignment]
        yield
    finally:
        finish(lambda: _unpatch(originals, undo))


def _unpatch(originals: list[tuple[type, str, Any]], undo: list[tuple[Any, str, Any]]) -> None:
    """Put back everything `_patched` replaced (safe to run twice)."""
    for cls, name, method in reversed(originals):
        if method is None:
            if name in cls.__dict__:
                delattr(cls, name)  # it was inherited
        else:
            setattr(cls, name, method)
    torch._C._InferenceMode = _INFERENCE_MODE  # type: ignore[misc]  # put back: see _patched
    torch.is_grad_enabled = _IS_GRAD_ENABLED
    torch._C._set_grad_enabled = _SET_GRAD_ENABLED
    torch.autograd.function.Function.apply = _ORIG_APPLY
    for ns, name, value in reversed(undo):
        _assign(ns, name, value)
