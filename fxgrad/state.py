"""Module state while fxgrad probes a model: private copies, put back afterwards.

Deciding runs the model forward and backward several times (the eager reference, the
captured graph, the passes' observations). BatchNorm updates its running statistics,
forwards bump counters, a buggy forward even writes a parameter, through `.data` where no
version counter sees it. None of that may reach the user's model: every parameter, buffer
and plain tensor attribute of the module being probed (a twin of the user's module) holds
a private copy while probing, given afresh before each run, and the originals are put
back at the end, with the RNG state as it was.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn


def plain_tensor_attributes(m: nn.Module) -> list[str]:
    """Names of tensors a module holds as plain attributes (not parameters or buffers)."""
    return [
        k
        for k, v in m.__dict__.items()
        if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)
    ]


def _meta_error(where: str) -> Exception:
    from fxgrad.errors import FxgradError

    return FxgradError(
        f"The {where} are on the meta device: they have no values, and fxgrad decides "
        "on a call by running the model.",
        hint="Pass real tensors (on the CPU is fine), or use fxgrad.check(model) without "
        "example inputs to decide statically.",
    )


class PrivateState:
    """The slots of a module tree's tensors, and fresh private copies for each run."""

    def __init__(self, root: nn.Module) -> None:
        self.slots: list[tuple[dict, str, torch.Tensor]] = []
        self._params: set[int] = set()
        for m in root.modules():
            self._params.add(id(m._parameters))
            for table in (m._parameters, m._buffers):
                self.slots.extend((table, name, t) for name, t in table.items() if t is not None)
            self.slots.extend((m.__dict__, k, m.__dict__[k]) for k in plain_tensor_attributes(m))
        if any(t.is_meta for _, _, t in self.slots):
            raise _meta_error("model's parameters or buffers")
        self._clones: dict[int, tuple[torch.Tensor, int]] = {}
        # A forward that writes through `.data` changes a copy without moving its version
        # counter: then every run gets fresh copies, not only those whose version moved.
        self.copy_always = False

    def reset(self) -> list[torch.Tensor]:
        """Give every slot a private copy of its original value; return the parameters.

        A copy is made anew only when a run wrote to it (its version moved), unless
        `copy_always`, so the parameters of a large model are copied once, not once per
        probing run. The parameters come back in the order `root.parameters()` lists them.
        """
        params: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for table, name, t in self.slots:
                hit = self._clones.get(id(t))
                if hit is None or self.copy_always or hit[0]._version != hit[1]:
                    c = t.detach().clone()
                    if isinstance(t, nn.Parameter):
                        c = nn.Parameter(c, requires_grad=t.requires_grad)
                    hit = self._clones[id(t)] = (c, c._version)
                table[name] = hit[0]
                if id(table) in self._params:
                    params.setdefault(id(hit[0]), hit[0])
        return list(params.values())

    def restore(self) -> None:
        """Put the original tensors back in their slots."""
        for table, name, t in self.slots:
            table[name] = t


@contextlib.contextmanager
def forked_rng() -> Iterator[None]:
    """Run with the caller's RNG state restored afterwards, on the CPU and CUDA devices."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextlib.contextmanager
def private_state(root: nn.Module) -> Iterator[PrivateState]:
    """Probe `root` on private copies of its tensors, restoring them and the RNG after."""
    state = PrivateState(root)
    with forked_rng():
        try:
            state.reset()
            yield state
        finally:
            state.restore()


@contextlib.contextmanager
def restored(tensors: Iterable[Any]) -> Iterator[None]:
    """Run on real tensors, then put their values, `.grad` and the RNG state back.

    For runs that must use the user's own tensors (so gradients are gradients of those
    parameters): BatchNorm statistics, counters and any stray write are copied back
    afterwards, and no `.grad` is left behind.
    """
    seen: dict[int, torch.Tensor] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen.setdefault(id(t), t)
    kept = list(seen.values())
    with torch.no_grad():
        saved = [(t, t.detach().clone()) for t in kept]
    grads = [(t, t.grad) for t in kept if t.is_leaf]
    prev = torch.is_grad_enabled()
    with forked_rng():
        try:
            yield
        finally:
            torch.set_grad_enabled(prev)
            with torch.no_grad():
                for t, s in saved:
                    if t.shape != s.shape or not torch.equal(t, s):
                        t.copy_(s)
            for t, g in grads:
                t.grad = g


_CONTAINERS = (dict, list, set)


def _refill(obj: Any, copy_: Any) -> None:
    if isinstance(obj, dict):
        obj.clear()
        obj.update(copy_)
    elif isinstance(obj, list):
        obj[:] = copy_
    elif isinstance(obj, set):
        obj.clear()
        obj.update(copy_)


@contextlib.contextmanager
def python_state_restored(root: nn.Module) -> Iterator[None]:
    """Run a forward on the user's own modules, then put back what it changed in Python.

    For the runs that cannot use a twin (Dynamo compiles the user's module itself): every
    module's attributes are put back as they were, attributes the forward added are removed,
    and the dicts, lists and sets they hold (hook tables a forward installs on its first
    call, caches) are refilled with what they held before.
    """
    saved = []
    for m in root.modules():
        d = m.__dict__
        contents = [(v, copy.copy(v)) for v in d.values() if isinstance(v, _CONTAINERS)]
        saved.append((d, dict(d), contents))
    try:
        yield
    finally:
        for d, before, contents in saved:
            for k in [k for k in d if k not in before]:
                del d[k]
            d.update(before)
            for obj, was in contents:
                _refill(obj, was)
