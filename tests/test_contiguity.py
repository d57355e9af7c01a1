"""FXG201 with real timings: whatever it decides, the fixed model equals eager.

Decisions themselves are pinned with fake timings in tests/cases/FXG201; nothing here
asserts on a timing or on whether `.contiguous()` was inserted.
"""

from __future__ import annotations

import functools
import importlib

import pytest
import torch
from torch import fx, nn

import fxgrad
from fxgrad.context import Context, clone_inputs, default_measure

# Imported by name: linters take fxgrad.passes (shipped from passes/) for a third party.
fxg201 = importlib.import_module("fxgrad.passes.noncontiguous_cat_input")
SHORT = functools.partial(default_measure, min_run_time=0.005)


class Transposed(nn.Module):
    def forward(self, x, y):
        return torch.cat([x.t(), y], dim=0) * 2


class Strided(nn.Module):
    def forward(self, x, y):
        return torch.cat([x[:, ::2], y, x[:, 1::2]], dim=1).sum(dim=0)


class Expanded(nn.Module):
    def forward(self, x, y):
        return torch.stack([x.expand(64, 64), y], dim=-1)


class ChannelsLastConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x, y):
        return self.conv(torch.cat([x, y], dim=1))


class ChannelsLastBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x, y):
        return self.bn(torch.cat([x, y], dim=1)).relu()


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(32, 16)

    def forward(self, x, y):
        a = x.permute(1, 0)
        h = torch.concat([a, y, a], dim=-1)
        return self.lin(torch.cat([h, a.relu()], dim=1)), torch.concatenate((a, y), axis=0)


def _cl(*shape):
    return torch.randn(*shape).to(memory_format=torch.channels_last).requires_grad_()


MODELS = {
    "transposed": (Transposed, lambda: (torch.randn(256, 128), torch.randn(128, 256))),
    "strided": (
        Strided,
        lambda: (torch.randn(32, 64, requires_grad=True), torch.randn(32, 8, requires_grad=True)),
    ),
    "expanded": (
        Expanded,
        lambda: (torch.randn(64, 1, requires_grad=True), torch.randn(64, 64)),
    ),
    "channels_last_conv": (
        ChannelsLastConv,
        lambda: (_cl(2, 8, 16, 16), _cl(2, 8, 16, 16)),
    ),
    "channels_last_batchnorm": (
        ChannelsLastBatchNorm,
        lambda: (_cl(4, 8, 8, 8), _cl(4, 8, 8, 8)),
    ),
    "mixed": (
        Mixed,
        lambda: (torch.randn(8, 16, requires_grad=True), torch.randn(16, 8, requires_grad=True)),
    ),
}


def _values_and_grads(module, inputs, wrt):
    out = module(*inputs)
    outs = [o for o in (out if isinstance(out, tuple) else (out,))]
    diff = [o for o in outs if o.requires_grad]
    gen = torch.Generator().manual_seed(3)
    cot = [torch.randn(o.shape, generator=gen) for o in diff]
    leaves = [t for t in wrt if t.requires_grad]
    grads = torch.autograd.grad(diff, leaves, cot, allow_unused=True) if diff else ()
    return [o.detach() for o in outs], grads


def _assert_equivalent(model, fixed, example):
    params = [p for p in model.parameters() if p.requires_grad]
    a, b = clone_inputs(list(example)), clone_inputs(list(example))
    want_out, want_grads = _values_and_grads(model, a, a + params)
    got_out, got_grads = _values_and_grads(fixed, b, b + params)
    # A layout change may pick another conv kernel, which sums in another order: float32
    # results then differ in the last bits, nothing more.
    tol = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(got_out, want_out, **tol)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_timings_keep_values_and_gradients(name):
    cls, make = MODELS[name]
    model, example = cls(), make()
    fixed = fxgrad.fix(model, example, select=["FXG201"], measure=SHORT)
    changes = fixed.report.changes
    # Each decision reports its measured ratio, or that the budget ran out on a busy machine.
    assert all(
        c.code == "FXG201" and ("x, " in c.note or "not measured" in c.note) for c in changes
    )
    assert any(c.node.startswith(("cat", "stack", "concat")) for c in changes)
    _assert_equivalent(model, fixed, example)
    if hasattr(model, "bn"):
        fixed.eval()
        model.eval()
        _assert_equivalent(model, fixed, example)


def _contiguous_always_wins(key, fn):
    fn()  # the timed functions still run, on fresh tensors
    return 1e-3 if key.endswith(":contiguous") else 2e-3


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_insertion_keeps_values_and_gradients(name):
    cls, make = MODELS[name]
    model, example = cls(), make()
    fixed = fxgrad.fix(model, example, select=["FXG201"], measure=_contiguous_always_wins)
    assert fixed.report.applied and all(c.applied for c in fixed.report.changes)
    assert ".contiguous()" in fixed.code
    _assert_equivalent(model, fixed, example)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_real_timings_on_gpu():
    model = ChannelsLastConv().cuda()
    example = tuple(t.detach().cuda().requires_grad_() for t in MODELS["channels_last_conv"][1]())
    fixed = fxgrad.fix(model, example, select=["FXG201"], measure=SHORT)
    _assert_equivalent(model, fixed, example)


def test_example_inputs_are_not_touched():
    x, y = torch.randn(64, 32, requires_grad=True), torch.randn(32, 64)
    before = (x.detach().clone(), y.clone())
    fxgrad.fix(Transposed(), (x, y), select=["FXG201"], measure=SHORT)
    assert x.grad is None
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])


def test_without_example_inputs_nothing_is_inserted():
    fixed = fxgrad.fix(Mixed(), select=["FXG201"])
    (change,) = fixed.report.changes
    assert not change.applied
    assert "no example inputs" in change.note and "3 cat calls" in change.note
    assert "contiguous" not in fixed.code


def test_without_cat_nothing_is_reported():
    class NoCat(nn.Module):
        def forward(self, x):
            return x.t() * 2

    assert fxgrad.fix(NoCat(), (torch.randn(3, 4),), select=["FXG201"]).report.changes == []


def _traced(example):
    gm = fx.symbolic_trace(Transposed())
    return gm, Context(example_inputs=list(example))


def test_spent_budget_means_no_measurement_and_no_rewrite():
    example = (torch.randn(16, 8), torch.randn(8, 16))
    gm, ctx = _traced(example)
    ctx.measure_budget_s = 0.0
    ctx.measure = lambda key, fn: pytest.fail("measured past the budget")
    code = gm.code
    (change,) = fxg201.run(gm, ctx)
    assert not change.applied and "budget" in change.note
    gm.recompile()
    assert gm.code == code


def test_budget_spent_part_way_through_a_comparison():
    gm, ctx = _traced((torch.randn(16, 8), torch.randn(8, 16)))
    asked = []

    def slow(key, fn):
        asked.append(key)
        ctx.measure_budget_s = 0.0  # the first measurement used up everything
        return 1.0

    ctx.measure = slow
    (change,) = fxg201.run(gm, ctx)
    assert asked == ["cat:original"]
    assert not change.applied and "budget" in change.note


def _recording(ctx, answers):
    asked = []

    def measure(key, fn):
        fn()  # the timed function runs on fresh tensors, forward and backward
        asked.append(key)
        return answers[key].pop(0)

    ctx.measure = measure
    return asked


def test_variants_alternate_and_every_round_must_show_the_gain():
    gm, ctx = _traced((torch.randn(16, 8, requires_grad=True), torch.randn(8, 16)))
    # One disturbed round (the original ran slow once) must not cause a rewrite.
    answers = {"cat:original": [9e-3, 2e-3, 2e-3], "cat:contiguous": [1e-3, 1.9e-3, 1.8e-3]}
    asked = _recording(ctx, answers)
    (change,) = fxg201.run(gm, ctx)
    assert asked == ["cat:original", "cat:contiguous"] * fxg201.ROUNDS
    assert not change.applied
    assert "fwd+bwd 2.00 ms as is, 1.90 ms with .contiguous() (1.05x" in change.note


def test_a_gain_in_every_round_is_taken():
    gm, ctx = _traced((torch.randn(16, 8, requires_grad=True), torch.randn(8, 16)))
    answers = {"cat:original": [3e-3, 2e-3, 2.5e-3], "cat:contiguous": [1e-3, 1.6e-3, 1e-3]}
    _recording(ctx, answers)
    (change,) = fxg201.run(gm, ctx)
    assert change.applied
    assert "fwd+bwd 2.00 ms -> 1.60 ms (1.25x, measured)" in change.note


def test_layout_fresh_tensors_match_strides():
    base = torch.randn(4, 6, 8)
    for t in (
        base.transpose(0, 2),
        base[:, 1::2],
        base[:, :1].expand(4, 5, 8),
        base.permute(2, 0, 1),
    ):
        lay = fxg201.Layout.of(t)
        fresh = lay.fresh()
        assert fresh.shape == t.shape and fresh.stride() == t.stride()
        assert fresh.storage_offset() == t.storage_offset()
        assert bool(torch.isfinite(fresh).all())
