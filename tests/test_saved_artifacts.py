"""What an earlier release saved still loads and runs: pickled fixed modules and
`fxgrad fix -o` folders name fxgrad's classes and runtime helpers by module path, so moving
them would break users' saved files. tests/data/release_0_1 holds both, written by that
release's make.py; they are loaded here with the current code and compared with fixing the
same model now."""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path

import pytest
import torch

import fxgrad
from fxgrad.context import seeded

HERE = Path(__file__).parent / "data" / "release_0_1"


@pytest.fixture
def artifact_model(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    for name in ("fxgrad_artifact_model", "fix_o", "fix_o.module"):
        sys.modules.pop(name, None)
    return importlib.import_module("fxgrad_artifact_model")


def _run(module, x):
    with seeded(3):
        out = module(x)
    params = [p for p in module.parameters() if p.requires_grad]
    with seeded(3):
        grads = torch.autograd.grad(module(x).sum(), params)
    return out, grads


def test_a_pickled_fixed_module_of_release_0_1_runs(artifact_model):
    loaded = torch.load(HERE / "fixed.pt", weights_only=False)
    assert isinstance(loaded, fxgrad.FixedModule)
    # train; under no_grad nothing is unsafe, so nothing is rewritten; eval
    assert [len(r.applied) for r in loaded.reports] == [2, 0, 2]
    model = artifact_model.Model()
    model.load_state_dict(loaded.state_dict())
    now = fxgrad.fix(model)
    for training in (True, False):
        for batch in (4, 6, 5):  # 5: the size guard sends it to a variant of its own
            loaded.train(training)
            now.train(training)
            x = torch.randn(batch, 4)
            calls = loaded.calls.clone()
            got, got_grads = _run(loaded, x)
            want, want_grads = _run(now, x)
            torch.testing.assert_close(got, want)
            torch.testing.assert_close(got_grads, want_grads)
            torch.testing.assert_close(loaded.calls, calls + 2)  # the buffer write survived
    with torch.no_grad():
        loaded.eval()
        x = torch.randn(4, 4)
        reference = copy.deepcopy(model).eval()
        reference.load_state_dict(loaded.state_dict())
        torch.testing.assert_close(loaded(x), reference(x))  # and equals eager's forward


def test_a_fix_o_folder_of_release_0_1_imports_and_runs(artifact_model):
    fix_o = importlib.import_module("fix_o")
    written = fix_o.FixedModel()
    model = artifact_model.Model()
    model.load_state_dict(torch.load(HERE / "fix_o" / "state_dict.pt"))
    now = fxgrad.fix(model)
    x = torch.randn(4, 4)
    got, got_grads = _run(written, x)
    want, want_grads = _run(now, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grads, want_grads)
