"""fxgrad.testing: each helper passes on a sound model and fails, readably, on a real hazard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import fx, nn

import fxgrad
from fxgrad.testing import (
    AutogradCheckError,
    assert_autograd_safe,
    assert_fix_equivalent,
    assert_grads_flow,
    check_custom_functions,
)

HERE = "test_testing.py"


def line_of(text: str) -> str:
    """`test_testing.py:N` for the first line of this file containing `text`."""
    with open(__file__) as f:
        for i, line in enumerate(f, 1):
            if text in line and "line_of(" not in line:
                return f"{HERE}:{i}"
    raise AssertionError(text)


class Safe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu_(self.bn(self.fc1(x)))  # safe: batch norm saved its input, not this
        return self.fc2(h)


class SigmoidThenMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.sigmoid(self.fc1(x))
        h.mul_(2)  # unsafe: sigmoid saved h
        return self.fc2(h)


class NumpyDetour(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = self.fc1(x)
        a = h.detach().cpu().numpy()  # the detour starts
        back = torch.from_numpy(np.tanh(a))
        return self.fc2(back)


class NoGradHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        with torch.no_grad():
            h = self.body(x)  # body never trains
        return self.head(h)


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)
        self.spare = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(x)


class SqrtOfZero(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return torch.sqrt(self.fc(x) * 0)  # d sqrt at 0 is inf


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * g * x


class WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x  # wrong: the derivative of x*x is 2x


class Scale(torch.autograd.Function):
    """Takes a non-tensor argument and a tensor that needs no gradient."""

    @staticmethod
    def forward(ctx, x, w, factor):
        ctx.save_for_backward(w)
        ctx.factor = factor
        return x * w * factor

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return g * w * ctx.factor, None, None


class UsesFunctions(nn.Module):
    def __init__(self, fn: type) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.fn = fn

    def forward(self, x):
        h = self.fn.apply(self.fc(x))
        return Scale.apply(h, x, 3.0)


def x8() -> torch.Tensor:
    return torch.randn(4, 8)


# --- assert_autograd_safe ------------------------------------------------------------------


def test_autograd_safe_passes_and_returns_the_report():
    report = assert_autograd_safe(Safe(), x8())
    assert report.exit_code == 0


def test_autograd_safe_fails_on_unsafe_inplace_write():
    """Fails now through eager's backward error, and with FXG101's row once that pass lands."""
    with pytest.raises(AutogradCheckError) as info:
        assert_autograd_safe(SigmoidThenMul(), x8())
    message = str(info.value)
    assert message.startswith("SigmoidThenMul is not autograd-safe on these inputs")
    assert line_of("h.mul_(2)  # unsafe") in message  # names the user's line
    assert "h.mul_(2)" in message
    assert isinstance(info.value, AssertionError)


def test_autograd_safe_names_the_op_whose_saved_value_was_overwritten():
    with pytest.raises(AutogradCheckError) as info:
        assert_autograd_safe(SigmoidThenMul(), x8())
    message = str(info.value)
    assert "modified by an inplace operation" in message
    assert f"saved by the op at {line_of('h = torch.sigmoid(self.fc1(x))')}" in message


def test_autograd_safe_fails_on_numpy_detour_naming_where_it_leaves_and_returns():
    with pytest.raises(AutogradCheckError) as info:
        assert_autograd_safe(NumpyDetour(), x8())
    message = str(info.value)
    assert "NumpyDetour is not autograd-safe" in message
    if "FXG301" not in message:  # until the NumPy pass reports it, the graph walk does
        assert line_of("a = h.detach().cpu().numpy()") in message
        assert f"comes back at {line_of('back = torch.from_numpy')}" in message


def test_autograd_safe_leaves_the_users_model_untouched():
    model = Safe().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert_autograd_safe(model, x8())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


# --- assert_grads_flow ---------------------------------------------------------------------


def test_grads_flow_passes_and_returns_every_gradient():
    grads = assert_grads_flow(Safe(), x8())
    assert set(grads) == {"fc1.weight", "fc1.bias", "bn.weight", "bn.bias", "fc2.weight"} | {
        "fc2.bias",
        "input x",
    }
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_grads_flow_names_the_parameter_a_numpy_detour_cuts_off():
    with pytest.raises(AutogradCheckError) as info:
        assert_grads_flow(NumpyDetour(), x8())
    message = str(info.value)
    assert "parameter fc1.weight gets no gradient" in message
    assert "parameter fc1.bias gets no gradient" in message
    assert "input x gets no gradient" in message
    assert "fc2.weight" not in message  # after the detour, gradients flow
    assert f"cut at {line_of('a = h.detach().cpu().numpy()')}" in message
    assert "detach() stops gradients" in message


def test_grads_flow_points_at_a_no_grad_block():
    with pytest.raises(AutogradCheckError) as info:
        assert_grads_flow(NoGradHead(), x8(), check_inputs=False)
    message = str(info.value)
    assert "parameter body.weight gets no gradient" in message
    assert line_of("h = self.body(x)  # body never trains") in message
    assert "torch.no_grad() block" in message


def test_grads_flow_names_an_unused_parameter_and_honours_params():
    with pytest.raises(AutogradCheckError, match="the forward does not use parameter spare.weight"):
        assert_grads_flow(Unused(), x8())
    assert set(assert_grads_flow(Unused(), x8(), params=["fc.weight"], check_inputs=False)) == {
        "fc.weight"
    }
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        assert_grads_flow(Unused(), x8(), params=["nope"])


def test_grads_flow_names_non_finite_gradients_and_the_forward_line():
    with pytest.raises(AutogradCheckError) as info:
        assert_grads_flow(SqrtOfZero(), x8())
    message = str(info.value)
    assert "parameter fc.weight gets a non-finite gradient" in message
    assert line_of("return torch.sqrt(self.fc(x) * 0)") in message


def test_grads_flow_reports_a_failing_backward():
    with pytest.raises(AutogradCheckError, match="Backward of SigmoidThenMul fails"):
        assert_grads_flow(SigmoidThenMul(), x8())


# --- assert_fix_equivalent -----------------------------------------------------------------


def test_fix_equivalent_passes_and_returns_the_fixed_module():
    model = Safe()
    fixed = assert_fix_equivalent(model, x8())
    assert isinstance(fixed, fxgrad.FixedModule)


def test_fix_equivalent_passes_where_eager_backward_fails():
    # Gradients are compared only where eager's backward works.
    assert_fix_equivalent(SigmoidThenMul(), x8())


def _tampered(model: nn.Module, x: torch.Tensor, edit) -> fxgrad.FixedModule:
    fixed = fxgrad.fix(model, (x,))
    gm = fixed.graph_module
    edit(gm.graph)
    gm.recompile()
    return fixed


def test_fix_equivalent_fails_when_the_forward_differs():
    model, x = Safe(), x8()

    def relu_to_sigmoid(graph: fx.Graph) -> None:
        for n in graph.nodes:
            if n.target is torch.relu_:
                n.target = torch.sigmoid

    fixed = _tampered(model, x, relu_to_sigmoid)
    with pytest.raises(AutogradCheckError) as info:
        assert_fix_equivalent(model, x, fixed=fixed)
    message = str(info.value)
    assert message.startswith("fxgrad.fix(Safe) does not match eager PyTorch on these inputs:")
    assert "forward: output 0 differs (max abs difference" in message


def test_fix_equivalent_fails_when_gradients_differ():
    model, x = Safe(), x8()

    def detach_hidden(graph: fx.Graph) -> None:
        node = next(n for n in graph.nodes if n.target is torch.relu_)
        with graph.inserting_after(node):
            cut = graph.call_method("detach", (node,))
        node.replace_all_uses_with(cut, delete_user_cb=lambda user: user is not cut)

    fixed = _tampered(model, x, detach_hidden)
    with pytest.raises(AutogradCheckError) as info:
        assert_fix_equivalent(model, x, fixed=fixed)
    message = str(info.value)
    assert "forward:" not in message
    assert "fc1.weight gets no gradient in the fixed module, unlike eager" in message
    assert "fc2.weight" not in message


# --- check_custom_functions ----------------------------------------------------------------


def test_custom_functions_pass_on_correct_backwards():
    assert check_custom_functions(UsesFunctions(Square), torch.randn(3, 4)) == ["Square", "Scale"]


def test_custom_functions_fail_on_a_wrong_backward_naming_it_and_its_line():
    with pytest.raises(AutogradCheckError) as info:
        check_custom_functions(UsesFunctions(WrongSquare), torch.randn(3, 4))
    message = str(info.value)
    assert "1 custom autograd.Function call in UsesFunctions fails float64 gradcheck" in message
    assert f"WrongSquare at {line_of('h = self.fn.apply(self.fc(x))')}" in message
    assert "Jacobian mismatch" in message
    assert "skip=[" in message
    assert "Scale at" not in message


def test_custom_functions_skip_a_deliberate_surrogate():
    names = check_custom_functions(
        UsesFunctions(WrongSquare), torch.randn(3, 4), skip=[WrongSquare]
    )
    assert names == ["Scale"]


def test_custom_functions_leave_float32_default_dtype():
    check_custom_functions(UsesFunctions(Square), torch.randn(3, 4))
    assert torch.get_default_dtype() == torch.float32


# --- wrapped models ------------------------------------------------------------------------


def test_fix_and_helpers_see_through_data_parallel_and_compile():
    model = SigmoidThenMul()
    for wrapped in (nn.DataParallel(model), torch.compile(model)):
        fixed = fxgrad.fix(wrapped, (x8(),))
        assert fixed.original_class is SigmoidThenMul
        with pytest.raises(AutogradCheckError, match="SigmoidThenMul is not autograd-safe"):
            assert_autograd_safe(wrapped, x8())
    assert_grads_flow(torch.compile(Safe()), x8())


def test_helpers_accept_a_fixed_module():
    model = NumpyDetour()
    fixed = fxgrad.fix(model, (x8(),))
    if not fixed.report.applied:  # until the NumPy pass rewrites the detour
        with pytest.raises(AutogradCheckError, match="parameter fc1.weight gets no gradient"):
            assert_grads_flow(fixed, x8())
    assert check_custom_functions(fixed, x8()) == []
    with pytest.raises(TypeError, match="pass the original model"):
        assert_fix_equivalent(fixed, x8())


# --- messages that read well -----------------------------------------------------------

TORCH_TAILS = ("Good luck!", "backtrace further above", "Hint: enable anomaly detection")


@pytest.mark.parametrize("check", [assert_autograd_safe, assert_grads_flow])
def test_messages_quote_torchs_error_once_without_its_tails(check):
    with pytest.raises(AutogradCheckError) as info:
        check(SigmoidThenMul(), x8())
    message = str(info.value)
    assert message.count("modified by an inplace operation") == 1, message
    for tail in TORCH_TAILS:
        assert tail not in message


class StraightThrough(torch.autograd.Function):
    """A deliberate surrogate: round forward, identity backward (fails gradcheck)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class QuantizedThenWrong(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        q = StraightThrough.apply(self.fc(x))
        return WrongSquare.apply(q)


def test_custom_functions_never_suggest_skipping_a_broken_backward_already_skipped_around():
    with pytest.raises(AutogradCheckError) as info:
        check_custom_functions(QuantizedThenWrong(), torch.randn(3, 4), skip=[StraightThrough])
    message = str(info.value)
    assert "WrongSquare at" in message and "StraightThrough at" not in message
    assert "skip=[" not in message  # the surrogate is skipped; WrongSquare is a bug
    assert "skip= already leaves out StraightThrough" in message
    assert "the backward of WrongSquare is wrong" in message


def test_custom_functions_suggest_skipping_only_the_failing_function():
    with pytest.raises(AutogradCheckError) as info:
        check_custom_functions(UsesFunctions(WrongSquare), torch.randn(3, 4))
    message = str(info.value)
    assert "skip=[WrongSquare]" in message and "Scale]" not in message
