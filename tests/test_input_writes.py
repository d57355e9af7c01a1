"""A forward that writes to an object it was called with (a cache it fills, a list it
appends to): eager changes the caller's object, so the fixed module must too.

fx records tensor operations, not Python writes, so fxgrad's tracer refuses such a forward
(naming what was written) and `fix()` hands it to the Dynamo front-end, which replays the
writes. No trace leaves a traced value behind in the caller's object, and fxgrad's own runs
(eager's reference, probes) work on private copies, so the object is written once a call.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxgrad


class State:
    """A plain object a forward fills, as a key/value cache is filled."""

    def __init__(self) -> None:
        self.seen: torch.Tensor | None = None
        self.calls = 0


class FillsState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        h = self.lin(x)
        state.seen = h if state.seen is None else torch.cat([state.seen, h])
        state.calls = state.calls + 1
        return h.relu()


class AppendsFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, features: list) -> torch.Tensor:
        h = self.a(x)
        features.append(h)
        return self.b(h.tanh())


def test_a_forward_filling_an_object_it_was_given_fills_the_callers_object():
    torch.manual_seed(0)
    model = FillsState()
    fixed = fxgrad.fix(model)
    mine, theirs = State(), State()
    for batch in (3, 5, 2):  # another batch each call; the state grows as eager's does
        x = torch.randn(batch, 4)
        torch.testing.assert_close(fixed(x, mine), model(x, theirs))
        assert mine.calls == theirs.calls
        torch.testing.assert_close(mine.seen, theirs.seen)
    assert fixed.report.frontend == "dynamo"
    assert "state.seen" in " ".join(fixed.report.notes)


def test_a_forward_appending_to_a_list_it_was_given_appends_with_gradients():
    torch.manual_seed(0)
    model = AppendsFeatures()
    fixed = fxgrad.fix(model)
    x = torch.randn(3, 4)
    mine, theirs = [], []
    out = fixed(x, mine)
    want = model(x, theirs)
    torch.testing.assert_close(out, want)
    assert len(mine) == len(theirs) == 1
    torch.testing.assert_close(mine[0], theirs[0])
    # The appended feature is part of the autograd graph, as in eager.
    (mine[0].sum() + out.sum()).backward()
    (theirs[0].sum() + want.sum()).backward()
    for p, q in zip(fixed.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_the_fx_front_end_refuses_naming_the_write_and_leaves_the_object_as_it_was():
    model = FillsState()
    state = State()
    with pytest.raises(fxgrad.FxgradError, match=r"writes to an object .*state\.seen"):
        fxgrad.fix(model, (torch.randn(3, 4), state), frontend="fx")
    assert state.seen is None and state.calls == 0  # no traced value, no probe's update
    features: list = []
    with pytest.raises(fxgrad.FxgradError, match=r"the items of features"):
        fxgrad.fix(AppendsFeatures(), (torch.randn(3, 4), features), frontend="fx")
    assert features == []


def test_an_object_only_read_is_no_write():
    class Reads(nn.Module):
        def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
            return x * state.calls

    state = State()
    state.calls = 3
    fixed = fxgrad.fix(Reads(), frontend="fx")
    x = torch.randn(2, 2)
    torch.testing.assert_close(fixed(x, state), x * 3)
    assert fixed.report.frontend == "fx" and state.calls == 3
