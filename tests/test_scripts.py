"""scripts/setup.sh installs only when needed, from a fresh clone too, and quietly.

Run on a copy of the scripts with a stand-in Python that records `pip install` instead of
running it (no network, no real install) and answers the final import check; everything
else goes to this Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = f"""#!/usr/bin/env bash
# Records pip calls; any other call runs the real interpreter.
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "pip $*" >> "{{log}}"
  echo "SetuptoolsDeprecationWarning: noise a user should not see" >&2
  exit 0
fi
if [ "$1" = "-c" ] && [[ "$2" == *"import fxgrad, torch"* ]]; then
  echo "fxgrad 0.1.0 torch (stand-in)"  # the real check imports torch: seconds
  exit 0
fi
exec "{sys.executable}" "$@"
"""


def _repo(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "clone"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    shutil.copy(ROOT / "setup.py", repo / "setup.py")
    log = tmp_path / "pip.log"
    log.touch()
    # `python3 -m venv .venv` on a fresh clone makes the stand-in
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = STAND_IN.replace("{log}", str(log))
    (tmp_path / "stand_in").write_text(stand_in)
    (bin_dir / "python3").write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  mkdir -p "$3/bin" && cp "' + str(tmp_path / "stand_in") + '" "$3/bin/python"\n'
        '  chmod +x "$3/bin/python"; exit 0\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    (bin_dir / "python3").chmod(0o755)
    return repo, log


def _setup(repo: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    path = f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", "scripts/setup.sh"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path, **env},
        timeout=120,
    )


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_installs_once_then_only_when_pyproject_changes(tmp_path):
    repo, log = _repo(tmp_path)

    first = _setup(repo, tmp_path)  # a fresh clone: no .venv yet
    assert first.returncode == 0, first.stderr
    assert (repo / ".venv" / "bin" / "python").exists()
    installs = log.read_text().count("install -q torch")
    assert installs == 1, log.read_text()
    assert "fxgrad 0.1.0" in first.stdout
    assert "Deprecation" not in first.stdout + first.stderr  # the build's noise stays out

    again = _setup(repo, tmp_path)
    assert again.returncode == 0, again.stderr
    assert log.read_text().count("install -q torch") == 1  # nothing to install
    assert "up to date" in again.stdout

    with open(repo / "pyproject.toml", "a") as f:
        f.write("\n# a change\n")
    changed = _setup(repo, tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert log.read_text().count("install -q torch") == 2

    forced = _setup(repo, tmp_path, FXGRAD_REINSTALL="1")
    assert forced.returncode == 0
    assert log.read_text().count("install -q torch") == 3


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_shows_pips_output_when_the_install_fails(tmp_path):
    repo, log = _repo(tmp_path)
    stand_in = tmp_path / "stand_in"
    stand_in.write_text(
        stand_in.read_text().replace(
            "  exit 0\nfi", '  echo "ERROR: no matching torch" >&2\n  exit 1\nfi'
        )
    )
    failed = _setup(repo, tmp_path)
    assert failed.returncode == 1
    assert "ERROR: no matching torch" in failed.stderr
    assert not (repo / ".venv" / ".fxgrad-installed").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_tries_the_cpu_only_torch_where_there_is_no_gpu(tmp_path):
    repo, log = _repo(tmp_path)
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA GPU: the CPU-only build is not wanted")
    first = _setup(repo, tmp_path)
    assert first.returncode == 0, first.stderr
    calls = log.read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.14.1+cpu" in calls
    assert "CPU-only build" in first.stderr  # says what it does while it does it

    repo2, log2 = _repo(tmp_path / "gpu")
    (tmp_path / "gpu" / "bin" / "nvidia-smi").write_text("#!/usr/bin/env bash\nexit 0\n")
    (tmp_path / "gpu" / "bin" / "nvidia-smi").chmod(0o755)
    with_gpu = _setup(repo2, tmp_path / "gpu")
    assert with_gpu.returncode == 0, with_gpu.stderr
    assert "whl/cpu" not in log2.read_text()
