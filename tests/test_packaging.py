"""The wheel: what it holds, and that it installs into a fresh environment and runs.

The wheel is built offline from a copy of the sources (`pip wheel --no-deps
--no-build-isolation`, the setuptools already installed), so the checkout stays clean.
The fresh venv gets the wheel only; its dependencies (torch, click, tabulate) are borrowed
from this environment through a `.pth` line, which pip never sees.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("fxgrad", "passes"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-q", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (found,) = dist.glob("fxgrad-*.whl")
    return found


def test_wheel_holds_the_package_passes_script_and_plugin(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__", "api", "cli", "report", "testing", "pytest_plugin", "registry"):
        assert f"fxgrad/{module}.py" in names
    for module in (ROOT / "passes").rglob("*.py"):  # a pass may be a package
        relative = module.relative_to(ROOT / "passes").as_posix()
        assert f"fxgrad/passes/{relative}" in names  # passes/ ships as fxgrad.passes
    assert not any(n.startswith(("tests/", "passes/", "benchmarks/")) for n in names)
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert parser["console_scripts"]["fxgrad"].strip() == "fxgrad.cli:main"
    assert parser["pytest11"]["fxgrad"].strip() == "fxgrad.pytest_plugin"


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + ["--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # torch, click and tabulate from this environment, after the venv's own packages
    (Path(site) / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = venv / "bin" / "fxgrad"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    work = tmp_path / "work"  # not the checkout, whose fxgrad/ folder would shadow the wheel's
    work.mkdir()
    shutil.copy(ROOT / "examples" / "unsafe_inplace.py", work / "unsafe_inplace.py")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), capture_output=True, text=True, env=env, cwd=work, timeout=300
        )

    where = run(str(python), "-c", "import fxgrad.passes, fxgrad; print(fxgrad.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # the wheel's copy
    passes = run(str(script), "passes")
    assert passes.returncode == 0 and "FXG101" in passes.stdout, passes.stderr
    check = run(str(script), "check", "unsafe_inplace.py:Model")
    assert check.returncode == 1, check.stderr
    assert "FXG101" in check.stdout
    plugin = run(
        str(python),
        "-c",
        textwrap.dedent(
            """
            from importlib.metadata import entry_points
            print([e.value for e in entry_points(group="pytest11") if e.name == "fxgrad"])
            """
        ),
    )
    assert "fxgrad.pytest_plugin" in plugin.stdout, plugin.stderr
