"""The Dynamo front-end: the same passes on the graphs torch.compile hands fxgrad's backend.

A forward fxgrad's tracer refuses (data-dependent control flow) is captured by Dynamo in
pieces; each piece is decided on its first call. These tests run the in-place and NumPy
case files through `frontend="dynamo"` (values and gradients against eager or the case's
hand-corrected Reference), and a model with a data-dependent branch and an unsafe write
end to end, with FXG101 selected (a copy handed out across the break) and not (the graphs
as captured).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_cases import _case_files, load_case
from torch import nn

import fxgrad
from fxgrad.context import clone_inputs
from fxgrad.pipeline import run_forward_backward

# Dynamo's own tracing refuses these forwards: its fake tensors run the write that autograd
# refuses (a leaf, an output of split/chunk/unbind, a view made under no_grad, `out=`), or
# its NumPy support lacks the call. The test checks that plain torch.compile refuses too,
# and that fix(frontend="dynamo") says so in a clear FxgradError naming the user's line
# (fxgrad's own tracer fixes these forwards: tests/test_cases.py).
DYNAMO_REFUSES = {
    "FXG101/chunk_write",
    "FXG101/input_leaf_written",
    "FXG101/input_view_written",
    "FXG101/nograd_view_write",
    "FXG101/out_argument",
    "FXG101/param_written",
    "FXG101/split_write",
    "FXG101/unbind_base_written",
    "FXG101/unbind_write",
    "FXG301/write_partition_refused",
    "FXG301/write_put_copyto_putmask",
}


# Dynamo runs this NumPy code as torch ops (torch._numpy), so once the detach() is dropped
# the gradient flows where fxgrad's own tracer leaves the detour alone. The reference is
# the same forward written in torch by hand.
def _fft_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = model.lin(x)
    return torch.fft.rfft(h, dim=-1).abs().float() + h.sum()


DYNAMO_TRANSLATES = {"FXG301/unmapped_fft": _fft_reference}


def _cases() -> list[Path]:
    return [p for p in _case_files() if p.parent.name in ("FXG101", "FXG301")]


def _seeded(fn, inputs):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return fn(*clone_inputs(list(inputs)))


@pytest.mark.parametrize("path", _cases(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_case_files_through_dynamo(path: Path) -> None:
    name = f"{path.parent.name}/{path.stem}"
    case = load_case(path)
    torch.manual_seed(0)
    model, example = case.Model(), case.inputs()
    torch._dynamo.reset()
    if name in DYNAMO_REFUSES:
        with pytest.raises(Exception):  # noqa: B017 (Dynamo's own error, whichever it is)
            torch.compile(copy.deepcopy(model), backend="eager")(*clone_inputs(list(example)))
        torch._dynamo.reset()
        fixed = fxgrad.fix(copy.deepcopy(model), frontend="dynamo")
        with pytest.raises(fxgrad.FxgradError, match=f"Dynamo could not compile .*{path.name}:"):
            _seeded(fixed, example)
        return
    if name in DYNAMO_TRANSLATES:
        _check_translated(model, example, DYNAMO_TRANSLATES[name])
        return
    eager = copy.deepcopy(model)
    fixed = fxgrad.fix(model, frontend="dynamo")
    got = _seeded(fixed, example)
    try:
        want = _seeded(eager, example)
    except (RuntimeError, ValueError) as e:
        # Eager refuses the forward: the fixed one computes what the Reference computes.
        assert hasattr(case, "Reference"), f"eager raises {e!r}: the case needs a Reference"
        reference = case.Reference()
        reference.load_state_dict(model.state_dict())
        want = _seeded(reference, example)
    torch.testing.assert_close(got, want, equal_nan=True)
    params = [p for p in model.parameters() if p.requires_grad]
    _, grads, err = run_forward_backward(fixed, clone_inputs(list(example)), params, 0)
    assert err is None, f"backward fails: {err}"
    if hasattr(case, "Reference"):
        reference = case.Reference()
        reference.load_state_dict(model.state_dict())
        ref_params = [p for p in reference.parameters() if p.requires_grad]
        _, want_grads, _ = run_forward_backward(
            reference, clone_inputs(list(example)), ref_params, 0
        )
    else:
        _, want_grads, berr = run_forward_backward(
            eager, clone_inputs(list(example)), [p for p in eager.parameters()], 0
        )
        # Without a Reference, a case whose eager backward fails would have nothing to
        # compare the fixed gradients with: every such case must bring one.
        assert berr is None, f"eager backward fails ({berr}): the case needs a Reference"
    for g, w in zip(grads, want_grads):
        if w is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, w)


def _check_translated(model: nn.Module, example, reference) -> None:
    """Values and parameter gradients against the hand-written torch forward, on the
    example call and on a call of another batch size."""
    fixed = fxgrad.fix(model, frontend="dynamo")
    (x,) = example
    for xx in (x, torch.randn(x.shape[0] + 2, *x.shape[1:]), x):
        got = fixed(xx.clone())
        want = reference(model, xx.clone())
        torch.testing.assert_close(got, want)
        params = list(model.parameters())
        g = torch.autograd.grad(got.sum(), params)
        w = torch.autograd.grad(want.sum(), params)
        torch.testing.assert_close(g, w)
    assert [c.code for c in fixed.report.applied] == ["FXG301"]


class Branchy(nn.Module):
    """A data-dependent branch (fxgrad's tracer refuses it) after an unsafe write's saver."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))  # sigmoid saves h
        if h.sum() > 6:  # data-dependent: a graph break in Dynamo
            h.mul_(2)  # in the next graph: overwrites what sigmoid saved
        else:
            h.add_(1)
        return h * 3


class BranchyReference(Branchy):
    def forward(self, x):
        h = torch.sigmoid(self.fc(x))
        h = h * 2 if h.sum() > 6 else h + 1
        return h * 3


def test_a_data_dependent_branch_with_an_unsafe_write_end_to_end():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, reference = Branchy(), BranchyReference()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        model(x).sum().backward()  # the premise: eager's backward fails
    fixed = fxgrad.fix(model)  # fxgrad's tracer refuses the branch: Dynamo captures
    for scale in (1.0, -3.0, 1.0):  # both branches, and back
        x = (torch.randn(3, 4) + scale).requires_grad_()
        got = fixed(x)
        (g, *pg) = torch.autograd.grad(got.sum(), [x, *model.parameters()])
        xr = x.detach().requires_grad_()
        want = reference(xr)
        (w, *pw) = torch.autograd.grad(want.sum(), [xr, *reference.parameters()])
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(g, w)
        torch.testing.assert_close(pg, pw)
    report = fixed.report
    assert any("control flow" in n for n in report.notes)
    (change,) = report.applied
    assert change.code == "FXG101" and "graph break" in change.note
    assert change.where.startswith("test_dynamo.py:")


@pytest.mark.parametrize("selection", [{"select": []}, {"ignore": ["FXG101"]}])
def test_unselected_fxg101_leaves_dynamos_graphs_as_captured(selection):
    """FXG101 not selected: no graph hands out a copy, and eager's backward error stays."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Branchy()
    fixed = fxgrad.fix(model, frontend="dynamo", **selection)
    for scale in (1.0, -3.0, 1.0):  # both branches, and back
        x = torch.randn(3, 4) + scale
        with torch.no_grad():
            want = copy.deepcopy(model)(x.clone())
        torch.testing.assert_close(fixed(x.clone()), want)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        fixed(torch.randn(3, 4) + 1.0).sum().backward()  # as eager's backward fails
    report = fixed.report
    assert report.frontend == "dynamo"
    assert not [c for c in report.changes if c.code == "FXG101"]
    assert not [n for n in report.notes if "hands out copies" in n]
    assert "clone" not in report.code_after


class TanhThenBranch(nn.Module):
    """tanh saves its output; the graph after a data-dependent branch writes it in place."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.fc(x))  # the first graph: nothing in it is written
        if x.sum() > 0:
            h.mul_(3)
        else:
            h.sub_(1)
        return h.sum(dim=1)


def test_selected_fxg101_copies_a_saved_value_written_after_a_graph_break():
    """With only FXG101 selected, the graph that saved `h` hands out a copy (FXG101 finds no
    write in that graph: its hook runs all the same), so gradients are eager's by hand."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TanhThenBranch()
    reference = copy.deepcopy(model)

    def by_hand(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(m.fc(x))
        h = h * 3 if x.sum() > 0 else h - 1
        return h.sum(dim=1)

    x = torch.randn(5, 4) + 1.0
    fixed = fxgrad.fix(model, (x,), frontend="dynamo", select=["FXG101"])
    for xx in (x, torch.randn(5, 4) - 1.0, torch.randn(7, 4) + 1.0):
        xx = xx.requires_grad_()
        got = fixed(xx)
        (g, *pg) = torch.autograd.grad(got.sum(), [xx, *model.parameters()])
        xr = xx.detach().requires_grad_()
        want = by_hand(reference, xr)
        (w, *pw) = torch.autograd.grad(want.sum(), [xr, *reference.parameters()])
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(g, w)
        torch.testing.assert_close(pg, pw)
    report = fixed.report
    assert len(report.applied) == 2  # one per write seen: `h.mul_(3)` and `h.sub_(1)`
    for change in report.applied:
        assert change.code == "FXG101" and "graph break" in change.note
        assert change.after == "h.clone() handed out"
    assert ".clone()" in report.code_after


class BranchyNorm(nn.Module):
    """A BatchNorm (its statistics move on every training call) before the branch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        h = torch.sigmoid(self.bn(self.fc(x)))
        if h.sum() > 6:
            h.mul_(2)
        else:
            h.add_(1)
        return h * 3


def test_example_inputs_decide_through_dynamo_right_away_and_leave_the_model_alone():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = BranchyNorm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 4)
    rng = torch.get_rng_state()
    fixed = fxgrad.fix(model, (x,))
    report = fixed.report
    assert report.mode == "exact"
    assert [c.code for c in report.applied] == ["FXG101"]
    assert any("control flow" in n for n in report.notes)
    for k, v in model.state_dict().items():  # BatchNorm's statistics and counter untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())

    reference = copy.deepcopy(model)

    def by_hand(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(m.bn(m.fc(x)))
        h = h * 2 if h.sum() > 6 else h + 1
        return h * 3

    for xx in (x, torch.randn(9, 4) + 2.0, x):  # another batch size, the other branch
        got = fixed(xx)
        want = by_hand(reference, xx)
        torch.testing.assert_close(got, want)
        g = torch.autograd.grad(got.sum(), list(model.parameters()))
        w = torch.autograd.grad(want.sum(), list(reference.parameters()))
        torch.testing.assert_close(g, w)
    torch.testing.assert_close(model.bn.running_mean, reference.bn.running_mean)
    model.eval()
    reference.eval()
    torch.testing.assert_close(fixed(x), by_hand(reference, x))


class BranchyChunkWrite(nn.Module):
    """A write autograd forbids (into a chunk), after a branch: eager refuses it too."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > -1e9:
            a, _ = h.chunk(2, dim=1)
            a.mul_(2)
        return h


def test_dynamo_refusing_a_write_is_one_plain_error_naming_the_line():
    torch._dynamo.reset()
    model = BranchyChunkWrite()
    with pytest.raises(RuntimeError, match="modified inplace"):
        model(torch.randn(3, 8))  # eager refuses the write
    fixed = fxgrad.fix(model)
    with pytest.raises(fxgrad.FxgradError, match=r"Dynamo could not compile .*test_dynamo.py:\d+"):
        fixed(torch.randn(3, 8))


class BranchyCut(nn.Module):
    """fc2 trains only through a detach() after a data-dependent branch: it gets no grad."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc1(x)
        if h.sum() > -1e9:
            h = h + self.fc2(x).detach()
        return h


def test_test_helpers_on_a_forward_dynamo_captures():
    from fxgrad.testing import (
        AutogradCheckError,
        assert_autograd_safe,
        assert_fix_equivalent,
        assert_grads_flow,
    )

    torch._dynamo.reset()
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    with pytest.raises(AutogradCheckError, match="FXG101"):
        assert_autograd_safe(Branchy(), x)
    safe = BranchyReference()
    report = assert_autograd_safe(safe, x)
    assert report.frontend == "dynamo" and report.exit_code == 0
    fixed = assert_fix_equivalent(Branchy(), x)
    assert fixed.report.frontend == "dynamo"
    with pytest.raises(AutogradCheckError, match=r"fc2\.weight gets no gradient .*Dynamo"):
        assert_grads_flow(BranchyCut(), x)


class InstallsHooks(nn.Module):
    """Installs a forward hook and a cache on its first call (as transformers' output
    recorders do), then branches on data."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.cache = {}

    def forward(self, x):
        if not self.fc._forward_hooks:
            self.fc.register_forward_hook(lambda m, i, o: None)
            self.installed = True
        h = self.fc(x)
        self.cache["last"] = 1
        if h.sum() > 0:
            h = h * 2
        return h


def test_fixing_through_dynamo_leaves_the_modules_python_state_alone():
    torch._dynamo.reset()
    model = InstallsHooks()
    fixed = fxgrad.fix(model, (torch.randn(3, 4),))
    assert fixed.report.frontend == "dynamo"
    assert not model.fc._forward_hooks and model.cache == {}
    assert not hasattr(model, "installed")
    x = torch.randn(3, 4)
    torch.testing.assert_close(fixed(x), copy.deepcopy(model)(x))
    assert len(model.fc._forward_hooks) == 1 and model.cache == {"last": 1}  # the user's call
