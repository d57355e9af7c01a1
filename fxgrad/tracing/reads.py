"""What a capture read from Python: module attributes, globals, closure cells, the tree.

Eager PyTorch reads `self.temperature`, a module-level `SCALE` or `self.config.flag` on
every call; a captured graph holds the value it saw. Dynamo's rule is the model here: each
Python value the trace read becomes a guard (fxgrad.view checks them on every call), so a
later change makes a new variant instead of a silently stale answer.

Reads of module attributes are recorded exactly: while tracing, each module of the twin
tree (a private copy: the user's modules are never touched) runs as an instance of a
subclass of its own class whose `__getattribute__` notes every read of a plain value from
the instance's `__dict__`. Globals and closure cells are read from the code of the module
classes the trace went through (their methods and the functions those name), which covers
what the forward can reach without being exact: a guard too many costs a new variant when
that value changes, never a wrong answer.
"""

from __future__ import annotations

import dis
import functools
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from fxgrad.graph_utils import is_internal
from fxgrad.tracing.names import ThreadStack

# Attributes nn.Module keeps for itself: the mode, the tables. What they say is guarded
# elsewhere (the key holds the training flags; the tree and hook guards the tables).
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"__dict__", "__class__"}


class ReadLog:
    """The plain values the forward read from modules of the twin tree, first reads only."""

    def __init__(self) -> None:
        self.reads: dict[tuple[int, str], tuple[nn.Module, str, Any]] = {}
        self.written: set[tuple[int, str]] = set()
        # (module id, name): numbers the forward writes (`self.step += 1`): read as graph
        # values, not guarded constants (see capture's second pass)
        self.live: set[tuple[int, str]] = set()
        self.active = True
        # Whether traced code read a module's `training` flag: when none did, the code is
        # the same in both modes (see fxgrad.check).
        self.mode_read = False

    def note(self, module: nn.Module, name: str, value: Any) -> None:
        key = (id(module), name)
        if key not in self.reads and key not in self.written:
            self.reads[key] = (module, name, value)


_LOGS = ThreadStack()  # (log, tracer) of the capture in progress in this thread


def _recording_getattribute(base: type[object]) -> Any:
    get = base.__getattribute__

    def __getattribute__(self: Any, name: str) -> Any:
        value = get(self, name)
        if name in _MODULE_INTERNALS or not _LOGS:
            if name == "training" and _LOGS:
                log, tracer = _LOGS[-1]
                if log.active and not tracer.in_propagation:
                    log.mode_read = True
            return value
        log, tracer = _LOGS[-1]
        if not log.active or tracer.in_propagation:
            return value
        d = get(self, "__dict__")
        if d.get(name, _MISSING) is not value or isinstance(value, (torch.Tensor, fx.Proxy)):
            return value  # a class attribute, a method, a property: not instance state
        if isinstance(value, nn.Module) or isinstance(value, types.MethodType):
            return value
        key = (id(self), name)
        if key in log.live and key not in log.written:
            return tracer.live_attribute(self, name)
        log.note(self, name, value)
        return value

    return __getattribute__


_MISSING = object()


@functools.cache
def recording_class(cls: type) -> type:
    """A subclass of `cls` that records plain attribute reads while a capture runs."""
    return type(
        cls.__name__,
        (cls,),
        {
            "__getattribute__": _recording_getattribute(cls),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__slots__": (),
            "_fxgrad_recording_of": cls,
        },
    )


def swap_in(modules: list[nn.Module]) -> list[tuple[nn.Module, type]]:
    """Make each twin module record its reads; return what to put back."""
    swapped = []
    for m in modules:
        cls: type = type(m)
        if "_fxgrad_recording_of" in cls.__dict__:
            continue
        try:
            object.__setattr__(m, "__class__", recording_class(cls))
        except TypeError:  # a class whose layout refuses it: its reads go unrecorded
            continue
        swapped.append((m, cls))
    return swapped


def swap_out(swapped: list[tuple[nn.Module, type]]) -> None:
    for m, cls in swapped:
        object.__setattr__(m, "__class__", cls)


def plain_attribute(value: Any) -> bool:
    """Numbers the forward writes back (`self.step += 1`) can be graph values."""
    return type(value) in (int, float)


# ---------------------------------------------------------------------------------------
# Globals and closure cells the traced code can read


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    names = []
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str):
            names.append(ins.argval)
    for const in code.co_consts:  # nested functions, comprehensions, lambdas
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return tuple(dict.fromkeys(names))


def _user_functions(cls: type) -> Iterator[types.FunctionType]:
    """Functions defined on a model class and its user-written bases."""
    for klass in cls.__mro__:
        if klass is nn.Module or klass is object:
            break
        module = getattr(klass, "__module__", "") or ""
        if module.startswith("torch.") or "_fxgrad_recording_of" in klass.__dict__:
            continue
        for value in vars(klass).values():
            fn = value
            if isinstance(value, (staticmethod, classmethod)):
                fn = value.__func__
            elif isinstance(value, property):
                fn = value.fget
            fn = getattr(fn, "__wrapped__", fn)
            if isinstance(fn, types.FunctionType) and not is_internal(fn.__code__.co_filename):
                yield fn


_MAX_FUNCTIONS = 400  # functions followed from one capture's classes


def global_reads(classes: list[type]) -> tuple[list[tuple[dict, str]], list[types.CellType]]:
    """(globals dict, name) pairs and closure cells the classes' code and helpers read."""
    pending = [fn for cls in dict.fromkeys(classes) for fn in _user_functions(cls)]
    seen: set[int] = set()
    globals_: dict[tuple[int, str], tuple[dict, str]] = {}
    cells: list[types.CellType] = []
    while pending and len(seen) < _MAX_FUNCTIONS:
        fn = pending.pop()
        if id(fn.__code__) in seen:
            continue
        seen.add(id(fn.__code__))
        if fn.__closure__:
            cells.extend(fn.__closure__)
        g = fn.__globals__
        for name in _global_names(fn.__code__):
            if name not in g:
                continue  # a builtin
            globals_.setdefault((id(g), name), (g, name))
            value = g[name]
            value = getattr(value, "__wrapped__", value)
            if isinstance(value, types.FunctionType) and not is_internal(
                value.__code__.co_filename
            ):
                pending.append(value)  # a helper the forward calls
    return list(globals_.values()), cells
