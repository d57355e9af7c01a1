"""FXG201: whatever it decides, the fixed model equals eager, on every call.

Decisions themselves are pinned with fake timings here and in tests/cases/FXG201; nothing
asserts on a real timing or on whether a rewrite was made with real timings. The decision
cache is tested explicitly (tests/conftest.py gives every test an empty one).
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import time

import pytest
import torch
from torch import fx, nn

import fxgrad
from fxgrad import decision_cache
from fxgrad.context import Context, clone_inputs, fake_measure

# Imported by name: linters take fxgrad.passes (shipped from passes/) for a third party.
fxg201 = importlib.import_module("fxgrad.passes.noncontiguous_cat_input")
# The parts whose names tests replace: a name is replaced in the module that reads it.
fxg201_timing = importlib.import_module("fxgrad.passes.noncontiguous_cat_input.timing")
fxg201_cache = importlib.import_module("fxgrad.passes.noncontiguous_cat_input.cache")
fxg201_downstream = importlib.import_module("fxgrad.passes.noncontiguous_cat_input.downstream")
Variant = fxg201.Variant


class Transposed(nn.Module):
    def forward(self, x, y):
        return torch.cat([x.t(), y], dim=0) * 2


class TransposedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(256, 8)

    def forward(self, x, y):
        return self.lin(torch.cat([x.t(), y.t()], dim=0))


class Strided(nn.Module):
    def forward(self, x, y):
        return torch.cat([x[:, ::2], y, x[:, 1::2]], dim=1).sum(dim=0)


class Expanded(nn.Module):
    def forward(self, x, y):
        return torch.stack([x.expand(-1, 256), y], dim=-1)


class ChannelsLastConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(512, 8, 1)

    def forward(self, x, y):
        return self.conv(torch.cat([x, y], dim=1))


class ChannelsLastBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(128)

    def forward(self, x, y):
        return self.bn(torch.cat([x, y], dim=1)).relu()


class PrefixHeads(nn.Module):
    """Attention keys with prefix keys, both split into heads by `permute`."""

    def forward(self, q, prefix, k):
        b, n, c = k.shape
        kh = k.view(b, n, 4, c // 4).permute(0, 2, 1, 3)
        ph = prefix.view(b, -1, 4, c // 4).permute(0, 2, 1, 3)
        keys = torch.cat([ph, kh], dim=2)
        return q @ keys.transpose(-1, -2)


class WrittenAfterCat(nn.Module):
    """In-place writes into the cat's output and into a view of it, then reads of both."""

    def forward(self, q, prefix, k):
        b, n, c = k.shape
        kh = k.view(b, n, 4, c // 4).permute(0, 2, 1, 3)
        ph = prefix.view(b, -1, 4, c // 4).permute(0, 2, 1, 3)
        keys = torch.cat([ph, kh], dim=2)
        keys.mul_(0.5)
        first = keys[:, 0]
        first.add_(1.0)
        return q @ keys.transpose(-1, -2), first @ torch.ones(first.shape[-1], 2)


class StackedHeads(nn.Module):
    def forward(self, a, b):
        h = torch.stack([a.permute(0, 2, 1), b.permute(0, 2, 1)], dim=1).sigmoid()
        return h @ torch.ones(a.shape[1], 3)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1024, 16)

    def forward(self, x, y):
        a = x.permute(1, 0)
        h = torch.concat([a, y, a], dim=-1)
        return self.lin(torch.cat([h, a.relu()], dim=1)), torch.concatenate((a, y), axis=0)


def _g(*shape):
    return torch.randn(*shape, requires_grad=True)


def _cl(*shape):
    return torch.randn(*shape).to(memory_format=torch.channels_last).requires_grad_()


def _heads(b, n, c, prefix=64):
    return (_g(b, 4, 16, c // 4), _g(b, prefix, c), _g(b, n, c))


# name: (model class, example inputs, inputs of another call: other sizes and/or strides)
MODELS = {
    "transposed": (
        Transposed,
        lambda: (_g(512, 256), _g(256, 512)),
        lambda: (_g(256, 384).t(), _g(256, 384)),  # x.t() is now contiguous
    ),
    "transposed_linear": (
        TransposedLinear,
        lambda: (_g(256, 300), _g(256, 200)),
        lambda: (_g(30, 256).t(), _g(256, 7)),  # one input contiguous after .t()
    ),
    "strided": (
        Strided,
        lambda: (_g(256, 512), _g(256, 8)),
        lambda: (_g(64, 10), _g(64, 3)),
    ),
    "expanded": (
        Expanded,
        lambda: (_g(256, 1), _g(256, 256)),
        lambda: (_g(32, 1), _g(32, 256)),
    ),
    "channels_last_conv": (
        ChannelsLastConv,
        lambda: (_cl(1, 256, 16, 16), _cl(1, 256, 16, 16)),
        lambda: (_g(3, 256, 5, 4), _cl(3, 256, 5, 4)),
    ),
    "channels_last_batchnorm": (
        ChannelsLastBatchNorm,
        lambda: (_cl(2, 64, 16, 16), _cl(2, 64, 16, 16)),
        lambda: (_g(3, 64, 4, 4), _g(3, 64, 4, 4)),
    ),
    "prefix_heads": (
        PrefixHeads,
        lambda: _heads(2, 256, 128),
        lambda: (_g(3, 4, 5, 32), _g(3, 7, 128), _g(3, 11, 128)),
    ),
    "written_after_cat": (
        WrittenAfterCat,
        lambda: _heads(2, 256, 128),
        lambda: (_g(1, 4, 5, 32), _g(1, 3, 128), _g(1, 9, 128)),
    ),
    "stacked_heads": (
        StackedHeads,
        lambda: (_g(4, 128, 256), _g(4, 128, 256)),
        lambda: (_g(2, 3, 128).transpose(1, 2), _g(2, 128, 3)),
    ),
    "mixed": (
        Mixed,
        lambda: (_g(256, 512), _g(512, 256)),
        lambda: (_g(256, 20), _g(20, 256)),
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


def _leafy(inputs):
    """Inputs as leaves of their own (a view input keeps its strides, gets its own grad)."""
    out = []
    for x in inputs:
        base = torch.empty_strided(x.shape, x.stride()).copy_(x.detach())
        out.append(base.requires_grad_(x.requires_grad))
    return out


def _assert_equivalent(model, fixed, example):
    params = [p for p in model.parameters() if p.requires_grad]
    a, b = clone_inputs(_leafy(example)), clone_inputs(_leafy(example))
    want_out, want_grads = _values_and_grads(model, a, a + params)
    got_out, got_grads = _values_and_grads(fixed, b, b + params)
    # A layout change may pick another kernel (conv, batch norm statistics, matmul), which
    # sums in another order: float32 results then differ in the last bits, nothing more.
    tol = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(got_out, want_out, **tol)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_timings_keep_values_and_gradients(name):
    cls, make, other = MODELS[name]
    model, example = cls(), make()
    fixed = fxgrad.fix(model, example, select=["FXG201"])
    # Every decision reports its times, or why nothing was timed.
    for c in fixed.report.changes:
        assert c.code == "FXG201"
        assert "x; " in c.note or "x)" in c.note or "not " in c.note, c.note
    _assert_equivalent(model, fixed, example)
    _assert_equivalent(model, fixed, other())
    if hasattr(model, "bn"):
        fixed.eval()
        model.eval()
        _assert_equivalent(model, fixed, example)


@pytest.fixture
def roomy_budget(monkeypatch):
    """Fake timers that run the timed code are charged its real time: allow plenty."""
    monkeypatch.setattr(fxg201_timing, "BUDGET_FLOOR_S", 60.0)


def _always_wins(winner):
    def measure(key, fn):
        fn()  # the timed functions still run, on fresh tensors
        variant = key.rsplit(":", 1)[1]
        return 1e-3 if variant == winner else 3e-3 if variant != "original" else 2e-3

    return measure


@pytest.mark.parametrize(
    ("name", "winner"), list(itertools.product(sorted(MODELS), ["contiguous", "permuted"]))
)
def test_every_rewrite_keeps_values_and_gradients_on_other_calls(name, winner, roomy_budget):
    cls, make, other = MODELS[name]
    model, example = cls(), make()
    fixed = fxgrad.fix(model, example, select=["FXG201"], measure=_always_wins(winner))
    applied = fixed.report.applied
    if winner == "contiguous":
        assert applied and ".contiguous()" in fixed.code
    if applied and winner == "permuted" and name in ("prefix_heads", "written_after_cat"):
        assert ".permute(" in applied[0].after
    _assert_equivalent(model, fixed, example)
    _assert_equivalent(model, fixed, other())  # other sizes, other strides: same values


@pytest.mark.parametrize("name", ["prefix_heads", "written_after_cat", "stacked_heads"])
def test_permuted_cat_is_chosen_where_it_applies(name, roomy_budget):
    cls, make, _ = MODELS[name]
    fixed = fxgrad.fix(cls(), make(), select=["FXG201"], measure=_always_wins("permuted"))
    (change,) = [c for c in fixed.report.changes if c.applied]
    assert change.after.endswith(")") and ".permute(" in change.after
    assert "as a permuted cat" not in change.note  # the winner is the arrow's right side


@pytest.mark.parametrize(
    ("cat_dim", "stack"), [(d, s) for s in (False, True) for d in range(3 + s)]
)
def test_permuted_identity_holds_for_any_strides(cat_dim, stack):
    gen = torch.Generator().manual_seed(0)
    target = torch.stack if stack else torch.cat
    for order in itertools.permutations(range(3)):
        if order == (0, 1, 2):
            continue
        p = fxg201.Permuted.of(order, cat_dim, stack)
        for strides in ("dense", "contiguous", "sliced"):
            xs = []
            for _ in range(3):
                base = torch.randn(4, 5, 6, generator=gen)
                if strides == "dense":
                    x = base.permute(fxg201.inverse(order))
                elif strides == "contiguous":
                    x = base
                else:
                    x = torch.randn(4, 10, 6, generator=gen)[:, ::2]
                xs.append(x)
            if not stack:
                # cat needs equal sizes except along cat_dim: trim to the first one's
                xs = [x[tuple(slice(0, s) for s in xs[0].shape)] for x in xs]
            torch.testing.assert_close(p.apply(target, xs), target(xs, cat_dim), rtol=0, atol=0)


def test_common_order():
    t = torch.randn(2, 3, 4, 5)
    lay = fxg201.Layout.of
    assert fxg201.common_order([lay(t.permute(0, 2, 1, 3))] * 2) == (0, 2, 1, 3)
    cl = t.to(memory_format=torch.channels_last)
    assert fxg201.common_order([lay(cl), lay(cl)]) == (0, 2, 3, 1)
    assert fxg201.common_order([lay(cl), lay(t)]) is None  # no order fits both
    assert fxg201.common_order([lay(t[:, :, ::2])]) is None  # gaps: no dense order
    assert fxg201.common_order([lay(t)]) is None  # already contiguous


def _traced(module, example):
    gm = fx.symbolic_trace(module)
    return gm, Context(example_inputs=list(example))


def _reasons(module, example):
    gm, ctx = _traced(module, example)
    ctx.measure = fake_measure({})  # nothing may be timed
    return fxg201.run(gm, ctx)


def test_readers_view_forbids_only_the_permuted_cat():
    class ViewAfter(nn.Module):
        def forward(self, x, y):
            return torch.cat([x.t(), y.t()], 0).view(-1)

    gm, _ = _traced(ViewAfter(), ())
    cat = next(n for n in gm.graph.nodes if n.name == "cat")
    uses = fxg201.readers(gm, cat)
    assert uses.allows(Variant.CONTIGUOUS) is None
    assert "view" in uses.allows(Variant.PERMUTED)


def test_readers_follow_layout_keeping_ops_and_stop_at_fresh_ones():
    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x, y):
            h = torch.cat([x, y], 1).relu()[:, :4] * 2
            return self.lin(h).view(-1)  # linear output: its own layout, view is fine

    gm, _ = _traced(Chain(), ())
    cat = next(n for n in gm.graph.nodes if n.name == "cat")
    uses = fxg201.readers(gm, cat)
    assert uses.allows(Variant.PERMUTED) is None and uses.allows(Variant.CONTIGUOUS) is None


def test_readers_unknown_op_and_written_reshape_forbid_both():
    class Unknown(nn.Module):
        def forward(self, x, y):
            return torch.cat([x, y], 1).as_strided((2,), (1,))

    class WrittenReshape(nn.Module):
        def forward(self, x, y):
            h = torch.cat([x, y], 1)
            r = h.reshape(-1)
            h.add_(1)  # r sees it if reshape was a view
            return r

    for module, word in ((Unknown(), "not known"), (WrittenReshape(), "written in place")):
        gm, _ = _traced(module, ())
        cat = next(n for n in gm.graph.nodes if n.name == "cat")
        uses = fxg201.readers(gm, cat)
        assert word in uses.allows(Variant.CONTIGUOUS)
        assert word in uses.allows(Variant.PERMUTED)


def test_a_write_elsewhere_does_not_forbid_a_reshape():
    class Elsewhere(nn.Module):
        def forward(self, x, y):
            h = torch.cat([x, y], 1)
            g = h * 2
            g.add_(1)  # a new tensor: no reshape result or source shares its memory
            return h.reshape(-1).sum() + g.sum()

    gm, _ = _traced(Elsewhere(), ())
    cat = next(n for n in gm.graph.nodes if n.name == "cat")
    uses = fxg201.readers(gm, cat)
    assert uses.allows(Variant.CONTIGUOUS) is None
    assert "callers" in uses.allows(Variant.PERMUTED)  # the sum is returned: other strides


def test_a_write_through_detach_joins_the_reshapes_storage():
    """`y.detach()` is a view of y (its schema says so): a write through it reaches a reshape
    of y that may be a view. It was read as a new tensor, which let the write go unseen."""

    class WrittenThroughDetach(nn.Module):
        def forward(self, x, y):
            h = torch.cat([x, y], 1)
            r = h.reshape(-1)
            h.detach().add_(1)  # r sees it if reshape was a view
            return r.sum()

    gm, _ = _traced(WrittenThroughDetach(), ())
    cat = next(n for n in gm.graph.nodes if n.name == "cat")
    uses = fxg201.readers(gm, cat)
    assert "written in place" in uses.allows(Variant.CONTIGUOUS)
    assert "written in place" in uses.allows(Variant.PERMUTED)


def test_small_inputs_and_size_one_strides_are_not_timed():
    x = torch.randn(16, 8)
    (change,) = _reasons(Transposed(), (x, torch.randn(8, 16)))
    assert not change.applied and "not timed" in change.note

    class SizeOne(nn.Module):
        def forward(self, x, y):
            return torch.cat([x.unsqueeze(-1).transpose(1, 2), y[:, None]], 1)

    assert _reasons(SizeOne(), (torch.randn(512, 512), torch.randn(512, 512))) == []


def test_without_example_inputs_nothing_is_inserted():
    gm = fx.symbolic_trace(Mixed())
    code = gm.code
    (change,) = fxg201.run(gm, Context())
    assert not change.applied
    assert "no example inputs" in change.note and "3 cat calls" in change.note
    gm.recompile()
    assert gm.code == code


def test_without_cat_nothing_is_reported():
    class NoCat(nn.Module):
        def forward(self, x):
            return x.t() * 2

    assert fxgrad.fix(NoCat(), (torch.randn(3, 4),), select=["FXG201"]).report.changes == []


def test_example_inputs_are_not_touched(roomy_budget):
    x, y = torch.randn(512, 256, requires_grad=True), torch.randn(256, 512)
    before = (x.detach().clone(), y.clone())
    fxgrad.fix(Transposed(), (x, y), select=["FXG201"], measure=_always_wins("contiguous"))
    assert x.grad is None
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])


BIG = (torch.randn(512, 256, requires_grad=True), torch.randn(256, 512))


def test_spent_budget_means_no_measurement_and_no_rewrite():
    gm, ctx = _traced(Transposed(), BIG)
    ctx.measure_budget_s = 0.0
    ctx.measure = lambda key, fn: pytest.fail("measured past the budget")
    code = gm.code
    (change,) = fxg201.run(gm, ctx)
    assert not change.applied and "budget" in change.note
    gm.recompile()
    assert gm.code == code


def test_the_budget_is_about_one_forward_and_backward(monkeypatch):
    # With fix()'s own timer, a site that would take longer than the budget is not timed.
    monkeypatch.setattr(fxg201_timing, "BUDGET_FLOOR_S", 0.0)
    monkeypatch.setattr(
        fxg201_timing, "_Sampler", lambda number: pytest.fail("timed past the budget")
    )
    gm, ctx = _traced(Transposed(), BIG)
    ctx.step_s = 1e-6  # as if one forward+backward of the model took a microsecond
    (change,) = fxg201.run(gm, ctx)
    assert not change.applied
    assert "not measured: the measuring budget (1e-06 s) was spent" in change.note


def test_budget_spent_part_way_through_a_comparison():
    gm, ctx = _traced(Transposed(), BIG)
    asked = []

    def slow(key, fn):
        asked.append(key)
        time.sleep(0.03)  # the budget counts what the timer takes, not what it answers
        return 1.0

    ctx.measure = slow
    ctx.step_s = 0.0  # budget: the floor, which one slow answer spends
    (change,) = fxg201.run(gm, ctx)
    assert len(asked) < 2 * fxg201.ROUNDS
    assert not change.applied and "budget" in change.note


def _recording(ctx, answers):
    asked = []

    def measure(key, fn):
        fn()  # the timed function runs on fresh tensors, forward and backward
        asked.append(key)
        return answers[key].pop(0)

    ctx.measure = measure
    return asked


def test_variants_interleave_and_one_disturbed_sample_decides_nothing(roomy_budget):
    gm, ctx = _traced(Transposed(), BIG)
    # One disturbed round (the original ran slow once) must not cause a rewrite.
    answers = {
        "cat:original": [9e-3, 2e-3, 2e-3, 2e-3, 2e-3],
        "cat:contiguous": [1e-3, 1.9e-3, 1.9e-3, 1.9e-3, 1.9e-3],
    }
    asked = _recording(ctx, answers)
    (change,) = fxg201.run(gm, ctx)
    pair = ["cat:original", "cat:contiguous"]
    assert asked == (pair + pair[::-1]) * (fxg201.ROUNDS // 2) + pair
    assert not change.applied
    assert "fwd+bwd 2.00 ms as is, 1.90 ms with .contiguous() (1.05x)" in change.note


def test_a_gain_in_the_medians_is_taken(roomy_budget):
    gm, ctx = _traced(Transposed(), BIG)
    answers = {
        "cat:original": [3e-3, 2e-3, 2.5e-3, 2e-3, 9e-3],
        "cat:contiguous": [1e-3, 1.6e-3, 1e-3, 3e-3, 1.5e-3],
    }
    _recording(ctx, answers)
    (change,) = fxg201.run(gm, ctx)
    assert change.applied
    assert "fwd+bwd 2.50 ms -> 1.50 ms (1.67x; measured)" in change.note


# ---------------------------------------------------------------------------------------
# The decision cache


def _counting(timings):
    calls = []
    inner = fake_measure(timings)

    def measure(key, fn):
        calls.append(key)
        return inner(key, fn)

    return measure, calls


HEAD_TIMES = {"cat:original": 2e-3, "cat:contiguous": 1.9e-3, "cat:permuted": 0.8e-3}


def test_a_second_fix_measures_nothing_and_gives_the_same_code():
    example = _heads(2, 256, 128)
    measure, calls = _counting(HEAD_TIMES)
    first = fxgrad.fix(PrefixHeads(), example, select=["FXG201"], measure=measure)
    assert len(calls) == 3 * fxg201.ROUNDS and first.report.applied
    calls.clear()
    second = fxgrad.fix(PrefixHeads(), example, select=["FXG201"], measure=measure)
    assert calls == []
    assert second.code == first.code
    (change,) = second.report.changes
    assert change.applied and "cached" in change.note


def test_a_site_that_cannot_be_replayed_is_cached_too(monkeypatch):
    monkeypatch.setattr(fxg201_timing, "_warm_up", lambda site: None)  # fails on fresh tensors
    gm, ctx = _traced(Transposed(), BIG)
    (change,) = fxg201.run(gm, ctx)
    assert not change.applied and "fails when replayed" in change.note
    monkeypatch.setattr(
        fxg201_timing, "_warm_up", lambda site: pytest.fail("not read from the cache")
    )
    gm, ctx = _traced(Transposed(), BIG)
    (change,) = fxg201.run(gm, ctx)
    assert not change.applied and "fails when replayed" in change.note
    assert "(cached)" in change.note


def test_a_site_the_budget_left_out_is_not_cached():
    gm, ctx = _traced(Transposed(), BIG)
    ctx.measure_budget_s = 0.0
    (change,) = fxg201.run(gm, ctx)
    assert "budget" in change.note and "not cached, the next fix measures it" in change.note
    assert decision_cache.DecisionCache("fxg201").lookup("anything") is None
    assert not decision_cache.DecisionCache("fxg201").path.exists()


def test_measuring_off_uses_the_cache_only():
    example = _heads(2, 256, 128)
    gm, ctx = _traced(PrefixHeads(), example)
    ctx.measure_enabled = False
    ctx.measure = lambda key, fn: pytest.fail("measured with measuring off")
    (change,) = fxg201.run(gm, ctx)
    assert not change.applied
    assert "not measured: measuring is off and no decision is cached" in change.note

    fxgrad.fix(PrefixHeads(), example, select=["FXG201"], measure=fake_measure(HEAD_TIMES))
    gm, ctx = _traced(PrefixHeads(), example)
    ctx.measure_enabled = False
    ctx.measure = fake_measure(HEAD_TIMES)  # the same timer: its decisions apply
    (change,) = fxg201.run(gm, ctx)
    assert change.applied and "cached" in change.note


def test_fix_with_measure_false_times_nothing():
    example = _heads(2, 256, 128)
    fixed = fxgrad.fix(PrefixHeads(), example, select=["FXG201"], measure=False)
    (change,) = fixed.report.changes
    assert not change.applied
    assert "not measured: measuring is off and no decision is cached" in change.note


def test_the_key_holds_device_and_torch_version(monkeypatch):
    example = _heads(2, 256, 128)
    measure, calls = _counting(HEAD_TIMES)
    fxgrad.fix(PrefixHeads(), example, select=["FXG201"], measure=measure)
    n = len(calls)
    fxgrad.fix(PrefixHeads(), example, select=["FXG201"], measure=measure)
    assert len(calls) == n  # cached
    here = fxg201_cache.device_key(torch.device("cpu"))
    monkeypatch.setattr(
        fxg201_cache, "device_key", lambda device: here.replace("torch ", "torch 9")
    )
    fxgrad.fix(PrefixHeads(), example, select=["FXG201"], measure=measure)
    assert len(calls) == 2 * n  # another torch version: measured again
    monkeypatch.setattr(fxg201_cache, "device_key", lambda device: "cuda: some GPU; torch 2.14")
    fxgrad.fix(PrefixHeads(), example, select=["FXG201"], measure=measure)
    assert len(calls) == 3 * n  # another device: measured again


def test_device_key_names_chip_threads_and_torch():
    key = decision_cache.device_key("cpu")
    assert key.startswith("cpu: ") and f"{torch.get_num_threads()} threads" in key
    assert torch.__version__ in key
    assert decision_cache.device_key("meta") != key


def test_a_corrupt_cache_file_is_ignored_and_replaced():
    path = decision_cache.cache_dir() / "fxg201.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for junk in ("{not json", json.dumps({"format": 1, "entries": {"x": 3}}), "[]", "\xff"):
        path.write_text(junk)
        measure, calls = _counting(HEAD_TIMES)
        fixed = fxgrad.fix(PrefixHeads(), _heads(2, 256, 128), select=["FXG201"], measure=measure)
        assert calls and fixed.report.applied
        assert json.loads(path.read_text())["format"] == decision_cache.FORMAT


def test_a_cached_record_of_another_shape_is_ignored():
    cache = decision_cache.DecisionCache("fxg201")
    measure, calls = _counting(HEAD_TIMES)
    fxgrad.fix(PrefixHeads(), _heads(2, 256, 128), select=["FXG201"], measure=measure)
    data = json.loads(cache.path.read_text())
    for record in data["entries"].values():
        record["choice"] = "sideways"
    cache.path.write_text(json.dumps(data))
    calls.clear()
    with pytest.warns(decision_cache.CacheWarning, match="another shape"):
        fxgrad.fix(PrefixHeads(), _heads(2, 256, 128), select=["FXG201"], measure=measure)
    assert calls  # measured again


def test_an_unwritable_cache_is_ignored(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FXGRAD_CACHE_DIR", str(blocker / "cache"))  # under a file: unwritable
    measure, calls = _counting(HEAD_TIMES)
    fixed = fxgrad.fix(PrefixHeads(), _heads(2, 256, 128), select=["FXG201"], measure=measure)
    assert fixed.report.applied and calls
    cache = decision_cache.DecisionCache("fxg201")
    cache.store("k", {"a": 1})
    assert cache.flush() is False


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FXGRAD_CACHE_DIR", str(tmp_path / "explicit"))
    assert decision_cache.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("FXGRAD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert decision_cache.cache_dir() == tmp_path / "xdg" / "fxgrad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert decision_cache.cache_dir() == tmp_path / "home" / ".cache" / "fxgrad"


def test_writes_are_atomic_and_merge_with_other_writers():
    a, b = decision_cache.DecisionCache("t"), decision_cache.DecisionCache("t")
    a.store("one", {"v": 1})
    b.store("two", {"v": 2})
    assert a.flush() and b.flush()
    fresh = decision_cache.DecisionCache("t")
    assert fresh.lookup("one") == {"v": 1} and fresh.lookup("two") == {"v": 2}
    leftovers = [p for p in os.listdir(a.path.parent) if p.startswith(".")]
    assert leftovers == []


def test_tests_never_write_the_users_cache():
    home = os.path.join(os.path.expanduser("~"), ".cache", "fxgrad")
    assert not str(decision_cache.cache_dir()).startswith(home)


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


def test_a_budget_spent_after_enough_rounds_decides_on_them(monkeypatch):
    monkeypatch.setattr(fxg201_timing, "BUDGET_FLOOR_S", 0.0)
    gm, ctx = _traced(Transposed(), BIG)
    ctx.step_s = 10.0
    rounds_done = []

    def measure(key, fn):
        rounds_done.append(key)
        if len(rounds_done) == 2 * fxg201.MIN_ROUNDS:
            budget_spender.spent_s = 1e9
        return 2e-3 if key.endswith("original") else 1e-3

    budget_spender = fxg201.Budget(10.0)
    monkeypatch.setattr(fxg201_cache, "_budget", lambda ctx, seen: budget_spender)
    ctx.measure = measure
    (change,) = fxg201.run(gm, ctx)
    assert len(rounds_done) == 2 * fxg201.MIN_ROUNDS
    assert change.applied and "(2.00x; measured)" in change.note


def test_readers_too_far_to_follow_forbid_both(monkeypatch):
    class Long(nn.Module):
        def forward(self, x, y):
            return torch.cat([x, y], 1).relu().sigmoid().tanh().exp()

    monkeypatch.setattr(fxg201_downstream, "MAX_WALK", 2)
    gm, _ = _traced(Long(), ())
    cat = next(n for n in gm.graph.nodes if n.name == "cat")
    uses = fxg201.readers(gm, cat)
    assert "not all followed" in uses.allows(Variant.CONTIGUOUS)
    assert "not all followed" in uses.allows(Variant.PERMUTED)


def test_benchmark_candidates_compute_the_plain_cat():
    """benchmarks/fxg201.py times three ways to the same values; check that they are."""
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "fxg201.py"
    spec = importlib.util.spec_from_file_location("fxgrad_bench_fxg201", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    for layout in bench.LAYOUTS:
        xs, dim, _ = layout.make(4096)
        outs = [f() for f in bench._variants(xs, dim).values()]
        for out in outs[1:]:
            torch.testing.assert_close(out, outs[0], rtol=0, atol=0)


class _SpelledOut(nn.Module):
    def forward(self, x, y):
        one = torch.cat([x.t() * 2, y], dim=0)
        two = torch.cat(
            [y.t(), x],
            dim=0,
        )
        return one, two


def test_the_report_shows_cat_inputs_as_the_user_wrote_them():
    """The row reads `torch.cat([x.t() * 2, y])` as written, not fx's `mul`; a call the
    line does not show whole (it spans lines) keeps fx's names."""
    example = (torch.randn(256, 256), torch.randn(256, 256))
    timings = {"cat:original": 3.0e-3, "cat:contiguous": 1.0e-3}
    timings |= {"cat_1:original": 3.0e-3, "cat_1:contiguous": 1.0e-3}
    report = fxgrad.fix(_SpelledOut(), example, select=["FXG201"], measure=fake_measure(timings))
    one, two = report.report.changes
    assert (one.before, one.after) == (
        "torch.cat([x.t() * 2, y], dim=0)",
        "torch.cat([(x.t() * 2).contiguous(), y], dim=0)",
    )
    assert one.node == "cat"  # the node's name stays the key the graph knows
    assert (two.before, two.after) == (
        "torch.cat([t_1, x], dim=0)",
        "torch.cat([t_1.contiguous(), x], dim=0)",
    )
