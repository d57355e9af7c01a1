"""`fxgrad fix -o DIR` writes a folder that imports and runs, for every model `fix` accepts.

Every case model under tests/cases (plus models written here: attention scaled with
`math.sqrt`, a model in a package with relative imports) is written with the CLI; one fresh
Python process then imports each written folder and compares its outputs with
`fxgrad.fix(Model(), inputs())` on the same weights and inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_cases import _case_files, load_case

import fxgrad
from fxgrad.cli import main
from fxgrad.context import clone_inputs
from fxgrad.fixed import current_variant

ATTENTION = '''
import math

import torch
from torch import nn


class Model(nn.Module):
    """Scaled dot-product attention, scaled the usual way: math.sqrt of a size."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        weights = scores.softmax(-1)
        weights.mul_(0.5)  # unsafe: softmax saved its output
        return weights @ v


def inputs():
    return (torch.randn(2, 5, 16),)
'''

PACKAGE_INIT = ""
PACKAGE_LAYERS = """
import torch


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2
"""
PACKAGE_NET = """
import torch
from torch import nn

from .layers import Double


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))
        h.mul_(2)
        return Double.apply(h)


def inputs():
    return (torch.randn(4, 8),)
"""


def _extra_models(root: Path) -> dict[str, Path]:
    attention = root / "attention_sqrt.py"
    attention.write_text(ATTENTION)
    package = root / "pkg_models"
    package.mkdir()
    (package / "__init__.py").write_text(PACKAGE_INIT)
    (package / "layers.py").write_text(PACKAGE_LAYERS)
    (package / "net.py").write_text(PACKAGE_NET)
    return {"extra/attention_sqrt": attention, "extra/package_relative_import": package / "net.py"}


def _case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


IDS = [_case_id(p) for p in _case_files()] + [
    "extra/attention_sqrt",
    "extra/package_relative_import",
]

LOADER = textwrap.dedent(
    """
    import json, runpy, sys, traceback
    from pathlib import Path

    import torch

    results = {}
    for folder in sys.argv[2:]:
        folder = Path(folder)
        before = set(sys.modules)
        try:
            check = torch.load(folder / "check.pt", weights_only=False)
            namespace = runpy.run_path(str(folder / "module.py"))
            model = namespace[check["class_name"]]()
            with torch.random.fork_rng():
                torch.manual_seed(1)
                got = model(*check["leaves"])
            torch.testing.assert_close(got, check["expected"], equal_nan=True)
            results[check["id"]] = None
        except Exception:
            results[check["id"]] = traceback.format_exc(limit=-3)
        for name in set(sys.modules) - before:  # each folder imports its model file afresh
            file = getattr(sys.modules[name], "__file__", None) or ""
            installed = file.startswith((sys.prefix, sys.base_prefix))
            if file and not installed and name.split(".")[0] != "fxgrad":
                del sys.modules[name]
    Path(sys.argv[1]).write_text(json.dumps(results))
    """
)


def _write_and_expect(case_id: str, path: Path, out: Path) -> None:
    """Run `fxgrad fix PATH:Model -o OUT`, then store what fxgrad.fix computes beside it."""
    saved_path = list(sys.path)
    try:
        result = CliRunner().invoke(main, ["fix", f"{path}:Model", "-o", str(out)])
    finally:
        sys.path[:] = saved_path  # the CLI puts model folders first, as python does
    assert result.exit_code in (0, 1), (case_id, result.stderr, result.exception)
    case = load_case(path) if "extra/" not in case_id else _load_extra(path)
    model = case.Model()
    written = torch.load(out / "state_dict.pt")
    model.load_state_dict({k: written[k] for k in model.state_dict()})
    example = case.inputs()
    fixed = fxgrad.fix(model, example)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        expected = fixed(*clone_inputs(list(example)))
    leaves = current_variant(fixed).call.flatten(tuple(clone_inputs(list(example))), {})
    class_name = next(
        line.split()[1].split("(")[0]
        for line in (out / "module.py").read_text().splitlines()
        if line.startswith("class Fixed")
    )
    torch.save(
        {"id": case_id, "class_name": class_name, "leaves": leaves, "expected": expected},
        out / "check.pt",
    )


def _load_extra(path: Path):
    import importlib

    if path.parent.joinpath("__init__.py").exists():
        sys.path.insert(0, str(path.parent.parent))
        try:
            return importlib.import_module(f"{path.parent.name}.{path.stem}")
        finally:
            sys.path.remove(str(path.parent.parent))
    return load_case(path)


@pytest.fixture(scope="module")
def written(request, tmp_path_factory) -> dict[str, str | None]:
    """Write every selected case with the CLI, then import them all in one fresh process."""
    wanted = {
        item.callspec.params["case_id"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_fix_output_imports_and_matches"
    }
    root = tmp_path_factory.mktemp("fix_output")
    sources = {_case_id(p): p for p in _case_files()}
    (root / "models").mkdir()
    sources.update(_extra_models(root / "models"))
    folders = []
    for case_id in sorted(wanted):
        out = root / "written" / case_id.replace("/", "__")
        _write_and_expect(case_id, sources[case_id], out)
        folders.append(str(out))
    results_file = root / "results.json"
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(results_file), *folders],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(results_file.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case_id", IDS)
def test_fix_output_imports_and_matches(written, case_id):
    assert case_id in written
    assert written[case_id] is None, f"{case_id}: the written folder fails:\n{written[case_id]}"
