"""The captured graph computes what eager PyTorch computes: every row of DESIGN section 1.

Each test captures a model with no pass selected, so what is checked is capture alone:
the recorded node exists, and values and gradients equal eager on random inputs,
including what aliases of a written tensor see.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import math
import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import fxgrad
import fxgrad.api
from fxgrad.context import clone_inputs
from fxgrad.graph_utils import ENTER_AUTOCAST
from fxgrad.pipeline import run_forward_backward
from fxgrad.trace import GuardError


def capture(model: nn.Module, *inputs):
    """fix() with no pass selected: the captured graph, checked against eager."""
    return fxgrad.fix(model, inputs, select=[])


def targets(fixed) -> list:
    return [n.target for n in fixed.graph_module.graph.nodes]


def assert_same(model: nn.Module, fixed, *inputs) -> None:
    """Forward values and gradients (params and inputs) equal eager on fresh inputs."""
    params = [p for p in model.parameters() if p.requires_grad]
    out_e, g_e, err_e = run_forward_backward(model, clone_inputs(list(inputs)), params, 0)
    out_f, g_f, err_f = run_forward_backward(fixed, clone_inputs(list(inputs)), params, 0)
    torch.testing.assert_close(out_f, out_e, equal_nan=True)
    assert (err_e is None) == (err_f is None), (err_e, err_f)
    if g_e is not None:
        for a, b in zip(g_f, g_e):
            if b is None:
                assert a is None
            else:
                torch.testing.assert_close(a, b)


# --- item assignment -------------------------------------------------------------------


class SetItem(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.index = index

    def forward(self, x):
        y = x * 2
        idx = self.index(x) if callable(self.index) else self.index
        y[idx] = 10
        return y


@pytest.mark.parametrize(
    "index",
    [
        0,
        slice(1, 3),
        (1, slice(None, 2)),
        (Ellipsis, 0),
        lambda x: x > 0,  # boolean mask
        lambda x: torch.tensor([0, 2]),  # integer tensor index
    ],
    ids=["int", "slice", "tuple", "ellipsis", "bool-mask", "tensor"],
)
def test_setitem(index):
    x = torch.randn(3, 4, requires_grad=True)
    model = SetItem(index)
    fixed = capture(model, x)
    assert operator.setitem in targets(fixed)
    assert_same(model, fixed, x)


# --- augmented assignment and aliasing ---------------------------------------------------


class Augmented(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x, s):
        z = x * 1.5
        alias = z[1:]
        if self.op == "+":
            z += s
        elif self.op == "-":
            z -= s
        elif self.op == "*":
            z *= s
        elif self.op == "/":
            z /= s
        return z, alias


@pytest.mark.parametrize(
    "op,target",
    [("+", operator.iadd), ("-", operator.isub), ("*", operator.imul), ("/", operator.itruediv)],
)
def test_augmented_assignment_is_in_place_and_aliases_see_it(op, target):
    x = torch.randn(3, 4, requires_grad=True)
    s = torch.rand(4) + 0.5
    model = Augmented(op)
    fixed = capture(model, x, s)
    assert target in targets(fixed)
    z, alias = fixed(x, s)
    torch.testing.assert_close(alias, z[1:])  # the view sees the in-place write
    assert_same(model, fixed, x, s)


class ViewThenIadd(nn.Module):
    def forward(self, y):
        y = y.clone()
        v = y[1:]
        y += 1
        return v


def test_alias_of_written_tensor_sees_the_write():
    x = torch.randn(4, 3)
    model = ViewThenIadd()
    fixed = capture(model, x)
    torch.testing.assert_close(fixed(x), x[1:] + 1)
    assert_same(model, fixed, x)


class UnusedInPlace(nn.Module):
    def forward(self, x):
        h = x * 2
        h.mul_(3)  # result unused, but it changes h
        torch.relu(h, inplace=True) if False else F.relu(h, inplace=True)
        return h


def test_unused_in_place_results_are_kept():
    x = torch.randn(5)
    model = UnusedInPlace()
    fixed = capture(model, x)
    assert "mul_" in targets(fixed)
    assert_same(model, fixed, x)


# --- NumPy -----------------------------------------------------------------------------


class NumpyDetour(nn.Module):
    def forward(self, x):
        a = x.detach().cpu().numpy()
        b = np.sum(np.sin(a) * 2 + 1, axis=1, keepdims=True)
        c = a.T @ a
        t = torch.from_numpy(b).float()
        u = torch.tensor(c.mean(axis=0))
        v = torch.as_tensor(np.maximum(a, 0.0))
        return x * t, u, v


def test_numpy_calls_are_recorded():
    x = torch.randn(3, 4, requires_grad=True)
    model = NumpyDetour()
    fixed = capture(model, x)
    ts = targets(fixed)
    assert "numpy" in ts and np.sin in ts and np.sum in ts and np.maximum in ts
    assert torch.from_numpy in ts and torch.tensor in ts and torch.as_tensor in ts
    assert_same(model, fixed, x)


def test_numpy_factories_make_a_fresh_array_on_every_call():
    class ConstNumpy(nn.Module):
        def forward(self, x):
            w = np.linspace(0, 1, 4).astype(np.float32)
            w += 1  # into a fresh array on every call, as eager does
            return x * torch.from_numpy(w)

    x = torch.randn(2, 4)
    fixed = capture(ConstNumpy(), x)
    assert np.linspace in targets(fixed)
    for _ in range(3):
        assert_same(ConstNumpy(), fixed, x)


# --- custom autograd.Function ------------------------------------------------------------


class StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class UsesFunction(nn.Module):
    def forward(self, x):
        return StraightThrough.apply(x * 3).sum(dim=1)


def test_custom_function_is_one_opaque_node_and_keeps_its_backward():
    x = torch.randn(3, 4, requires_grad=True)
    fixed = capture(UsesFunction(), x)
    fn_nodes = [t for t in targets(fixed) if getattr(t, "_fxgrad_function", None)]
    assert [t._fxgrad_function for t in fn_nodes] == [StraightThrough]
    (g,) = torch.autograd.grad(fixed(x).sum(), x)
    torch.testing.assert_close(g, torch.full_like(x, 3.0))  # straight-through, not zero
    assert_same(UsesFunction(), fixed, x)


# --- grad-mode regions ---------------------------------------------------------------------


class GradModes(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        with torch.no_grad():
            frozen = self.lin(x)
            with torch.enable_grad():
                live = self.lin(x) * 2
        with torch.set_grad_enabled(False):
            off = x * 3
        return frozen, live, off, self.helper(x)

    @torch.no_grad()
    def helper(self, x):
        return x + 1


def test_grad_mode_regions_are_kept():
    x = torch.randn(2, 4, requires_grad=True)
    model = GradModes()
    fixed = capture(model, x)
    assert torch._C._set_grad_enabled in targets(fixed)
    frozen, live, off, helped = fixed(x)
    assert not frozen.requires_grad and live.requires_grad
    assert not off.requires_grad and not helped.requires_grad
    assert torch.is_grad_enabled()
    assert_same(model, fixed, x)


def test_grad_mode_regions_restore_the_callers_mode():
    # A region restores the mode the caller had, not the one seen while tracing: under the
    # caller's no_grad, everything after the decorated helper stays without grad.
    x = torch.randn(2, 4, requires_grad=True)
    model = GradModes()
    fixed = capture(model, x)
    with torch.no_grad():
        expected = model(x)
        got = fixed(x)
        assert not torch.is_grad_enabled()
    assert [t.requires_grad for t in got] == [t.requires_grad for t in expected]
    assert got[1].requires_grad  # enable_grad inside no_grad
    torch.testing.assert_close(got, expected)


class InferenceRegions(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = nn.Linear(4, 1)

    def forward(self, x):
        with torch.inference_mode():
            stats = self.lin(x).mean()
        return x * stats.item() + self.gate(x)

    @torch.inference_mode()
    def gate(self, x):
        return self.scale(x).sigmoid().clone()


def test_inference_mode_regions_are_kept():
    # Dropping the region would let gradients reach self.lin, where eager gives none.
    x = torch.randn(3, 4, requires_grad=True)
    model = InferenceRegions()
    fixed = capture(model, x)
    assert torch.autograd.grad_mode._enter_inference_mode in targets(fixed)
    x_ref = x.detach().clone().requires_grad_()
    expected, got = model(x_ref), fixed(x)
    torch.testing.assert_close(got, expected)
    expected.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert model.lin.weight.grad is None and model.scale.weight.grad is None


class MixedPrecision(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.body(x)
            with torch.autocast("cpu", enabled=False):  # a full-precision island
                exact = self.head(h.float())
        return self.scores(h), exact

    @torch.autocast("cpu", dtype=torch.bfloat16)
    def scores(self, h):
        return self.head(h)


def test_autocast_regions_are_kept():
    # Dropped, the fixed module would compute in float32: refused by the capture check
    # with example inputs, and silently different without them.
    model, x = MixedPrecision(), torch.randn(4, 8, requires_grad=True)
    for inputs in ((x,), None):
        fixed = (
            fxgrad.fix(model, inputs, select=[])
            if inputs
            else fxgrad.api.fix_static(model, select=[])
        )
        enters = [n for n in fixed.graph_module.graph.nodes if n.target is ENTER_AUTOCAST]
        assert len(enters) == 3
        got, want = fixed(x), model(x)
        assert [t.dtype for t in got] == [torch.bfloat16, torch.float32]
        torch.testing.assert_close(got, want)
    assert not torch.is_autocast_enabled("cpu")
    assert_same(model, fixed, x)


class Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = checkpoint(self.block, x, use_reentrant=False)
        h = checkpoint(lambda t: self.head(t) * 2, h, use_reentrant=False)
        return h


def test_checkpointed_submodule_stays_checkpointed():
    # Traced through, the block's activations would be stored instead of recomputed:
    # the same values, silently more memory. A submodule stays one checkpointed call; a
    # lambda cannot, so it is traced through and the report says so.
    model = Checkpointed()
    x = torch.randn(3, 8, requires_grad=True)
    fixed = fxgrad.fix(model, (x,))
    calls = [n for n in fixed.graph_module.graph.nodes if n.target is checkpoint]
    assert len(calls) == 1 and calls[0].args[0].target == "block"
    assert any("checkpoint" in n and "traced through" in n for n in fixed.report.notes)
    assert_same(model, fixed, x)


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Tanh())

    def forward(self, x):
        return self.body(self.stem(x)) * 2


def test_hooks_on_submodules_still_run():
    # Traced through, `stem` would vanish into the graph and its hook would never fire.
    model, x = Blocks(), torch.randn(3, 4, requires_grad=True)
    seen = []
    model.stem.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
    model.body.register_forward_pre_hook(lambda mod, args: (args[0] * 0.5,))
    fixed = fxgrad.fix(model, (x,))
    assert {"stem", "body"} <= {n.target for n in fixed.graph_module.graph.nodes}
    assert sum("has hooks" in n for n in fixed.report.notes) == 2
    seen.clear()
    assert_same(model, fixed, x)  # the pre-hook's scaling is part of both results
    assert len(seen) == 2  # once for eager, once for the fixed module
    torch.testing.assert_close(seen[0], seen[1])


def test_hooks_on_the_model_itself_run_when_the_fixed_module_is_called():
    # The fixed module shares the model's hook tables: hooks registered on either run.
    model, x = Blocks(), torch.randn(3, 4)
    seen = []
    model.register_forward_hook(lambda mod, args, out: seen.append("model") or out * 2)
    fixed = fxgrad.fix(model)
    fixed.register_forward_pre_hook(lambda mod, args: seen.append("fixed"))
    seen.clear()
    torch.testing.assert_close(fixed(x), model(x))
    assert seen == ["fixed", "model", "fixed", "model"]


# --- structured inputs and outputs ---------------------------------------------------------

Pair = collections.namedtuple("Pair", ["first", "second"])


@dataclasses.dataclass
class Batch:
    image: torch.Tensor
    scale: torch.Tensor


class Structured(nn.Module):
    def forward(self, pair, batch, extras):
        a = pair.first + pair.second
        b = batch.image * batch.scale
        return {"sum": a, "scaled": Pair(b, extras[0] - extras[1])}, [a.mean()]


def test_structured_inputs_and_outputs_are_rebuilt_exactly():
    pair = Pair(torch.randn(3), torch.randn(3))
    batch = Batch(torch.randn(2, 3), torch.randn(3))
    extras = [torch.randn(3), torch.randn(3)]
    model = Structured()
    fixed = capture(model, pair, batch, extras)
    out = fixed(pair, batch, extras)
    ref = model(pair, batch, extras)
    assert isinstance(out, tuple) and isinstance(out[0]["scaled"], Pair)
    torch.testing.assert_close(out, ref)


class DataclassOut(nn.Module):
    def forward(self, x):
        return Batch(image=x * 2, scale=x.sum())


def test_dataclass_output():
    x = torch.randn(3)
    out = capture(DataclassOut(), x)(x)
    assert isinstance(out, Batch)
    torch.testing.assert_close(out.image, x * 2)


# --- shape idioms ----------------------------------------------------------------------------


class ShapeIdioms(nn.Module):
    def forward(self, x):
        b, c, h, w = x.shape
        n, *_ = x.size()
        y = x.reshape(b, c, h * w).mean(-1)
        parts = [t.sum() for t in x.chunk(3, dim=1)]
        rows = [r * 2 for r in y.unbind(1)]
        return y + len(parts) + sum(parts) + torch.stack(rows, 1) * n


def test_shape_idioms():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    model = ShapeIdioms()
    fixed = capture(model, x)
    assert_same(model, fixed, x)


def test_unpacked_sizes_stay_symbolic():
    class Flatten(nn.Module):
        def forward(self, x):
            b, c, h, w = x.shape
            return x.reshape(b, c * h * w)

    fixed = capture(Flatten(), torch.randn(2, 3, 4, 4))
    other = torch.randn(5, 3, 2, 2)  # a different size works: nothing was baked in
    torch.testing.assert_close(fixed(other), other.reshape(5, 12))


class Factories(nn.Module):
    """Factories sized from the input, as in RNN state and position code."""

    def forward(self, x):
        b, t, d = x.shape
        h = torch.zeros(b, t + 1, d, dtype=x.dtype, device=x.device)
        h[:, 1:] = x.cumsum(1)
        pos = torch.arange(t, device=x.device).to(x.dtype)
        return h[:, 1:] * torch.ones((b, 1, 1)) + pos[None, :, None] + torch.full((d,), 0.5)


def test_factories_with_traced_sizes_are_recorded_and_stay_symbolic():
    # Plain symbolic_trace fails here: torch.zeros(b, ...) gets a Proxy where it wants ints.
    model = Factories()
    x = torch.randn(2, 3, 4, requires_grad=True)
    fixed = capture(model, x)
    assert torch.zeros in targets(fixed) and torch.arange in targets(fixed)
    assert_same(model, fixed, x)
    other = torch.randn(5, 7, 4)
    torch.testing.assert_close(fixed(other), model(other))
    static = fxgrad.fix(model)  # without example inputs too, and nothing to rewrite
    torch.testing.assert_close(static(other), model(other))
    assert static.report.changes == []


def test_size_branch_is_guarded_not_silently_baked():
    class Branch(nn.Module):
        def forward(self, x):
            if x.dim() == 2:
                return x * 2
            return x * 3

    fixed = capture(Branch(), torch.randn(2, 3))
    torch.testing.assert_close(fixed(torch.ones(4, 5)), torch.full((4, 5), 2.0))
    assert len(fixed.reports) == 1
    # another rank answers the branch the other way: decided again, on this call
    torch.testing.assert_close(fixed(torch.ones(2, 3, 4)), torch.full((2, 3, 4), 3.0))
    assert len(fixed.reports) == 2
    # the guard itself still checks a graph that is run on its own
    with pytest.raises(GuardError, match="bool"):
        fixed._fxgrad.variants[0].gm(torch.ones(2, 3, 4))


def test_int_and_float_of_sizes_are_answered_and_guarded():
    class Halves(nn.Module):
        def forward(self, x):
            half = int(x.shape[1] / 2)
            return x[:, :half] / float(x.size(-1)) ** 0.5

    model = Halves()
    x = torch.randn(2, 6, 4, requires_grad=True)
    fixed = capture(model, x)
    assert_same(model, fixed, x)
    same_answers = torch.randn(3, 7, 4, requires_grad=True)  # int(7 / 2) == int(6 / 2)
    torch.testing.assert_close(fixed(same_answers), model(same_answers))
    assert len(fixed.reports) == 1  # the same answers: the same variant
    other = torch.randn(2, 8, 4, requires_grad=True)
    assert_same(model, fixed, other)  # int(8 / 2) differs: decided on its own call
    assert len(fixed.reports) == 2
    with pytest.raises(GuardError, match="int"):
        fixed._fxgrad.variants[0].gm(other)


class MaskedAttention(nn.Module):
    """Transformer-library idioms: a dtype's smallest value, a dtype/kind branch."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)

    def forward(self, x, mask):
        w = self.q(x) @ x.transpose(-1, -2)
        w = w.masked_fill(~mask, torch.finfo(w.dtype).min)
        scale = 1.0 if x.is_floating_point() else 0.5
        return F.softmax(w, dim=-1, dtype=torch.float32).to(x.dtype) @ x * scale


def test_dtype_questions_are_answered_from_the_example_and_guarded():
    model = MaskedAttention()
    x, mask = torch.randn(2, 3, 8, requires_grad=True), torch.rand(2, 3, 3) > 0.3
    fixed = capture(model, x, mask)
    assert_same(model, fixed, x, mask)
    other = torch.randn(4, 5, 8), torch.rand(4, 5, 5) > 0.3
    torch.testing.assert_close(fixed(*other), model(*other))  # other sizes: no guard hit
    double = copy.deepcopy(fixed).double()
    n = len(double.reports)
    xd = x.detach().double().requires_grad_()
    torch.testing.assert_close(double(xd, mask), copy.deepcopy(model).double()(xd, mask))
    assert len(double.reports) == n + 1  # float64 is decided on its own call
    assert "float64" in double.report.variant
    with pytest.raises(GuardError, match="torch.float32"):
        double._fxgrad.variants[0].gm(xd, mask)


def test_len_and_loop_count_are_guarded():
    class Loop(nn.Module):
        def forward(self, x):
            out = x.new_zeros(x.shape[1:])
            for row in x:
                out = out + row
            return out * len(x)

    fixed = capture(Loop(), torch.randn(3, 2))
    x = torch.randn(3, 2)
    torch.testing.assert_close(fixed(x), x.sum(0) * 3)
    x4 = torch.randn(4, 2)
    torch.testing.assert_close(fixed(x4), x4.sum(0) * 4)  # a last, smaller batch works too
    torch.testing.assert_close(fixed(x), x.sum(0) * 3)  # and the first variant still serves
    assert len(fixed.reports) == 2
    with pytest.raises(GuardError):
        fixed._fxgrad.variants[0].gm(x4)


# --- training flag ---------------------------------------------------------------------------


class ReadsTraining(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        x = F.dropout(self.lin(x), p=0.5, training=self.training)
        if self.training:
            x = x + 1
        return x


def test_train_and_eval_behave_like_the_original():
    model = ReadsTraining()
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,), select=[])
    fixed.eval()
    model.eval()
    torch.testing.assert_close(fixed(x), model(x))
    fixed.train()
    model.train()
    torch.manual_seed(3)
    a = fixed(x)
    torch.manual_seed(3)
    b = model(x)
    torch.testing.assert_close(a, b)


# --- stack traces ----------------------------------------------------------------------------


def test_every_op_node_names_the_user_line():
    fixed = capture(ShapeIdioms(), torch.randn(2, 3, 4, 5))
    for node in fixed.graph_module.graph.nodes:
        if node.op in ("call_function", "call_method", "call_module"):
            filename, line = node.meta["fxgrad_loc"]
            assert filename.endswith("test_capture.py"), (node, filename)
            assert line > 0


class VarArgs(nn.Module):
    def forward(self, *xs, scale=2.0):
        return torch.cat(xs, 1) * scale


def test_var_positional_forward():
    a, b = torch.randn(2, 3), torch.randn(2, 4)
    fixed = capture(VarArgs(), a, b)
    assert "xs_0" in fixed.code and "xs_1" in fixed.code
    torch.testing.assert_close(fixed(a, b), VarArgs()(a, b))


def test_torch_nn_code_names_its_own_lines():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    x = torch.randn(2, 5, 16)
    fixed = capture(encoder.eval(), x)
    files = {
        n.meta["fxgrad_loc"][0] for n in fixed.graph_module.graph.nodes if "fxgrad_loc" in n.meta
    }
    assert files and all(f.endswith("transformer.py") for f in files), files
    torch.testing.assert_close(fixed(x), encoder(x))


# --- code as model libraries write it ----------------------------------------------------

_GLOBAL_ACT = nn.GELU()  # a module held in a global (a kernel hub layer, for instance)


class _Rotate(nn.Module):
    def forward(self, q):
        return torch.cat([-q[..., 1::2], q[..., ::2]], dim=-1)


_ROTATE = _Rotate()


class LibraryIdioms(nn.Module):
    """timm / transformers shapes: same-padding arithmetic, a device-type branch, modules
    called that the model does not own, `self.forward` chosen in __init__, a cache dict."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.cache: dict = {}
        self.forward = self.forward_padded

    def forward_padded(self, x, scale: float = 1.0):
        pad = math.ceil(x.shape[-1] / 3) * 3 - x.shape[-1]  # timm's same padding
        h = F.pad(self.lin(x), (0, pad))
        if x.device.type != "meta" and x.dtype.is_floating_point:
            h = h / math.sqrt(h.shape[-1])
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = nn.ReLU()(h)  # built inline, every call
        self.cache["last"] = h  # capture and probing write the twin's dict, never the user's
        return _ROTATE(_GLOBAL_ACT(h)) * scale


def test_library_idioms_capture_and_match_eager():
    model = LibraryIdioms()
    x = torch.randn(2, 8, requires_grad=True)
    fixed = fxgrad.fix(model, (x,), select=[])
    assert model.cache == {}  # fix() wrote nothing into the user's dict
    assert_same(model, fixed, x)
    assert_same(model, fixed, torch.randn(5, 8, requires_grad=True))  # another batch
    torch.testing.assert_close(fixed(x, scale=2.0), model(x, scale=2.0))
    assert all(isinstance(v, torch.Tensor) for v in model.cache.values())  # no proxies


def test_parametrized_modules_capture():
    from torch.nn.utils import parametrizations

    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(4, 4)), nn.Tanh())
    x = torch.randn(3, 4, requires_grad=True)
    assert_same(model, capture(model, x), x)


def test_keyword_calls_reach_a_forward_whose_decorator_fills_defaults():
    import functools

    def merge_defaults(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            kwargs.setdefault("use_cache", self.use_cache)  # transformers' config defaults
            return fn(self, *args, **kwargs)

        return wrapper

    class Decoder(nn.Module):
        use_cache = False

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        @merge_defaults
        def forward(self, input_ids, attention_mask=None, use_cache=None):
            h = self.emb(input_ids)
            if attention_mask is not None:
                h = h * attention_mask[..., None]
            return {"hidden": h, "cached": use_cache}

    model = Decoder()
    ids, mask = torch.randint(0, 10, (2, 5)), torch.ones(2, 5)
    fixed = fxgrad.fix(model, (), {"input_ids": ids, "attention_mask": mask})
    got, want = fixed(input_ids=ids, attention_mask=mask), model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(got["hidden"], want["hidden"])
    assert got["cached"] is False
    torch.testing.assert_close(fixed(ids)["hidden"], model(ids)["hidden"])  # positional too


class _Layer:
    def __init__(self):
        self.keys = None


class _Cache:
    """Like transformers' DynamicCache: a plain object holding a tensor per layer."""

    def __init__(self, n=2):
        self.layers = [_Layer() for _ in range(n)]

    def update(self, k, i):
        layer = self.layers[i]
        layer.keys = k if layer.keys is None else torch.cat([layer.keys, k], 1)
        return layer.keys


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x, past=None):
        cache = past if past is not None else _Cache()
        h = self.lin(x)
        for i in range(2):
            h = cache.update(h, i).sum(1, keepdim=True) + h
        return h, cache


def test_objects_holding_tensors_are_inputs_and_outputs():
    model, x = _Decoder(), torch.randn(2, 3, 8)
    fixed = fxgrad.fix(model)
    got, cache = fixed(x)
    want, eager_cache = model(x)
    torch.testing.assert_close(got, want)
    assert type(cache) is _Cache and cache.layers[1].keys.shape == (2, 3, 8)
    for _ in range(3):  # fed back, as generation does: one variant serves every step
        got, cache = fixed(x, past=cache)
        want, eager_cache = model(x, past=eager_cache)
        torch.testing.assert_close(got, want)
        assert [layer.keys.shape for layer in cache.layers] == [
            layer.keys.shape for layer in eager_cache.layers
        ]
    assert len(fixed.reports) == 2  # without and with a cache


class _Config:
    problem_type = None


def test_the_forward_setting_a_shared_objects_attribute_leaves_the_users_alone():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = _Config()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, labels):
            logits = self.fc(x)
            if self.config.problem_type is None:
                self.config.problem_type = "single_label_classification"
            return F.cross_entropy(logits, labels), logits

    model = Classifier()
    fxgrad.fix(model, (), {"x": torch.randn(2, 4), "labels": torch.tensor([0, 2])})
    assert model.config.problem_type is None


_collected = None


def _collect(mod, args, out):
    if _collected is not None:
        _collected.append(out)


def test_hooks_the_forward_installs_are_traced_with_it():
    class Net(nn.Module):  # transformers' output capturing installs hooks on first call
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            global _collected
            if not getattr(self, "_hooks_installed", False):
                for s in self.stages:
                    s.register_forward_hook(_collect)
                self._hooks_installed = True
            _collected = []
            for s in self.stages:
                x = s(x)
            hidden, _collected = _collected, None
            return self.head(torch.cat(hidden, -1))

    model, x = Net(), torch.randn(2, 4, requires_grad=True)
    fixed = fxgrad.fix(model, (x,))
    assert not any(m._forward_hooks for m in model.modules())  # nothing left on the model
    assert "_hooks_installed" not in model.__dict__
    for _ in range(2):
        assert_same(model, fixed, x)  # eager installs its hooks on the first call


def test_a_buffer_remade_at_another_size_in_forward():
    class PosAttn(nn.Module):  # timm's ConViT keeps relative indices for the last size
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 4)
            self.register_buffer("rel", torch.zeros(1, 1, 1, 3), persistent=False)

        def forward(self, x):
            _, n, _ = x.shape
            if self.rel.shape[1] != n:
                self.rel = torch.ones(1, n, n, 3)
            return x + self.proj(self.rel).mean()

    model = PosAttn()
    reference = copy.deepcopy(model)
    fixed = fxgrad.fix(model, (torch.randn(2, 5, 4),))
    for n in (5, 5, 6, 6, 5):
        x = torch.randn(2, n, 4)
        torch.testing.assert_close(fixed(x), reference(x))
        assert model.rel.shape == reference.rel.shape


def test_a_proxy_left_by_an_earlier_trace_is_a_clear_error():
    class Cached(nn.Module):
        def __init__(self):
            super().__init__()
            self.cache = {}

        def forward(self, x):
            self.cache["last"] = x * 2
            return self.cache["last"]

    model = Cached()
    torch.fx.symbolic_trace(model)  # plain fx leaves its Proxy in model.cache
    with pytest.raises(fxgrad.FxgradError, match="Proxy in self.cache"):
        fxgrad.fix(model, (torch.randn(3),))


class LazyTable(nn.Module):
    """A buffer rebuilt on the first call for the input's size (timm's ConViT), read again
    after a question about a size made capture run the recorded ops on the example."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("table", torch.zeros(1, 1), persistent=False)

    def forward(self, x):
        n = x.shape[1]
        if self.table.shape[0] != n:
            self.table = torch.arange(n, dtype=x.dtype).view(n, 1) * 0.1
        steps = len(x)  # answered from the example values: the rebuild has run by now
        return self.lin(x.transpose(1, 2)).transpose(1, 2) * steps + self.table


def test_a_buffer_rebuilt_in_forward_is_read_back_as_the_new_value():
    model = LazyTable()
    x = torch.randn(2, 4, 5, requires_grad=True)
    fixed = fxgrad.fix(model, (x,))
    fresh = LazyTable()
    fresh.load_state_dict(model.state_dict())
    for xx in (x, torch.randn(3, 4, 5), torch.randn(2, 4, 7)):
        torch.testing.assert_close(fixed(xx), fresh(xx))
        torch.testing.assert_close(model.table, fresh.table)


# --- a wrapped function that fills the list it is given ----------------------------------


@torch.fx.wrap
def _clip_sizes(sizes, limit):
    """Assigns into its argument, as torchvision's Swin3d `_get_window_and_shift_size` does."""
    for i in range(len(sizes)):
        if sizes[i] > limit:
            sizes[i] = limit
    return sizes


class FillsItsArgument(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        b, n = x.shape
        sizes = _clip_sizes([b, n], 4)
        h = torch.sigmoid(self.fc(x))
        return h[: sizes[0], : sizes[1]] * 2


@pytest.mark.parametrize("with_inputs", [True, False], ids=["inputs", "first-call"])
def test_a_wrapped_function_may_fill_a_list_built_in_forward(with_inputs):
    """fx.Interpreter passes list literals as fx's immutable_list; the generated code passes
    a fresh list. Deciding must run the graph as the generated code does."""
    model = FillsItsArgument()
    example = torch.randn(3, 6)
    fixed = fxgrad.fix(model, (example,)) if with_inputs else fxgrad.fix(model)
    for x in (example, torch.randn(7, 6), torch.randn(2, 6)):
        x = x.requires_grad_()
        out, expected = fixed(x), model(x)
        torch.testing.assert_close(out, expected)
        (g,) = torch.autograd.grad(out.sum(), x)
        (e,) = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(g, e)
