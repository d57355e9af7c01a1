"""A fixed module is a view of the user's model: the Python it read is checked per call.

A capture reads Python values as well as tensors: `self.temperature`, `if self.use_extra`,
`self.config.flag`, a module-level `SCALE`, a closure cell, which submodules sit where, and
which hooks each traced-through module has. Each becomes a guard here (Dynamo's rule: a
guard for every Python value the trace read); a call where one fails gets a variant decided
on it, and its report says what changed.

Checking must cost next to nothing when nothing changed. Two watches make that so:
- the module tree (`TreeWatch`, one per fixed module): the version tags of the `__dict__`
  and `_modules` of every module that has submodules, read in C. An attribute set, a
  `train()`, an `insert`, a `_modules[name] = ...` swap changes one of them; a module built
  elsewhere in the process changes none. The tree's epoch moves only then.
- a variant's own values (`ViewGuard`): the version tags of the dicts its reads came from
  (modules with recorded reads, globals, config objects), plus the few values that can
  change without any dict changing (a list, a closure cell), compared directly.
When both are unchanged a call checks a handful of integers; otherwise every guard of the
variant is compared once, and the versions are taken anew if they hold.
"""

from __future__ import annotations

import collections
import enum
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from fxgrad.dict_versions import dict_version as _dict_version
from fxgrad.guards import Identity
from fxgrad.state import plain_object

_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


# ---------------------------------------------------------------------------------------
# Snapshots: what "the same value" means for a guard

_SCALARS = (int, float, bool, str, bytes, complex, type(None), torch.dtype, torch.device)
_MAX_ITEMS = 1000
_MAX_DEPTH = 4


def snapshot(value: Any, watch: list[dict] | None = None, depth: int = 0) -> Any:
    """A comparable copy of a value: scalars by value, containers and plain objects
    (a config) by contents, everything else (functions, tensors, modules) by identity.

    Dicts met on the way are added to `watch`: their version tags tell cheaply when the
    snapshot has to be compared again.
    """
    t = type(value)
    if t in _SCALARS or isinstance(value, enum.Enum):
        if t is float and math.isnan(value):
            return (float, "nan")
        return (t, value)
    if depth < _MAX_DEPTH:
        if t in (tuple, list) and len(value) <= _MAX_ITEMS:
            return (t, tuple(snapshot(v, watch, depth + 1) for v in value))
        if t in (set, frozenset) and len(value) <= _MAX_ITEMS:
            return (t, frozenset(snapshot(v, watch, depth + 1) for v in value))
        if isinstance(value, dict) and len(value) <= _MAX_ITEMS:
            if watch is not None:
                watch.append(value)
            return (
                t,
                tuple((snapshot(k), snapshot(v, watch, depth + 1)) for k, v in value.items()),
            )
        if plain_object(value) and len(vars(value)) <= _MAX_ITEMS:
            d = vars(value)
            if watch is not None:
                watch.append(d)
            items = tuple((k, snapshot(v, watch, depth + 1)) for k, v in d.items())
            return (t, Identity(value), items)
    return Identity(value)


def _show(s: Any) -> str:
    """A snapshot as a person reads it: the value for scalars, the type otherwise."""
    if isinstance(s, tuple) and len(s) == 2 and s[0] in _SCALARS:
        return repr(s[1])
    if isinstance(s, tuple) and len(s) == 2 and s[0] is float:
        return "nan"
    if isinstance(s, tuple) and s and isinstance(s[0], type):
        return f"a {s[0].__name__}"
    return repr(s)


_ABSENT = object()


# ---------------------------------------------------------------------------------------
# The module tree


class TreeWatch:
    """Tells, in one pass of C reads, whether a module tree changed in Python.

    Watches the `__dict__` and `_modules` of the root and of every module that has
    submodules: attribute sets, mode switches, submodule inserts, swaps and deletes all
    land in one of them. `modules` lists every module of the tree, walked anew when the
    epoch moves.
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.epoch = 0
        self._walk()

    def _walk(self) -> None:
        mods = [self.root, *walk_modules(self.root._modules)]
        self.modules = mods
        inner = [m for m in mods if m._modules or m is self.root]
        self.dicts = [d for m in inner for d in (m.__dict__, m._modules)]
        self.versions = tuple(map(_dict_version, self.dicts))

    def check(self) -> int:
        """The tree's epoch: unchanged when nothing in the watched dicts changed."""
        if tuple(map(_dict_version, self.dicts)) != self.versions:
            self._walk()
            self.epoch += 1
        return self.epoch


def walk_modules(modules: dict[str, nn.Module | None]) -> Iterator[nn.Module]:
    """Every module below a `_modules` table, each once, parents before their children."""
    seen: set[int] = set()
    stack = [m for m in reversed(modules.values()) if m is not None]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        yield m
        stack.extend(c for c in reversed(m._modules.values()) if c is not None)


def module_at(root: nn.Module, path: str) -> nn.Module | None:
    m: Any = root
    for atom in path.split(".") if path else ():
        m = m._modules.get(atom, _ABSENT) if isinstance(m, nn.Module) else _ABSENT
        if m is _ABSENT or m is None:
            return None
    return m


# ---------------------------------------------------------------------------------------
# A variant's guards


@dataclass
class Guard:
    """One Python fact a decision read: where it lives, and its value then."""

    what: str  # as a person reads it: "self.temperature", "global SCALE"
    read: Callable[[nn.Module], Any]  # the current value, from the user's root module
    expected: Any  # its snapshot
    always: bool = False  # can change without any watched dict changing (a list, a cell)
    raw: bool = False  # `read` gives the comparable value itself

    def holds(self, root: nn.Module) -> bool:
        try:
            now = self.read(root)
        except Exception:
            return False
        return (now if self.raw else snapshot(now)) == self.expected

    def describe(self, root: nn.Module) -> str:
        if self.raw:
            return self.what
        try:
            now = _show(snapshot(self.read(root)))
        except Exception:
            now = "missing"
        return f"{self.what} ({_show(self.expected)} -> {now})"


@dataclass
class ViewGuard:
    """The Python facts one variant assumed, with cheap re-checking (see module doc)."""

    guards: list[Guard] = field(default_factory=list)
    watched: list[dict] = field(default_factory=list)
    hooks: bool = False  # a traced-through module's hook tables are among the guards
    epoch: int = -1
    versions: tuple = ()
    hook_id: int = -1

    def __post_init__(self) -> None:
        self.always = [g for g in self.guards if g.always]

    def holds(self, root: nn.Module, epoch: int) -> bool:
        if (
            epoch == self.epoch
            and (not self.hooks or RemovableHandle.next_id == self.hook_id)
            and (not self.watched or tuple(map(_dict_version, self.watched)) == self.versions)
        ):
            return not self.always or all(g.holds(root) for g in self.always)
        if not all(g.holds(root) for g in self.guards):
            return False
        self.epoch = epoch
        self.versions = tuple(map(_dict_version, self.watched))
        self.hook_id = RemovableHandle.next_id  # moves whenever any hook is registered
        return True

    def changed(self, root: nn.Module) -> list[str]:
        """The facts that no longer hold, in words."""
        return [g.describe(root) for g in self.guards if not g.holds(root)]


def _on_module(path: str, read_one: Callable[[nn.Module], Any]) -> Callable[[nn.Module], Any]:
    """A reader of something about the module at `path` of the tree it is given."""

    def read(root: nn.Module) -> Any:
        m = module_at(root, path)
        if m is None:
            raise LookupError(path)
        return read_one(m)

    return read


def _attribute(path: str, name: str) -> Callable[[nn.Module], Any]:
    return _on_module(path, lambda m: m.__dict__.get(name, _ABSENT))


def _children(path: str) -> Callable[[nn.Module], Any]:
    return _on_module(path, lambda m: tuple((k, Identity(v)) for k, v in m._modules.items()))


def _hook_keys(path: str) -> Callable[[nn.Module], Any]:
    return _on_module(path, lambda m: tuple(tuple(m.__dict__.get(t) or ()) for t in _HOOK_TABLES))


def _global(g: dict, name: str) -> Callable[[nn.Module], Any]:
    return lambda _root: g.get(name, _ABSENT)


def _cell(cell: types.CellType) -> Callable[[nn.Module], Any]:
    def read(_root: nn.Module) -> Any:
        try:
            return cell.cell_contents
        except ValueError:
            return _ABSENT

    return read


def _where(path: str, name: str) -> str:
    return f"{_label(path)}.{name}"


_MUTABLE = (list, set, collections.deque, bytearray)


def build(
    root: nn.Module,
    attributes: list[tuple[str, str]],
    globals_: list[tuple[dict, str]],
    cells: list[types.CellType],
    traced: list[str],
) -> ViewGuard:
    """The guards for what one capture read, resolved on the user's module `root`.

    `attributes` are (module path, name) reads, `globals_` (globals dict, name) pairs and
    `cells` closure cells the traced code can read, `traced` the paths of the modules the
    trace went through (whose submodules and hooks it depends on).
    """
    guards: list[Guard] = []
    watched: list[dict] = []

    def add(what: str, read: Callable[[nn.Module], Any], watch_dict: dict | None) -> None:
        value = read(root)
        seen: list[dict] = []
        expected = snapshot(value, seen)
        always = isinstance(value, _MUTABLE)
        if watch_dict is not None:
            watched.append(watch_dict)
        watched.extend(seen)
        guards.append(Guard(what, read, expected, always or watch_dict is None))

    for path, name in attributes:
        m = module_at(root, path)
        if m is None:
            continue
        add(_where(path, name), _attribute(path, name), m.__dict__)
    for g, name in globals_:
        value = g.get(name, _ABSENT)
        if isinstance(value, types.ModuleType):
            continue  # `torch`, `F`, `np`: a module object is not the model's state
        where = g.get("__name__", "?")
        add(f"global {name} (in {where})", _global(g, name), g)
    for cell in cells:
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, (types.ModuleType, type)) or isinstance(value, nn.Module):
            continue
        add("a closure variable", _cell(cell), None)
    for path, m in root.named_modules(remove_duplicate=False):
        if m._modules or not path:  # a module holding others: which, and in what order
            children = _children(path)
            guards.append(
                Guard(f"the submodules of {_label(path)}", children, children(root), raw=True)
            )
    for path in dict.fromkeys(traced):
        if path and module_at(root, path) is not None:
            # The root's own hooks run around the graph whatever they are; a traced-through
            # module's hooks would not run, so a hooked one is kept as a call when captured.
            keys = _hook_keys(path)
            guards.append(Guard(f"the hooks of {_label(path)}", keys, keys(root), raw=True))
    return ViewGuard(guards, _dedupe(watched), hooks=any(traced))


def _label(path: str) -> str:
    return f"self.{path}" if path else "self"


def _dedupe(dicts: list[dict]) -> list[dict]:
    seen: set[int] = set()
    out = []
    for d in dicts:
        if id(d) not in seen:
            seen.add(id(d))
            out.append(d)
    return out
