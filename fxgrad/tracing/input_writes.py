"""Writes a traced forward makes to the objects it was called with.

A forward may change what it is given: a key/value cache object gets its layers filled
(`cache.update(k, v)`), a list passed in gets features appended. fx records tensor
operations, not Python writes, so a graph captured from such a forward would give the
outputs and silently leave the caller's object as it was, where eager changes it. The trace
watches the objects of the call: what a forward writes to them refuses the capture (the
Dynamo front-end, which replays such writes, takes the forward), and everything is put back
either way, so a trace leaves no traced value in an object the caller keeps.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch
from torch import fx

_DEPTH = 6  # how deep objects inside objects are followed (as ObjectBox does)
_LIMIT = 10_000  # objects watched at most: an argument is not a whole program's state

# Never walked into: values, and what the capture of the module tree already watches.
_OPAQUE = (
    torch.Tensor,
    fx.Proxy,
    torch.nn.Module,
    type,
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.ModuleType,
    str,
    bytes,
    int,
    float,
    complex,
    bool,
    type(None),
)


class InputWrites:
    """What the objects reachable from a call hold, by identity, before the forward runs."""

    def __init__(self, args: tuple, kwargs: dict, signature: inspect.Signature | None) -> None:
        # (object, the path it was reached by, "attributes" or "items", what it held)
        self.kept: list[tuple[Any, str, str, Any]] = []
        seen: set[int] = set()
        stack = [(v, name, _DEPTH) for name, v in _named(args, kwargs, signature)]
        while stack and len(self.kept) < _LIMIT:
            obj, path, depth = stack.pop()
            if depth == 0 or isinstance(obj, _OPAQUE) or id(obj) in seen:
                continue
            seen.add(id(obj))
            held = _held(obj)
            if held is None:
                continue
            self.kept.append((obj, path, held[0], held[1]))
            stack.extend((v, path + step, depth - 1) for step, v in _children(held))

    def changed(self) -> list[str]:
        """What the forward wrote, by the path the caller reaches it by (`cache.layers[0].keys`)."""
        out: dict[str, None] = {}
        for obj, path, kind, before in self.kept:
            now = _held(obj)
            if now is None or not _same(now[1], before):
                out.update(dict.fromkeys(_describe(path, kind, before, now[1] if now else None)))
        return list(out)

    def restore(self) -> None:
        """Put every watched object back as it was (a no-op where nothing was written)."""
        for obj, _, kind, before in reversed(self.kept):
            now = _held(obj)
            if now is not None and _same(now[1], before):
                continue
            if kind == "attributes":
                vars(obj).clear()
                vars(obj).update(before)
            elif isinstance(obj, list):
                obj[:] = before
            elif isinstance(obj, dict):
                obj.clear()
                obj.update(before)
            elif isinstance(obj, set):
                obj.clear()
                obj.update(before)


def _named(args: tuple, kwargs: dict, signature: inspect.Signature | None) -> list[tuple]:
    """(name, value) of a call's arguments: forward's parameter names where known."""
    positional = [
        p.name
        for p in (signature.parameters.values() if signature is not None else ())
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    named = [
        (positional[i] if i < len(positional) else f"argument {i + 1}", a)
        for i, a in enumerate(args)
    ]
    return named + [(str(k), v) for k, v in kwargs.items()]


def _held(obj: Any) -> tuple[str, Any] | None:
    """What an object holds, copied shallowly: its items, or its attributes."""
    if isinstance(obj, (list, dict, set)):
        return "items", (obj.copy() if not isinstance(obj, list) else list(obj))
    if isinstance(obj, tuple):
        return "items", obj  # immutable, but it may hold mutable objects
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        return "attributes", dict(attributes)
    return None


def _children(held: tuple[str, Any]) -> list[tuple[str, Any]]:
    """(path step, value) for what an object holds: `.name`, `[0]`, `['key']`."""
    kind, before = held
    if kind == "attributes":
        return [(f".{k}", v) for k, v in before.items()]
    if isinstance(before, dict):
        return [(f"[{k!r}]", v) for k, v in before.items()]
    if isinstance(before, set):
        return [("'s items", v) for v in before]
    return [(f"[{i}]", v) for i, v in enumerate(before)]


def _same(now: Any, before: Any) -> bool:
    """Equal by identity, item by item: no __eq__ runs (a traced value has none to run)."""
    if type(now) is not type(before) or len(now) != len(before):
        return False
    if isinstance(now, dict):
        return now.keys() == before.keys() and all(now[k] is before[k] for k in now)
    if isinstance(now, set):
        return {id(v) for v in now} == {id(v) for v in before}
    return all(a is b for a, b in zip(now, before))


def _describe(path: str, kind: str, before: Any, now: Any) -> list[str]:
    if kind == "attributes" and isinstance(now, dict):
        names = [k for k in now if k not in before or now[k] is not before[k]]
        names += [k for k in before if k not in now]
        return [f"{path}.{k}" for k in names] or [f"{path}'s attributes"]
    return [f"the items of {path}"]
