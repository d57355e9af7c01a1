"""Twins of a module tree: new module objects, the same tensors, their own containers."""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import types
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx

from fxgrad.errors import FxgradError
from fxgrad.state import plain_object


def twin(module: torch.nn.Module, memo: dict[int, object] | None = None) -> torch.nn.Module:
    """Shallow-copy a module tree: new module objects, the same parameter and buffer tensors.

    The copy's `train()`/`eval()` and attribute changes never reach the user's module, while
    parameters and buffers stay shared, so an optimizer over either updates both.
    """
    top = memo is None
    memo = {} if memo is None else memo
    if id(module) in memo:
        done = memo[id(module)]
        assert isinstance(done, torch.nn.Module)  # a module's entry is its twin
        return done
    new = _twin_one(module, memo)
    if top:  # every twin exists now: point the hooks and containers at them
        for obj in list(memo.values()):
            if isinstance(obj, torch.nn.Module):
                _rebind_hooks(obj, memo)
                _rebind_containers(obj, memo)
    return new


def _rebind_containers(new: torch.nn.Module, memo: dict[int, object]) -> None:
    """Modules a twin reaches through a plain list or dict attribute (`self.layers = [...]`,
    each also registered with add_module, as transformers' UperNet does) are the twins
    too, so probing never runs the user's modules and never moves their statistics."""
    for k, v in list(new.__dict__.items()):
        if k in _MODULE_INTERNALS or type(v) not in _CONTAINERS:
            continue
        items = v.values() if isinstance(v, dict) else v
        if not any(isinstance(x, torch.nn.Module) for x in items):
            continue
        if isinstance(v, dict):
            for key, x in list(v.items()):
                if isinstance(x, torch.nn.Module):
                    v[key] = twin(x, memo)
        elif isinstance(v, list):
            v[:] = [twin(x, memo) if isinstance(x, torch.nn.Module) else x for x in v]


def _twin_one(module: torch.nn.Module, memo: dict[int, object]) -> torch.nn.Module:
    cls = type(module)
    new = None
    # mypy takes a class for unhashable where functools.cache wants Hashable (mypy#11470)
    if not _plain_copy(cls):  # type: ignore[arg-type]
        with contextlib.suppress(Exception):  # parametrized modules refuse to be copied
            new = copy.copy(module)  # the class copies itself its own way
    if new is None:  # what copy.copy does for a module, without the generic protocol
        new = cls.__new__(cls)
        new.__dict__.update(module.__dict__)
    else:  # its own copy may keep less (a GraphModule moves tensor attributes to buffers)
        for k, v in module.__dict__.items():
            new.__dict__.setdefault(k, v)
    memo[id(module)] = new
    for k, v in module.__dict__.items():
        # `self.forward = self.forward_fast` in __init__: bound to the twin, not the user's
        if isinstance(v, types.MethodType) and v.__self__ is module:
            new.__dict__[k] = types.MethodType(v.__func__, new)
    # What the forward may change in Python is the twin's own: containers it fills (a cache
    # dict, a list of past states), plain objects whose attributes it sets (a config's
    # `problem_type`), and the hook tables (a forward that installs hooks on first call).
    # Capturing and probing write proxies and probe tensors into them, which must never
    # reach the user's module. (The fixed module runs the user's own modules.)
    for k, v in module.__dict__.items():
        if k in _HOOK_TABLES:  # C-level .copy(): copy.copy of an OrderedDict is 10x slower
            new.__dict__[k] = v.copy() if type(v) in _CONTAINERS else copy.copy(v)
        elif k in _MODULE_INTERNALS:
            continue
        elif type(v) in _CONTAINERS:
            _refuse_proxies(v, k)
            new.__dict__[k] = v.copy()
        elif plain_object(v):
            new.__dict__[k] = _object_twin(v, memo)
    new.__dict__["_parameters"] = module._parameters.copy()
    new.__dict__["_buffers"] = module._buffers.copy()
    new.__dict__["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    new.__dict__["_modules"] = {
        k: (twin(v, memo) if v is not None else None) for k, v in module._modules.items()
    }
    return new


def _rebind_hooks(new: torch.nn.Module, memo: dict[int, object]) -> None:
    """A hook bound to a module of the tree (`self._record`), or a closure over a container
    (`seen.append`), records into the twin's copy while fxgrad probes, not the user's."""
    for k in _HOOK_TABLES:
        table = new.__dict__.get(k)
        if not isinstance(table, dict):
            continue
        for key, hook in list(table.items()):
            if callable(hook):
                table[key] = _hook_twin(hook, memo)


_RUN_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def model_hook_test(root: torch.nn.Module) -> Callable[[object], bool]:
    """A test telling a hook that is part of the model from one the user attached (see
    quiet_user_hooks)."""
    classes = {c for m in root.modules() for c in type(m).__mro__}
    names = {c.__qualname__ for c in classes}
    own = {c.__module__.split(".", 1)[0] for c in classes} - {"__main__", "builtins"}
    own.add("torch")
    return lambda hook: _model_hook(hook, own, names)


def traced_hook_test(root: torch.nn.Module) -> Callable[[object], bool]:
    """Forward hooks a capture runs inline, as part of the forward's data flow: those the
    model's own code defines (a function inside one of its classes, a method of one of its
    modules) and those of an installed library the model's classes come from (transformers'
    output capturing, which a forward installs on its first call). A hook written in the
    user's code, even in the model's package, is kept running on every call instead (its
    effects, a log or a counter, are not data flow); so are torch's own (weight norm)."""
    classes = {c for m in root.modules() for c in type(m).__mro__}
    names = {c.__qualname__ for c in classes}
    libraries = {
        c.__module__.split(".", 1)[0]
        for c in classes
        if _installed(c.__module__) and not c.__module__.startswith("torch")
    }
    return lambda hook: _model_hook(hook, libraries, names)


@functools.cache
def _installed(module_name: str) -> bool:
    import sys

    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None) or ""
    return "site-packages" in path or "dist-packages" in path


def quiet_user_hooks(root: torch.nn.Module) -> None:
    """Make the hooks the user added to a twin tree do nothing while fxgrad probes it.

    Deciding runs the twin's forward and backward several times; a user's forward hook
    that counts calls or logs outputs must see the user's calls only. Hooks that are part
    of the model keep running, as they compute what the forward returns: torch's own (weight
    norm's), methods of the model's modules, functions defined inside the model's classes
    (a hook registered in `__init__`), and hooks from the package the model's classes come
    from (transformers' output capturing). Each hook stays under its key, so which modules
    have hooks (and are kept as one call) is unchanged.
    """
    part_of_model = model_hook_test(root)
    for m in root.modules():
        for name in _RUN_HOOK_TABLES:
            table = m.__dict__.get(name)
            if not table:
                continue
            for key, hook in list(table.items()):
                if not part_of_model(hook):
                    table[key] = _silent


def _silent(*_args: object, **_kwargs: object) -> None:
    return None


def _model_hook(hook: object, packages: set[str], class_names: set[str]) -> bool:
    """Whether a hook is part of the model rather than something the user attached."""
    fn = hook.func if isinstance(hook, functools.partial) else hook
    if isinstance(fn, types.MethodType) and isinstance(fn.__self__, torch.nn.Module):
        return True
    fn = getattr(fn, "__func__", fn)
    if isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)):
        module, qualname = fn.__module__ or "", getattr(fn, "__qualname__", "")
    else:
        module, qualname = type(fn).__module__, type(fn).__qualname__
    return module.split(".", 1)[0] in packages or qualname.split(".", 1)[0] in class_names


def _hook_twin(hook: object, memo: dict[int, object]) -> object:
    if isinstance(hook, types.MethodType):
        owner = memo.get(id(hook.__self__))
        if owner is not None and owner is not hook.__self__:
            return types.MethodType(hook.__func__, owner)
        return hook
    if isinstance(hook, types.FunctionType) and hook.__closure__:
        cells = []
        for cell in hook.__closure__:
            try:
                v = cell.cell_contents
            except ValueError:  # an empty cell
                cells.append(cell)
                continue
            if type(v) in _CONTAINERS:
                v = memo.setdefault(id(v), copy.copy(v))
            elif id(v) in memo:
                v = memo[id(v)]
            else:
                cells.append(cell)
                continue
            cells.append(types.CellType(v))
        fn = types.FunctionType(
            hook.__code__, hook.__globals__, hook.__name__, hook.__defaults__, tuple(cells)
        )
        fn.__kwdefaults__ = hook.__kwdefaults__
        return fn
    return hook


_CONTAINERS = (dict, list, set, collections.OrderedDict, collections.defaultdict)
_MODULE_INTERNALS = frozenset(torch.nn.Module().__dict__)
_HOOK_TABLES = frozenset(k for k in _MODULE_INTERNALS if "hook" in k)


def _object_twin(v: object, memo: dict) -> object:
    """A shallow copy of a plain object, one per object however many modules share it."""
    hit = memo.get(id(v))
    if hit is None:
        try:
            hit = copy.copy(v)
        except Exception:
            hit = v  # it refuses to be copied: shared, as before
        memo[id(v)] = hit
    return hit


def _refuse_proxies(container: Iterable[Any], name: str) -> None:
    """An earlier torch.fx trace left a Proxy in the model's state: say so, plainly."""
    items = container.values() if isinstance(container, dict) else container
    try:
        found = any(isinstance(x, fx.Proxy) for x in items)
    except Exception:
        return
    if found:
        raise FxgradError(
            f"The model holds a torch.fx Proxy in self.{name}, left there by an earlier "
            "torch.fx trace of it; running the model would fail on it.",
            hint=f"Build the model again, or clear self.{name}, before fixing it.",
        )


@functools.cache
def _plain_copy(cls: type[torch.nn.Module]) -> bool:
    """Whether copy.copy of this module class just copies its __dict__ (nn.Module's way)."""
    return (
        cls.__reduce_ex__ is object.__reduce_ex__
        and cls.__reduce__ is object.__reduce__
        and cls.__getstate__ is torch.nn.Module.__getstate__
        and getattr(cls, "__copy__", None) is None
    )
