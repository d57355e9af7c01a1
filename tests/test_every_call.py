"""Every case model, called the way a training script calls it, against a reference.

A fixed module must be right on every call, not only the one it was decided on
(DESIGN.md section 6). Each case in tests/cases/<folder>/<name>.py (the FXG* folders and
calls/) runs through each scenario below as its own test, `<folder>/<name>-<scenario>`:

- `three_calls`: three calls with fresh inputs (same shapes, new random values);
- `batch<N>`: two calls at another batch size (dim 0: larger, smaller and 1), then one at
  the example's;
- `float64`: decided on float32, called with float64 inputs, then float32 again;
  `double` (models with floating parameters or buffers): decided in float32, then
  `fixed.double()`, which converts the user's model, and float64 inputs;
- `grad_to_plain` / `plain_to_grad`: decided on inputs that require grad, called with
  plain ones, then back (and the reverse); `no_grad`: a call under `torch.no_grad()`;
- `train_to_eval` / `eval_to_train`: decided in one mode, called in the other, then back;
- `same_tensor`: one tensor passed for two arguments of one shape and dtype, then two;
- `lazy`: `fxgrad.fix(model)` without inputs: the first call decides, and must leave the
  user's model, outputs and RNG state exactly as eager's own call does.

Each scenario starts from a fresh model. Every call is compared with a reference run on
an identical copy of the model (`copy.deepcopy` before fixing) on identical inputs under
the same RNG seed: output values, the gradients of a random-cotangent loss with respect to
parameters and inputs that require grad, the module's state afterwards (state_dict and
plain tensor attributes, exactly), inputs written in place (those whose writes a caller
sees), the RNG state, and what the case's `observe(model)` returns. Gradients come from
the case's `Reference` where it computes eager's values on the call, else from eager
where its forward and backward run, else from `torch.func.grad` over
`torch.func.functionalize` where that computes eager's values, else the fixed module must
pass float64 `gradcheck`. Where eager refuses a write in forward, the values come from
eager without grad (or the Reference, where eager refuses in every grad mode). Where eager
raises any other error, the fixed module must raise too. Every fix() must leave the user's
model bit-identical: parameters, buffers and their versions, tensor attributes, `.grad`,
the RNG state, and what `observe` returns.

A case module defines `Model` and `inputs()` (or `inputs(batch=...)`), and optionally
`Reference` (a hand-corrected model with the same state_dict), `SELECT` (pass codes;
default: the folder's code, every pass for calls/), `TIMINGS` (pinned timings),
`BATCH = None` with `BATCH_REASON` (no batch dimension), `BATCHES` (batch sizes to call
with), `FRESH_INTEGERS = True` (integer and bool inputs are drawn afresh too; by default
they keep their example values), `observe(model)` (state beyond tensors, such as what a
hook recorded), `SKIP` (scenario -> why it does not apply) and `XFAIL` (scenario, or "*"
for all -> what fxgrad gets wrong: a strict xfail). `KNOWN_BUGS` below does the same for
cases whose files belong to a pass's own tests.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

import fxgrad
from fxgrad.context import fake_measure

CASES = Path(__file__).parent / "cases"

# What eager raises in forward where the code is what the user meant and a pass fixes it,
# by the family of the pass that does: autograd refusing a write (FXG1), and NumPy
# refusing the negative strides of `torch.from_numpy(np.flip(a))` (FXG3).
REFUSALS = {
    "FXG1": (
        "in-place operation",
        "inplace operation",
        "a view of a leaf",
        "don't support automatic differentiation",
        "is being modified inplace",
        "refers to a single memory location",
    ),
    "FXG3": ("stride in the given numpy array is negative",),
}


# ---------------------------------------------------------------------------------------
# Cases


@functools.cache
def load_case(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"every_call_{path.parent.name}_{path.stem}", path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _case_paths() -> list[Path]:
    return sorted(p for p in CASES.glob("*/*.py") if not p.name.startswith("_"))


@dataclass(eq=False)
class Case:
    """A case model: `mod` is its module (or any object with the same names)."""

    name: str
    mod: Any
    folder: str

    @classmethod
    def at(cls, path: Path) -> Case:
        return cls(f"{path.parent.name}/{path.stem}", load_case(path), path.parent.name)

    def __repr__(self) -> str:
        return self.name

    @property
    def select(self) -> list[str] | None:
        folder = self.folder
        return getattr(self.mod, "SELECT", [folder] if folder.startswith("FXG") else None)

    @property
    def measure(self) -> Any:
        timings = getattr(self.mod, "TIMINGS", None)
        return fake_measure(timings) if timings is not None else None

    @property
    def observe(self) -> Callable[[nn.Module], Any] | None:
        return getattr(self.mod, "observe", None)

    @property
    def takes_batch(self) -> bool:
        return "batch" in inspect.signature(self.mod.inputs).parameters

    def example(self) -> tuple:
        return draw_inputs(self, seed=0)

    @functools.cached_property
    def shape(self) -> tuple:
        """The example inputs' leaves, as (is tensor, floating, shape, dtype)."""
        leaves = pytree.tree_leaves(self.example())
        return tuple(
            (True, x.is_floating_point(), tuple(x.shape), x.dtype)
            if isinstance(x, torch.Tensor)
            else (False, False, None, None)
            for x in leaves
        )

    @property
    def batch(self) -> int | None:
        """The example's batch size: dim 0 of the first tensor input."""
        if getattr(self.mod, "BATCH", "") is None:
            return None
        for is_tensor, _, shape, _ in self.shape:
            if is_tensor:
                return shape[0] if shape else None
        return None

    def batches(self) -> list[int]:
        b = self.batch
        if b is None:
            return []
        wanted = getattr(self.mod, "BATCHES", None)
        if wanted is None:
            smaller = b // 2 + 1
            wanted = [b + 3] + ([smaller] if 1 < smaller < b else []) + [1]
        return [n for n in wanted if n != b]

    @functools.cached_property
    def has_float_state(self) -> bool:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = self.mod.Model()
        return any(t.is_floating_point() for t in (*model.parameters(), *model.buffers()))

    @functools.cached_property
    def has_params(self) -> bool:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return any(p.is_floating_point() for p in self.mod.Model().parameters())

    @functools.cached_property
    def has_leaf_with_params(self) -> bool:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return _has_leaf_with_params(self.mod.Model())

    @functools.cached_property
    def reference_mirrors_model(self) -> bool:
        """No Reference, or one with the very submodules Model has (mutations apply to both)."""
        if not hasattr(self.mod, "Reference"):
            return True
        with torch.random.fork_rng():
            names = [n for n, _ in self.mod.Model().named_modules()]
            return names == [n for n, _ in self.mod.Reference().named_modules()]

    def has_float_input(self) -> bool:
        return any(floating for _, floating, _, _ in self.shape)

    def same_pair(self) -> tuple[int, int] | None:
        """Two positional tensor arguments of one shape and dtype."""
        args = self.example()
        for i, a in enumerate(args):
            for j in range(i + 1, len(args)):
                b = args[j]
                if (
                    isinstance(a, torch.Tensor)
                    and isinstance(b, torch.Tensor)
                    and a.shape == b.shape
                    and a.dtype == b.dtype
                ):
                    return i, j
        return None


def draw_inputs(case: Case, seed: int, batch: int | None = None) -> tuple:
    """The case's inputs drawn under `seed` (fresh random values, the same shapes)."""
    kwargs = {"batch": batch} if batch is not None and case.takes_batch else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inputs = case.mod.inputs(**kwargs)
        if seed != 0 and not getattr(case.mod, "FRESH_INTEGERS", False):
            torch.manual_seed(0)
            inputs = _keep_integers(inputs, case.mod.inputs(**kwargs))
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if batch is not None and not case.takes_batch:
        inputs = _rebatch(case, inputs, seed, batch)
    return inputs


def _keep_integers(inputs: Any, example: Any) -> Any:
    """Integer and bool tensors keep their example values."""
    leaves, spec = pytree.tree_flatten(inputs)
    ex = pytree.tree_leaves(example)
    out = [
        e.clone()
        if isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex())
        else x
        for x, e in zip(leaves, ex)
    ]
    return pytree.tree_unflatten(out, spec)


def _resize0(t: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // max(t.shape[0], 1))
    return t.repeat(reps, *([1] * (t.dim() - 1)))[:n]


def _rebatch(case: Case, inputs: tuple, seed: int, batch: int) -> tuple:
    """Inputs whose dim 0 is the example's batch size get `batch` rows of fresh draws."""
    b = case.batch
    leaves, spec = pytree.tree_flatten(inputs)
    need = -(-batch // b)
    draws = [pytree.tree_leaves(draw_inputs(case, seed + 7919 * k)) for k in range(1, need)]
    out = []
    for i, x in enumerate(leaves):
        if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == b:
            if x.is_floating_point():
                rows = torch.cat([x.detach()] + [d[i].detach() for d in draws])[:batch]
            else:
                rows = _resize0(x, batch)
            x = _like(rows, x)
        out.append(x)
    return pytree.tree_unflatten(out, spec)


def _like(values: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
    """`values` with the example's dimension order, requires_grad and leafness."""
    order = sorted(range(example.dim()), key=lambda d: -example.stride(d))
    inverse = [order.index(d) for d in range(example.dim())]
    with torch.no_grad():
        t = values.detach().permute(order).contiguous().permute(inverse)
    return _grad_like(t, example)


def _grad_like(t: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
    if not example.requires_grad:
        return t
    t = t.detach().requires_grad_()
    return t if example.is_leaf else t.clone()


# ---------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Step:
    """One call: how its inputs are made, and what changes on both models before it."""

    seed: int
    batch: int | None = None
    dtype: torch.dtype | None = None  # floating inputs cast to this
    requires_grad: bool | None = None  # floating inputs' requires_grad set to this
    same: bool = False  # one tensor for the first two arguments of one shape and dtype
    grad_mode: bool = True
    before: Callable[[nn.Module], Any] | None = None  # e.g. nn.Module.eval
    label: str = ""


@dataclass
class Scenario:
    name: str
    steps: list[Step]
    capture: Step = field(default_factory=lambda: Step(seed=0))
    prepare: Callable[[nn.Module], Any] | None = None  # applied before deciding
    lazy: bool = False


def make_inputs(case: Case, step: Step) -> tuple:
    inputs = draw_inputs(case, step.seed, step.batch)
    leaves, spec = pytree.tree_flatten(inputs)
    out = []
    for x in leaves:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            if step.dtype is not None and x.dtype != step.dtype:
                x = _grad_like(x.detach().to(step.dtype), x)
            if step.requires_grad is not None and x.requires_grad != step.requires_grad:
                x = x.detach().requires_grad_(step.requires_grad)
        out.append(x)
    inputs = pytree.tree_unflatten(out, spec)
    if step.same:
        i, j = case.same_pair()
        inputs = tuple(inputs[i] if k == j else x for k, x in enumerate(inputs))
    return inputs


def _to_float32(m: nn.Module) -> None:
    m.float()


def _eval(m: nn.Module) -> None:
    m.eval()


def _train(m: nn.Module) -> None:
    m.train()


# Mutations between calls: what a training script changes on the model it fixed. Each is
# applied to the fixed module and, identically, to the reference side.

_HOOKS: dict[int, list[Any]] = {}


def _freeze(m: nn.Module) -> None:
    m.requires_grad_(False)


def _unfreeze(m: nn.Module) -> None:
    m.requires_grad_(True)


def _scale_output(_mod: nn.Module, _args: Any, out: Any) -> Any:
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        return out * 1.5
    return None


def _add_hooks(m: nn.Module) -> None:
    """An output-changing forward hook on every submodule (leaves and traced-through ones)."""
    _HOOKS[id(m)] = [c.register_forward_hook(_scale_output) for c in list(m.modules())[1:]]


def _remove_hooks(m: nn.Module) -> None:
    for h in _HOOKS.pop(id(m), []):
        h.remove()


def _load_perturbed(m: nn.Module) -> None:
    state = {k: (v * 0.5 + 0.25 if v.is_floating_point() else v) for k, v in m.state_dict().items()}
    m.load_state_dict(state)


def _swap_first_leaf(m: nn.Module) -> None:
    """Replace the first submodule holding parameters by a changed copy, through
    `_modules` directly (as quantization's convert does), not through setattr."""
    for _, parent in m.named_modules():
        for name, child in parent._modules.items():
            if child is not None and any(True for _ in child.parameters(recurse=False)):
                new = copy.deepcopy(child)
                with torch.no_grad():
                    for p in new.parameters():
                        p.mul_(0.5)
                parent._modules[name] = new
                return


def _has_leaf_with_params(model: nn.Module) -> bool:
    return any(any(True for _ in c.parameters(recurse=False)) for c in list(model.modules())[1:])


def scenarios(case: Case) -> dict[str, Scenario | str]:
    """The scenarios that apply to `case`; a string says why one cannot run."""
    f32, f64 = torch.float32, torch.float64
    out: dict[str, Scenario | str] = {
        "three_calls": Scenario("three_calls", [Step(1), Step(2), Step(3)]),
        "lazy": Scenario("lazy", [Step(0), Step(1)], lazy=True),
    }
    if case.batch is not None:
        for n in case.batches():
            out[f"batch{n}"] = Scenario(f"batch{n}", [Step(1, batch=n), Step(2, batch=n), Step(3)])
    elif getattr(case.mod, "BATCH", "") is None:
        out["batch"] = getattr(case.mod, "BATCH_REASON", "") or "the case has no batch dimension"
    if case.has_float_input():
        out["float64"] = Scenario(
            "float64",
            [Step(1, dtype=f64), Step(2, dtype=f32)],
            capture=Step(0, dtype=f32),
            prepare=_to_float32,
        )
        if case.has_float_state:
            out["double"] = Scenario(
                "double",
                [Step(1, dtype=f64, before=nn.Module.double), Step(2, dtype=f64)],
                capture=Step(0, dtype=f32),
                prepare=_to_float32,
            )
        out["grad_to_plain"] = Scenario(
            "grad_to_plain",
            [Step(1, requires_grad=False), Step(2, requires_grad=True)],
            capture=Step(0, requires_grad=True),
        )
        out["plain_to_grad"] = Scenario(
            "plain_to_grad",
            [Step(1, requires_grad=True), Step(2, requires_grad=False)],
            capture=Step(0, requires_grad=False),
        )
    out["no_grad"] = Scenario("no_grad", [Step(1, grad_mode=False), Step(2)])
    out["train_to_eval"] = Scenario(
        "train_to_eval", [Step(1, before=_eval), Step(2, before=_train)], prepare=_train
    )
    out["eval_to_train"] = Scenario(
        "eval_to_train", [Step(1, before=_train), Step(2, before=_eval)], prepare=_eval
    )
    if case.same_pair() is not None:
        out["same_tensor"] = Scenario("same_tensor", [Step(1, same=True), Step(2)])
    if case.reference_mirrors_model:  # else hooks on Model's submodules have no counterpart
        out["hooks_added"] = Scenario(
            "hooks_added", [Step(1, before=_add_hooks), Step(2, before=_remove_hooks), Step(3)]
        )
    if case.has_params:
        out["freeze_unfreeze"] = Scenario(
            "freeze_unfreeze", [Step(1, before=_freeze), Step(2, before=_unfreeze)]
        )
        out["load_state_dict"] = Scenario(
            "load_state_dict", [Step(1, before=_load_perturbed), Step(2)]
        )
    if case.has_leaf_with_params and case.reference_mirrors_model:
        out["submodule_swapped"] = Scenario(
            "submodule_swapped", [Step(1, before=_swap_first_leaf), Step(2)]
        )
    for name, why in getattr(case.mod, "SKIP", {}).items():
        assert name in out, f"{case.name}: SKIP names no scenario {name!r}"
        out[name] = why
    return out


# ---------------------------------------------------------------------------------------
# Running one call on each side


class CannotCompare(Exception):
    """A call the reference side cannot compute: the message says why."""


@dataclass
class Result:
    """What one call did: outputs, gradients, state afterwards, or the error raised."""

    outputs: list[Any] | None = None
    grads: dict[str, torch.Tensor] | None = None
    backward_error: BaseException | None = None
    error: BaseException | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs_after: list[Any] = field(default_factory=list)
    rng: torch.Tensor | None = None
    observed: Any = None


def module_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict plus every plain tensor attribute, detached copies."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    for prefix, m in model.named_modules():
        for k, v in vars(m).items():
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
                state[f"{prefix}.{k}" if prefix else k] = v.detach().clone()
    return state


def bit_snapshot(model: nn.Module, observe: Callable | None = None) -> dict[str, Any]:
    """Everything fix() must leave bit-identical on the user's model."""
    snap: dict[str, Any] = module_state(model)
    for name, p in model.named_parameters():
        snap[f"{name}.grad"] = None if p.grad is None else p.grad.clone()
        snap[f"{name}.requires_grad"] = p.requires_grad
    for name, b in model.named_buffers():
        snap[f"{name}._version"] = b._version
    snap["training"] = [m.training for m in model.modules()]
    snap["rng"] = torch.get_rng_state()
    if observe is not None:
        snap["observed"] = copy.deepcopy(observe(model))
    return snap


def assert_bit_identical(before: dict, after: dict, what: str) -> None:
    assert before.keys() == after.keys(), (
        f"{what} changed the model's tensors: {before.keys() ^ after.keys()}"
    )
    for k, v in before.items():
        w = after[k]
        if isinstance(v, torch.Tensor):
            assert isinstance(w, torch.Tensor), f"{what} changed {k}"
            torch.testing.assert_close(
                w, v, rtol=0, atol=0, equal_nan=True, msg=f"{what} changed {k}"
            )
        elif k == "observed":
            a, b = pytree.tree_leaves(w), pytree.tree_leaves(v)
            assert len(a) == len(b), f"{what} changed what the case observes: {v} -> {w}"
        else:
            assert w == v, f"{what} changed {k}: {v} -> {w}"


def _float_outputs(outputs: list[Any]) -> list[tuple[int, torch.Tensor]]:
    return [
        (i, o)
        for i, o in enumerate(outputs)
        if isinstance(o, torch.Tensor) and (o.is_floating_point() or o.is_complex())
    ]


def cotangents(outputs: list[Any], seed: int) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + seed)
    return {
        i: torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
        for i, o in _float_outputs(outputs)
    }


def _loss(outputs: list[Any], cots: dict[int, torch.Tensor]) -> torch.Tensor | None:
    terms = [
        (o * cots[i]).sum()
        for i, o in _float_outputs(outputs)
        if o.requires_grad and i in cots and o.shape == cots[i].shape
    ]
    return sum(terms) if terms else None


def _wrt(model: nn.Module, inputs: tuple) -> dict[str, torch.Tensor]:
    wrt = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for i, x in enumerate(pytree.tree_leaves(inputs)):
        if isinstance(x, torch.Tensor) and x.requires_grad:
            if any(x is y for y in wrt.values()):
                continue  # one tensor passed twice: one gradient
            wrt[f"input {i}"] = x
    return wrt


def gradients(outputs: list[Any], wrt: dict[str, torch.Tensor], cots: dict) -> dict:
    """Gradients of the random-cotangent loss; None where nothing flows becomes zeros."""
    loss = _loss(outputs, cots)
    if loss is None or not wrt:
        return {n: torch.zeros_like(t) for n, t in wrt.items()}
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(wrt.items(), grads)}


def clone_args(inputs: tuple) -> tuple:
    """Copies of the inputs that keep identity (one tensor twice stays one copy)."""
    memo: dict[int, Any] = {}

    def one(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        if id(x) not in memo:
            with torch.no_grad():
                c = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
                c.copy_(x)
            memo[id(x)] = _grad_like(c, x)
        return memo[id(x)]

    return pytree.tree_map(one, inputs)


def _after(model: nn.Module, inputs: tuple, result: Result, observe: Callable | None) -> None:
    result.rng = torch.get_rng_state()
    result.state = module_state(model)
    result.observed = None if observe is None else copy.deepcopy(observe(model))
    result.inputs_after = [
        x.detach().clone() if isinstance(x, torch.Tensor) else x for x in pytree.tree_leaves(inputs)
    ]


def call(
    fn: Callable,
    model: nn.Module,
    inputs: tuple,
    step: Step,
    cots: dict | None,
    observe: Callable | None = None,
) -> Result:
    """Run fn(*inputs) under the step's seed and grad mode; gradients with `cots`."""
    result = Result()
    torch.manual_seed(step.seed)
    try:
        with torch.set_grad_enabled(step.grad_mode):
            out = fn(*inputs)
    except Exception as e:
        result.error = e
        _after(model, inputs, result, observe)
        return result
    _after(model, inputs, result, observe)
    result.outputs = pytree.tree_leaves(out)
    if cots is None:
        cots = cotangents(result.outputs, step.seed)
    try:
        result.grads = gradients(result.outputs, _wrt(model, inputs), cots)
    except RuntimeError as e:
        result.backward_error = e
    result.outputs = [o.detach() if isinstance(o, torch.Tensor) else o for o in result.outputs]
    return result


def refusal(e: BaseException | None) -> str | None:
    """The family of the pass that fixes what eager refused here, or None."""
    if e is None:
        return None
    text = str(e)
    return next((code for code, texts in REFUSALS.items() if any(s in text for s in texts)), None)


def is_refusal(e: BaseException | None) -> bool:
    return refusal(e) is not None


def _plain_attributes(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    return {
        f"{prefix}.{k}" if prefix else k: (m, k)
        for prefix, m in model.named_modules()
        for k, v in vars(m).items()
        if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)
    }


def functional_grads(
    model: nn.Module, inputs: tuple, step: Step, cots: dict
) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Gradients from torch.func.grad over functionalize, and the outputs it computed.

    Parameters, buffers, plain tensor attributes and every input are arguments of the
    function transformed, so writes into any of them are functionalized too.
    """
    named = dict(model.named_parameters())
    wrt_params = {n: p.detach() for n, p in named.items() if p.requires_grad}
    rest = {n: p.detach() for n, p in named.items() if not p.requires_grad}
    rest.update({n: b.detach().clone() for n, b in model.named_buffers()})
    slots = _plain_attributes(model)
    attrs = {n: getattr(m, k).detach().clone() for n, (m, k) in slots.items()}
    leaves, spec = pytree.tree_flatten(inputs)
    first: dict[int, int] = {}  # one tensor passed twice is one argument
    for i, x in enumerate(leaves):
        if isinstance(x, torch.Tensor):
            first.setdefault(id(x), i)
    tensors = sorted(set(first.values()))
    positions = [i for i in tensors if leaves[i].requires_grad]
    others = [i for i in tensors if not leaves[i].requires_grad]

    def loss(params: dict, xs: list, rest: dict, attrs: dict, ys: list) -> torch.Tensor:
        # Clones inside: writes land on them, not on the arguments (functionalize would
        # copy a write on an argument back into it, an in-place op grad then refuses).
        params, rest, attrs = ({k: v.clone() for k, v in d.items()} for d in (params, rest, attrs))
        xs, ys = [x.clone() for x in xs], [y.clone() for y in ys]
        given = dict(zip(positions + others, xs + ys))
        args = [given[first[id(x)]] if isinstance(x, torch.Tensor) else x for x in leaves]
        saved = {n: getattr(m, k) for n, (m, k) in slots.items()}
        for n, (m, k) in slots.items():
            vars(m)[k] = attrs[n]
        try:
            out = torch.func.functional_call(
                model, {**params, **rest}, pytree.tree_unflatten(args, spec)
            )
        finally:
            for n, (m, k) in slots.items():
                vars(m)[k] = saved[n]
        flat = pytree.tree_leaves(out)
        total = sum(
            ((o * cots[i]).sum() for i, o in _float_outputs(flat) if i in cots),
            torch.zeros((), dtype=torch.float64),
        )
        return total, [o.detach() if isinstance(o, torch.Tensor) else o for o in flat]

    xs = [leaves[i].detach().clone() for i in positions]
    ys = [leaves[i].detach().clone() for i in others]
    torch.manual_seed(step.seed)
    with torch.enable_grad():
        (gp, gx), outputs = torch.func.grad(
            torch.func.functionalize(loss), argnums=(0, 1), has_aux=True
        )(wrt_params, xs, rest, attrs, ys)
    grads = dict(gp)
    for i, g in zip(positions, gx):
        grads[f"input {i}"] = g
    return grads, outputs


def gradcheck_fixed(case: Case, model: nn.Module, inputs: tuple, step: Step) -> bool:
    """Float64 finite differences of `model` fixed anew on a float64 copy of the call.

    For calls where neither eager's backward nor functionalize gives gradients: the fixed
    module's forward equals eager's (fix() verifies that on the call it decides on), so
    its gradients must equal the finite differences of that forward. Module state is put
    back and the seed reset before every evaluation.
    """
    model = copy.deepcopy(model).double()
    leaves, spec = pytree.tree_flatten(inputs)
    leaves = [
        _grad_like(x.detach().double(), x)
        if isinstance(x, torch.Tensor) and x.is_floating_point()
        else x
        for x in leaves
    ]
    args = pytree.tree_unflatten(leaves, spec)
    torch.manual_seed(step.seed)
    fixed = fxgrad.fix(model, clone_args(args), select=case.select, measure=case.measure)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    positions = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.requires_grad]
    saved = {k: v.clone() for k, v in module_state(model).items()}
    slots = _plain_attributes(model)
    buffers = dict(model.named_buffers())

    def fn(*ts: torch.Tensor) -> tuple:
        with torch.no_grad():
            for n, (m, k) in slots.items():
                vars(m)[k] = saved[n].clone()
            for n, b in buffers.items():
                b.copy_(saved[n])
        params = dict(zip(names, ts[: len(names)]))
        args = list(leaves)
        for i, t in zip(positions, ts[len(names) :]):
            args[i] = t.clone()  # the forward may write into its input
        torch.manual_seed(step.seed)
        with torch.enable_grad():
            out = torch.func.functional_call(fixed, params, pytree.tree_unflatten(args, spec))
        return tuple(o for _, o in _float_outputs(pytree.tree_leaves(out)))

    wrt = [p.detach().clone().requires_grad_() for n, p in model.named_parameters() if n in names]
    wrt += [leaves[i].detach().clone().requires_grad_() for i in positions]
    if torch.autograd.gradcheck(fn, tuple(wrt), raise_exception=False):
        return True
    # A forward that computes in float32 on the way (`.float()`, a float32 attribute) has
    # float32 rounding in its finite differences: a wider step, and wider tolerances,
    # still far below the error of a wrong gradient.
    return torch.autograd.gradcheck(
        fn, tuple(wrt), eps=1e-3, atol=1e-3, rtol=1e-3, raise_exception=False
    )


# ---------------------------------------------------------------------------------------
# Comparing


@dataclass
class Checker:
    case: Case
    compared: int = 0
    calls: int = 0  # calls whose outputs were compared (not only both sides raising)
    uncompared: list[str] = field(default_factory=list)  # what could not be, and why
    left_as_is_ok: bool = False
    left_as_is: int = 0  # calls where a write eager refuses raised, reported as left as is

    def close(self, actual: Any, expected: Any, what: str, exact: bool = False) -> None:
        if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
            assert isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor), (
                f"{what}: {type(actual).__name__} instead of {type(expected).__name__}"
            )
            kw = {"rtol": 0, "atol": 0} if exact else {}
            torch.testing.assert_close(
                actual.detach(),
                expected.detach(),
                equal_nan=True,
                msg=lambda m: f"{what}: {m}",
                **kw,
            )
        else:
            assert actual == expected, f"{what}: {actual!r} instead of {expected!r}"
        self.compared += 1

    def close_tree(self, actual: Any, expected: Any, what: str) -> None:
        a, spec_a = pytree.tree_flatten(actual)
        e, spec_e = pytree.tree_flatten(expected)
        assert spec_a == spec_e, f"{what}: {spec_a} instead of {spec_e}"
        for i, (x, y) in enumerate(zip(a, e)):
            self.close(x, y, f"{what} [{i}]")

    def raised(self) -> None:
        """Both sides raised: a comparison too."""
        self.compared += 1


@dataclass
class Sides:
    """The reference side: eager on a deepcopy, and the case's hand-corrected Reference."""

    eager: nn.Module
    reference: nn.Module | None

    def apply(self, fn: Callable[[nn.Module], Any]) -> None:
        fn(self.eager)
        if self.reference is not None:
            fn(self.reference)


def _reference_model(case: Case, model: nn.Module) -> nn.Module | None:
    if not hasattr(case.mod, "Reference"):
        return None
    torch.manual_seed(0)
    ref = case.mod.Reference()
    ref.load_state_dict(model.state_dict())
    if {t.dtype for t in model.parameters()} == {torch.float32}:
        ref.float()
    ref.train(model.training)
    return ref


def run_scenario(case: Case, sc: Scenario, left_as_is_ok: bool = False) -> Checker:
    """Run one scenario of one case; raise AssertionError at the first difference.

    `left_as_is_ok`: a write eager refuses may still raise in the fixed module where the
    report says fxgrad left it as is (the fuzz's programs reach such writes; no case does).
    """
    check = Checker(case, left_as_is_ok=left_as_is_ok)
    torch.manual_seed(0)
    model = case.mod.Model()
    if sc.prepare is not None:
        sc.prepare(model)
    for p in model.parameters():  # a gradient the user holds: fix() must leave it alone
        p.grad = torch.randn_like(p)
    sides = Sides(copy.deepcopy(model), _reference_model(case, model))
    before = bit_snapshot(model, case.observe)
    if sc.lazy:
        fixed = fxgrad.fix(model, select=case.select, measure=case.measure)
    else:
        example = make_inputs(case, sc.capture)
        try:
            fixed = fxgrad.fix(model, example, select=case.select, measure=case.measure)
        except fxgrad.FxgradError as e:
            error = _model_error(sides.eager, example)
            if error is None:
                raise
            raise CannotCompare(
                f"{case.name} {sc.name}: eager raises on the example: {error}"
            ) from e
    assert_bit_identical(before, bit_snapshot(model, case.observe), "fix()")
    check.compared += 1
    for p in model.parameters():
        p.grad = None
    sides.apply(lambda m: [setattr(p, "grad", None) for p in m.parameters()])
    for k, step in enumerate(sc.steps):
        if step.before is not None:
            step.before(fixed)
            sides.apply(step.before)
        inputs = make_inputs(case, step)
        got = call(fixed, model, clone_args(inputs), step, None, case.observe)
        cots = cotangents(got.outputs, step.seed) if got.outputs is not None else {}
        label = f", {step.label}" if step.label else ""
        where = f"{case.name} {sc.name}, call {k + 1}{label} ({fixed.report.variant})"
        _compare_call(check, case, model, fixed, sides, inputs, step, got, cots, where)
    assert check.calls > 0 or check.left_as_is, (
        f"{case.name} {sc.name}: no call's outputs were compared"
    )
    return check


def _model_error(model: nn.Module, inputs: tuple) -> str | None:
    """What eager raises on this call, if it raises an error that is not autograd's."""
    try:
        with torch.random.fork_rng():
            copy.deepcopy(model)(*clone_args(inputs))
    except Exception as e:
        if not is_refusal(e):
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _compare_call(
    check: Checker,
    case: Case,
    model: nn.Module,
    fixed: nn.Module,
    sides: Sides,
    inputs: tuple,
    step: Step,
    got: Result,
    cots: dict,
    where: str,
) -> None:
    """Compare one call of the fixed module with the reference side, advancing its state.

    Values, state, written inputs and the RNG come from eager (its forward without grad
    where autograd refuses a write; values do not depend on grad mode). Gradients come
    from the case's Reference where its outputs equal eager's on this call (a Reference
    written for the example's shapes may not hold at others), else from eager's backward,
    else from functionalize.
    """
    pre = copy.deepcopy(sides.eager)
    want = call(sides.eager, sides.eager, clone_args(inputs), step, cots, case.observe)
    if want.error is not None and not is_refusal(want.error):
        # The model itself raises on this call: the fixed module must raise too.
        assert got.error is not None, (
            f"{where}: eager raises {type(want.error).__name__}: {want.error}; "
            "the fixed module returns"
        )
        check.raised()
        # What a call that raises leaves behind is not compared (eager may have bumped a
        # counter before raising, fxgrad may raise before running anything): the reference
        # goes on from the user's model's state.
        _sync(sides.eager, model)
        if sides.reference is not None:
            _sync(sides.reference, model)
        return
    refused = want.error is not None
    if refused and got.error is not None and not _fixes(case, want.error):
        assert is_refusal(got.error), f"{where}: {got.error}"
        check.raised()  # the pass that would rewrite the write is not selected
        return
    if refused and is_refusal(got.error) and _left_as_is(check, fixed):
        check.left_as_is += 1  # left as is, and the report says so
        check.raised()
        _sync(sides.eager, model)
        return
    if got.error is not None:
        raise AssertionError(
            f"{where}: the fixed module raises where the reference runs"
        ) from got.error
    if not refused:
        hand = _hand_corrected(sides, inputs, step, cots, want, case.observe)
    else:
        sides.eager, pre = pre, copy.deepcopy(pre)
        want = call(
            sides.eager, sides.eager, clone_args(inputs), _no_grad(step), cots, case.observe
        )
        want.grads = None
        if want.error is None:
            hand = _hand_corrected(sides, inputs, step, cots, want, case.observe)
        else:
            # Eager refuses in any grad mode (an overlapping write, NumPy's negative
            # strides): only the hand-corrected Reference says what the call computes.
            assert is_refusal(want.error), f"{where}: eager without grad: {want.error}"
            if sides.reference is None:
                raise CannotCompare(
                    f"{where}: eager refuses the write in any grad mode, and no Reference"
                )
            hand = _hand_corrected(sides, inputs, step, cots, None, case.observe)
            assert hand is not None, f"{where}: the case's Reference fails on this call"
            want = hand
    state = want
    if refused and hand is not None:
        # What the write should have done: the hand-corrected model's state.
        state = hand
        _sync(sides.eager, sides.reference)
    elif sides.reference is not None:
        _sync(sides.reference, sides.eager)

    for i, (a, e) in enumerate(zip(got.outputs, want.outputs, strict=True)):
        check.close(a, e, f"{where}: output {i}")
    check.calls += 1
    _compare_state(check, got, state, want, inputs, where, step, refused)

    if got.backward_error is not None:
        if want.backward_error is not None and not _fixes(case, want.backward_error):
            check.raised()  # backward fails as eager's does: the fixing pass is off
            return
        if (refused or want.backward_error is not None) and _left_as_is(check, fixed):
            check.left_as_is += 1  # backward fails as eager's does, and the report says so
            check.raised()
            return
        raise AssertionError(f"{where}: the fixed module's backward fails") from got.backward_error
    if hand is not None:
        grads = hand.grads
    elif not refused and want.backward_error is None:
        grads = want.grads
    else:
        grads = _fallback_grads(check, case, pre, inputs, step, cots, want, where)
        if grads is None:
            return
    assert grads.keys() == got.grads.keys(), (
        f"{where}: gradients of {sorted(got.grads)} vs {sorted(grads)}"
    )
    for name, g in got.grads.items():
        check.close(g, grads[name], f"{where}: gradient of {name}")


def _hand_corrected(
    sides: Sides,
    inputs: tuple,
    step: Step,
    cots: dict,
    eager: Result | None,
    observe: Callable | None = None,
) -> Result | None:
    """The Reference's call, where it computes eager's values on these inputs (or where
    eager computes nothing: `eager` None)."""
    if sides.reference is None:
        return None
    pre = copy.deepcopy(sides.reference)
    hand = call(sides.reference, sides.reference, clone_args(inputs), step, cots, observe)
    if hand.error is not None and _mixes_float64(pre, inputs):
        # float64 inputs meet float32 parameters, which NumPy promotes and a torch op may
        # refuse: the same function, computed on a float64 copy of the Reference.
        sides.reference = pre
        pre, wide = copy.deepcopy(pre), copy.deepcopy(pre).double()
        hand = call(wide, wide, clone_args(inputs), step, cots, observe)
        if hand.grads is not None:
            dtypes = {n: t.dtype for n, t in _wrt(pre, inputs).items()}
            hand.grads = {n: g.to(dtypes[n]) for n, g in hand.grads.items()}
        _sync(sides.reference, wide)
    if hand.error is None and hand.backward_error is None:
        if eager is None or _all_close(hand.outputs, eager.outputs):
            return hand
    sides.reference = pre
    return None


def _mixes_float64(model: nn.Module, inputs: tuple) -> bool:
    leaves = pytree.tree_leaves(inputs)
    return any(isinstance(x, torch.Tensor) and x.dtype == torch.float64 for x in leaves) and any(
        p.dtype == torch.float32 for p in model.parameters()
    )


def _all_close(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if not torch.allclose(x, y, equal_nan=True):
                return False
        elif isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor) or x != y:
            return False
    return True


def _sync(dst: nn.Module, src: nn.Module) -> None:
    """Give `dst` the state (state_dict and tensor attributes) `src` has now."""
    with torch.no_grad():
        dst.load_state_dict(src.state_dict())
        theirs = _plain_attributes(src)
        for name, (m, k) in _plain_attributes(dst).items():
            if name in theirs:
                vars(m)[k] = getattr(*theirs[name]).detach().clone()


def _left_as_is(check: Checker, fixed: nn.Module) -> bool:
    """Whether a hazard may stay: allowed here, and the report lists one left as is."""
    return check.left_as_is_ok and any(not c.applied for c in fixed.report.changes)


def _no_grad(step: Step) -> Step:
    return Step(step.seed, grad_mode=False)


def _fixes(case: Case, error: BaseException) -> bool:
    """Whether a selected pass fixes what eager refused (autograd's refusals by default)."""
    family = refusal(error) or "FXG1"
    return case.select is None or any(
        c.startswith(family) or family.startswith(c) for c in case.select
    )


def _compare_state(
    check: Checker,
    got: Result,
    state: Result,
    want: Result,
    inputs: tuple,
    where: str,
    step: Step,
    refused: bool,
) -> None:
    for k in sorted(got.state.keys() & state.state.keys()):
        check.close(got.state[k], state.state[k], f"{where}: state {k} afterwards", exact=True)
    originals = pytree.tree_leaves(inputs)
    for i, (a, e, x) in enumerate(zip(got.inputs_after, want.inputs_after, originals)):
        # A write into an input that requires grad is rewritten (eager refuses it): only
        # inputs whose writes the caller may see are compared.
        observable = (
            not (x.requires_grad and step.grad_mode) if isinstance(x, torch.Tensor) else True
        )
        if observable and not (refused and isinstance(x, torch.Tensor) and x.requires_grad):
            check.close(a, e, f"{where}: input {i} afterwards")
    check.close(got.rng, want.rng, f"{where}: RNG state afterwards", exact=True)
    if got.observed is not None or state.observed is not None:
        check.close_tree(got.observed, state.observed, f"{where}: what the case observes")


def _fallback_grads(
    check: Checker,
    case: Case,
    pre: nn.Module,
    inputs: tuple,
    step: Step,
    cots: dict,
    want: Result,
    where: str,
) -> dict | None:
    """Eager's backward fails (or its forward refused): gradients autograd should give.

    functionalize's, where it runs and computes eager's values (its random ops may draw
    differently); else the fixed module must pass float64 gradcheck (None is returned,
    there is nothing left to compare).
    """
    try:
        grads, outputs = functional_grads(copy.deepcopy(pre), clone_args(inputs), step, cots)
    except Exception as e:
        why = f"functionalize fails ({type(e).__name__}: {str(e).splitlines()[0]})"
    else:
        if _all_close(outputs, want.outputs):
            return grads
        why = "functionalize computes other values than eager (its random draws differ)"
    try:
        ok = gradcheck_fixed(case, pre, inputs, step)
    except Exception as e:
        check.uncompared.append(
            f"{where}: no reference gradients: {why}; gradcheck cannot run: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}"
        )
        return None
    assert ok, f"{where}: {why}, and the fixed module fails float64 gradcheck"
    check.compared += 1
    return None


# ---------------------------------------------------------------------------------------
# The tests


# Bugs found in cases this harness does not own: case -> scenario ("*": all) -> reason.
KNOWN_BUGS: dict[str, dict[str, str]] = {}


def _xfail(case: Case, scenario: str) -> str | None:
    known = {**KNOWN_BUGS.get(case.name, {}), **getattr(case.mod, "XFAIL", {})}
    return known.get(scenario, known.get("*"))


def _params() -> list[Any]:
    out = []
    for path in _case_paths():
        case = Case.at(path)
        for name, sc in scenarios(case).items():
            marks = []
            xfail = _xfail(case, name) if not isinstance(sc, str) else None
            if xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=xfail))
            out.append(pytest.param(case, sc, id=f"{case.name}-{name}", marks=marks))
    return out


@pytest.mark.parametrize(("case", "sc"), _params())
def test_every_call(case: Case, sc: Scenario | str) -> None:
    if isinstance(sc, str):
        pytest.skip(sc)
    with torch.random.fork_rng():
        try:
            check = run_scenario(case, sc)
        except CannotCompare as e:
            pytest.skip(str(e))
    if check.uncompared:
        pytest.skip("; ".join(check.uncompared))


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is faster, and far faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_gradient_penalty_through_an_input_write():
    """`x.mul_(2)` on an input decided plain, then used under a gradient penalty.

    The penalty differentiates the gradient with respect to the input (double backward):
    the write into the input that requires grad is rewritten, and the second-order
    gradients of the parameters equal the Reference's, which doubles x out of place.
    """
    case = Case.at(CASES / "calls" / "input_write_grad_flip.py")
    torch.manual_seed(0)
    model = case.mod.Model()
    reference = case.mod.Reference()
    reference.load_state_dict(model.state_dict())
    fixed = fxgrad.fix(model, case.example())
    x = torch.randn(4, 4)

    def penalty(m: nn.Module) -> tuple[torch.Tensor, ...]:
        xx = x.clone().requires_grad_()
        out = m(xx)
        (g,) = torch.autograd.grad(out.sum(), xx, create_graph=True)
        loss = ((g.norm(dim=1) - 1) ** 2).mean() + out.square().mean()
        grads = torch.autograd.grad(loss, [p for _, p in sorted(m.named_parameters())])
        assert torch.equal(xx.detach(), x), "the input that requires grad was written"
        return grads

    for got, want in zip(penalty(fixed), penalty(reference), strict=True):
        torch.testing.assert_close(got, want)
