"""Type-check fxgrad/ and passes/ as the one package they ship as (fxgrad.passes).

passes/ is installed as `fxgrad.passes` through a package-dir mapping that mypy cannot read,
so the check runs on a temporary tree where `fxgrad/passes` is passes/ (links, no copies).
Settings come from pyproject.toml's [tool.mypy]; paths in the output are the checkout's.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fxgrad-typecheck-") as tmp:
        package = Path(tmp) / "fxgrad"
        package.mkdir()
        for entry in (ROOT / "fxgrad").iterdir():
            if entry.name not in ("passes", "__pycache__"):
                (package / entry.name).symlink_to(entry)
        (package / "passes").symlink_to(ROOT / "passes")
        done = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
            + ["--cache-dir", str(Path(tmp) / "cache"), "fxgrad"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
    out = done.stdout.replace("fxgrad/passes/", "passes/") + done.stderr
    print(out, end="")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
