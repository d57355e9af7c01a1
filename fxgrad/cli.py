"""The `fxgrad` command line: check, diff, fix, explain, passes.

A thin click layer over `fxgrad.check` and `fxgrad.fix`. It loads a TARGET
(`path/to/model.py:NAME` or `package.module:NAME`), builds example inputs, and prints
the Report's renderers. It catches `FxgradError` (and the loading errors it raises
itself), and what the model's own code raises (told apart by its traceback); anything
else keeps its traceback, because it is a bug.

torch is imported only by the commands that load a model: `fxgrad --help`, `fxgrad passes`
and `fxgrad explain CODE` answer at once.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import sysconfig
import textwrap
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import fxgrad
from fxgrad.errors import FxgradError, ModelError, SelectionError, TraceError, inputs_hint

if TYPE_CHECKING:
    import torch
    from torch import nn

EXIT_CODES = """\b
Exit codes:
  0  nothing to do
  1  findings: rewrites proposed (check, diff) or made (fix), hazards left as
     is, or eager backward fails
  2  usage error (bad option, --input syntax or pass code)
  3  the model cannot be loaded, built or traced, or its forward raises on
     the example inputs"""

TARGET_HELP = """\b
TARGET is path/to/model.py:NAME or package.module:NAME, where NAME is an
nn.Module subclass (built with no arguments), a module instance, or a function
returning a module or (module, example_inputs).
Example inputs come from, in this order: --input, --inputs-from, the inputs
NAME returned, or an inputs() function next to NAME. Without any, fxgrad
decides statically."""


# ---------------------------------------------------------------------------------------
# Errors


class UsageFailure(FxgradError):
    """A mistake in how the command was called (exit code 2)."""


class LoadFailure(FxgradError):
    """The target could not be imported, found or built (exit code 3)."""


def _exit_code(error: FxgradError) -> int:
    return 2 if isinstance(error, (UsageFailure, SelectionError)) else 3


def _fail(error: FxgradError) -> None:
    click.echo(f"error: {error.message}", err=True)
    if error.hint:
        click.echo(f"hint: {error.hint}", err=True)
    click.get_current_context().exit(_exit_code(error))


class _Command(click.Command):
    """A command that turns FxgradError into `error: ...` plus the hint and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FxgradError as e:
            _fail(e)


def _usage_lines(error: click.UsageError) -> tuple[str, str]:
    """click's usage error as fxgrad's `error: ...` and `hint: ...` lines."""
    message = error.format_message().strip()
    suggestion = ""
    m = re.match(r"(?s)^(.*?[.!?])\s*\(?(Did you mean .*?)\)?$", message)
    if m is not None:
        message, suggestion = m.group(1), m.group(2)
    ctx = error.ctx
    path = ctx.command_path if ctx is not None else "fxgrad"
    if isinstance(error, click.MissingParameter) and "TARGET" in message:
        hint = (
            "Write path/to/model.py:NAME or package.module:NAME, e.g. "
            f"`{path} examples/unsafe_inplace.py:Model`."
        )
    elif ctx is not None and isinstance(ctx.command, click.Group) and "command" in message:
        commands = ", ".join(ctx.command.list_commands(ctx))
        hint = f"The commands are: {commands}. Run `{path} --help` for what each does."
    else:
        hint = f"Run `{path} --help` for the options."
    if suggestion:
        hint = f"{suggestion} {hint}"
    return message, hint


class _UsageFailure(click.ClickException):
    """A click usage error shown as `error: ...` and `hint: ...` (exit code 2)."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        self.message_text, self.hint = _usage_lines(error)
        super().__init__(self.message_text)

    def show(self, _file: Any = None) -> None:
        click.echo(f"error: {self.message_text}", err=True)
        click.echo(f"hint: {self.hint}", err=True)


class _Group(click.Group):
    command_class = _Command

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        return _usage_errors(super().make_context, *args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        return _usage_errors(super().invoke, ctx)


def _usage_errors(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except click.exceptions.NoArgsIsHelpError:
        raise  # `fxgrad` alone prints the help
    except click.UsageError as e:
        raise _UsageFailure(e) from None


# ---------------------------------------------------------------------------------------
# Example inputs: --input 'float32[8,3,224,224]'

_INPUT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)?\s*\[\s*([0-9,\s]*)\]\s*$")
_INPUT_HINT = (
    "Write a dtype and a shape in brackets, e.g. --input 'float32[8,3,224,224]' or "
    "--input 'int64[4,16]'; the dtype may be left out (float32)."
)


def parse_input(spec: str) -> torch.Tensor:
    """Build a random tensor from `dtype[d0,d1,...]`; integers are 0 or 1, bools random."""
    import torch

    m = _INPUT.match(spec)
    if m is None:
        raise UsageFailure(f"--input {spec!r} is not of the form dtype[shape].", hint=_INPUT_HINT)
    name, dims = m.group(1) or "float32", m.group(2)
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UsageFailure(f"--input {spec!r}: {name!r} is not a torch dtype.", hint=_INPUT_HINT)
    parts = [p.strip() for p in dims.split(",")] if dims.strip() else []
    if any(not p for p in parts):
        raise UsageFailure(f"--input {spec!r} has an empty dimension.", hint=_INPUT_HINT)
    shape = [int(p) for p in parts]
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape).bool()
    return torch.randint(0, 2, shape, dtype=dtype)


# ---------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    """A loaded model and where its example inputs came from."""

    model: nn.Module
    inputs: tuple | None
    module: types.ModuleType
    spec: str
    source: str = ""  # where the inputs came from: "--input", "model.py:inputs()", ...


def _user_line(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    here = os.path.dirname(os.path.abspath(__file__))
    for fr in reversed(frames):
        if not os.path.abspath(fr.filename).startswith(here) and "importlib" not in fr.filename:
            return f" at {os.path.basename(fr.filename)}:{fr.lineno}"
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _package_module(path: Path) -> tuple[str, Path] | None:
    """`pkg.sub.model` and the folder holding `pkg` for a file inside a package, else None.

    A package is a folder with an `__init__.py`; the name climbs while the parents are
    packages, as `python -m pkg.sub.model` would see it.
    """
    parts = [] if path.name == "__init__.py" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.name.isidentifier():
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts), folder


def _import_package_file(path: Path, name: str, root: Path) -> types.ModuleType | None:
    """Import a file inside a package as `name` (relative imports work); None if shadowed."""
    from fxgrad.export_imports import _FILE_MODULES

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded if _same_file(getattr(loaded, "__file__", None), path) else None
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None  # a parent package of that name exists elsewhere and fails
    if found is None or not _same_file(found.origin, path):
        return None  # another package of that name comes first on the import path
    try:
        module = importlib.import_module(name)
    except Exception as e:
        raise LoadFailure(
            f"Importing {path.name} as {name} failed{_user_line(e)}: {_first_line(e)}",
            hint=f"Run `python -c 'import {name}'` from {root} to see the full traceback.",
        ) from e
    _FILE_MODULES[name] = path
    return module


def _same_file(a: str | None, b: Path) -> bool:
    try:
        return a is not None and Path(a).resolve() == b
    except OSError:
        return False


def _import_file(path: Path, spec: str) -> types.ModuleType:
    from fxgrad.export_imports import _FILE_MODULES

    if not path.is_file():
        raise LoadFailure(
            f"No such file: {path}.",
            hint=f"Check the path in {spec!r}; it is relative to the current directory.",
        )
    path = path.resolve()
    package = _package_module(path)
    if package is not None:
        module = _import_package_file(path, *package)
        if module is not None:
            # like `python model.py` too: absolute imports of siblings still resolve
            if str(path.parent) not in sys.path:
                sys.path.append(str(path.parent))
            return module
    stem = path.stem
    name = stem if stem.isidentifier() else "fxgrad_target_" + re.sub(r"\W", "_", stem)
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) != str(path):
        name = "fxgrad_target_" + name
    elif existing is None and importlib.util.find_spec(name) is not None:
        name = "fxgrad_target_" + name  # never shadow an importable module
    # like `python model.py`: the file's folder comes first, so sibling imports work
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise LoadFailure(
            f"Importing {path.name} failed{_user_line(e)}: {_first_line(e)}",
            hint="Run `python` on the file to see the full traceback.",
        ) from e
    _FILE_MODULES[name] = path
    return module


def _import_module(name: str, spec: str) -> types.ModuleType:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise LoadFailure(
                f"No module named {name!r}.",
                hint=f"Check {spec!r}: a file needs its .py suffix (path/to/model.py:NAME), "
                "a module must be importable from the current directory or environment.",
            ) from e
        raise LoadFailure(
            f"Importing {name} failed{_user_line(e)}: {_first_line(e)}",
            hint="Install what the model's module imports, or run `python -c 'import "
            f"{name}'` to see the full traceback.",
        ) from e
    except Exception as e:
        raise LoadFailure(
            f"Importing {name} failed{_user_line(e)}: {_first_line(e)}",
            hint=f"Run `python -c 'import {name}'` to see the full traceback.",
        ) from e
    _remember_local(module)
    return module


def _remember_local(module: types.ModuleType) -> None:
    """Note a module that lives under the current directory: `fix -o` writes code that
    imports it relative to the written folder, not from the import path."""
    from fxgrad.export_imports import _FILE_MODULES

    file = getattr(module, "__file__", None)
    if not file:
        return
    path = Path(file).resolve()
    if Path.cwd().resolve() in path.parents:
        _FILE_MODULES[module.__name__] = path


def _split_target(spec: str) -> tuple[str, str]:
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise UsageFailure(
            f"TARGET {spec!r} names no model.",
            hint="Write path/to/model.py:NAME or package.module:NAME, e.g. "
            "examples/unsafe_inplace.py:Model.",
        )
    if not all(part.isidentifier() for part in name.split(".")):
        raise UsageFailure(
            f"{name!r} in TARGET {spec!r} is not a Python name.",
            hint="NAME is a class, instance or function defined in the file or module.",
        )
    return where, name


def _lookup(module: types.ModuleType, name: str, what: str, spec: str) -> Any:
    from torch import nn

    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            defined = sorted(
                n
                for n, v in vars(module).items()
                if not n.startswith("_")
                and (isinstance(v, nn.Module) or (isinstance(v, type) and issubclass(v, nn.Module)))
                and getattr(v, "__module__", module.__name__) == module.__name__
            )
            listed = ", ".join(defined) if defined else "none"
            raise LoadFailure(
                f"{what} {name!r} is not defined in {spec.rpartition(':')[0]}.",
                hint=f"Modules defined there: {listed}.",
            )
        obj = getattr(obj, part)
    return obj


def _call(fn: Callable[[], Any], label: str) -> Any:
    try:
        return fn()
    except FxgradError:
        raise
    except Exception as e:
        raise LoadFailure(
            f"Building {label} failed{_user_line(e)}: {_first_line(e)}",
            hint="TARGET must build with no arguments; point it at a function that builds "
            "the model, e.g. model.py:make_model.",
        ) from e


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _as_inputs(value: Any, label: str) -> tuple:
    import torch

    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)):
        return tuple(value)
    raise LoadFailure(
        f"{label} gave {_a(type(value).__name__)}, not example inputs.",
        hint="Return a tuple of the forward's positional arguments, e.g. (torch.randn(4, 8),).",
    )


def load_target(
    spec: str,
    input_specs: tuple[str, ...] = (),
    inputs_from: str | None = None,
    training: bool | None = None,
) -> Target:
    """Import TARGET, build the model and its example inputs, and set its mode.

    As with `python -m`, the current directory comes first on the import path, so
    `package.module:NAME` finds the packages in it.
    """
    import torch

    if input_specs and inputs_from:
        raise UsageFailure(
            "--input and --inputs-from both give example inputs.",
            hint="Use one of them.",
        )
    torch.manual_seed(0)  # example inputs and initial weights are the same on every run
    explicit = tuple(parse_input(s) for s in input_specs) or None
    module, name = _import_target(spec)
    model, built_inputs = _build(_lookup(module, name, "NAME", spec), name)
    _check_forward(model)
    inputs, source = _example_inputs(module, spec, name, explicit, inputs_from, built_inputs)
    if training is not None:
        model.train(training)
    return Target(model, inputs, module, spec, source)


def _import_target(spec: str) -> tuple[types.ModuleType, str]:
    """The file or module TARGET names, imported, and the NAME in it."""
    where, name = _split_target(spec)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    if where.endswith(".py") or "/" in where or os.sep in where:
        return _import_file(Path(where), spec), name
    return _import_module(where, spec), name


def _build(obj: Any, name: str) -> tuple[Any, tuple | None]:
    """The model NAME gives (an instance, a class, or a function building one), and the
    example inputs a function returned beside it."""
    from torch import nn

    if isinstance(obj, nn.Module):
        return obj, None
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return _call(obj, f"{name}()"), None
    if callable(obj) and not isinstance(obj, type):
        built = _call(obj, f"{name}()")
        if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
            return built[0], _as_inputs(built[1], f"{name}()")
        if not isinstance(built, nn.Module):
            raise LoadFailure(
                f"{name}() returned {_a(type(built).__name__)}, not an nn.Module.",
                hint="Return the model, or (model, example_inputs).",
            )
        return built, None
    kind = "a class" if isinstance(obj, type) else _a(type(obj).__name__)
    raise LoadFailure(
        f"{name} is {kind}, not an nn.Module.",
        hint="NAME must be an nn.Module subclass, an instance, or a function returning one.",
    )


def _example_inputs(
    module: types.ModuleType,
    spec: str,
    name: str,
    explicit: tuple | None,
    inputs_from: str | None,
    built: tuple | None,
) -> tuple[tuple | None, str]:
    """--input, else --inputs-from, else what NAME() returned, else the file's inputs();
    with where they came from (`--input`, `model.py:inputs()`), or "" for none."""
    where = _file_label(spec)
    if explicit is not None:
        return explicit, "--input"
    if inputs_from:
        source = _lookup(module, inputs_from, "--inputs-from", spec)
        if callable(source):
            value = _call(source, f"{inputs_from}()")
            return _as_inputs(value, f"--inputs-from {inputs_from}"), f"{where}:{inputs_from}()"
        return _as_inputs(source, f"--inputs-from {inputs_from}"), f"{where}:{inputs_from}"
    if built is None and callable(getattr(module, "inputs", None)):
        return _as_inputs(_call(module.inputs, "inputs()"), "inputs()"), f"{where}:inputs()"
    return built, f"{where}:{name}()" if built is not None else ""


def _file_label(spec: str) -> str:
    """TARGET's file as the table names files (`model.py`), or its module (`pkg.model`)."""
    where = spec.rpartition(":")[0]
    if where.endswith(".py") or "/" in where or os.sep in where:
        return os.path.basename(where)
    return where


def _check_forward(model: nn.Module) -> None:
    from torch import nn

    if getattr(model.forward, "__func__", None) is nn.Module.forward:
        cls = type(model).__name__
        raise LoadFailure(
            f"{cls} has no forward method.",
            hint=f"Define forward() in {cls}, or point TARGET at the module that has one.",
        )


def split_codes(value: str | None) -> list[str] | None:
    """Turn 'FXG1, FXG201' into ['FXG1', 'FXG201']; None when nothing was given."""
    if not value:
        return None
    return [c.strip() for c in value.split(",") if c.strip()]


# ---------------------------------------------------------------------------------------
# Commands


def _target_options(fn: Callable) -> Callable:
    decorators = [
        click.argument("target"),
        click.option(
            "--input",
            "input_specs",
            multiple=True,
            metavar="DTYPE[SHAPE]",
            help="An example input, e.g. 'float32[8,3,224,224]' or 'int64[4,16]'; repeat "
            "for each positional argument. The dtype defaults to float32; integer dtypes "
            "get 0s and 1s.",
        ),
        click.option(
            "--inputs-from",
            metavar="NAME",
            help="A function (or tuple) in TARGET's file or module giving the example inputs.",
        ),
        click.option(
            "--train/--eval",
            "training",
            default=None,
            help="Put the model in training or eval mode first (default: as built).",
        ),
        click.option(
            "--select",
            metavar="CODES",
            help="Only these codes, prefixes or pass names, e.g. FXG1,FXG201 or inplace-op.",
        ),
        click.option("--ignore", metavar="CODES", help="Skip these codes, prefixes or pass names."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "json"]),
            default="table",
            show_default=True,
            help="json prints the report as JSON on stdout.",
        ),
        click.option(
            "--dot",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help="Write the fixed graph as Graphviz DOT, changed nodes highlighted "
            "(and an SVG when `dot` is installed).",
        ),
        click.option(
            "-v",
            "--verbose",
            is_flag=True,
            help="Also show the layout decisions to keep code as is (FXG201's measurements).",
        ),
        click.option(
            "--no-measure",
            "no_measure",
            is_flag=True,
            help="Time nothing: measured passes (FXG201) apply only decisions cached earlier.",
        ),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def _run(
    target: str,
    input_specs: tuple[str, ...],
    inputs_from: str | None,
    training: bool | None,
    select: str | None,
    ignore: str | None,
    no_measure: bool = False,
) -> fxgrad.FixedModule:
    """Load TARGET and fix it; the report will say where the example inputs came from."""
    loaded = load_target(target, input_specs, inputs_from, training)
    click.get_current_context().meta[_INPUTS_FROM] = loaded.source
    try:
        fixed = _fix(loaded, select, ignore, no_measure)
    except Exception as e:
        error = _in_cli_words(e, loaded)
        if error is None:
            raise  # a bug in fxgrad: keep its traceback
        if error is e:
            raise
        raise error from e
    return fixed


def _fix(
    loaded: Target, select: str | None, ignore: str | None, no_measure: bool
) -> fxgrad.FixedModule:
    if loaded.inputs is None:  # nothing to run the model on: decide statically
        from fxgrad.api import fix_static

        return fix_static(loaded.model, select=split_codes(select), ignore=split_codes(ignore))
    _check_signature(loaded)
    return fxgrad.fix(
        loaded.model,
        loaded.inputs,
        select=split_codes(select),
        ignore=split_codes(ignore),
        measure=False if no_measure else None,
    )


# ---------------------------------------------------------------------------------------
# Example inputs and the model's own errors, in the command line's words


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
    from fxgrad.graph_utils import _is_internal

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
            if not _is_internal(os.path.abspath(file)) and not _is_fxgrad(file):
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
    from fxgrad.graph_utils import _is_internal

    if filename.startswith("<") or _is_internal(filename) or _is_fxgrad(filename):
        return True
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return any(os.path.abspath(filename).startswith(d + os.sep) for d in dirs)


_INPUTS_FROM = "fxgrad.inputs_from"  # click's context meta: where _run's inputs came from


def _report(fixed: fxgrad.FixedModule) -> fxgrad.Report:
    """The report, each change naming the block it is in (for one row per repeated block),
    and where the example inputs came from."""
    from fxgrad.export import with_module_paths
    from fxgrad.fixed import captured_by_dynamo

    if captured_by_dynamo(fixed):  # captured by Dynamo: one graph per piece
        report = fixed.report
    else:
        report = with_module_paths(fixed.report, fixed.graph_module)
    inputs_from = click.get_current_context().meta.get(_INPUTS_FROM, "")
    return dataclasses.replace(report, inputs_from=inputs_from)


def _write_dot(dot: str | None, fixed: fxgrad.FixedModule, report: fxgrad.Report) -> None:
    if dot:
        from fxgrad.export_dot import write_dot

        write_dot(dot, fixed.graph_module, report)


@click.group(
    cls=_Group, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(fxgrad.__version__, prog_name="fxgrad")
def main() -> None:
    """Find and rewrite what breaks or slows autograd in a PyTorch model."""


@main.command(epilog=TARGET_HELP + "\n\n" + EXIT_CODES)
@_target_options
def check(
    target, input_specs, inputs_from, training, select, ignore, fmt, dot, verbose, no_measure
):
    """Show the hazards fxgrad finds in TARGET and what it would change.

    Exits 1 when there is anything to act on, as a linter does.
    """
    fixed = _run(target, input_specs, inputs_from, training, select, ignore, no_measure)
    report = _report(fixed)
    click.echo(report.to_json() if fmt == "json" else report.table(verbose=verbose))
    _write_dot(dot, fixed, report)
    click.get_current_context().exit(report.exit_code)


@main.command(epilog=TARGET_HELP + "\n\n" + EXIT_CODES)
@_target_options
@click.option(
    "--color/--no-color",
    default=None,
    help="Colour the diff (default: when stdout is a terminal).",
)
def diff(
    target, input_specs, inputs_from, training, select, ignore, fmt, dot, verbose, no_measure, color
):
    """Show a unified diff of TARGET's generated code before and after; writes nothing.

    The diff goes to stdout, the table of changes to stderr.
    """
    fixed = _run(target, input_specs, inputs_from, training, select, ignore, no_measure)
    report = _report(fixed)
    if fmt == "json":
        click.echo(report.to_json())
    else:
        if color is None:
            color = sys.stdout.isatty()
        text = report.diff(color=color)
        if text:
            click.echo(text, nl=False, color=color)
        click.echo(report.table(verbose=verbose), err=True)
    _write_dot(dot, fixed, report)
    click.get_current_context().exit(report.exit_code)


@main.command(epilog=TARGET_HELP + "\n\n" + EXIT_CODES)
@_target_options
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write module.py and state_dict.pt into.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite files in the output folder that fxgrad did not write.",
)
def fix(
    target,
    input_specs,
    inputs_from,
    training,
    select,
    ignore,
    fmt,
    dot,
    verbose,
    no_measure,
    output,
    force,
):
    """Write TARGET's fixed graph to a folder as importable code and weights.

    The folder holds module.py (the code, its imports and a class that loads the
    weights) and state_dict.pt. The report goes to stderr (stdout with --format json).
    """
    from fxgrad.export import _load_instructions, check_overwrite, write_folder

    folder = Path(output)
    try:
        check_overwrite(folder, force)  # before the capture, which can take a while
    except FxgradError as e:
        raise UsageFailure(e.message, e.hint) from e
    fixed = _run(target, input_specs, inputs_from, training, select, ignore, no_measure)
    report = _report(fixed)
    class_name = write_folder(fixed, folder, force=force)
    if fmt == "json":
        click.echo(report.to_json())
    else:
        click.echo(report.table(verbose=verbose), err=True)
    mode = "training" if fixed.training else "eval"
    click.echo(
        f"wrote {folder / 'module.py'} and {folder / 'state_dict.pt'} ({mode} mode)", err=True
    )
    click.echo(_load_instructions(folder, class_name), err=fmt == "json")
    _write_dot(dot, fixed, report)
    click.get_current_context().exit(report.exit_code)


def _find_pass(code: str) -> Any:
    from fxgrad.registry import pass_docs

    docs = pass_docs()
    wanted = code.strip()
    for p in docs:
        if p.code.upper() == wanted.upper() or p.name == wanted.lower():
            return p
    valid = ", ".join(f"{p.code} ({p.name})" for p in docs)
    raise UsageFailure(f"No pass has the code {code!r}.", hint=f"Valid codes are: {valid}.")


def _capture_doc() -> str:
    """fxgrad.trace.CAPTURE_DOC, read from the source so that torch need not load."""
    import ast

    loaded = sys.modules.get("fxgrad.trace")
    if loaded is None:
        try:
            tree = ast.parse(Path(__file__).with_name("trace.py").read_text(encoding="utf-8"))
            for stmt in tree.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "CAPTURE_DOC" for t in stmt.targets)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                ):
                    return stmt.value.value
        except (OSError, SyntaxError):
            pass
    from fxgrad.trace import CAPTURE_DOC

    return CAPTURE_DOC


@main.command(epilog=EXIT_CODES)
@click.argument("code")
def explain(code):
    """Print the documentation of a pass; CODE is its code (FXG101) or name, or `capture`."""
    if code.strip().lower() == "capture":
        click.echo(_capture_doc().strip())
        return
    p = _find_pass(code)
    click.echo(textwrap.dedent(p.doc).strip())


@main.command(epilog=EXIT_CODES)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def passes(fmt):
    """List the passes in the order they run, with their codes."""
    from tabulate import tabulate

    from fxgrad.registry import pass_docs

    rows = [
        {
            "code": p.code,
            "name": p.name,
            "default": p.default,
            "kind": p.kind.value,
            "summary": p.summary,
        }
        for p in pass_docs()
    ]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = [[r["code"], r["name"], "on" if r["default"] else "off", r["summary"]] for r in rows]
    fixed = sum(max(len(str(r[i])) for r in table) + 2 for i in range(3)) + 8
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120) - fixed)
    click.echo(
        tabulate(
            table,
            headers=["code", "name", "default", "what it does"],
            maxcolwidths=[None, None, None, width],
        )
    )
    click.echo(
        "\nRun `fxgrad explain CODE` for the full documentation of a pass, and "
        "`fxgrad explain capture` for what capture supports."
    )
