"""Attribute names the generated code reads: the captured module and stowed constants."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

# ---------------------------------------------------------------------------------------
# Names the generated code reads

# The module whose forward was captured, as generated code reads it: `self._fxgrad_root`.
# Plain tensor attributes of that module (`self.n = torch.zeros(())` in `__init__`) are
# read and written through it on every call, so the fixed module shares them with the
# user's module rather than keeping a copy from capture time.
ROOT_ATTR = "_fxgrad_root"
# Node meta key of a placeholder that stands for a Python number argument (a timestep, a
# scale): its value is an input of the graph, not a constant baked in.
NUMBER_META = "fxgrad_number"
# Objects fx cannot spell in code, kept as constants of the graph.
STOWED_PREFIX = "_fxgrad_const"
_STOWED_PREFIXES = (
    STOWED_PREFIX,
    "_tensor_constant",
    "_torchbind_obj",
    "_tree_spec_constant",
    "_opaque_obj",  # a torch.Generator the model owns, among others
)


def _is_stowed_name(name: str) -> bool:
    """Whether fx (or fxgrad) made this attribute name to hold a constant of the graph."""
    return name.startswith(_STOWED_PREFIXES) or (name.startswith("_") and "_constant_" in name)


_CONSTANT_IDS = itertools.count()


def fresh_constant_name() -> str:
    """A process-wide unique attribute name for a constant a graph reads."""
    return f"{STOWED_PREFIX}{next(_CONSTANT_IDS)}"


class ThreadStack:
    """A stack each thread sees its own of: the captures in progress in that thread.

    torch's functions and classes are patched process-wide while a capture runs; the
    patches act only where this stack is not empty, so other threads see torch unchanged.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _stack(self) -> list[Any]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def __bool__(self) -> bool:
        return bool(getattr(self._local, "stack", None))

    def __len__(self) -> int:
        return len(self._stack())

    def __getitem__(self, i: int) -> Any:
        return self._stack()[i]

    def append(self, item: Any) -> None:
        self._stack().append(item)

    def pop(self) -> Any:
        return self._stack().pop()


def finish(step: Callable[[], None], tries: int = 5) -> None:
    """Run an idempotent clean-up step to its end even if an interrupt (Ctrl-C) lands in
    it: the step runs again, and the interrupt is raised once the step has finished."""
    error: BaseException | None = None
    for _ in range(tries):
        try:
            step()
            break
        except BaseException as e:  # a KeyboardInterrupt halfway through putting back
            error = e
    if error is not None:
        raise error
