"""What `fxgrad fix -o DIR` writes, beyond computing the same as the fixed model
(tests/test_fix_output.py): it imports only what the graph uses and loads its weights with
`weights_only=True`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fxgrad.cli import main

ROOT = Path(__file__).resolve().parents[1]
UNSAFE = f"{ROOT / 'examples' / 'unsafe_inplace.py'}:Model"


def fix(*args: str):
    """`fxgrad fix ARGS` in process, leaving sys.path as it was (the CLI puts the model's
    folder first)."""
    saved = list(sys.path)
    try:
        return CliRunner().invoke(main, ["fix", *args])
    finally:
        sys.path[:] = saved


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example") / "fixed_example"
    result = fix(UNSAFE, "-o", str(out))
    assert result.exit_code == 1, result.stderr
    return out


def test_module_py_imports_numpy_only_when_the_graph_uses_it(example_folder):
    pytest.importorskip("numpy")  # fx lists numpy among its builtins when it is installed
    text = (example_folder / "module.py").read_text()
    assert "numpy" not in text and "np." not in text


def test_module_py_loads_the_weights_with_weights_only(example_folder):
    text = (example_folder / "module.py").read_text()
    loads = [line for line in text.splitlines() if "torch.load(" in line]
    assert loads
    assert "weights_only=False" not in text
    assert text.count("weights_only=True") >= len(loads)
