"""fx's cache of generated source, emptied of what fixing made and no longer uses.

Every time fx compiles a graph's code it keeps the source, and an entry in `linecache` so
tracebacks can show it, for the life of the process. Deciding one call compiles several
graphs (the capture, each pass's edits, the variant, the code bound to its submodules), so
a process that fixes many models (a test suite, a sweep) grew by five entries, with the
generated source and a copy of its globals, per `fix()`.

`deciding()` notes the keys this thread's compilations make while it is open and, at its
end, drops those of graphs nothing uses any more; `keep(gm)` marks the code of a graph the
fixed module holds, dropped when that graph is collected. Compilations in other threads
are never touched.
"""

from __future__ import annotations

import functools
import linecache
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch
from torch import fx
from torch.fx import graph_module as _graph_module


class _Loader(Protocol):
    """What is read and patched of fx's private source cache (graph_module._loader)."""

    eval_cache: dict[str, str]
    cache: Callable[..., str]


# None in a torch without the loader: nothing to clean.
_LOADER: _Loader | None = getattr(_graph_module, "_loader", None)

_LOCAL = threading.local()
_KEPT: set[str] = set()


def _noting_cache(orig: Any) -> Any:
    def cache(*args: Any, **kwargs: Any) -> str:
        key = orig(*args, **kwargs)
        made = getattr(_LOCAL, "made", None)
        if made is not None:
            made.append(key)
        return key

    cache.fxgrad_notes = True  # type: ignore[attr-defined]
    return cache


if _LOADER is not None and hasattr(_LOADER, "cache") and hasattr(_LOADER, "eval_cache"):
    if not getattr(_LOADER.cache, "fxgrad_notes", False):
        _LOADER.cache = _noting_cache(_LOADER.cache)
else:  # pragma: no cover
    _LOADER = None


def _forget(key: str) -> None:
    _KEPT.discard(key)
    if _LOADER is not None:
        _LOADER.eval_cache.pop(key, None)
    linecache.cache.pop(key, None)


def _key_of(gm: fx.GraphModule) -> str | None:
    code = getattr(type(gm).__dict__.get("forward"), "__code__", None)
    return code.co_filename if code is not None else None


def keep(gm: fx.GraphModule) -> None:
    """Keep the source of `gm`'s code while `gm` lives (tracebacks through it show lines)."""
    if torch.compiler.is_compiling():  # a runner made while Dynamo traces: Dynamo's own
        return
    key = _key_of(gm)
    if _LOADER is None or key is None or key in _KEPT or key not in _LOADER.eval_cache:
        return
    _KEPT.add(key)
    weakref.finalize(gm, _forget, key)


@contextmanager
def deciding() -> Iterator[None]:
    """Drop, on exit, the source of graphs compiled meanwhile in this thread and not kept."""
    outer = getattr(_LOCAL, "made", None)
    made: list[str] = []
    _LOCAL.made = made
    try:
        yield
    finally:
        _LOCAL.made = outer
        for key in made:
            if key not in _KEPT:
                _forget(key)


_F = TypeVar("_F", bound=Callable[..., Any])


def drops_transient_code(fn: _F) -> _F:
    """`fn` run inside `deciding()`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        with deciding():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
