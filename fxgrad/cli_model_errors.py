"""Example inputs and the model's own errors, in the command line's words.

When fixing fails, the command line must tell the model's own code raising on its inputs
(shown as a LoadFailure that names the inputs and how to give others) from a bug in fxgrad
(kept with its traceback). That judgement reads tracebacks and forward's signature, which
is a part of its own beside the commands in `fxgrad.cli`.
"""

from __future__ import annotations

import inspect
import os
import sysconfig
import traceback
from typing import TYPE_CHECKING, Any

from fxgrad.cli_errors import LoadFailure
from fxgrad.cli_load import Target, _a, _file_label
from fxgrad.errors import FxgradError, ModelError, TraceError, inputs_hint

if TYPE_CHECKING:
    from torch import nn


def _describe_inputs(inputs: tuple) -> str:
    """`float32[4,8], int64[4]`: each input as --input writes it (a plain value as itself)."""
    import torch

    def one(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            return f"{dtype}[{','.join(str(d) for d in value.shape)}]"
        if value is None or isinstance(value, (bool, int, float)):
            return repr(value)
        return _a(type(value).__name__)

    return ", ".join(one(v) for v in inputs) if inputs else "none"


def _forward_signature(model: nn.Module) -> inspect.Signature | None:
    """forward's signature without annotations: `(x, mask=None)`."""
    from fxgrad.tracing.callspec import plain_signature

    try:
        return plain_signature(inspect.signature(model.forward))
    except (TypeError, ValueError):
        return None


def _input_options(loaded: Target, signature: inspect.Signature | None) -> str:
    """`--input 'float32[4,8]'` once per positional argument forward needs, shaped as the
    inputs given where there are some."""
    import torch

    params = signature.parameters.values() if signature is not None else ()
    needed = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    given = [
        _describe_inputs((v,)) for v in loaded.inputs or () if isinstance(v, torch.Tensor)
    ] or ["float32[4,8]"]
    specs = [given[min(i, len(given) - 1)] for i in range(max(1, len(needed)))]
    return " ".join(f"--input '{spec}'" for spec in specs)


def _forward_text(signature: inspect.Signature | None) -> str:
    return f"forward{signature}" if signature is not None else "forward"


def _check_signature(loaded: Target) -> None:
    """The inputs fit forward's positional arguments, or a LoadFailure in CLI words."""
    signature = _forward_signature(loaded.model)
    if signature is None:
        return
    try:
        signature.bind(*loaded.inputs or ())
    except TypeError as e:
        n = len(loaded.inputs or ())
        forward = _forward_text(signature)
        keywords = [
            p.name
            for p in signature.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty
        ]
        if keywords:
            hint = (
                "Example inputs from the command line are positional; point TARGET at a "
                f"module whose forward takes {', '.join(keywords)} by position too."
            )
        elif loaded.source == "--input":
            hint = (
                f"Give one --input per argument of {forward}, e.g. "
                f"{_input_options(loaded, signature)}."
            )
        else:
            hint = (
                f"Make {loaded.source} give one input per argument of {forward}, or give "
                f"them with --input, e.g. {_input_options(loaded, signature)}."
            )
        raise LoadFailure(
            f"{type(loaded.model).__name__}'s {forward} cannot take the "
            f"{n} input{'' if n == 1 else 's'} from {loaded.source}: {e}.",
            hint=hint,
        ) from None


def _in_cli_words(e: Exception, loaded: Target) -> FxgradError | None:
    """The error to show for what fixing raised: an FxgradError, its hint in the command
    line's words where it spoke of the API; the model's own exception as a LoadFailure;
    None for anything else (a bug in fxgrad)."""
    if isinstance(e, ModelError):
        return _forward_raised(e.exception or e, loaded, e.where)
    if isinstance(e, TraceError) and e.with_inputs and loaded.inputs is None:
        signature = _forward_signature(loaded.model)
        how = (
            f"one --input per argument of {_forward_text(signature)}, e.g. "
            f"{_input_options(loaded, signature)}, or an inputs() function in "
            f"{_file_label(loaded.spec)}"
        )
        e.hint = inputs_hint(how, e.with_inputs, e.otherwise)
        return e
    if isinstance(e, FxgradError):
        return e
    frame = _model_frame(e, loaded)
    if frame is None:
        return None
    return _forward_raised(e, loaded, f"{os.path.basename(frame.filename)}:{frame.lineno}")


def _forward_raised(e: BaseException, loaded: Target, where: str) -> LoadFailure:
    """`Model's forward raised ValueError: ... (at model.py:12)`, with a hint on the inputs."""
    if not where:
        frame = _model_frame(e, loaded)
        where = f"{os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
    text = str(e).strip()
    raised = f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
    signature = _forward_signature(loaded.model)
    return LoadFailure(
        f"{type(loaded.model).__name__}'s forward raised {raised}"
        + (f" (at {where})" if where else ""),
        hint=f"fxgrad ran it on {_describe_inputs(loaded.inputs or ())} from {loaded.source}; "
        "if the model expects other inputs, give them with one --input per argument of "
        f"{_forward_text(signature)}, e.g. {_input_options(loaded, signature)}. Run the "
        "model without fxgrad for the full traceback.",
    )


def _model_frame(e: BaseException, loaded: Target) -> traceback.FrameSummary | None:
    """The user's frame `e` was raised in, if the model raised it: the traceback passes
    through the model's code and no fxgrad code runs below it. None otherwise."""
    frames = traceback.extract_tb(e.__traceback__)
    files = _model_files(loaded)
    inside = [i for i, fr in enumerate(frames) if os.path.realpath(fr.filename) in files]
    if not inside:
        return None
    below = frames[inside[-1] :]
    if any(_is_fxgrad(fr.filename) for fr in below[1:]):
        return None  # fxgrad code the model called (a patched function) raised
    for fr in reversed(below):  # the innermost frame of the user's own code
        if os.path.realpath(fr.filename) in files or not _is_library(fr.filename):
            return fr
    return below[0]


def _model_files(loaded: Target) -> set[str]:
    """The files of TARGET's module and of the model's module classes, torch's aside."""
    from fxgrad.graph_utils import is_internal

    files = set()
    target_file = getattr(loaded.module, "__file__", None)
    if target_file:
        files.add(os.path.realpath(target_file))
    for cls in {type(m) for m in loaded.model.modules()}:
        for base in cls.__mro__:
            try:
                file = inspect.getfile(base)
            except (TypeError, OSError):
                continue
            if not is_internal(os.path.abspath(file)) and not _is_fxgrad(file):
                files.add(os.path.realpath(file))
    return files


def _fxgrad_dirs() -> tuple[str, ...]:
    import fxgrad.passes

    dirs = {os.path.dirname(os.path.abspath(m.__file__ or "")) for m in (fxgrad, fxgrad.passes)}
    return tuple({p for d in dirs for p in (d, os.path.realpath(d))})


def _is_fxgrad(filename: str) -> bool:
    path = os.path.abspath(filename)
    return any(path.startswith(d + os.sep) for d in _fxgrad_dirs())


def _is_library(filename: str) -> bool:
    """torch, fxgrad, the standard library or an installed package: not the user's code."""
    from fxgrad.graph_utils import is_internal

    if filename.startswith("<") or is_internal(filename) or _is_fxgrad(filename):
        return True
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return any(os.path.abspath(filename).startswith(d + os.sep) for d in dirs)
