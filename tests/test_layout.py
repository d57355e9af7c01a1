"""Packaging: fxgrad.passes comes from passes/, and the public surface is deliberate."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import fxgrad
import fxgrad.passes

ROOT = Path(__file__).parent.parent


def test_passes_ship_as_fxgrad_passes_from_the_passes_folder():
    assert Path(fxgrad.passes.__file__).resolve().parent == (ROOT / "passes").resolve()


def test_passes_refuse_another_import_name():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, '.'); import passes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "fxgrad.passes" in result.stderr


def test_public_surface_is_pinned():
    assert sorted(fxgrad.__all__) == sorted(
        ["Change", "FixedModule", "FxgradError", "Report", "__version__", "check", "fix"]
    )
    for name in fxgrad.__all__:
        assert hasattr(fxgrad, name)
    importlib.import_module("fxgrad.testing")


def test_import_is_light():
    code = (
        "import sys, fxgrad; "
        "heavy = [m for m in ('torch', 'tabulate', 'click', 'torchvision', 'fxgrad.passes') "
        "if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
