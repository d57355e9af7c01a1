"""FXG101 on writes through expanding and multi-output views, and through opaque aliases.

`broadcast_to` is an expanding view like `expand`, and `dsplit` a multi-output view like
`hsplit`/`vsplit`. Each model is compared with the same model corrected by hand: values
and gradients with torch.testing.assert_close, and the fixed module with gradcheck in
float64. No decision prints anything to stderr, not even one that rolls a rewrite back.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import fx, nn

import fxgrad
from fxgrad import ops
from fxgrad.passes.inplace_op import Step, StepKind, alias_map


class Fn(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _expanded_write(expand: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        z = expand(y)
        z.add_(1)
        return z

    return fn


def _expanded_by_hand(expand: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    return lambda x: expand(x * 2).add(1)


EXPANDS = {
    "broadcast_to": lambda y: y.broadcast_to(3, 4),
    "torch.broadcast_to": lambda y: torch.broadcast_to(y, (3, 4)),
    "expand": lambda y: y.expand(3, 4),
    "expand_as": lambda y: y.expand_as(torch.empty(3, 4)),
}


def _piece_write(split: str, dim: int) -> Callable:
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x.exp()  # saves its output, which the write into a piece overwrites
        a, _b = getattr(y, split)(2)
        a.mul_(3)
        return y

    return fn


def _piece_by_hand(split: str, dim: int) -> Callable:
    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = getattr(x.exp(), split)(2)
        return torch.cat([a * 3, b], dim=dim)

    return fn


SPLITS = {"vsplit": 0, "hsplit": 1, "dsplit": 2}


def _check(model: nn.Module, by_hand: Callable, x: torch.Tensor, capfd) -> fxgrad.FixedModule:
    fixed = fxgrad.fix(model, (x.detach().requires_grad_(),))
    assert capfd.readouterr().err == ""
    assert [(c.code, c.applied) for c in fixed.report.changes] == [("FXG101", True)], (
        fixed.report.table()
    )
    assert not any("rolled back" in n for n in fixed.report.notes), fixed.report.table()
    xf, xr = x.detach().requires_grad_(), x.detach().requires_grad_()
    out, ref = fixed(xf), by_hand(xr)
    torch.testing.assert_close(out, ref)
    weights = torch.randn_like(ref)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad)
    x64 = x.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(fixed, (x64,))
    assert capfd.readouterr().err == ""
    return fixed


@pytest.mark.parametrize("name", list(EXPANDS))
def test_write_into_expanded_view(name: str, capfd) -> None:
    expand = EXPANDS[name]
    x = torch.randn(1, 4)
    with pytest.raises(RuntimeError, match="single memory location"):
        Fn(_expanded_write(expand))(x.clone().requires_grad_())
    fixed = _check(Fn(_expanded_write(expand)), _expanded_by_hand(expand), x, capfd)
    (change,) = fixed.report.changes
    assert "eager refuses this write" in change.note, fixed.report.table()


@pytest.mark.parametrize("split", list(SPLITS))
def test_write_into_split_piece(split: str, capfd) -> None:
    dim = SPLITS[split]
    x = torch.randn(4, 4, 4)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        Fn(_piece_write(split, dim))(x.clone().requires_grad_()).sum().backward()
    _check(Fn(_piece_write(split, dim)), _piece_by_hand(split, dim), x, capfd)


def test_dsplit_and_broadcast_to_are_views_like_their_siblings() -> None:
    kind = ops.view_kind
    assert kind("dsplit") is kind("hsplit") is kind("vsplit") is ops.Output.VIEWS
    assert kind("broadcast_to") is kind("expand") is ops.Output.VIEW
    for name, expand in EXPANDS.items():
        gm = fx.symbolic_trace(Fn(lambda x, e=expand: e(x * 2)))
        (view,) = [n for n in gm.graph.nodes if n.op == "output"][0].all_input_nodes
        steps = alias_map(gm, None)[view].steps
        assert [s.kind for s in steps] == [StepKind.EXPAND], name


def test_write_through_adjoint_is_rewritten(capfd) -> None:
    """`adjoint` is a view by its schema (fxgrad.ops), so the write replays through it; it
    was an opaque alias, refused, while views came from a hand-kept list without it."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x.exp()
        z = y.adjoint()
        z.mul_(2)
        return y

    _check(Fn(fn), lambda x: x.exp() * 2, torch.randn(3, 4), capfd)


@torch.fx.wrap
def _opaque_adjoint(y: torch.Tensor) -> torch.Tensor:
    """A view made inside a function the trace keeps as one call: no op fxgrad can name."""
    return y.adjoint()


def test_opaque_alias_is_left_as_is_with_a_reason(capfd) -> None:
    """A call that shares memory through no known view op: the write is refused, clearly."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x.exp()
        z = _opaque_adjoint(y)
        z.mul_(2)
        return y

    x = torch.randn(3, 4, requires_grad=True)
    fixed = fxgrad.fix(Fn(fn), (x,))
    assert capfd.readouterr().err == ""
    (change,) = fixed.report.changes
    assert not change.applied
    assert "an op fxgrad cannot rebuild" in change.note, change.note
    assert "rolled back" not in change.note and "Error" not in change.note, change.note
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        fixed(x).sum().backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        Fn(fn)(x).sum().backward()


def test_step_kind_must_be_a_step_kind() -> None:
    with pytest.raises(TypeError, match="StepKind"):
        Step("call_method", "adjoint", (), kind="opaque")  # type: ignore[arg-type]


def test_rollback_prints_nothing(monkeypatch, capfd) -> None:
    """A rewrite whose forward raises is rolled back and reported; fx prints no traceback."""

    def replay_without_arguments(self, graph, base, *, writable=False):
        return graph.create_node(self.op, self.target, (base,), {})  # `clone.dsplit()`

    monkeypatch.setattr(Step, "replay", replay_without_arguments)
    x = torch.randn(4, 4, 4, requires_grad=True)
    fixed = fxgrad.fix(Fn(_piece_write("dsplit", 2)), (x,))
    assert capfd.readouterr().err == ""
    (change,) = fixed.report.changes
    assert not change.applied
    assert "rolled back" in change.note and "TypeError" in change.note, change.note


# In-place writes whose out-of-place twin fxgrad.ops reads from the schema (the same
# arguments, returning a new tensor): `put_` -> `put`, `index_put_` -> `index_put`. They had
# no twin in the hand-kept table; the rewrite must match eager's values and gradients.
PUTS = {
    "put_": lambda y, v: y.put_(torch.tensor([0, 5]), v),
    "put_-accumulate": lambda y, v: y.put_(torch.tensor([0, 0]), v, accumulate=True),
    "index_put_": lambda y, v: y.index_put_((torch.tensor([0, 2]),), v[:1]),
    "index_put_-accumulate": lambda y, v: y.index_put_(
        (torch.tensor([1, 1]), torch.tensor([0, 3])), v, accumulate=True
    ),
}
PUTS_BY_HAND = {
    "put_": lambda y, v: y.put(torch.tensor([0, 5]), v),
    "put_-accumulate": lambda y, v: y.put(torch.tensor([0, 0]), v, accumulate=True),
    "index_put_": lambda y, v: y.index_put((torch.tensor([0, 2]),), v[:1]),
    "index_put_-accumulate": lambda y, v: y.index_put(
        (torch.tensor([1, 1]), torch.tensor([0, 3])), v, accumulate=True
    ),
}


@pytest.mark.parametrize("name", list(PUTS))
def test_put_writes_are_rewritten_to_their_twin(name: str, capfd) -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x.exp()  # saves its output, which the put overwrites
        PUTS[name](y, x[0, :2] * 3)
        return y

    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        Fn(fn)(x.clone().requires_grad_()).sum().backward()
    fixed = _check(Fn(fn), lambda x: PUTS_BY_HAND[name](x.exp(), x[0, :2] * 3), x, capfd)
    (change,) = fixed.report.changes
    assert f".{name.split('-')[0][:-1]}(" in change.after, change.after
