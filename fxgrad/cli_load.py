"""Load a command line TARGET: import its file or module, build the model and its inputs.

`fxgrad check`, `diff` and `fix` start here. It is apart from the commands because it is
the part that imports the user's code, the way `python` would, and says in the command
line's words what went wrong; torch is imported inside its functions only, so that
`fxgrad passes` and `fxgrad explain` never load it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fxgrad.cli_errors import LoadFailure, UsageFailure
from fxgrad.errors import FxgradError, first_line
from fxgrad.export_imports import _FILE_MODULES

if TYPE_CHECKING:
    import torch
    from torch import nn


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
            f"Importing {path.name} as {name} failed{_user_line(e)}: {first_line(e, named=True)}",
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
            f"Importing {path.name} failed{_user_line(e)}: {first_line(e, named=True)}",
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
            f"Importing {name} failed{_user_line(e)}: {first_line(e, named=True)}",
            hint="Install what the model's module imports, or run `python -c 'import "
            f"{name}'` to see the full traceback.",
        ) from e
    except Exception as e:
        raise LoadFailure(
            f"Importing {name} failed{_user_line(e)}: {first_line(e, named=True)}",
            hint=f"Run `python -c 'import {name}'` to see the full traceback.",
        ) from e
    _remember_local(module)
    return module


def _remember_local(module: types.ModuleType) -> None:
    """Note a module that lives under the current directory: `fix -o` writes code that
    imports it relative to the written folder, not from the import path."""
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
            f"Building {label} failed{_user_line(e)}: {first_line(e, named=True)}",
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
