"""A fixed module is a view of the user's model, not a snapshot (DESIGN.md section 6).

Each test fixes a model, changes something on the user's side between calls (a Python
attribute, a global, a config field, a closure variable, hooks, the module tree,
`requires_grad`, the weights), and compares the fixed module with eager PyTorch on an
identical copy that had the same change: outputs, and gradients of parameters and inputs.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import fxgrad

SCALE = 1.0
CFG = {"shift": 0.0}


def _same(fixed: nn.Module, eager: nn.Module, x: torch.Tensor) -> None:
    """Outputs and gradients (parameters and input) of the fixed module equal eager's."""
    xf = x.clone().requires_grad_()
    xe = x.clone().requires_grad_()
    out_f, out_e = fixed(xf), eager(xe)
    torch.testing.assert_close(out_f, out_e)
    cot = torch.randn_like(out_e)
    grads_f = torch.autograd.grad(
        out_f, [xf, *fixed.parameters()], cot, allow_unused=True, materialize_grads=True
    )
    grads_e = torch.autograd.grad(
        out_e, [xe, *eager.parameters()], cot, allow_unused=True, materialize_grads=True
    )
    for a, b in zip(grads_f, grads_e):
        torch.testing.assert_close(a, b)


def _pair(cls: type[nn.Module], *args, **kwargs) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = cls(*args, **kwargs)
    return model, copy.deepcopy(model)


class Temp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.temperature = 1.0
        self.use_extra = False

    def forward(self, x):
        h = self.fc(x) / self.temperature
        if self.use_extra:
            h = h + 100.0
        return h.softmax(-1)


@pytest.mark.parametrize("lazy", [False, True], ids=["example", "lazy"])
def test_python_attributes_are_guarded(lazy):
    model, eager = _pair(Temp)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model) if lazy else fxgrad.fix(model, (x,))
    _same(fixed, eager, x)
    decided = len(fixed.reports)
    for m in (model, eager):
        m.temperature, m.use_extra = 0.1, True
    _same(fixed, eager, x)
    _same(fixed, eager, torch.randn(2, 8))  # another batch size, same attributes
    assert len(fixed.reports) == decided + 1
    assert "self.temperature (1.0 -> 0.1)" in fixed.reports[-1].notes[-1]
    for m in (model, eager):
        m.temperature, m.use_extra = 1.0, False
    _same(fixed, eager, x)
    assert len(fixed.reports) == decided + 1  # the first variant serves again


def test_setting_an_attribute_on_the_fixed_module_sets_the_users():
    model, eager = _pair(Temp)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    fixed.temperature = 0.5
    eager.temperature = 0.5
    assert model.temperature == 0.5 and "temperature" not in fixed.__dict__
    _same(fixed, eager, x)


class UsesGlobals(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return _helper(self.fc(x)) + CFG["shift"]


def _helper(h):
    return h * SCALE


def test_globals_and_global_dicts_read_by_forward_and_its_helpers():
    global SCALE
    model, eager = _pair(UsesGlobals)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    try:
        _same(fixed, eager, x)
        decided = len(fixed.reports)
        SCALE = 2.0
        _same(fixed, eager, x)
        CFG["shift"] = 3.0
        _same(fixed, eager, x)
        assert len(fixed.reports) == decided + 2
    finally:
        SCALE = 1.0
        CFG["shift"] = 0.0


class Config:
    def __init__(self):
        self.flag = False
        self.sizes = [1, 2]


class UsesConfig(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.config = Config()

    def forward(self, x):
        h = self.fc(x)
        if self.config.flag:
            h = h * 3
        return h * self.config.sizes[-1]


def test_config_object_fields_are_guarded():
    model, eager = _pair(UsesConfig)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    for m in (model, eager):
        m.config.flag = True
    _same(fixed, eager, x)
    for m in (model, eager):
        m.config.sizes.append(5)  # a list inside the config, changed in place
    _same(fixed, eager, x)


def _closure_model(k: list) -> nn.Module:
    class Closure(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(x) * k[0]

    torch.manual_seed(0)
    return Closure()


def test_closure_variables_are_guarded():
    k = [1.0]
    model = _closure_model(k)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    k[0] = 5.0
    torch.testing.assert_close(fixed(x), model(x))


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.step = 0
        self.seen = False

    def forward(self, x):
        self.step += 1
        self.seen = True
        return self.fc(x) * (1.0 + self.step)


@pytest.mark.parametrize("lazy", [False, True], ids=["example", "lazy"])
def test_python_state_written_in_forward_is_written_on_every_call(lazy):
    model, eager = _pair(Counter)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model) if lazy else fxgrad.fix(model, (x,))
    assert model.step == 0 and model.seen is False  # deciding touched nothing
    for batch in (4, 4, 2, 4):
        _same(fixed, eager, torch.randn(batch, 8))
    assert model.step == eager.step == 4 and model.seen is True
    # The counter is a graph value, not a guard per value: at most the example's variant,
    # the first call's (inputs that require grad) and one after `seen` turned True.
    assert len(fixed.reports) <= 3


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x).relu() + x


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_hooks_added_later_on_a_traced_through_submodule_run():
    model, eager = _pair(Blocks)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    seen: list[int] = []
    handles = [
        m.blocks[0].register_forward_hook(lambda mod, i, o: seen.append(1)) for m in (model,)
    ]
    fixed(x)
    assert seen == [1]  # once: the user's call, no probing run
    eh = eager.blocks[0].register_forward_hook(lambda mod, i, o: o * 0.5)
    handles.append(model.blocks[0].register_forward_hook(lambda mod, i, o: o * 0.5))
    _same(fixed, eager, x)
    for h in (*handles, eh):
        h.remove()
    _same(fixed, eager, x)


def test_user_hooks_see_only_the_users_calls():
    model = Blocks()
    calls: list[int] = []
    model.blocks[1].fc.register_forward_hook(lambda mod, i, o: calls.append(1))
    root_calls: list[int] = []
    model.register_forward_hook(lambda mod, i, o: root_calls.append(1))
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    assert calls == [] and root_calls == []
    for batch in (4, 2, 3):
        with torch.no_grad() if batch == 2 else torch.enable_grad():
            fixed(torch.randn(batch, 8))
    assert len(calls) == 3 and len(root_calls) == 3


def test_module_tree_edits():
    model, eager = _pair(Blocks)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    torch.manual_seed(1)
    new = Block()
    for m in (model, eager):
        m.blocks.insert(0, copy.deepcopy(new))
    _same(fixed, eager, x)
    for m in (model, eager):
        m.blocks._modules["1"] = copy.deepcopy(new)  # a swap around setattr
    _same(fixed, eager, x)
    for m in (model, eager):
        del m.blocks[0]
    _same(fixed, eager, x)


def test_unrelated_module_construction_keeps_the_variant():
    model = Blocks()
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    fixed(x)
    variant = fixed._fxgrad.current
    nn.Sequential(nn.Linear(2, 2))  # a module built elsewhere in the process
    fixed(x)
    assert fixed._fxgrad.current is variant and len(fixed.reports) == 1


class FrozenThenUnfrozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc1(x).sigmoid()
        h.mul_(2)  # safe while fc1 is frozen and x needs no grad; unsafe once it trains
        return self.fc2(h)


def test_unfreezing_parameters_between_calls():
    model, eager = _pair(FrozenThenUnfrozen)
    model.fc1.requires_grad_(False)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    model.fc1.requires_grad_(True)
    out = fixed(x)
    out.sum().backward()
    # The reference: the same model with the write made out of place.
    ref = copy.deepcopy(eager)
    ref.forward = lambda x: ref.fc2(ref.fc1(x).sigmoid() * 2)
    ref(x).sum().backward()
    torch.testing.assert_close(model.fc1.weight.grad, ref.fc1.weight.grad)
    torch.testing.assert_close(model.fc2.weight.grad, ref.fc2.weight.grad)


class Detour(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        a = h.detach().cpu().numpy()
        return torch.from_numpy(np.tanh(a))

    def embed(self, x):
        return self(x) * 2

    def embed_forward(self, x):
        return self.forward(x) + 1


def test_methods_reached_through_the_fixed_module_run_the_fixed_forward():
    model = Detour()
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,), select=["FXG301"])
    for method in ("embed", "embed_forward"):
        model.zero_grad()
        getattr(fixed, method)(x).sum().backward()
        assert model.fc.weight.grad is not None, method  # the detour is gone: grads flow
        expected = torch.func.grad(lambda w, m=method: getattr(_TanhRef(model), m)(x, w).sum())(
            model.fc.weight.detach()
        )
        torch.testing.assert_close(model.fc.weight.grad, expected)


class _TanhRef:
    """Detour corrected by hand: the same values with torch's tanh."""

    def __init__(self, model: Detour):
        self.model = model

    def forward(self, x, w):
        return torch.tanh(torch.nn.functional.linear(x, w, self.model.fc.bias))

    def embed(self, x, w):
        return self.forward(x, w) * 2

    def embed_forward(self, x, w):
        return self.forward(x, w) + 1


class ByName(nn.Module):
    """Parameters reached by name, as nn.RNN's docstring's "efficient" version does."""

    def __init__(self):
        super().__init__()
        self.w0 = nn.Parameter(torch.randn(8, 8))
        self.w1 = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        params = dict(self.named_parameters())
        h = x @ params["w0"].T
        return h @ getattr(self, f"w{1}").t() + sum(p.sum() for p in self.parameters())


def test_parameters_reached_by_name_are_graph_values():
    model, eager = _pair(ByName)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    assert not any(k.startswith("_fxgrad_const") for k in fixed.__dict__)
    _same(fixed, eager, x)
    with torch.no_grad():
        for m in (model, eager):
            m.w0.add_(1.0)
    _same(fixed, eager, x)
    fixed.double()
    eager.double()
    _same(fixed, eager, x.double())


def test_load_state_dict_and_dtype_between_calls():
    model, eager = _pair(Blocks)
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,))
    state = {k: v * 0.5 for k, v in model.state_dict().items()}
    for m in (fixed, eager):
        m.load_state_dict(state)
    _same(fixed, eager, x)
    fixed.double()
    eager.double()
    _same(fixed, eager, x.double())


def test_fixing_leaves_the_model_classes_as_they_were():
    """Fixing leaves nn.Module's classes as they were (no recording class left behind)."""
    code = textwrap.dedent(
        """
        import torch, fxgrad
        from torch import nn
        class M(nn.Module):
            def __init__(self):
                super().__init__(); self.fc = nn.Linear(4, 4); self.k = 2.0
            def forward(self, x):
                return self.fc(x) * self.k
        m = M()
        f = fxgrad.fix(m, (torch.randn(2, 4),))
        assert type(m) is M and type(m.fc) is nn.Linear
        assert "__getattribute__" not in M.__dict__
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


class _Branchy(nn.Module):
    """Needs Dynamo (a data-dependent branch), with a NumPy detour to repair."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x.float())
        if h.sum() > 0:
            h = h * 2
        return torch.from_numpy(np.tanh(h.detach().cpu().numpy()))


def test_dynamo_front_end_keeps_the_fix_on_every_batch_size():
    model = _Branchy()
    fixed = fxgrad.fix(model)
    for n in range(1, 16):
        out = fixed(torch.randn(n, 4))
        assert out.requires_grad, n  # never the original code, whose detour cuts the gradient
    assert fixed.report.frontend == "dynamo"


def test_dynamo_front_end_raises_past_max_variants_instead_of_running_the_original():
    fixed = fxgrad.fix(_Branchy(), max_variants=2)
    for dtype in (torch.float32, torch.float64):
        assert fixed(torch.randn(3, 4, dtype=dtype)).requires_grad
    with pytest.raises(fxgrad.FxgradError, match="will not run the original"):
        fixed(torch.randn(3, 4, dtype=torch.float16))


class _Linear4(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        assert x.shape[-1] == 4, "wants 4 features"
        return self.fc(x)


def test_the_first_calls_error_is_the_models_own_and_decides_nothing():
    model = _Linear4()
    fixed = fxgrad.fix(model)
    with pytest.raises(AssertionError, match="wants 4 features"):
        fixed(torch.randn(2, 3))
    assert fixed.reports == []
    x = torch.randn(2, 4)
    torch.testing.assert_close(fixed(x), model(x))
    assert fixed.report.frontend == "fx" and fixed.graph_module is not None
    with pytest.raises(AssertionError, match="wants 4 features"):  # a later call's too
        fixed(torch.randn(5, 3))


class _Decoder(Detour):
    """Methods that look themselves up on the class and call super(), as transformers'
    generate() does."""

    def decode(self, x, steps: int = 3):
        step = type(self)._step
        for _ in range(steps):
            x = step(self, x)
        return x

    def _step(self, x):
        return super().embed(x) / 4  # Detour.embed: self(x) * 2

    def embed(self, x):
        raise AssertionError("the subclass's own embed is not what decode calls")


def test_methods_that_use_type_self_and_super_run_the_fixed_forward():
    model = _Decoder()
    x = torch.randn(4, 8)
    fixed = fxgrad.fix(model, (x,), select=["FXG301"])
    out = fixed.decode(x)
    out.sum().backward()
    assert model.fc.weight.grad is not None  # every step went through the fixed forward
    ref = x
    for _ in range(3):
        ref = torch.tanh(torch.nn.functional.linear(ref, model.fc.weight, model.fc.bias)) / 2
    torch.testing.assert_close(out, ref)
    assert isinstance(fixed, fxgrad.FixedModule)
    fixed.decode_calls = 1  # attributes set through a method's view land on the model
    assert model.decode_calls == 1


def test_a_call_the_model_rejects_through_dynamo_raises_the_models_error():
    model = _Branchy()
    fixed = fxgrad.fix(model)
    fixed(torch.randn(2, 4))
    assert fixed.report.frontend == "dynamo"
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        fixed(torch.randn(2, 3))  # the model's own words, not Dynamo's
    assert fixed(torch.randn(3, 4)).requires_grad  # and the next call works


class _MatMul(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, y):
        h = self.fc(x)
        return h @ y  # the line a wrong-shape call fails at


def test_a_later_calls_error_in_generated_code_names_the_users_line():
    fixed = fxgrad.fix(_MatMul(), (torch.randn(4, 8), torch.randn(8, 2)))
    with pytest.raises(RuntimeError, match="cannot be multiplied") as info:
        fixed(torch.randn(4, 8), torch.randn(5, 2))
    notes = getattr(info.value, "__notes__", [])
    assert any("test_view.py" in n and "return h @ y" in n for n in notes), notes
