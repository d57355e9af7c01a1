"""One parametrized test over every case in tests/cases/<CODE>/<name>.py.

A case module defines `Model` (an nn.Module class) and `inputs()` (a tuple of example
inputs), and optionally:
- `Reference`: a hand-corrected model with the same parameters; the fixed model's
  gradients must equal its gradients;
- `TIMINGS`: pinned timings for measured passes (keys as the pass asks for them);
- `SELECT`: pass codes to run (default: the folder's code).

The golden `<name>.expected` holds the change lines, then `---`, then the normalized code
after the pass. A golden without change lines is a negative case. A missing golden fails
the test; `FXGRAD_REGEN=1` writes (or rewrites) goldens for review.

Where eager's forward or backward raises, the case must have a `Reference`: the fixed
model's values and gradients are compared with it instead, never skipped.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import fxgrad
from fxgrad.context import clone_inputs, fake_measure
from fxgrad.pipeline import run_forward_backward
from fxgrad.report import normalize_code

CASES = Path(__file__).parent / "cases"


def _case_files() -> list[Path]:
    return sorted(p for p in CASES.glob("FXG*/*.py") if not p.name.startswith("_"))


def load_case(path: Path):
    spec = importlib.util.spec_from_file_location(f"case_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_golden(report: fxgrad.Report) -> str:
    lines = [c.line() for c in report.changes]
    return "\n".join(lines) + "\n---\n" + normalize_code(report.code_after)


def _same_params(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    reference.load_state_dict(model.state_dict())


def _grads(fn, inputs, params):
    _, grads, err = run_forward_backward(fn, inputs, params, seed=0)
    assert err is None, f"backward failed: {err}"
    return grads


@pytest.mark.parametrize("path", _case_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_case(path: Path) -> None:
    case = load_case(path)
    torch.manual_seed(0)
    model = case.Model()
    example = case.inputs()
    select = getattr(case, "SELECT", [path.parent.name])
    timings = getattr(case, "TIMINGS", None)
    measure = fake_measure(timings) if timings is not None else None

    state_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fixed = fxgrad.fix(model, example, select=select, measure=measure)

    # The user's model is untouched and no gradient is left behind.
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k]), f"fix() changed {k} of the user's model"
    assert all(p.grad is None for p in model.parameters())

    golden = path.with_suffix(".expected")
    text = render_golden(fixed.report)
    if os.environ.get("FXGRAD_REGEN"):
        golden.write_text(text)
    assert golden.exists(), (
        f"no golden {golden.name} for {path.name}: run with FXGRAD_REGEN=1 to write it, "
        f"then review it:\n{text}"
    )
    assert text == golden.read_text(), f"golden mismatch for {path.name}:\n{text}"

    # Forward values equal eager where eager runs.
    inputs_eager, inputs_fixed = clone_inputs(list(example)), clone_inputs(list(example))
    try:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            expected = model(*inputs_eager)
    except (RuntimeError, ValueError) as e:
        # Eager itself refuses (a write into a leaf, negative NumPy strides): the fixed
        # model runs, and computes what the hand-corrected reference computes.
        assert hasattr(case, "Reference"), f"eager raises {e!r}: the case needs a Reference"
        reference = case.Reference()
        _same_params(model, reference)
        with torch.random.fork_rng():
            torch.manual_seed(1)
            expected = reference(*clone_inputs(list(example)))
    with torch.random.fork_rng():
        torch.manual_seed(1)
        actual = fixed(*inputs_fixed)
    torch.testing.assert_close(actual, expected, equal_nan=True)

    # Gradients equal a hand-corrected reference, or eager where eager's backward works.
    params = [p for p in model.parameters() if p.requires_grad]
    got = _grads(fixed, clone_inputs(list(example)), params)
    if hasattr(case, "Reference"):
        reference = case.Reference()
        _same_params(model, reference)
        ref_params = [p for p in reference.parameters() if p.requires_grad]
        want = _grads(reference, clone_inputs(list(example)), ref_params)
        for g, w in zip(got, want):
            if w is None:
                assert g is None or not g.any()
            else:
                torch.testing.assert_close(g, w)
    else:
        _, want, err = run_forward_backward(model, clone_inputs(list(example)), params, seed=0)
        assert err is None, f"eager backward fails ({err!r}): the case needs a Reference"
        for g, w in zip(got or [], want or []):
            if w is not None:
                torch.testing.assert_close(g, w)

    # Fixing the fixed graph again changes nothing.
    flat = [x for x in clone_inputs(list(example))]
    again = fxgrad.check(fixed.graph_module, tuple(flat), select=select, measure=measure)
    assert not again.applied, f"a second run still rewrites: {again}"
