"""The pytest plugin, run inside throwaway pytest sessions (pytester).

Sessions that import torch run in a subprocess: pytester's in-process runs drop the modules
a run imported, and torch cannot be imported a second time into the same process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

MODEL_REPO = Path(__file__).resolve().parent.parent / "examples" / "model_repo"

MODELS = """
import torch
from torch import nn


class Safe(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).relu()


class Unsafe(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))
        h.mul_(2)
        return h
"""


@pytest.fixture
def repo(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(mymodels=MODELS)
    pytester.syspathinsert()
    return pytester


def test_plugin_imports_nothing_heavy_at_load():
    """The plugin module adds no import of its own beyond the fxgrad package it lives in."""
    code = (
        "import sys; import fxgrad; before = set(sys.modules); import fxgrad.pytest_plugin; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] in ('torch', 'numpy', 'tabulate') "
        "or m.startswith('fxgrad.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['fxgrad.pytest_plugin']"


def test_marker_passes_and_fails_with_the_table(repo: pytest.Pytester):
    repo.makepyfile(
        test_marker="""
        import pytest, torch
        from mymodels import Safe, Unsafe

        @pytest.mark.autograd_safe(grads_flow=True)
        def test_safe():
            return Safe(), (torch.randn(2, 4),)

        @pytest.mark.autograd_safe
        def test_unsafe():
            return Unsafe(), torch.randn(2, 4)

        def test_plain_value_still_warns():
            return 1
        """
    )
    result = repo.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*Unsafe is not autograd-safe on these inputs*",
            "*Eager backward fails on these inputs: one of the variables needed for gradient*",
            "mymodels.py:21 *h.mul_(2)*",
            "*fxgrad check failed in test_marker.py:8*",
            "FAILED test_marker.py::test_unsafe - Unsafe is not autograd-safe*",
        ]
    )
    text = result.stdout.str()
    # Readable output: the message, not frames through fxgrad or torch.
    failures = text.split("= FAILURES =")[1].split("warnings summary")[0]
    assert "fxgrad/testing.py" not in failures and "site-packages" not in failures
    # Marked tests may return a value; unmarked ones still get pytest's warning.
    assert text.count("PytestReturnNotNoneWarning") == 1
    assert "test_plain_value_still_warns" in text


def test_marker_needs_a_model_and_inputs(repo: pytest.Pytester):
    repo.makepyfile(
        test_forgot="""
        import pytest

        @pytest.mark.autograd_safe
        def test_forgot_to_return():
            pass

        @pytest.mark.autograd_safe(grads=True)
        def test_misspelled_option():
            return None
        """
    )
    result = repo.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*must return (model, inputs); test_forgot_to_return returned None*",
            "*takes only the keyword arguments grads_flow, custom_functions, fix_equivalent*",
        ]
    )


def test_fixture_gives_the_helpers_and_names_the_test_line(repo: pytest.Pytester):
    repo.makepyfile(
        test_fixture="""
        import torch
        from mymodels import Safe, Unsafe

        def test_safe(fxgrad_check):
            x = torch.randn(2, 4)
            fxgrad_check.autograd_safe(Safe(), x)
            fxgrad_check.grads_flow(Safe(), x)
            fxgrad_check.fix_equivalent(Safe(), x)
            assert fxgrad_check.custom_functions(Safe(), x) == []

        def test_unsafe(fxgrad_check):
            x = torch.randn(2, 4)
            fxgrad_check.grads_flow(Unsafe(), x)
        """
    )
    result = repo.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "Backward of Unsafe fails on these inputs: one of the variables*",
            "*fxgrad check failed in test_fixture.py:13*",
        ]
    )


def test_plugin_is_registered_through_the_entry_point(repo: pytest.Pytester):
    repo.makepyfile(
        test_x="def test_x(request):\n    assert request.config.pluginmanager.has_plugin('fxgrad')\n"
    )
    assert repo.runpytest("-p", "no:cacheprovider").ret == 0
    disabled = repo.runpytest("-p", "no:cacheprovider", "-p", "no:fxgrad")
    disabled.assert_outcomes(failed=1)
    markers = repo.runpytest("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.autograd_safe(grads_flow=False, *"])


def test_example_model_repo(pytester: pytest.Pytester):
    """The example repository: its tests pass; its demonstration fails with a helpful message."""
    for item in MODEL_REPO.iterdir():
        if item.name in ("__pycache__", ".pytest_cache"):
            continue
        target = pytester.path / item.name
        if item.is_dir():
            shutil.copytree(item, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(item, target)
    default = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    default.assert_outcomes(passed=2, deselected=1)
    demo = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "demo_failure")
    demo.assert_outcomes(failed=1, deselected=2)
    demo.stdout.fnmatch_lines(
        [
            "GatedScorer is not autograd-safe on these inputs*",
            "*saved by the op at models.py:30*",
            "models.py:32 *gate.mul_(2)*",
            "*fxgrad check failed in tests/test_models.py:*",
        ]
    )
