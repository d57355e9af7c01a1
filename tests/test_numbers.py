"""Python numbers passed to forward: inputs of the graph when they only feed values.

A diffusion timestep or an annealed scale changes on every call. Baked into the graph as
a constant, each new value needs its own decision (and the ninth raises); taken as an
input of the graph, one variant serves every value. A number the forward branches on, or
uses as a size, must stay a constant checked on every call.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import fxgrad


class TimeScaled(nn.Module):
    """A timestep (int) and a scale (float) that feed arithmetic only, and an unsafe write
    (sigmoid saved its output) so the graph holds a rewrite."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, t, scale=1.0):
        emb = torch.zeros(1, 4) + t / 1000.0
        h = torch.sigmoid(self.fc(x) * math.sqrt(scale) + emb)
        h.mul_(2)
        return h


def _reference(m: TimeScaled, x, t, scale=1.0):
    emb = torch.zeros(1, 4) + t / 1000.0
    return torch.sigmoid(m.fc(x) * math.sqrt(scale) + emb) * 2


def test_a_changing_timestep_and_scale_need_one_decision():
    model = TimeScaled()
    fixed = fxgrad.fix(model, (torch.randn(3, 4), 999), {"scale": 0.5})
    assert "t: any int" in fixed.report.variant and "scale: any float" in fixed.report.variant
    assert len(fixed.report.applied) == 1
    for step, t in enumerate(range(999, 0, -50)):  # 20 values, two batch sizes
        x = torch.randn(2 + step % 2, 4)
        scale = 0.5 + 0.1 * step
        out = fixed(x, t, scale=scale)
        want = _reference(model, x, t, scale)
        torch.testing.assert_close(out, want)
        got = torch.autograd.grad(out.sum(), list(model.parameters()))
        ref = torch.autograd.grad(want.sum(), list(model.parameters()))
        torch.testing.assert_close(got, ref)
    assert len(fixed.reports) == 1  # before: one per value, and the ninth raised


def test_gradcheck_through_a_number_input_in_float64():
    model = TimeScaled().double()
    fixed = fxgrad.fix(model, (torch.randn(2, 4, dtype=torch.float64), 10), {"scale": 2.0})
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fixed(x, 37, scale=3.0), (x,))
    torch.testing.assert_close(fixed(x, 37, scale=3.0), _reference(model, x, 37, 3.0))


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, n: int):
        if n > 2:  # Python control flow on the number
            x = x * 2
        return self.fc(x)


class Sizes(nn.Module):
    def forward(self, x, n: int):
        return x.repeat(1, n) * n  # a shape depends on it


def test_a_number_that_decides_control_flow_or_a_size_stays_a_constant():
    x = torch.randn(3, 4)
    for cls in (Branches, Sizes):
        model = cls()
        fixed = fxgrad.fix(model, (x, 3))
        note = " ".join(fixed.report.notes)
        assert "n: a number kept as a constant" in note
        for n in (3, 1, 4, 3):
            torch.testing.assert_close(fixed(x, n), model(x, n))
        assert len(fixed.reports) == 3  # one per value; 3 reused
        assert "the argument n (1 -> 4)" in " ".join(fixed.reports[-1].notes)


class IsInstance(nn.Module):
    def forward(self, x, scale):
        if isinstance(scale, float):  # a traced value is no float: the trace goes wrong
            return x * scale
        return x


def test_a_number_the_forward_inspects_is_never_silently_dropped():
    model = IsInstance()
    x = torch.randn(3)
    fixed = fxgrad.fix(model, (x, 2.0))
    for s in (2.0, 3.0, float("nan"), float("nan")):
        torch.testing.assert_close(fixed(x, s), model(x, s), equal_nan=True)
    assert len(fixed.reports) == 3  # NaN is decided once, not on every call


class Indexed(nn.Module):
    def forward(self, x, i: int, cfg: dict):
        return x[:, i] * cfg["gain"]


def test_numbers_inside_containers_and_as_indices():
    model = Indexed()
    x = torch.randn(3, 5)
    fixed = fxgrad.fix(model, (x, 1, {"gain": 0.5}))
    for i in range(5):
        torch.testing.assert_close(fixed(x, i, {"gain": 0.1 * i}), model(x, i, {"gain": 0.1 * i}))
    assert len(fixed.reports) == 1


def test_a_lazy_fix_takes_numbers_as_inputs_on_its_first_call():
    model = TimeScaled()
    fixed = fxgrad.fix(model)
    for t in range(12):
        x = torch.randn(2, 4)
        torch.testing.assert_close(fixed(x, t, scale=1.0 + t), _reference(model, x, t, 1.0 + t))
    assert len(fixed.reports) == 1
