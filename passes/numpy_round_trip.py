"""FXG301 numpy-round-trip

## What it does
(being written)
"""

from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context
from fxgrad.registry import Pass


def run(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    return []


PASS = Pass(code="FXG301", name="numpy-round-trip", run=run, doc=__doc__)
