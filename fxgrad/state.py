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
import functools
import sys
import types
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from fxgrad.errors import FxgradError


def plain_tensor_attributes(m: nn.Module) -> list[str]:
    """Names of tensors a module holds as plain attributes (not parameters or buffers)."""
    return [
        k
        for k, v in m.__dict__.items()
        if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)
    ]


def _meta_error(where: str) -> Exception:
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
        self._buffers: set[int] = set()
        for m in root.modules():
            self._params.add(id(m._parameters))
            self._buffers.add(id(m._buffers))
            for table in (m._parameters, m._buffers):
                self.slots.extend(
                    (table, name, t)
                    for name, t in table.items()
                    if t is not None and not isinstance(t, _LAZY)  # unused: no copy needed
                )
            self.slots.extend((m.__dict__, k, m.__dict__[k]) for k in plain_tensor_attributes(m))
        if any(t.is_meta for _, _, t in self.slots):
            raise _meta_error("model's parameters or buffers")
        # Plain Python state a forward may write (`self.step += 1`): put back before each
        # run, so every probing run starts from the state the call starts from.
        # Generators the model owns (`self.g = torch.Generator()`): every run draws from
        # the state the call starts from, and the user's generator is left where it was.
        self.python: list[tuple[dict, dict[str, Any]]] = []
        self.generators: list[tuple[Any, Any]] = []
        for m in root.modules():
            attrs = user_attributes(m)
            if not attrs:
                continue
            self.python.append((m.__dict__, {k: v for k, v in attrs if type(v) in _PLAIN}))
            self.generators.extend((v, _rng_state(v)) for _, v in attrs if _is_rng(v))
        self._clones: dict[int, tuple[torch.Tensor, int]] = {}
        # A forward that writes through `.data` changes a copy without moving its version
        # counter: then every run gets fresh copies, not only those whose version moved.
        self.copy_always = False

    def reset(self) -> list[torch.Tensor]:
        """Give every slot a private copy of its original value; return the parameters
        (then the plain tensor attributes that require grad: gradients are taken for them
        too).

        A copy is made anew only when a run wrote to it (its version moved), unless
        `copy_always`, so the parameters of a large model are copied once, not once per
        probing run. The parameters come back in the order `root.parameters()` lists them.
        """
        for d, saved in self.python:
            for k, v in saved.items():
                if d.get(k, _GONE) is not v:
                    d[k] = v
        for g, g_state in self.generators:
            _set_rng_state(g, g_state)
        params: dict[int, torch.Tensor] = {}
        extra: dict[int, torch.Tensor] = {}  # plain tensors that require grad
        with torch.no_grad():
            for table, name, t in self.slots:
                hit = self._clones.get(id(t))
                if hit is None or self.copy_always or hit[0]._version != hit[1]:
                    c = _private_copy(t)
                    hit = self._clones[id(t)] = (c, c._version)
                table[name] = hit[0]
                if id(table) in self._params:
                    params.setdefault(id(hit[0]), hit[0])
                elif hit[0].requires_grad and id(table) not in self._buffers:
                    extra.setdefault(id(hit[0]), hit[0])
        return list(params.values()) + [t for k, t in extra.items() if k not in params]

    def restore(self) -> None:
        """Put the original tensors back in their slots, and generators' states."""
        for table, name, t in self.slots:
            table[name] = t
        for g, g_state in self.generators:
            _set_rng_state(g, g_state)


def _private_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` that autograd sees as it sees `t`: a Parameter stays one, and a plain
    tensor keeps `requires_grad` and leaf-ness (a `self.w = torch.randn(..., requires_grad=
    True)` attribute, fast weights passed through `torch.func.functional_call`), so a write
    into it is judged as eager would judge a write into the original. A tensor a
    torch.func transform wrapped (`functional_call` inside `vmap(grad(...))`) is copied
    from its plain stand-in."""
    c = functorch_unwrapped(t).detach().clone()
    if isinstance(t, nn.Parameter):
        return nn.Parameter(c, requires_grad=t.requires_grad)
    if t.requires_grad:
        c.requires_grad_(True)
        if not t.is_leaf:
            with torch.enable_grad():
                c = c.clone()  # not a leaf, and not a view: like the original
    return c


def functorch_unwrapped(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor standing for a tensor `torch.func` transforms wrapped: its values
    (under `vmap`, those of the first sample), for runs made outside the transforms.
    Any other tensor is returned as it is."""
    functorch = torch._C._functorch
    if not functorch.is_functorch_wrapped_tensor(t):
        return t
    bdims = []
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            bdims.append(functorch.maybe_get_bdim(t))
        t = functorch.get_unwrapped(t)
    for dim in reversed(bdims):  # the innermost vmap's dimension is outermost in memory
        t = t.select(dim, 0)
    return t


def storage_of(t: Any) -> int | None:
    """The address of a tensor's storage, so that tensors sharing memory can be told apart;
    None where there is no memory to share (not a strided tensor, the meta device, an
    empty storage). Tensors on two devices may have the same address: compare devices too
    where both can occur."""
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
        return None
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return (st.data_ptr() or None) if st.nbytes() else None


def _is_rng(v: Any) -> bool:
    """A random generator the model owns: torch's, or NumPy's Generator or RandomState."""
    if isinstance(v, torch.Generator):
        return True
    return type(v).__module__.startswith("numpy.random") and type(v).__name__ in (
        "Generator",
        "RandomState",
    )


def _rng_state(g: Any) -> Any:
    if isinstance(g, torch.Generator):
        return g.get_state()
    if hasattr(g, "bit_generator"):  # numpy.random.Generator
        return copy.deepcopy(g.bit_generator.state)
    return g.get_state()  # numpy.random.RandomState


def _set_rng_state(g: Any, state: Any) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(state)
    elif hasattr(g, "bit_generator"):
        g.bit_generator.state = state
    else:
        g.set_state(state)


_GONE = object()
# A lazy module's parameters and buffers, until its first call (torch's nn/parameter.pyi
# omits the class).
_LAZY = nn.parameter.UninitializedTensorMixin  # type: ignore[attr-defined]
_INTERNALS = frozenset(nn.Module().__dict__)
# Plain Python values a forward may rebind on a module (`self.step += 1`).
_PLAIN = frozenset({int, float, str, bool, type(None)})


def user_attributes(m: nn.Module) -> list[tuple[str, Any]]:
    """A module's own attributes, without nn.Module's tables and flags (in C: the key
    views' set difference; most modules have none)."""
    d = m.__dict__
    names = d.keys() - _INTERNALS
    return [(k, d[k]) for k in names] if names else []


@contextlib.contextmanager
def forked_rng() -> Iterator[None]:
    """Run with the caller's RNG state restored afterwards: torch's on the CPU and CUDA
    devices, and NumPy's global one."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    np = sys.modules.get("numpy")
    np_state = np.random.get_state() if np is not None else None
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        # NumPy's global draws too (np.random.randn in a forward)
        if np is not None and np_state is not None:
            np.random.set_state(np_state)


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


_NOT_PLAIN = (
    nn.Module,
    torch.Tensor,
    type,
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.ModuleType,
    functools.partial,
)


def plain_object(v: Any) -> bool:
    """An instance of a user class holding attributes (a config), not a module or tensor."""
    return hasattr(v, "__dict__") and not isinstance(v, _NOT_PLAIN) and not callable(v)


def refill(obj: Any, copy_: Any) -> None:
    """Put a dict, list or set's earlier contents back into the same object."""
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
    seen: set[int] = set()
    for m in root.modules():
        d = m.__dict__
        contents = [(v, copy.copy(v)) for v in d.values() if isinstance(v, _CONTAINERS)]
        saved.append((d, dict(d), contents))
        for v in d.values():  # a config object's fields (transformers sets problem_type)
            if plain_object(v) and id(v) not in seen:
                seen.add(id(v))
                saved.append((vars(v), dict(vars(v)), []))
    try:
        yield
    finally:
        for d, before, contents in saved:
            for k in [k for k in d if k not in before]:
                del d[k]
            d.update(before)
            for obj, was in contents:
                refill(obj, was)
