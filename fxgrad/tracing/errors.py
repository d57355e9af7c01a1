"""Turn what went wrong while tracing into errors that name the user's line."""

from __future__ import annotations

import functools
import sys

from torch import fx

from fxgrad.errors import FxgradError, ModelError, TraceError
from fxgrad.graph_utils import is_internal


def _trace_error(e: Exception) -> TraceError:
    where = innermost_user_line(e)
    if too_deep(e):
        return TraceError(
            f"fxgrad could not capture the forward at {where}: {too_deep_message()}",
            hint=TOO_DEEP_HINT,
        )
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "symbolically traced variables cannot be used as inputs to control flow" in str(e):
        return _control_flow_error(where, "bool")
    message = f"fxgrad could not capture the forward at {where}: {type(e).__name__}: {msg}"
    if "Proxy" in msg and ("iter" in msg or "len" in msg):
        return TraceError(message, with_inputs=LENGTHS, otherwise=FIXED_UNPACK)
    return TraceError(
        message,
        with_inputs="fxgrad then answers the value from a real call",
        otherwise="move the code that does this into a function marked with torch.fx.wrap. "
        "`fxgrad explain capture` says what capture supports.",
    )


LENGTHS = "fxgrad then tells lengths from a real call"
FIXED_UNPACK = "unpack a fixed number of items (`a, b = h.chunk(2)`)."


TOO_DEEP_HINT = (
    "Raise Python's limit before fixing, e.g. sys.setrecursionlimit(10000) (for the command "
    "line, at the top of the model's file): capturing takes about 10 Python frames per level "
    "of nesting. Or nest fewer modules inside one another."
)


def too_deep(e: BaseException) -> bool:
    """Whether `e` is a RecursionError, or was raised while handling or because of one."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, RecursionError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def too_deep_message() -> str:
    """Why a RecursionError was raised while capturing: the depth, not missing inputs."""
    return (
        "the modules and calls nest too deeply for Python's recursion limit of "
        f"{sys.getrecursionlimit()} (RecursionError)"
    )


def _model_error(e: BaseException, node: fx.Node | None) -> FxgradError:
    import os

    loc = node.meta.get("fxgrad_loc") if node is not None else None
    where = f"{os.path.basename(loc[0])}:{loc[1]}" if loc else "an unknown line"
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return ModelError(
        f"The model raises {type(e).__name__} in forward on the example inputs at {where}: {first}",
        hint="Check that the example inputs have the shapes, dtypes and devices the model "
        "expects; fxgrad needs a forward that runs in eager PyTorch.",
        exception=e,
        where=where if loc else "",
    )


def innermost_user_line(e: BaseException) -> str:
    """`file.py:line` of the innermost frame of an error's traceback in the user's code."""
    import os
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    for fr in reversed(frames):
        if not is_internal(fr.filename) and not _in_stdlib(fr.filename):
            return f"{os.path.basename(fr.filename)}:{fr.lineno}"
    return "an unknown line"


def _in_stdlib(filename: str) -> bool:
    """A file of Python's standard library (`copy.py` while tracing copies something): no
    line a user can act on; installed packages are not in it."""
    import os

    path = os.path.abspath(filename)
    return path.startswith(_stdlib_dir()) and "-packages" + os.sep not in path


@functools.cache
def _stdlib_dir() -> str:
    """Asked once: the innermost-line search checks every frame of a deep traceback."""
    import os
    import sysconfig

    return os.path.join(os.path.abspath(sysconfig.get_paths()["stdlib"]), "")


def _control_flow_error(where: str, kind: str) -> TraceError:
    return TraceError(
        f"The forward uses the value of a tensor in Python control flow at {where} "
        f"({kind}() of data computed by the model), which a graph cannot capture.",
        with_inputs="fxgrad then hands such a forward to Dynamo",
        otherwise="move the data-dependent part into a function marked with torch.fx.wrap, "
        "or use torch.where / masking so both branches are computed.",
    )
