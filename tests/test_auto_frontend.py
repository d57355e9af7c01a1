"""frontend="auto": what fxgrad's tracer cannot capture or verify goes to Dynamo, on any call.

Each model here is one way a capture fails: a check on a traced value that only tracing
trips, an op that fails only on the traced path, a capture whose outputs differ from
eager's, a later call (eval mode) that fxgrad's tracer cannot capture, and a vmap that
Dynamo captures inline. Every fixed module must equal eager in train and eval mode and on
two batch sizes, and say that Dynamo took it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxgrad
from fxgrad.errors import EquivalenceError, ModelError, TraceError


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compilable_check(cond, msg):
    """A check in the style of transformers' `torch_compilable_check`."""
    if callable(cond):  # a traced condition looks callable: fx's Proxy has __call__
        cond = cond()
    torch._check_tensor_all_with(ValueError, cond, lambda: msg)


class ChecksMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, mask):
        compilable_check(mask.sum(-1) > 0, "every row needs one position")
        return self.drop(self.fc(x)) * mask.sum(-1, keepdim=True)


class TracedPathFails(nn.Module):
    """A library path taken only for traced values (as `is_tracing(tensor)` branches are),
    which fails where eager's path runs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, mask):
        width = mask.shape[-1]
        if isinstance(mask, torch.fx.Proxy):
            width = width + 1  # RuntimeError: narrow past the end, on the traced path only
        return self.fc(x) + mask.narrow(-1, 0, width).sum(-1, keepdim=True)


class FewerOutputsTraced(nn.Module):
    """Returns one output fewer while fx traces it: the capture check sees 1 instead of 2."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, mask):
        h = self.drop(self.fc(x))
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
            return (h,)
        return (h, h.sum(-1) * mask.sum(-1))


class EvalBranchesOnData(nn.Module):
    """Traceable in train mode; in eval mode it branches on data, which fx cannot capture."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, mask):
        h = self.fc(x)
        if self.training:
            return self.drop(h)
        if h.sum() > 0:
            return h * mask.sum(-1, keepdim=True)
        return h - 1


def _inputs(batch):
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 4, generator=gen)
    mask = torch.ones(batch, 3)
    mask[0, -1] = 0
    return x, mask


def _same_as_eager(model, fixed, batch):
    x, mask = _inputs(batch)
    torch.manual_seed(1)
    expected = model(x, mask)
    torch.manual_seed(1)
    actual = fixed(x, mask)
    torch.testing.assert_close(actual, expected)


def _across_modes(model, fixed):
    for mode in ("train", "eval", "train"):
        getattr(model, mode)()
        for batch in (2, 3):
            _same_as_eager(model, fixed, batch)


@pytest.mark.parametrize("model_cls", [ChecksMask, TracedPathFails, FewerOutputsTraced])
@pytest.mark.parametrize("explicit", [True, False], ids=["example", "first-call"])
def test_what_fx_cannot_capture_or_verify_goes_to_dynamo(model_cls, explicit):
    torch.manual_seed(0)
    model = model_cls()
    fixed = fxgrad.fix(model, _inputs(2)) if explicit else fxgrad.fix(model)
    _across_modes(model, fixed)
    report = fixed.report
    assert report.frontend == "dynamo"
    assert any("captured by Dynamo because" in n for n in report.notes)
    assert not any("The model raises" in n for n in report.notes)


def test_an_error_only_tracing_raises_is_a_capture_error_not_the_models():
    with pytest.raises(TraceError, match="where eager PyTorch runs") as info:
        fxgrad.fix(ChecksMask(), _inputs(2), frontend="fx")
    assert "The model raises" not in str(info.value)
    assert "test_auto_frontend.py:" in str(info.value)  # the line tracing failed at
    with pytest.raises(EquivalenceError, match="RuntimeError where eager PyTorch runs") as info:
        fxgrad.fix(TracedPathFails(), _inputs(2), frontend="fx")  # fails in the capture check
    assert "The model raises" not in str(info.value)


def test_an_output_count_fx_gets_wrong_is_an_equivalence_error_with_fx_only():
    with pytest.raises(EquivalenceError, match="1 outputs instead of 2"):
        fxgrad.fix(FewerOutputsTraced(), _inputs(2), frontend="fx")


def test_the_model_raises_only_when_eager_raises():
    model = ChecksMask()
    x, _ = _inputs(2)
    empty = torch.zeros(2, 3)  # eager's check fails: no position in any row
    with pytest.raises(ValueError, match="every row needs one position"):
        model(x, empty)
    with pytest.raises(ModelError, match="The model raises ValueError") as info:
        fxgrad.fix(model, (x, empty), frontend="fx")
    assert "test_auto_frontend.py:" in str(info.value)  # where eager raised it
    fixed = fxgrad.fix(model, frontend="fx")  # on a real call: eager's own error
    with pytest.raises(ValueError, match="every row needs one position"):
        fixed(x, empty)
    fixed = fxgrad.fix(model)  # frontend="auto": through Dynamo, still the model's error
    with pytest.raises(ValueError, match="every row needs one position"):
        fixed(x, empty)


@pytest.mark.parametrize("explicit", [True, False], ids=["example", "first-call"])
def test_a_later_call_fx_cannot_capture_switches_the_module_to_dynamo(explicit):
    torch.manual_seed(0)
    model = EvalBranchesOnData().train()
    fixed = fxgrad.fix(model, _inputs(2)) if explicit else fxgrad.fix(model)
    _same_as_eager(model, fixed, 2)
    assert fixed.report.frontend == "fx"
    model.eval()
    _same_as_eager(model, fixed, 2)  # fx's tracer refuses eval mode's branch on data
    report = fixed.report
    assert report.frontend == "dynamo"
    (note,) = [n for n in report.notes if "captured by Dynamo because" in n]
    assert "on a later call, in eval mode" in note and "no longer used" in note
    assert "test_auto_frontend.py:" in note
    _across_modes(model, fixed)
    x, mask = _inputs(3)
    model.train()
    x.requires_grad_()
    torch.manual_seed(1)
    (g,) = torch.autograd.grad(fixed(x, mask).sum(), x)
    x2 = x.detach().requires_grad_()
    torch.manual_seed(1)
    (e,) = torch.autograd.grad(model(x2, mask).sum(), x2)
    torch.testing.assert_close(g, e)


def test_a_later_call_fx_cannot_capture_still_raises_with_fx_only():
    model = EvalBranchesOnData().train()
    fixed = fxgrad.fix(model, _inputs(2), frontend="fx")
    model.eval()
    with pytest.raises(TraceError, match="control flow"):
        fixed(*_inputs(2))


class CatInsideVmap(nn.Module):
    """A cat of transposed (non-contiguous) inputs inside torch.func.vmap, in a forward
    only Dynamo captures (it branches on data)."""

    def forward(self, x):
        def per_sample(a):
            return torch.cat([a.t(), a.t() * 2], 0).relu()

        y = torch.func.vmap(per_sample)(x)
        if y.sum() > 0:
            return y * 2
        return y


def test_fxg201_leaves_a_cat_inside_vmap_unmeasured():
    model = CatInsideVmap()
    x = torch.randn(2, 256, 256)  # each transposed input is large enough to be timed
    fixed = fxgrad.fix(model, (x,))
    torch.testing.assert_close(fixed(x), model(x))
    assert fixed.report.frontend == "dynamo"
    notes = [c.note for c in fixed.report.changes if c.code == "FXG201"]
    assert any("inside a torch.func transform" in n for n in notes), notes


def test_check_reports_the_mode_fx_cannot_capture():
    model = EvalBranchesOnData().train()
    report = fxgrad.check(model, _inputs(2))
    assert report.frontend == "fx"
    assert any("in eval mode fxgrad's tracer cannot capture" in n for n in report.notes)
    report = fxgrad.check(FewerOutputsTraced(), _inputs(2))
    assert report.frontend == "dynamo"
