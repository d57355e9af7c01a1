"""A fixed module is right on every call: what it decided on one call is reused only for
calls it holds for, and a call that differs in what a decision depended on is decided on
its own (fxgrad.guards)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxgrad
from fxgrad.errors import FxgradError


class WritesInput(nn.Module):
    """Safe for plain inputs (the caller sees its tensor doubled), unsafe for inputs that
    require grad (eager refuses to write a leaf that requires grad)."""

    def forward(self, x):
        x.mul_(2)
        return x.sin()


def test_a_plain_input_then_one_that_requires_grad():
    fixed = fxgrad.fix(WritesInput())
    x = torch.randn(3)
    x0 = x.clone()
    out = fixed(x)
    torch.testing.assert_close(x, 2 * x0)  # written in place, as eager does
    torch.testing.assert_close(out, (2 * x0).sin())
    assert not fixed.report.applied  # nothing to repair for a plain input
    y = torch.randn(3, requires_grad=True)
    out = fixed(y)  # eager raises here; the fixed module repairs it
    (g,) = torch.autograd.grad(out.sum(), y)
    torch.testing.assert_close(g, 2 * torch.cos(2 * y.detach()))
    assert len(fixed.report.applied) == 1 and "requires grad" in fixed.report.variant
    z = torch.ones(3)
    fixed(z)  # back to a plain input: the first variant, which writes the input
    torch.testing.assert_close(z, torch.full((3,), 2.0))
    assert len(fixed.reports) == 2


def test_under_no_grad_a_write_into_a_parameter_stays_a_write():
    class Decay(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            self.w.mul_(0.5)  # eager refuses it with grad on; under no_grad it decays w
            return x * self.w

    model = Decay()
    fixed = fxgrad.fix(model, (torch.randn(3),))
    assert len(fixed.report.applied) == 1  # decided for training: the write is rewritten
    torch.testing.assert_close(model.w.detach(), torch.ones(3))
    with torch.no_grad():
        out = fixed(torch.ones(3))
    torch.testing.assert_close(out, torch.full((3,), 0.5))
    torch.testing.assert_close(model.w.detach(), torch.full((3,), 0.5))  # as eager


def test_inputs_that_share_memory_are_decided_as_such():
    class Q(nn.Module):
        def forward(self, q, k):
            q.mul_(2)
            return k * 1

    model = Q()
    fixed = fxgrad.fix(model, (torch.randn(4), torch.randn(4)))
    x = torch.ones(4)
    torch.testing.assert_close(fixed(x, x), torch.full((4,), 2.0))  # k is q: it sees the write
    base = torch.ones(6)
    torch.testing.assert_close(fixed(base[:4], base[2:]), torch.tensor([2.0, 2, 1, 1]))
    assert len(fixed.reports) == 3


def test_dtype_layout_and_01_sizes_each_decide_anew_and_are_reused():
    class AliasByDtype(nn.Module):
        def forward(self, h):
            h = h.sigmoid()
            y = h.float()  # h itself for float32, a copy for float64
            y.mul_(2)
            return h + y

    model = AliasByDtype()
    fixed = fxgrad.fix(model)
    calls = [
        torch.randn(4, 3, requires_grad=True),
        torch.randn(5, 3, requires_grad=True),  # other sizes: the same variant
        torch.randn(4, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 4, requires_grad=True).t(),  # not contiguous
        torch.randn(1, 3, requires_grad=True),  # a size of 1
        torch.randn(7, 3, requires_grad=True),  # back to the first variant
    ]
    for x in calls:
        x = x.detach().requires_grad_()
        got = fixed(x)
        (g,) = torch.autograd.grad(got.sum(), x)
        h = x.detach().requires_grad_()
        s = h.sigmoid()
        # eager: for float32 y is h, so h + y reads the doubled h twice; else 3h
        want = 4 * s if x.dtype == torch.float32 else 3 * s
        (gw,) = torch.autograd.grad(want.sum(), h)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(g, gw)
    assert len(fixed.reports) == 4


def test_train_and_eval_are_decided_each_in_their_mode():
    class DropThenWrite(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, h):
            h = h * 1
            d = self.drop(h)  # in eval mode, h itself: it sees the write below
            h.mul_(2)
            return d + h

    model = DropThenWrite()
    fixed = fxgrad.fix(model, (torch.randn(4, 3, requires_grad=True),))
    fixed.eval()
    x = torch.randn(4, 3, requires_grad=True)
    torch.testing.assert_close(fixed(x), 4 * x)  # eager: d is h, doubled
    fixed.train()
    torch.manual_seed(0)
    got = fixed(x)
    torch.manual_seed(0)
    want = F.dropout(x, 0.5) + 2 * x
    torch.testing.assert_close(got, want)


def test_a_subclass_of_batchnorm_follows_eval():
    class BN(nn.BatchNorm1d):
        def forward(self, x):
            return super().forward(x)

    model = nn.Sequential(BN(3))
    fixed = fxgrad.fix(model, (torch.randn(8, 3),))
    model.eval()
    x = torch.randn(5, 3)
    reference = copy.deepcopy(model)
    torch.testing.assert_close(fixed(x), reference(x))


def test_size_guards_are_checked_on_meta_tensors_and_touch_nothing():
    class HalfIfEven(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            h = self.bn(self.lin(x))
            return h * 2 if h.shape[0] % 2 == 0 else h

    model = HalfIfEven()
    fixed = fxgrad.fix(model, (torch.randn(4, 4),))
    seen = []
    model.bn.register_forward_hook(lambda *args: seen.append(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = fixed._fxgrad.variants[0].shapes
    assert shapes.holds(fixed, [torch.randn(6, 4)]) and not shapes.holds(fixed, [torch.randn(5, 4)])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # running statistics and the batch counter
    assert seen == []
    for n in (6, 5, 8, 3):
        x = torch.randn(n, 4)
        reference = copy.deepcopy(model)
        torch.testing.assert_close(fixed(x), reference(x))
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, reference.state_dict()[k])
    assert len(fixed.reports) == 2  # even and odd batches


def test_too_many_variants_names_the_fact_that_keeps_changing():
    fixed = fxgrad.fix(nn.Linear(3, 3), max_variants=2)
    fixed(torch.randn(2, 3))
    fixed(torch.randn(2, 3, requires_grad=True))
    with pytest.raises(FxgradError, match="requires_grad True -> False|dtype") as info:
        fixed(torch.randn(2, 3, dtype=torch.float64))
    assert "max_variants" in info.value.hint
    with pytest.raises(FxgradError, match="at least 1"):
        fxgrad.fix(nn.Linear(3, 3), max_variants=0)


@pytest.mark.parametrize(
    ("x", "words"),
    [
        (torch.randn(2, 5, 3), "input: rank 2 -> 3."),
        (torch.randn(1, 3), "input: shape [N, N] -> [1, N] (N: a size of 2 or more)."),
        (torch.randn(3, 2).t(), "input: layout contiguous -> non-contiguous"),
    ],
)
def test_too_many_variants_says_which_fact_of_the_shape_changed(x, words):
    fixed = fxgrad.fix(nn.Linear(3, 3), max_variants=1)
    fixed(torch.randn(2, 3))
    with pytest.raises(FxgradError) as info:
        fixed(x)
    assert f"this call differs again in {words}" in info.value.message
    assert "0/1 sizes" not in info.value.message


def test_the_first_call_leaves_the_users_state_as_eager_would():
    class Stateful(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.bn = nn.BatchNorm1d(3)
            self.calls = torch.zeros(())  # a plain tensor attribute

        def forward(self, x):
            self.calls.add_(1)
            h = F.dropout(self.bn(self.lin(x)), 0.3) + torch.randn(3)
            return h * self.calls

    torch.manual_seed(0)
    model = Stateful()
    reference = copy.deepcopy(model)
    fixed = fxgrad.fix(model)
    x = torch.randn(4, 3)
    for _ in range(3):
        rng = torch.get_rng_state()
        got = fixed(x)
        rng_after = torch.get_rng_state()
        torch.set_rng_state(rng)
        want = reference(x)
        assert torch.equal(torch.get_rng_state(), rng_after)  # the same draws as eager
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(model.calls, reference.calls)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, reference.state_dict()[k])
    assert len(fixed.reports) == 1


def test_a_submodule_replaced_after_fixing_is_the_one_called():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    fixed = fxgrad.fix(model, (torch.randn(4, 3),))
    x = torch.randn(4, 3)
    torch.testing.assert_close(fixed(x), model(x))
    model[2] = nn.Linear(3, 2)  # a new head, as for fine-tuning
    seen = []
    model[0].register_forward_hook(lambda *args: seen.append(1))  # a hook added later
    torch.testing.assert_close(fixed(x), model(x))
    assert len(seen) == 2  # the fixed call and the eager one
    model.eval()  # a mode switch through the user's model is seen too
    torch.testing.assert_close(fixed(x), model(x))


class Unpacks(nn.Module):
    """`a, b = x.unbind(0)`: how many pieces there are is the input's first size."""

    def forward(self, x):
        a, b = x.unbind(0)
        h, w = x.shape[1:]  # a shape's length is fixed by the input's rank: no guard
        return a * b + h * w


def test_unpacking_a_size_dependent_sequence_is_guarded():
    fixed = fxgrad.fix(Unpacks(), (torch.randn(2, 3, 4),))
    guards = [n for n in fixed.graph_module.graph.nodes if "guard" in n.name]
    assert len(guards) == 1  # the unbind's count; not the shape's
    x = torch.randn(2, 5, 4, requires_grad=True)
    torch.testing.assert_close(fixed(x), Unpacks()(x))
    with pytest.raises(ValueError, match="too many values to unpack"):  # as eager raises
        fixed(torch.randn(3, 3, 4))
    with pytest.raises(FxgradError, match="raises ValueError in forward"):
        fxgrad.fix(Unpacks(), (torch.randn(1, 3, 4),))


class SigmoidWrite(nn.Module):
    """`h.mul_(2)` overwrites sigmoid's saved output: unsafe exactly when h requires grad,
    which, for a plain input, is when a parameter of `fc` does."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("shift", torch.zeros(4))

    def forward(self, x):
        h = torch.sigmoid(self.fc(x) + self.shift)
        h.mul_(2)
        return h


def _sigmoid_write_reference(m: SigmoidWrite, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(m.fc(x) + m.shift) * 2


def _same_gradients(fixed: nn.Module, model: SigmoidWrite, x: torch.Tensor) -> None:
    out = fixed(x)
    torch.testing.assert_close(out, _sigmoid_write_reference(model, x))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    got = torch.autograd.grad(out.sum(), params)
    want = torch.autograd.grad(_sigmoid_write_reference(model, x).sum(), params)
    torch.testing.assert_close(got, want)


def test_tensor_facts_changed_behind_the_modules_back_decide_anew():
    """Parameter facts no module method sees change: a flag set on the tensor, `.data`
    replaced with another dtype, a parameter swapped in its table, a buffer replaced."""
    model = SigmoidWrite()
    model.fc.requires_grad_(False)
    x = torch.randn(3, 4)
    fixed = fxgrad.fix(model, (x,))
    assert not fixed.report.applied  # nothing requires grad: the write is safe
    _same_gradients(fixed, model, x)

    model.fc.weight.requires_grad = True  # on the tensor: no module code runs
    _same_gradients(fixed, model, torch.randn(5, 4))
    assert len(fixed.report.applied) == 1

    for p in model.parameters():
        p.data = p.data.double()  # `.data` replaced: the same Parameter object
    model.shift.data = model.shift.data.double()
    _same_gradients(fixed, model, torch.randn(2, 4, dtype=torch.float64))

    model.fc.weight.requires_grad = False
    model.fc.bias = nn.Parameter(torch.zeros(4, dtype=torch.float64))  # swapped in _parameters
    _same_gradients(fixed, model, torch.randn(2, 4, dtype=torch.float64))
    assert len(fixed.report.applied) == 1  # the bias requires grad: unsafe again

    model.fc.bias.requires_grad = False
    model.fc.weight.requires_grad = True  # the facts of the `.data` step again
    before = len(fixed.reports)
    _same_gradients(fixed, model, torch.randn(2, 4, dtype=torch.float64))
    assert len(fixed.reports) == before  # that step's variant, reused
    assert len(fixed.report.applied) == 1


def test_tensor_state_reuses_facts_and_sees_every_flip():
    from fxgrad.guards import TensorState

    lin = nn.Linear(3, 3)
    tables = [lin._parameters]
    state = TensorState()
    first = state.facts(tables)
    assert state.facts(tables) is first
    with torch.no_grad():
        assert state.facts(tables) == first  # the same facts, checked under another mode
    with torch.inference_mode():
        assert state.facts(tables) == first
    lin.weight.requires_grad_(False)
    frozen = state.facts(tables)
    assert frozen != first
    lin.weight.requires_grad_(True)
    assert state.facts(tables) is first
    lin.bias = None  # a slot that holds None is no tensor
    assert len(state.facts(tables)) == 1
    lin.weight.data = lin.weight.data.half()
    assert state.facts(tables)[0][0] is torch.float16
