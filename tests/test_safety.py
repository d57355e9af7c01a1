"""Fixing never breaks the user's process: threads, interrupts, crashes, global state.

DESIGN.md section 6, "No process-wide effects": fixing acts on the capturing thread only
and leaves torch, NumPy, grad mode, autocast, default dtype and RNGs as they were on any
exit, Ctrl-C included. Code that could crash the process runs in a subprocess here.
"""

from __future__ import annotations

import copy
import random
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from test_view import FrozenThenUnfrozen  # its write is unsafe once weights train
from torch import nn

import fxgrad
from fxgrad.tracing.patches import _ACTIVE


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.scale = 2.0

    def forward(self, x):
        h = self.fc1(x).sigmoid()
        h.mul_(self.scale)  # unsafe: sigmoid saved its output
        with torch.no_grad():
            shift = h.mean()
        return self.fc2(h) - shift


def _global_state() -> dict:
    """What fixing must leave as it found it."""
    return {
        "grad": torch.is_grad_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "autocast": torch.is_autocast_enabled("cpu"),
        "rng": torch.random.get_rng_state(),
        "np_rng": np.random.get_state()[1].copy(),
        "is_grad_enabled": torch.is_grad_enabled,
        "set_grad": torch._C._set_grad_enabled,
        "inference": torch._C._InferenceMode,
        "apply": torch.autograd.function.Function.__dict__["apply"],
        "call": nn.Module.__call__,
        "getattr": nn.Module.__getattr__,
        "zeros": torch.zeros,
        "np_zeros": np.zeros,
        "randn": np.random.randn,
        "no_grad_enter": torch.no_grad.__enter__,
        "setattr": Small.__dict__.get("__setattr__"),
        "active": bool(_ACTIVE),
    }


def _assert_same_state(before: dict, after: dict) -> None:
    for k, v in before.items():
        w = after[k]
        if isinstance(v, (torch.Tensor, np.ndarray)):
            assert (v == w).all(), k
        else:
            assert v is w or v == w, k


def test_other_threads_see_torch_unchanged_while_fixing():
    model = Small()
    x = torch.randn(4, 8)
    eager = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    stop = threading.Event()
    bad: list[str] = []
    calls = [0]

    def eager_loop() -> None:
        while not stop.is_set():
            with torch.no_grad():
                out = eager(torch.randn(2, 8))
            if type(out) is not torch.Tensor:
                bad.append(type(out).__name__)
            if not torch.is_grad_enabled():
                bad.append("grad mode left off")
            calls[0] += 1

    t = threading.Thread(target=eager_loop)
    t.start()
    try:
        for _ in range(15):
            fixed = fxgrad.fix(model, (x,))
            torch.testing.assert_close(fixed(x), model(x.clone()), rtol=0, atol=0)
    finally:
        stop.set()
        t.join()
    assert calls[0] > 0
    assert bad == []


def test_concurrent_fixes_in_threads():
    x = torch.randn(4, 8)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            torch.manual_seed(seed)
            model = Small()
            for _ in range(5):
                fixed = fxgrad.fix(model, (x,))
                out = fixed(x)
                out.sum().backward()  # the unsafe write was rewritten in every thread
                model.zero_grad()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    fixed = fxgrad.fix(Small(), (x,))  # and fixing still works afterwards
    fixed(x).sum().backward()


class _Interrupt(BaseException):
    pass


def _interrupt_at(n: int):
    """A trace function that raises at the n-th line fxgrad runs (a Ctrl-C there)."""
    count = [0]

    def tracer(frame, event, _arg):
        if "fxgrad" not in frame.f_code.co_filename:
            return None
        if event == "line":
            count[0] += 1
            if count[0] == n:
                raise _Interrupt
        return tracer

    return tracer


def test_an_interrupt_anywhere_in_fix_leaves_global_state_as_it_was():
    x = torch.randn(4, 8)
    model = Small()
    np.random.seed(0)
    before = _global_state()
    rng = random.Random(0)
    points = sorted(rng.sample(range(1, 6000), 40))
    interrupted = 0
    for n in points:
        sys.settrace(_interrupt_at(n))
        try:
            fxgrad.fix(model, (x,))
        except _Interrupt:
            interrupted += 1
        finally:
            sys.settrace(None)
        _assert_same_state(before, _global_state())
    assert interrupted > 10
    fixed = fxgrad.fix(Small(), (x,))  # and fixing still works afterwards
    fixed(x).sum().backward()


def test_a_numpy_generator_given_traced_sizes_does_not_crash_the_process():
    """`np.random.default_rng()` draws in Cython, which calls np.empty on the model's
    behalf: a traced size there used to crash NumPy. The capture stops cleanly and the
    Dynamo front-end draws on every call from the model's own generator."""
    code = textwrap.dedent(
        """
        import copy, numpy as np, torch, fxgrad
        from torch import nn
        class M(nn.Module):
            def __init__(self):
                super().__init__(); self.fc = nn.Linear(4, 4)
                self.rng = np.random.default_rng(0)
            def forward(self, a):
                noise = torch.from_numpy(self.rng.normal(size=a.shape).astype(np.float32))
                return self.fc(a) + noise
        m = M(); e = copy.deepcopy(m)
        f = fxgrad.fix(m, (torch.randn(2, 4),))
        assert f.report.frontend == "dynamo", f.report.notes
        assert m.rng.bit_generator.state == e.rng.bit_generator.state, "fix() drew from it"
        for batch in (2, 3):
            x = torch.randn(batch, 4)
            torch.testing.assert_close(f(x), e(x))
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.returncode, out.stderr)


def test_numpy_random_with_traced_sizes_does_not_crash_the_process():
    code = textwrap.dedent(
        """
        import numpy as np, torch, fxgrad
        from torch import nn
        np.random.seed(0)
        class M(nn.Module):
            def __init__(self):
                super().__init__(); self.fc = nn.Linear(4, 4)
            def forward(self, a):
                noise = torch.from_numpy(np.random.randn(*a.shape).astype(np.float32))
                return self.fc(a) + noise
        m = M()
        x = torch.randn(2, 4)
        state = np.random.get_state()[1].copy()
        f = fxgrad.fix(m, (x,))
        assert (np.random.get_state()[1] == state).all(), "fix() moved NumPy's RNG"
        for batch in (2, 3):
            x = torch.randn(batch, 4)
            np.random.seed(1); got = f(x)
            np.random.seed(1); want = m(x)
            torch.testing.assert_close(got, want)
        np.random.seed(2); a = f(x)
        np.random.seed(3); b = f(x)
        assert not torch.equal(a, b), "the noise must be drawn on every call"
        lazy = fxgrad.fix(m)
        np.random.seed(1); got = lazy(x)
        np.random.seed(1); want = m(x)
        torch.testing.assert_close(got, want)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.returncode, out.stderr)


class _RaisesInAutocast(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, y):
        with torch.autocast("cpu"):
            h = self.fc(x) @ y  # raises inside the region when y has the wrong rows
        return h


@pytest.mark.parametrize("outer", [False, True], ids=["plain", "inside-users-autocast"])
def test_an_error_inside_autocast_leaves_autocast_as_it_was(outer):
    fixed = fxgrad.fix(_RaisesInAutocast(), (torch.randn(4, 8), torch.randn(8, 2)))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer):
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            fixed(torch.randn(4, 8), torch.randn(5, 2))
        assert torch.is_autocast_enabled("cpu") is outer
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    out = fixed(torch.randn(4, 8), torch.randn(8, 2))  # and the next call is right
    assert out.dtype == torch.bfloat16  # its own region still applies


# ---------------------------------------------------------------------------------------
# Gradient reach is part of equivalence


def _detaching_pass():
    """A broken pass: it detaches the forward's output, cutting every gradient."""
    from torch import fx

    from fxgrad.changes import Change
    from fxgrad.registry import Pass

    def run(gm: fx.GraphModule, _ctx) -> list:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        first = out.args[0][0]
        with gm.graph.inserting_before(out):
            cut = gm.graph.call_method("detach", (first,))
        out.args = ((cut, *out.args[0][1:]),)
        return [Change("FXG998", first.name, "h", "h.detach()")]

    return Pass("FXG998", "detach-output", run, "FXG998 detach-output\n\nBroken on purpose.")


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x).tanh()


@pytest.mark.parametrize("grad_input", [False, True], ids=["params-only", "input-too"])
def test_a_pass_that_cuts_gradients_is_rolled_back(monkeypatch, grad_input):
    import fxgrad.passes

    monkeypatch.setattr(fxgrad.passes, "ALL", (*fxgrad.passes.ALL, _detaching_pass()))
    model = _Plain()
    x = torch.randn(4, 8, requires_grad=grad_input)
    fixed = fxgrad.fix(model, (x,), select=["FXG998"])
    report = fixed.report
    assert any("FXG998" in n and "cuts gradients" in n for n in report.notes), report.notes
    assert not any(c.applied for c in report.changes)
    out = fixed(x)
    assert out.requires_grad
    out.sum().backward()
    ref = copy.deepcopy(model)
    ref.zero_grad()
    ref(x.detach()).sum().backward()
    torch.testing.assert_close(model.fc.weight.grad, ref.fc.weight.grad)


def test_assert_fix_equivalent_fails_when_the_fixed_module_has_no_gradient():
    from fxgrad.testing import assert_fix_equivalent

    model = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))

    class Detached(nn.Module):  # stands for a fixed module that lost the gradient
        def forward(self, x):
            return fixed(x).detach()

    with pytest.raises(AssertionError, match="output 0 carries no gradient"):
        assert_fix_equivalent(model, x, fixed=Detached())
    assert_fix_equivalent(model, x, fixed=fixed)  # the real fix passes


# ---------------------------------------------------------------------------------------
# Deciding keeps requires_grad, and never touches the user's state


class _PlainWeight(nn.Module):
    """A weight held as a plain tensor attribute that requires grad (not a Parameter)."""

    def __init__(self):
        super().__init__()
        self.w = torch.randn(8, 8, requires_grad=True)

    def forward(self, x):
        h = (x @ self.w).sigmoid()
        h.mul_(2)  # unsafe because w requires grad: sigmoid saved h
        return h


def test_a_plain_attribute_that_requires_grad_is_judged_as_eager_would():
    model = _PlainWeight()
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    assert any(c.applied and c.code == "FXG101" for c in fixed.report.changes)
    for batch in (4, 2):
        xb = torch.randn(batch, 8)
        model.w.grad = None
        fixed(xb).sum().backward()
        w = model.w.detach().clone().requires_grad_()
        ((xb @ w).sigmoid() * 2).sum().backward()  # the write, made out of place by hand
        torch.testing.assert_close(model.w.grad, w.grad)


def test_fast_weights_through_functional_call_keep_their_gradient():
    """MAML-style: non-leaf weights that require grad, passed through functional_call."""
    model = FrozenThenUnfrozen().requires_grad_(False)  # only the fast weights carry gradients
    fixed = fxgrad.fix(model)
    x = torch.randn(4, 8)

    def loss(module: nn.Module, base: dict) -> torch.Tensor:
        fast = {k: v * 0.9 for k, v in base.items()}  # one inner step's non-leaf weights
        return torch.func.functional_call(module, fast, (x,)).square().sum()

    base = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    grads = torch.autograd.grad(loss(fixed, base), list(base.values()))

    def by_hand(params: dict) -> torch.Tensor:
        fast = {k: v * 0.9 for k, v in params.items()}
        h = torch.nn.functional.linear(x, fast["fc1.weight"], fast["fc1.bias"]).sigmoid() * 2
        return torch.nn.functional.linear(h, fast["fc2.weight"], fast["fc2.bias"]).square().sum()

    expected = torch.func.grad(by_hand)({k: v.detach() for k, v in base.items()})
    for (name, _), g in zip(base.items(), grads):
        torch.testing.assert_close(g, expected[name])


class _ListOfBlocks(nn.Module):
    """Layers held in a plain list and registered with add_module (transformers' UperNet)."""

    def __init__(self):
        super().__init__()
        self.layers = []
        for i in range(2):
            block = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
            self.layers.append(block)
            self.add_module(str(i), block)

    def forward(self, x):
        return sum(layer(x) for layer in self.layers)


def test_fixing_never_moves_state_reached_through_a_plain_list():
    model = _ListOfBlocks().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    eager = copy.deepcopy(model)
    torch.testing.assert_close(fixed(x), eager(x))
    for k, v in model.state_dict().items():  # the user's call moves them, as eager's does
        torch.testing.assert_close(v, eager.state_dict()[k])


# ---------------------------------------------------------------------------------------
# Crashes on real code


class _JoinsSizes(nn.Module):
    def forward(self, x):
        key = "x".join(str(d) for d in x.shape)  # a cache key, as model code builds one
        return x * len(key) + float(f"{x.shape[-1]}.5")


class _AsksRequiresGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(x)
        if h.requires_grad:
            h = h * 2
        return h


class _OwnGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc(x) + torch.randn(x.shape, generator=self.g)


@pytest.mark.parametrize("model_cls", [_JoinsSizes, _AsksRequiresGrad])
def test_python_questions_about_traced_values_get_eager_answers(model_cls):
    model = model_cls()
    eager = copy.deepcopy(model)
    fixed = fxgrad.fix(model, (torch.randn(4, 6),))
    for shape, grad in (
        ((4, 6), True),
        ((3, 6), False),
        ((2, 9 if model_cls is _JoinsSizes else 6), True),
    ):
        x = torch.randn(*shape)
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(fixed(x), eager(x))


def test_a_model_owned_generator_is_left_where_it_was_and_drawn_from_on_every_call():
    model = _OwnGenerator()
    eager = copy.deepcopy(model)
    state = model.g.get_state()
    fixed = fxgrad.fix(model, (torch.randn(4, 6),))
    assert torch.equal(model.g.get_state(), state)  # deciding drew nothing from it
    for batch in (4, 2):
        x = torch.randn(batch, 6)
        torch.testing.assert_close(fixed(x), eager(x))  # the same draws, call after call


class _NumpyWritesOwnMemory(nn.Module):
    def forward(self, x):
        y = x.exp()
        a = y.detach().numpy()
        a += 1  # writes into y's memory, around autograd's version counter
        return y * 2


def test_a_numpy_write_into_a_tensors_memory_is_left_as_eager_has_it():
    model = _NumpyWritesOwnMemory()
    x = torch.randn(3, 4)
    fixed = fxgrad.fix(model, (x,))
    assert any("rolled back" in n for n in fixed.report.notes), fixed.report.notes
    for batch in (3, 5):
        xb = torch.randn(batch, 4)
        torch.testing.assert_close(fixed(xb), model(xb))


class _CachesBiases(nn.Module):
    """Caches a tensor computed from a parameter, keyed by device (timm's LeViT)."""

    def __init__(self):
        super().__init__()
        self.biases = nn.Parameter(torch.randn(4))
        self.cache: dict[str, torch.Tensor] = {}
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        key = str(x.device)
        if self.training:
            bias = self.biases * 2
        else:
            if key not in self.cache:
                self.cache[key] = self.biases * 2
            bias = self.cache[key]
        return self.fc(x) + bias


def test_a_cache_filled_while_tracing_holds_no_traced_value_afterwards():
    model = _CachesBiases().eval()
    x = torch.randn(2, 4)
    fixed = fxgrad.fix(model, (x,))
    assert model.cache == {}
    with torch.no_grad():
        for batch in (2, 3):
            xb = torch.randn(batch, 4)
            torch.testing.assert_close(fixed(xb), copy.deepcopy(model)(xb))
    fixed.train()
    out = fixed(x)
    out.sum().backward()
    assert model.biases.grad is not None


# ---------------------------------------------------------------------------------------
# Writes that go around autograd's bookkeeping: right, or left as eager has them


class _TransposeSaved(nn.Module):
    def forward(self, x):
        y = x.sigmoid()
        y.t_()  # sigmoid saved y; t_ changes its metadata in place
        return y * 2


class _WriteViewOfInput(nn.Module):
    def forward(self, x):
        z = x * 2
        x[0].mul_(2)  # a view of a leaf that requires grad: eager refuses
        return z + x


class _SameTensorTwice(nn.Module):
    def forward(self, a, b):
        h = a.sigmoid()
        b.add_(1)  # b is a: a leaf that requires grad
        return h * b


class _DataWriteSaved(nn.Module):
    def forward(self, x):
        y = x.exp()
        y.data.mul_(2)  # exp saved y; .data writes go around its version counter
        return y * 3


def _same_leaf(x):
    return (x, x)


_ALIAS_CASES = {
    "t_-of-saved": (_TransposeSaved(), lambda x: (x,), lambda x: x.sigmoid().t() * 2),
    "view-of-input": (
        _WriteViewOfInput(),
        lambda x: (x,),
        lambda x: x * 2 + torch.cat([x[:1] * 2, x[1:]]),
    ),
    "same-tensor-twice": (_SameTensorTwice(), _same_leaf, lambda x: x.sigmoid() * (x + 1)),
    "data-write-of-saved": (_DataWriteSaved(), lambda x: (x,), lambda x: x.exp() * 6),
}


@pytest.mark.parametrize("name", sorted(_ALIAS_CASES))
def test_writes_around_autograds_bookkeeping_match_a_hand_corrected_model(name):
    model, args_of, reference = _ALIAS_CASES[name]
    x0 = torch.randn(3, 3, dtype=torch.float64)
    fixed = fxgrad.fix(model, args_of(x0.clone().requires_grad_()))
    for rows in (3, 3):  # another call with fresh values
        x = torch.randn(rows, 3, dtype=torch.float64)
        got = fixed(*args_of(x.clone().requires_grad_()))
        torch.testing.assert_close(got, reference(x))
        xf = x.clone().requires_grad_()
        gf = torch.autograd.grad(fixed(*args_of(xf)).sum(), xf)[0]
        xr = x.clone().requires_grad_()
        gr = torch.autograd.grad(reference(xr).sum(), xr)[0]
        torch.testing.assert_close(gf, gr)


class _WriteExpanded(nn.Module):
    def forward(self, x):
        y = x.sigmoid()
        y.expand(3, 4).add_(1)  # many elements share one memory location: eager refuses
        return y


def test_a_write_eager_refuses_for_good_is_refused_or_reported():
    model = _WriteExpanded()
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError, match="single memory location"):
        model(x.clone())
    try:
        fixed = fxgrad.fix(model, (x,))
    except fxgrad.FxgradError:
        return  # refused, with a message
    try:
        fixed(x)
    except RuntimeError as e:
        assert "single memory location" in str(e)
    else:  # eager has no answer to compare with: the report must name what was done
        assert any("expand" in c.before for c in fixed.report.changes), fixed.report.table()


class _GeneratorAndBranch(nn.Module):
    """Needs Dynamo (a data-dependent branch) and draws from a generator it owns."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.g = torch.Generator().manual_seed(0)

    def forward(self, x):
        h = self.fc(x) + torch.randn(x.shape, generator=self.g)
        if h.sum() > 0:
            h = h * 2
        return h


def test_the_dynamo_front_end_leaves_a_model_owned_generator_where_it_was():
    model = _GeneratorAndBranch()
    eager = copy.deepcopy(model)
    fixed = fxgrad.fix(model, (torch.randn(2, 4),))
    assert fixed.report.frontend == "dynamo"
    assert torch.equal(model.g.get_state(), eager.g.get_state())
    for batch in (2, 3, 2):
        x = torch.randn(batch, 4)
        torch.testing.assert_close(fixed(x), eager(x))


def test_upernet_keeps_the_users_batchnorm_statistics():
    """transformers' UperNet keeps its pyramid-pooling layers in a plain list; probing them
    moved the user's BatchNorm statistics."""
    import transformers

    torch.manual_seed(0)
    backbone = transformers.ConvNextConfig(
        num_channels=3,
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        auxiliary_in_channels=32,
        auxiliary_channels=8,
        num_labels=3,
        pool_scales=[1, 2],
    )
    model = transformers.UperNetForSemanticSegmentation(config).train()
    kwargs = {"pixel_values": torch.randn(2, 3, 64, 64), "labels": torch.randint(0, 3, (2, 64, 64))}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fixed = fxgrad.fix(model, (), kwargs)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    eager = copy.deepcopy(model).eval()
    fixed.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fixed(pixel_values=x).logits, eager(pixel_values=x).logits)


class _BranchAndNumpyNoise(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, a):
        h = self.fc(a)
        if h.sum() > 0:
            h = h * 2
        return h + torch.from_numpy(np.random.randn(*a.shape).astype(np.float32))


def test_numpy_draws_through_dynamo_come_from_numpys_generator():
    model = _BranchAndNumpyNoise()
    fixed = fxgrad.fix(model, frontend="dynamo")
    for batch in (2, 2, 3):
        x = torch.randn(batch, 4)
        np.random.seed(batch)
        got = fixed(x)
        np.random.seed(batch)
        torch.testing.assert_close(got, model(x))
