"""The articles' examples (examples/seeds/): what eager really does, and what fxgrad does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import fxgrad
from fxgrad.context import clone_inputs

SEEDS = sorted((Path(__file__).parent.parent / "examples" / "seeds").glob("*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"seed_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eager(case):
    model, inputs = case.Model(), clone_inputs(list(case.inputs()))
    out = model(*inputs)
    torch.autograd.grad(
        out.sum(),
        [
            t
            for t in torch.utils._pytree.tree_leaves(inputs)
            if isinstance(t, torch.Tensor) and t.requires_grad
        ],
        allow_unused=True,
    )
    return out


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_eager_behaviour_is_what_the_example_says(path):
    case = load(path)
    if case.EAGER == "forward raises":
        with pytest.raises(RuntimeError, match="in-place operation"):
            _eager(case)
    else:
        _eager(case)


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_capture_equals_eager(path):
    case = load(path)
    model, example = case.Model(), case.inputs()
    fixed = fxgrad.fix(model, example, select=[])
    if case.EAGER != "forward raises":
        torch.testing.assert_close(
            fixed(*clone_inputs(list(example))), model(*clone_inputs(list(example)))
        )


def test_numpy_detour_cuts_the_gradient_in_eager():
    case = load(next(p for p in SEEDS if p.stem == "cat_numpy_detour"))
    (x,) = case.inputs()
    (g,) = torch.autograd.grad(case.Model()(x), x)
    # mean over 12 elements; only the direct half reaches x
    torch.testing.assert_close(g, torch.full_like(x, 1 / 12))


@pytest.mark.parametrize(
    "stem", ["add_inplace_non_leaf", "setitem_after_mul", "my_relu", "composite_class"]
)
def test_safe_examples_are_left_alone(stem):
    case = load(next(p for p in SEEDS if p.stem == stem))
    report = fxgrad.check(case.Model(), case.inputs(), select=["FXG101"])
    assert not report.applied, report.table()
