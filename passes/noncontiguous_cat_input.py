"""FXG201 noncontiguous-cat-input

## What it does
(being written)
"""

from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context
from fxgrad.registry import Pass


def run(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    return []


PASS = Pass(code="FXG201", name="noncontiguous-cat-input", run=run, doc=__doc__)
