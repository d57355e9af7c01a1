"""The table FXG101 decides with when there are no example inputs, checked against torch.

Without example inputs the in-place pass cannot watch what autograd saves, so it reads
`STATIC_SAVES`: which ops keep their inputs, their output or neither for backward. A wrong
entry (or a torch release that changes a backward formula) would let a real hazard
through, so every entry is run here on OpInfo samples (torch's own op test inputs), or on a
hand-written sample where torch has none, while recording what autograd saves
(`saved_tensors_hooks`): each saved tensor that shares memory with an input or the output
must be one the table admits.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

from fxgrad.passes.inplace_op import MODULE_OPS, STATIC_SAVES, Saves, module_op

pytest.importorskip("expecttest")  # torch's OpInfo database imports it
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

Sample = tuple[Callable[..., Any], tuple, dict]


def _t(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


# Entries torch has no OpInfo for: a sample each.
HAND: dict[str, Callable[[], list[Sample]]] = {
    "getitem": lambda: [(operator.getitem, (_t(3, 4), 1), {})],
    "detach": lambda: [(torch.Tensor.detach, (_t(3),), {})],
    "iadd": lambda: [(operator.iadd, (_t(3) * 1, _t(3)), {})],
    "isub": lambda: [(operator.isub, (_t(3) * 1, _t(3)), {})],
    "imul": lambda: [(operator.imul, (_t(3) * 1, _t(3)), {})],
    "truediv": lambda: [(operator.truediv, (_t(3), _t(3) + 3), {})],
    "itruediv": lambda: [(operator.itruediv, (_t(3) * 1, _t(3) + 3), {})],
    "size": lambda: [(torch.Tensor.size, (_t(3),), {})],
    "dim": lambda: [(torch.Tensor.dim, (_t(3),), {})],
    "numel": lambda: [(torch.Tensor.numel, (_t(3),), {})],
    "getattr": lambda: [(getattr, (_t(3), "T"), {})],
    "zero_": lambda: [(torch.Tensor.zero_, (_t(3) * 1,), {})],
    "copy_": lambda: [(torch.Tensor.copy_, (_t(3) * 1, _t(3)), {})],
    "setitem": lambda: [(operator.setitem, (_t(3, 4) * 1, 0, _t(4)), {})],
    "identity": lambda: [(nn.Identity(), (_t(3),), {})],
    "rand": lambda: [(torch.rand, (3,), {})],
    "randperm": lambda: [(torch.randperm, (3,), {})],
    "_softmax": lambda: [(torch._softmax, (_t(3, 4), 1, False), {})],
    "relu_": lambda: [(torch.relu_, (_t(3) * 1,), {})],
    "hardtanh_": lambda: [(nn.functional.hardtanh, (_t(3) * 1,), {"inplace": True})],
    # factories and methods that make new tensors: no tensor of theirs requires grad
    **{
        n: (lambda n=n: [(getattr(torch, n), (3,), {})])
        for n in ("zeros", "ones", "empty", "randn", "arange", "eye")
    },
    "full": lambda: [(torch.full, ((3,), 2.0), {})],
    "randint": lambda: [(torch.randint, (5, (3,)), {})],
    "linspace": lambda: [(torch.linspace, (0.0, 1.0, 3), {})],
    "logspace": lambda: [(torch.logspace, (0.0, 1.0, 3), {})],
    "tril_indices": lambda: [(torch.tril_indices, (3, 3), {})],
    "triu_indices": lambda: [(torch.triu_indices, (3, 3), {})],
    **{
        n: (lambda n=n: [(getattr(torch, n), (_t(3),), {})])
        for n in ("zeros_like", "ones_like", "empty_like")
    },
    "full_like": lambda: [(torch.full_like, (_t(3), 2.0), {})],
    **{
        n: (lambda n=n: [(getattr(torch.Tensor, n), (_t(3), (2,)), {})])
        for n in ("new_zeros", "new_ones", "new_empty")
    },
    "new_full": lambda: [(torch.Tensor.new_full, (_t(3), (2,), 1.0), {})],
}


def _op_samples(name: str) -> Iterator[Sample]:
    """OpInfo samples of `name` (float64, CPU); `name_` runs the in-place variant."""
    inplace = name.endswith("_") and not name.startswith("_")
    base = name[:-1] if inplace else name
    for op in op_db:
        if op.name not in (base, f"nn.functional.{base}") and base not in {
            a.name for a in op.aliases
        }:
            continue
        if not op.supports_autograd:
            continue
        if inplace and op.inplace_variant is None:
            continue
        fn = op.inplace_variant if inplace else op.op
        try:
            samples = list(op.sample_inputs("cpu", torch.float64, requires_grad=True))
        except Exception:
            continue
        for s in samples[:6]:
            x = s.input
            if inplace and isinstance(x, torch.Tensor):
                x = x.clone()  # in place on a leaf that requires grad is refused
            yield fn, (x, *s.args), dict(s.kwargs)


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr() or None
    except (RuntimeError, NotImplementedError):
        return None


def _saved(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Saves | None:
    """What autograd saved that shares memory with the call's inputs or its output."""
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(*args, **kwargs)
    except Exception:
        return None  # a sample the op refuses (argument checks): nothing to learn
    outs = {_storage(o) for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)}
    ins = {_storage(a) for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
    found = Saves.NOTHING
    for t in saved:
        st = _storage(t)
        if st is None:
            continue
        if st in outs:
            found |= Saves.OUTPUT
        elif st in ins:
            found |= Saves.INPUTS
    return found


@pytest.mark.parametrize("name", sorted(STATIC_SAVES))
def test_every_entry_admits_what_autograd_saves(name):
    samples = HAND[name]() if name in HAND else list(_op_samples(name))
    assert samples, f"no sample checks {name!r}: add one to HAND"
    claim = STATIC_SAVES[name]
    checked = 0
    for fn, args, kwargs in samples:
        found = _saved(fn, args, kwargs)
        if found is None:
            continue
        checked += 1
        assert found & ~claim == Saves.NOTHING, (
            f"{name} saves {found} for backward, but STATIC_SAVES says {claim}"
        )
    assert checked, f"every sample of {name!r} was refused"


MODULES: dict[type, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    nn.Linear: lambda: (nn.Linear(4, 3), _t(2, 4)),
    nn.Conv1d: lambda: (nn.Conv1d(2, 3, 3), _t(2, 2, 8)),
    nn.Conv2d: lambda: (nn.Conv2d(2, 3, 3), _t(2, 2, 8, 8)),
    nn.BatchNorm1d: lambda: (nn.BatchNorm1d(3), _t(4, 3)),
    nn.BatchNorm2d: lambda: (nn.BatchNorm2d(3), _t(2, 3, 4, 4)),
    nn.BatchNorm3d: lambda: (nn.BatchNorm3d(3), _t(2, 3, 2, 2, 2)),
    nn.LayerNorm: lambda: (nn.LayerNorm(4), _t(3, 4)),
    nn.MaxPool2d: lambda: (nn.MaxPool2d(2), _t(1, 2, 4, 4)),
    nn.Softmax: lambda: (nn.Softmax(-1), _t(3, 4)),
    nn.LogSoftmax: lambda: (nn.LogSoftmax(-1), _t(3, 4)),
    nn.Unflatten: lambda: (nn.Unflatten(1, (2, 2)), _t(3, 4)),
}


def _has_inplace_form(cls: type) -> bool:
    if cls in MODULES:
        return False
    try:
        cls(inplace=True)
    except TypeError:
        return False
    return True


# Every module of the table, and its in-place form where it has one.
_MODULE_CASES = [(c, False) for c in MODULE_OPS] + [
    (c, True) for c in MODULE_OPS if _has_inplace_form(c)
]


@pytest.mark.parametrize(
    "cls, inplace",
    _MODULE_CASES,
    ids=[f"{c.__name__}{'-inplace' if i else ''}" for c, i in _MODULE_CASES],
)
def test_every_module_saves_what_its_op_entry_admits(cls, inplace):
    if cls in MODULES:
        module, x = MODULES[cls]()
    else:
        module = cls(inplace=True) if inplace else cls()
        x = _t(3, 4)
    module.double()
    if inplace:
        x = x * 1  # a module writing its input in place needs a non-leaf
    name = module_op(module)
    found = _saved(module, (x,), {})
    assert found is not None
    claim = STATIC_SAVES.get(name, Saves.BOTH)  # unlisted: assumed to save both
    assert found & ~claim == Saves.NOTHING, (
        f"{cls.__name__}({'inplace=True' if inplace else ''}) saves {found}, "
        f"but its entry {name!r} says {claim}"
    )


class _Residual(nn.Module):
    """timm's and torchvision's block tail: `x += shortcut`, then an in-place ReLU."""

    def __init__(self, saver: str):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.act = nn.ReLU(inplace=True)
        self.saver = saver

    def forward(self, x):
        h = self.bn(x) if self.saver == "bn" else torch.sigmoid(x)
        h += x  # iadd: saves nothing itself, but writes what sigmoid saved
        return self.act(h)


@pytest.mark.parametrize("saver, rewrites", [("bn", 0), ("sigmoid", 1)])
def test_static_iadd_saves_nothing_and_a_write_after_a_saver_is_found(saver, rewrites):
    from fxgrad.api import fix_static

    model = _Residual(saver)
    fixed = fix_static(model)
    assert len(fixed.report.applied) == rewrites, fixed.report.table()
    x = torch.randn(3, 4, requires_grad=True)
    reference = _Residual(saver)
    reference.load_state_dict(model.state_dict())
    xr = x.detach().requires_grad_()
    got = fixed(x)
    if saver == "sigmoid":
        want = torch.relu(torch.sigmoid(xr) + xr)
    else:
        want = reference(xr)
    torch.testing.assert_close(got, want)
    (g,) = torch.autograd.grad(got.sum(), [x])
    (w,) = torch.autograd.grad(want.sum(), [xr])
    torch.testing.assert_close(g, w)
