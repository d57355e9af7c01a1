"""Write the saved artifacts of this folder: run once per release whose format they pin.

    python tests/data/release_0_1/make.py

They stay as written: tests/test_saved_artifacts.py loads them with the current code, so
a change that cannot load what an earlier release saved fails the tests.
"""

import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fxgrad_artifact_model import Model, inputs  # noqa: E402

import fxgrad  # noqa: E402

torch.manual_seed(0)
model = Model()
fixed = fxgrad.fix(model, inputs())
with torch.no_grad():
    fixed(*inputs())
fixed.eval()
fixed(*inputs())  # an eval-mode variant too
fixed.train()
torch.save(fixed, HERE / "fixed.pt")
torch.save(model.state_dict(), HERE / "state_dict.pt")
subprocess.run(
    [
        sys.executable,
        "-m",
        "fxgrad",
        "fix",
        "fxgrad_artifact_model.py:Model",
        "--input",
        "float32[4,4]",
        "-o",
        "fix_o",
    ],
    cwd=HERE,
    check=False,  # exit 1: rewrites were made, which is the point
)
