"""Attribute names the generated code reads: the captured module and stowed constants."""

from __future__ import annotations

import itertools

# ---------------------------------------------------------------------------------------
# Names the generated code reads

# The module whose forward was captured, as generated code reads it: `self._fxgrad_root`.
# Plain tensor attributes of that module (`self.n = torch.zeros(())` in `__init__`) are
# read and written through it on every call, so the fixed module shares them with the
# user's module rather than keeping a copy from capture time.
ROOT_ATTR = "_fxgrad_root"
# Objects fx cannot spell in code, kept as constants of the graph.
STOWED_PREFIX = "_fxgrad_const"
_STOWED_PREFIXES = (STOWED_PREFIX, "_tensor_constant", "_torchbind_obj", "_tree_spec_constant")


def _is_stowed_name(name: str) -> bool:
    """Whether fx (or fxgrad) made this attribute name to hold a constant of the graph."""
    return name.startswith(_STOWED_PREFIXES) or (name.startswith("_") and "_constant_" in name)


_CONSTANT_IDS = itertools.count()


def fresh_constant_name() -> str:
    """A process-wide unique attribute name for a constant a graph reads."""
    return f"{STOWED_PREFIX}{next(_CONSTANT_IDS)}"
