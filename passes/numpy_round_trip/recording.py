"""What one run of the graph on the example inputs showed, node by node.

Arrays are written in place later in the run, so each NumPy value is copied as it was when
computed; each write records the array it left, and an exit that eager refuses
(`torch.from_numpy` of negative strides) records what the code meant.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from fxgrad.context import Context
from fxgrad.graph_utils import INPLACE_OPERATORS
from fxgrad.observe import Extension, Observer
from fxgrad.passes.numpy_round_trip.aliasing import _numpy_write, _Write
from fxgrad.passes.numpy_round_trip.helpers import (
    _EXITS,
    CODE,
    _copy,
    _function,
    _is_numpy_call,
    _method,
    _np,
)


@dataclass
class _Run:
    """What one run of the graph on the example inputs showed, node by node."""

    values: dict[fx.Node, Any] = field(default_factory=dict)  # live: arrays change later
    snap: dict[fx.Node, Any] = field(default_factory=dict)  # NumPy values as computed
    written: dict[fx.Node, Any] = field(default_factory=dict)  # write -> its array after it
    plain: dict[fx.Node, Any] = field(default_factory=dict)  # `a += b`, `out=`: the result
    raised: dict[fx.Node, BaseException] = field(default_factory=dict)  # exits eager refuses


class _Recorder(Extension):
    """What this pass records in the graph's observed run: NumPy values as they were."""

    key = CODE

    def __init__(self) -> None:
        self.seen = _Run()
        self._write: _Write | None = None

    def scope(self) -> contextlib.AbstractContextManager:
        return _np().errstate(all="ignore")

    def before(self, run: Observer, node: fx.Node) -> None:
        self._write = write = _numpy_write(node, run.env)
        if write is not None and write.kind in ("augmented", "out"):
            with contextlib.suppress(Exception):
                self.seen.plain[node] = _copy(_without_write(run, node, write))

    def after(self, run: Observer, node: fx.Node, value: Any) -> None:
        seen = self.seen
        seen.values[node] = value
        seen.snap[node] = _copy(value)
        if self._write is not None:
            seen.written[node] = _copy(run.env.get(self._write.target))

    def failed(self, run: Observer, node: fx.Node, error: Exception) -> Any:
        """`torch.from_numpy(np.flip(a))` raises (negative strides); record what it means."""
        args, kwargs = run.fetch_args_kwargs_from_env(node)
        data = args[0] if args else None
        if not (
            node.op == "call_function"
            and node.target in _EXITS
            and isinstance(data, _np().ndarray)
            and any(s < 0 for s in data.strides)
        ):
            raise error
        self.seen.raised[node] = error
        return _function(node)(data.copy(), *args[1:], **kwargs)

    def result(self) -> _Run:
        return self.seen


def _without_write(run: Observer, n: fx.Node, write: _Write) -> Any:
    """What `a += b` or `f(..., out=a)` computes, before it is written anywhere."""
    args, kwargs = run.fetch_args_kwargs_from_env(n)
    if write.kind == "augmented":
        return INPLACE_OPERATORS[_function(n)](*args)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("out", "where")}
    if n.op == "call_method":
        return getattr(args[0], _method(n))(*args[1:], **kwargs)
    return _function(n)(*args, **kwargs)


def _negative_strides(error: BaseException) -> bool:
    """`torch.from_numpy(np.flip(a))` raises; the translation is what the code meant."""
    return isinstance(error, ValueError) and "stride in the given numpy array is negative" in str(
        error
    )


def _recorder(gm: fx.GraphModule) -> _Recorder | None:
    """This pass's part of the observed run, for graphs that call NumPy at all."""
    if not any(_is_numpy_call(n) for n in gm.graph.nodes):
        return None
    return _Recorder()


def _record(gm: fx.GraphModule, ctx: Context) -> _Run | None:
    """What the graph's observed run showed; None when it does not run."""
    obs = ctx.observe(gm, needs=[_recorder])
    seen = obs.extras.get(CODE)
    return seen if obs.complete and seen is not None else None
