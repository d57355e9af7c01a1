"""fix() returns a drop-in module, never changes the user's model, and fails clearly."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import fxgrad
import fxgrad.api
import fxgrad.passes
from fxgrad.changes import Change
from fxgrad.errors import EquivalenceError, FxgradError, PassError, SelectionError, TraceError
from fxgrad.graph_utils import eliminate_dead_code, source_line, writes_to
from fxgrad.registry import Pass


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(7, 7)  # never called: still in state_dict
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x, scale: float = 1.0):
        self.calls += 1  # module state the caller observes
        h = F.relu(self.bn(self.conv(x)), inplace=True)
        return self.head(h.mean((2, 3))) * scale


def _x():
    return torch.randn(2, 3, 8, 8)


def test_state_dict_keys_and_shared_parameters():
    model = Net()
    fixed = fxgrad.fix(model, (_x(),))
    assert list(fixed.state_dict()) == list(model.state_dict())
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), fixed.named_parameters()):
        assert n1 == n2 and p1 is p2  # shared, not copied
    fixed.load_state_dict(model.state_dict())


def test_users_model_is_untouched_and_no_grad_left_behind():
    model = Net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    versions = {k: v._version for k, v in model.state_dict(keep_vars=True).items()}
    flags = [m.training for m in model.modules()]
    fxgrad.fix(model, (_x(),))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running stats, counters: bit-identical
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == flags
    assert versions == {k: v._version for k, v in model.state_dict(keep_vars=True).items()}


def test_existing_grads_are_kept():
    model = Net()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    fxgrad.fix(model, (_x(),))
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def test_fixed_module_trains_like_the_original():
    torch.manual_seed(0)
    model = Net()
    twin = copy.deepcopy(model)
    fixed = fxgrad.fix(model, (_x(),))
    opt_a = torch.optim.SGD(fixed.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(twin.parameters(), lr=0.1)
    for _ in range(3):
        x = _x()
        for m, opt in ((fixed, opt_a), (twin, opt_b)):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    for a, b in zip(fixed.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b)
    # the fixed module shares storage with the user's model, so the user's model trained too
    torch.testing.assert_close(model.conv.weight, twin.conv.weight)


def test_train_eval_act_on_the_users_model_as_with_ddp():
    # A fixed module is a view of the user's module, like DDP: one set of modules, one mode.
    model = Net().train()
    fixed = fxgrad.fix(model, (_x(),))
    fixed.eval()
    assert not model.training and not model.bn.training and not fixed.training
    x = _x()
    torch.testing.assert_close(fixed(x), model(x))
    model.train()
    assert fixed.training and fixed.bn.training


def test_keyword_arguments_and_defaults():
    model = Net().eval()
    fixed = fxgrad.fix(model, (_x(),))
    x = _x()
    torch.testing.assert_close(fixed(x=x), model(x))
    # captured with the default: another value is decided on its own call, not ignored
    torch.testing.assert_close(fixed(x, scale=2.0), model(x, scale=2.0))
    # a number that only scales a tensor is an input of the graph: one variant, any value
    assert "scale: any float" in fixed.report.variant
    decided = len(fixed.reports)
    torch.testing.assert_close(fixed(x, scale=3.0), model(x, scale=3.0))
    assert len(fixed.reports) == decided
    torch.testing.assert_close(fixed(x, 3.0), model(x, 3.0))  # positionally: another key


def test_to_and_deepcopy():
    model = Net().eval()
    fixed = fxgrad.fix(model, (_x(),))
    x = _x()
    clone = copy.deepcopy(fixed)
    torch.testing.assert_close(clone(x), model(x))
    double = copy.deepcopy(fixed).double()
    torch.testing.assert_close(double(x.double()), model.double()(x.double()))


class Straight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.round()

    @staticmethod
    def backward(ctx, g):
        return g


class Everything(nn.Module):
    """Writes fx's own pickling would lose: buffer +=, setitem, an unsafe write, a grad-mode
    block, a custom Function, a size guard, and a train/eval difference."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        y = self.lin(x).sigmoid()
        y.mul_(2)  # unsafe: sigmoid saved its output
        z = x * 1
        z[0] = 0
        with torch.no_grad():
            scale = y.mean()
        q = Straight.apply(y * 3)
        if self.training:
            q = F.dropout(q, 0.5)
        return q * scale + z[: len(x)]


def test_pickling_keeps_the_fixed_program(tmp_path):
    model = Everything()
    x = torch.randn(3, 4)
    fixed = fxgrad.fix(model, (x,))
    assert fixed.report.applied
    path = tmp_path / "fixed.pt"
    torch.save(fixed, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded.code == fixed.code and loaded.report.to_json() == fixed.report.to_json()
    assert list(loaded.state_dict()) == list(fixed.state_dict())
    for mode in (True, False):
        fixed.train(mode)
        loaded.train(mode)
        assert loaded.code == fixed.code
        calls = fixed.calls.clone()
        with fxgrad.context.seeded(0):
            want = fixed(x)
        with fxgrad.context.seeded(0):
            got = loaded(x)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(loaded.calls, calls + 1)  # the buffer write survived
        params = list(loaded.parameters())
        with fxgrad.context.seeded(0):
            grads = torch.autograd.grad(loaded(x).sum(), params)
        with fxgrad.context.seeded(0):
            expected = torch.autograd.grad(fixed(x).sum(), list(fixed.parameters()))
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e)
    with torch.no_grad():  # the loaded graph reads the loaded module's own parameters
        loaded.lin.bias.add_(1.0)
    loaded.eval()
    fixed.eval()
    assert not torch.allclose(loaded(x), fixed(x))
    # the size guard came along too: another batch size is decided on its own call
    again = pickle.loads(pickle.dumps(loaded))
    x5 = torch.randn(5, 4)
    n = len(again.reports)
    with fxgrad.context.seeded(0):
        got = again(x5)
    with fxgrad.context.seeded(0):
        want = fxgrad.fix(again._fxgrad_root, (x5,))(x5)
    torch.testing.assert_close(got, want)
    assert len(again.reports) == n + 1


def test_a_pickled_fixed_module_holds_no_path_of_the_model_file(tmp_path, monkeypatch):
    folder = tmp_path / "models_here"
    folder.mkdir()
    (folder / "pathless_model.py").write_text(
        "import torch\n"
        "from torch import nn\n\n\n"
        "class Model(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = nn.Linear(4, 4)\n\n"
        "    def forward(self, x):\n"
        "        h = torch.sigmoid(self.lin(x))\n"
        "        h.mul_(2)\n"
        "        return h\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    from pathless_model import Model

    fixed = fxgrad.fix(Model(), (torch.randn(3, 4),))
    assert fixed.report.applied
    buffer = io.BytesIO()
    torch.save(fixed, buffer)
    assert str(tmp_path).encode() not in buffer.getvalue()
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    # the loaded graph still finds the model's lines where the model's module is importable
    lines = {source_line(n) for n in loaded.graph_module.graph.nodes}
    assert "h = torch.sigmoid(self.lin(x))" in lines


def test_static_mode_reports_what_only_example_inputs_can_decide():
    class Undecidable(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            y = self.lin(x)
            with torch.no_grad():
                first = y[0]
            first.mul_(2)  # refused if y requires grad
            grid = y.sum(0, keepdim=True).expand(3, 4)
            grid.add_(1)  # refused if the expand made elements overlap
            return y, grid

    report = fxgrad.check(Undecidable())
    notes = {c.before: c.note for c in report.changes}
    assert not report.applied
    assert "view made under no_grad" in notes["first.mul_(2)"]
    assert "expanded tensor" in notes["grid.add_(1)"]
    assert all("pass example inputs to decide" in n for n in notes.values())
    exact = fxgrad.check(Undecidable(), (torch.randn(3, 4),))
    assert {c.before for c in exact.applied} == {"first.mul_(2)", "grid.add_(1)"}


def test_without_example_inputs_fix_decides_on_the_first_call():
    model = Net().eval()
    fixed = fxgrad.fix(model)
    assert fixed.report.mode == "pending" and "first call" in fixed.report.summary()
    with pytest.raises(FxgradError, match="not been called yet"):
        _ = fixed.graph_module
    x = _x()
    torch.testing.assert_close(fixed(x), model(x))
    assert fixed.report.mode == "exact"
    # what can be decided without running anything: fix_static (the CLI without --input)
    static = fxgrad.api.fix_static(model)
    assert static.report.mode == "static"
    torch.testing.assert_close(static(x), model(x))


def test_check_returns_the_report():
    report = fxgrad.check(Net(), (_x(),))
    assert isinstance(report, fxgrad.Report)
    assert report.exit_code in (0, 1)


# --- mutation-aware dead-code elimination ---------------------------------------------------


def test_dead_code_elimination_keeps_writes():
    class Writes(nn.Module):
        def forward(self, x):
            h = x * 2
            h.mul_(3)
            F.relu(h, inplace=True)
            unused = x + 1  # noqa: F841
            return h

    fixed = fxgrad.fix(Writes(), (torch.randn(4),), select=[])
    gm = fixed.graph_module
    removed = eliminate_dead_code(gm)
    gm.recompile()
    assert removed == 1  # only `x + 1`
    x = torch.randn(4)
    torch.testing.assert_close(gm(x)[0], F.relu(x * 6))
    writes = [n for n in gm.graph.nodes if writes_to(n, gm) is not None]
    assert len(writes) == 2


def test_autograd_metadata_calls_are_kept_but_are_not_value_writes():
    class Metadata(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            frozen = self.lin(x).sigmoid()
            frozen.detach_()  # no gradient through here, nothing overwritten
            table = torch.zeros(x.shape[-1])
            table.requires_grad_()
            return self.lin(frozen) + table

    model = Metadata()
    for inputs in ((torch.randn(3, 4),), None):  # decided on inputs, and statically
        fixed = fxgrad.fix(model, inputs) if inputs else fxgrad.api.fix_static(model)
        assert fixed.report.changes == [], fixed.report.table()
        gm = fixed.graph_module
        assert eliminate_dead_code(gm) == 0
        assert {"detach_", "requires_grad_"} <= {n.target for n in gm.graph.nodes}
        assert not any(writes_to(n, gm) is not None for n in gm.graph.nodes)
    x = torch.randn(3, 4)
    grads = torch.autograd.grad(fixed(x).sum(), list(model.parameters()), allow_unused=True)
    expected = torch.autograd.grad(model(x).sum(), list(model.parameters()), allow_unused=True)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


# --- bad input ---------------------------------------------------------------------------------


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


def test_untraceable_forward_names_the_line_and_what_to_try():
    with pytest.raises(TraceError) as info:
        fxgrad.fix(DataDependent(), (torch.randn(3),), frontend="fx")
    message = str(info.value)
    assert "test_api.py:" in message
    assert "control flow" in message
    assert "torch.fx.wrap" in info.value.hint and "example inputs" in info.value.hint
    assert "concrete_args" not in info.value.hint  # nothing in fxgrad accepts it


@torch.fx.wrap
def _double_if_positive(x):
    return x * 2 if x.sum() > 0 else x - 1


class WrappedBranch(nn.Module):
    def forward(self, x):
        h = torch.tanh(x)
        return _double_if_positive(h) * h


def test_the_hints_fx_wrap_remedy_captures_the_branch():
    """The TraceError's hint must name a remedy that works: a torch.fx.wrap'd function is one call."""
    model = WrappedBranch()
    fixed = fxgrad.fix(model, (torch.randn(3),), frontend="fx")
    assert fixed.report.frontend == "fx"
    for x in (torch.rand(5), -torch.rand(2)):  # both branches, other sizes
        x = x.requires_grad_()
        expected = model(x)
        torch.testing.assert_close(fixed(x), expected)
        (g,) = torch.autograd.grad(fixed(x).sum(), x)
        (e,) = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(g, e)


def test_untraceable_forward_without_inputs_is_a_trace_error_too():
    fixed = fxgrad.fix(DataDependent(), frontend="fx")  # decides on the first call
    with pytest.raises(TraceError, match="test_api.py"):
        fixed(torch.randn(3))
    with pytest.raises(TraceError, match="test_api.py"):
        fxgrad.check(DataDependent())


def test_what_fx_cannot_capture_goes_to_dynamo():
    model = DataDependent()
    fixed = fxgrad.fix(model, (torch.randn(3),))  # frontend="auto"
    for _ in range(2):
        for x in (torch.rand(3) + 1, -torch.rand(3) - 1):  # both branches
            torch.testing.assert_close(fixed(x), model(x))
    assert "captured by Dynamo" in fixed.report.variant
    assert any("tracer refused the forward" in n and "test_api.py" in n for n in fixed.report.notes)
    with pytest.raises(FxgradError, match="frontend must be one of"):
        fxgrad.fix(model, frontend="jit")


def test_non_tensor_example_inputs():
    with pytest.raises(FxgradError, match=r"hold no tensor \(found str\)"):
        fxgrad.fix(Net(), ("not a tensor",))


def test_example_inputs_must_be_a_tuple():
    with pytest.raises(FxgradError, match="tuple of positional arguments"):
        fxgrad.fix(Net(), [_x()])


def test_meta_tensors_need_real_inputs_or_a_static_fix():
    with pytest.raises(FxgradError, match="example inputs are on the meta device") as info:
        fxgrad.fix(Net(), (_x().to("meta"),))
    assert "without example inputs" in info.value.hint
    meta_model = Net().to("meta")
    with pytest.raises(FxgradError, match="parameters or buffers are on the meta device"):
        fxgrad.fix(meta_model, (_x(),))
    assert fxgrad.fix(meta_model).report.changes == []  # decided statically, nothing run


def test_none_where_the_example_had_a_tensor_gets_its_own_variant():
    class Masked(nn.Module):
        def forward(self, x, mask=None):
            return x if mask is None else x.masked_fill(mask, 0.0)

    x, mask = torch.randn(2, 3), torch.rand(2, 3) > 0.5
    fixed = fxgrad.fix(Masked(), (x, mask))
    torch.testing.assert_close(fixed(x, mask), x.masked_fill(mask, 0.0))
    torch.testing.assert_close(fixed(x), x)  # decided on this call: mask is None
    torch.testing.assert_close(fixed(x, mask=mask), x.masked_fill(mask, 0.0))
    assert len(fixed.reports) == 3


def test_wrong_number_of_example_inputs():
    with pytest.raises(FxgradError, match="do not match the model's forward signature"):
        fxgrad.fix(Net(), (_x(), 1.0, 2.0))


class _MaskedSum(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x.sum() if mask is None else x[mask].sum()


@pytest.mark.parametrize(
    ("model", "call"),
    [
        (nn.Linear(8, 4), "forward(input): fxgrad.fix(model, (input,))"),
        (
            _MaskedSum(),
            "forward(x, mask=None): fxgrad.fix(model, (x,)) or "
            "fxgrad.fix(model, (x,), {'mask': mask})",
        ),
    ],
)
def test_the_signature_hint_names_only_the_forwards_own_arguments(model, call):
    with pytest.raises(FxgradError) as info:
        fxgrad.fix(model, (torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 8)))
    assert info.value.hint == f"Pass one entry per argument of {call}."


def test_model_that_raises_in_forward():
    with pytest.raises(FxgradError, match="raises RuntimeError in forward") as info:
        fxgrad.fix(Net(), (torch.randn(2, 5, 8, 8),))  # wrong channel count
    assert "shapes" in info.value.hint


def test_not_a_module():
    with pytest.raises(FxgradError, match="needs an nn.Module"):
        fxgrad.fix(lambda x: x, (torch.randn(2),))


def test_unknown_pass_code():
    with pytest.raises(SelectionError, match="FXG101"):
        fxgrad.fix(Net(), (_x(),), select=["FXG999"])


def test_fixing_a_fixed_module_is_refused():
    fixed = fxgrad.fix(Net(), (_x(),))
    with pytest.raises(FxgradError, match="already fixed"):
        fxgrad.fix(fixed, (_x(),))


def test_wrapped_models_are_unwrapped():
    model = Net().eval()
    fixed = fxgrad.fix(nn.DataParallel(model), (_x(),))
    x = _x()
    torch.testing.assert_close(fixed(x), model(x))


def test_capture_mismatch_is_an_error_not_a_different_model():
    calls = []

    class Impure(nn.Module):
        def forward(self, x):
            calls.append(1)
            return x * len(calls)  # a Python side effect a graph cannot replay

    with pytest.raises(EquivalenceError, match="differs from eager"):
        fxgrad.fix(Impure(), (torch.randn(3),), frontend="fx")
    # frontend="auto" hands what fxgrad's capture check finds different to Dynamo.
    torch._dynamo.reset()
    fixed = fxgrad.fix(Impure(), (torch.randn(3),))
    assert fixed.report.frontend == "dynamo"
    assert any("differs from eager" in n for n in fixed.report.notes)
    x = torch.randn(3)
    out = fixed(x)
    torch.testing.assert_close(out, x * len(calls))


def test_capture_mismatch_is_caught_when_the_in_place_probe_is_the_check():
    calls = []

    class ImpureWithWrite(nn.Module):
        def forward(self, x):
            calls.append(1)
            y = x * len(calls)
            y.relu_()  # a write: the in-place pass's instrumented run checks capture
            return y

    with pytest.raises(EquivalenceError, match="differs from eager"):
        fxgrad.fix(ImpureWithWrite(), (torch.randn(3),), frontend="fx")


def test_fixing_under_no_grad_decides_as_with_grad():
    class WritesInput(nn.Module):
        def forward(self, x):
            x.mul_(2)  # eager refuses this on a leaf that requires grad, unless under no_grad
            return x.sin()

    x = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        fixed = fxgrad.fix(WritesInput(), (x,))
    assert len(fixed.report.applied) == 1
    y = x.detach().clone().requires_grad_()
    fixed(y).sum().backward()
    torch.testing.assert_close(y.grad, 2 * torch.cos(2 * y.detach()))


class _SigmoidThenWrite(nn.Module):
    def forward(self, x):
        y = torch.sigmoid(x)
        y.mul_(2)  # sigmoid saved its output: eager backward refuses
        return y


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this backward is not implemented")


class _HookedWriter(nn.Module):
    """A hook the model registers on its own submodule is part of its forward: it is traced
    with it, and its write into a saved output is fixed like the forward's own."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Sigmoid())
        self.inner.register_forward_hook(lambda m, i, o: o.mul_(2))

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize(
    ("model", "changed", "message"),
    [
        (_SigmoidThenWrite(), True, "modified by an inplace operation"),
        (_HookedWriter(), True, "modified by an inplace operation"),
        (
            type("Custom", (nn.Module,), {"forward": lambda s, x: _FailingBackward.apply(x)})(),
            False,
            "this backward is not implemented",
        ),
    ],
    ids=["fixed-write", "write-in-the-models-own-hook", "autograd-function"],
)
def test_a_failing_eager_backward_is_reported_in_eager_words(model, changed, message):
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError, match=message):
        model(x.clone()).sum().backward()  # the premise: eager backward fails
    report = fxgrad.check(model, (x,))
    notes = [n for n in report.notes if n.startswith("eager backward fails")]
    assert len(notes) == 1 and message in notes[0], report.notes
    assert bool(report.applied) is changed


def test_a_working_backward_gets_no_backward_note():
    report = fxgrad.check(Net(), (_x(),))
    assert not any("backward" in n for n in report.notes), report.notes


def test_graph_module_is_a_real_graph_module():
    fixed = fxgrad.fix(Net().eval(), (_x(),))
    assert isinstance(fixed.graph_module, fx.GraphModule)
    assert "def forward" in fixed.code


def test_a_forward_that_still_raises_after_fixing_is_reported():
    class Overlap(nn.Module):
        def forward(self, x):
            y = (x * 2).expand(3, 4)
            y.add_(1)  # eager refuses in any mode: overlapping elements
            return y.sum()

    x = torch.randn(1, 4, requires_grad=True)
    # FXG101 rewrites this write (tests/cases/FXG101/expand_overlap_write.py); without it,
    # the fixed forward raises what eager raises, and the report says so.
    report = fxgrad.check(Overlap(), (x,), ignore=["FXG101"])
    assert any("still does after fixing" in n for n in report.notes), report.notes
    assert not any("still does" in n for n in fxgrad.check(Overlap(), (x,)).notes)


def test_a_model_error_is_not_called_a_capture_failure():
    class Shapes(nn.Module):
        def forward(self, x):
            h = x @ torch.ones(5, 2)
            if h.shape[0] > 1:  # would need the value the failing matmul never produced
                return h
            return h * 2

    with pytest.raises(FxgradError, match=r"model raises RuntimeError .* at test_api.py:\d+"):
        fxgrad.fix(Shapes(), (torch.randn(2, 3),))


# --- the pipeline: verify, roll back, report crashes -----------------------------------------


def _relu_to_neg(gm: fx.GraphModule, ctx) -> list:
    """A wrong pass: turns the model's ReLU into a negation and claims it as a rewrite."""
    found = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is F.relu:
            n.target, n.kwargs = torch.neg, {}
            found.append(Change("FXG999", n.name, "relu", "neg", "", "wrong on purpose"))
    return found


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return F.relu(self.lin(x)) * 2


def test_a_pass_that_breaks_the_model_is_rolled_back(monkeypatch):
    wrong = Pass(code="FXG999", name="wrong", run=_relu_to_neg, doc="wrong on purpose")
    monkeypatch.setattr(fxgrad.passes, "ALL", (wrong,))
    model, x = Small(), torch.randn(3, 4)
    fixed = fxgrad.fix(model, (x,), select=["FXG999"])
    (change,) = fixed.report.changes
    assert not change.applied and "rolled back" in change.note
    assert any("FXG999 (wrong) was rolled back" in n for n in fixed.report.notes)
    torch.testing.assert_close(fixed(x), model(x))  # the graph is the captured one again
    assert "neg" not in fixed.code
    # Without example inputs nothing can be verified, so the rewrite stays, reported.
    static = fxgrad.api.fix_static(model, select=["FXG999"])
    assert static.report.changes[0].applied and "neg" in static.code


def _nan_gradient(gm: fx.GraphModule, ctx) -> list:
    """A wrong pass: adds 0 * sqrt(h - h) after the linear layer, the same forward values
    with a NaN gradient (sqrt's derivative at 0 is infinite)."""
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and n.target == "lin":
            with gm.graph.inserting_before(n.next):
                zero = gm.graph.call_function(torch.sub, (n, n))
                root = gm.graph.call_function(torch.sqrt, (zero,))
                scaled = gm.graph.call_function(torch.mul, (root, 0.0))
                out = gm.graph.call_function(torch.add, (n, scaled))
            n.replace_all_uses_with(out, delete_user_cb=lambda u, new=(zero, out): u not in new)
            return [Change("FXG997", n.name, "lin", "lin + 0", "", "wrong on purpose")]
    return []


def test_a_pass_that_makes_gradients_nan_is_rolled_back_naming_the_parameter(monkeypatch):
    wrong = Pass(code="FXG997", name="nan-grad", run=_nan_gradient, doc="wrong on purpose")
    monkeypatch.setattr(fxgrad.passes, "ALL", (wrong,))
    model, x = Small(), torch.randn(3, 4)
    fixed = fxgrad.fix(model, (x,), select=["FXG997"])
    (change,) = fixed.report.changes
    assert not change.applied
    assert "the gradient of lin.weight is no longer finite" in change.note, change.note
    torch.testing.assert_close(fixed(x), model(x))


def test_a_crashing_pass_is_a_pass_error_naming_it(monkeypatch):
    def crash(gm, ctx):
        raise ValueError("boom")

    monkeypatch.setattr(fxgrad.passes, "ALL", (Pass("FXG998", "crashes", crash, "doc"),))
    with pytest.raises(PassError, match="FXG998 \\(crashes\\) crashed: ValueError: boom") as e:
        fxgrad.fix(Small(), (torch.randn(3, 4),), select=["FXG998"])
    assert "ignore=['FXG998']" in e.value.hint


# --- how many times fix() runs the model -----------------------------------------------


class _Counted(torch.autograd.Function):
    """Identity that counts the forwards and backwards it takes part in."""

    counts = {"forward": 0, "backward": 0}

    @staticmethod
    def forward(ctx, x):
        _Counted.counts["forward"] += 1
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        _Counted.counts["backward"] += 1
        return g


class _TwoLayers(nn.Module):
    def __init__(self, unsafe: bool):
        super().__init__()
        self.fc1, self.fc2, self.unsafe = nn.Linear(4, 8), nn.Linear(8, 2), unsafe

    def forward(self, x):
        h = torch.sigmoid(_Counted.apply(self.fc1(x)))
        if self.unsafe:
            h.mul_(2)  # sigmoid saved h
        return self.fc2(h)


@pytest.mark.parametrize(
    ("unsafe", "forwards", "backwards"),
    [
        # eager forward; one forward and backward of the captured graph, which the capture
        # check and every pass read
        (False, 2, 1),
        # and one more of the rewritten graph, which verifies the rewrite; eager's forward
        # and backward once more, to quote eager's own error in the report (that backward
        # stops at the error, before it reaches the counter)
        (True, 4, 2),
    ],
    ids=["nothing-to-rewrite", "one-unsafe-write"],
)
def test_fix_runs_the_model_as_few_times_as_it_can(unsafe, forwards, backwards):
    model, x = _TwoLayers(unsafe), torch.randn(3, 4)
    _Counted.counts.update(forward=0, backward=0)
    fixed = fxgrad.fix(model, (x,))
    assert len(fixed.report.applied) == (1 if unsafe else 0)
    assert _Counted.counts == {"forward": forwards, "backward": backwards}


def test_fixing_leaves_nothing_behind_once_the_fixed_module_is_gone():
    import gc
    import linecache

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    x = torch.randn(2, 8)

    def once():
        fixed = fxgrad.fix(model, (x,))
        torch.testing.assert_close(fixed(x), model(x))

    once()
    gc.collect()
    lines, objects = len(linecache.cache), len(gc.get_objects())
    for _ in range(20):
        once()
    gc.collect()
    assert len(linecache.cache) == lines  # fx's generated source: 5 entries a fix before
    assert len(gc.get_objects()) - objects < 20  # ~15 objects a fix before


def test_a_live_fixed_modules_generated_code_still_shows_in_tracebacks():
    import traceback

    class Checks(nn.Module):
        def forward(self, x):
            return x.view(3, -1)

    fixed = fxgrad.fix(Checks(), (torch.randn(3, 4),))
    with pytest.raises(RuntimeError) as info:
        fixed(torch.randn(5, 5))
    text = "".join(traceback.format_exception(info.value))
    assert "x.view(3, -1)" in text or "view = x.view(3, -1)" in text


class WritesOnlyInTraining(nn.Module):
    """The unsafe write happens only in train mode: `check` finds it from either mode."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))
        if self.training:
            h.mul_(2)  # overwrites sigmoid's saved output
        return h


class NoModeRead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))
        h.mul_(2)
        return h


def test_check_reports_the_other_modes_findings_only_where_the_mode_is_read():
    model = WritesOnlyInTraining().eval()
    report = fxgrad.check(model, (torch.randn(2, 4),))
    assert [c.code for c in report.changes] == ["FXG101"]  # found in train mode
    assert not model.training  # the user's mode is left as it was
    plain = NoModeRead().eval()
    before = fxgrad.check(plain, (torch.randn(2, 4),))
    assert [c.code for c in before.changes] == ["FXG101"]
    assert len(before.changes) == 1  # the same finding, not once per mode
