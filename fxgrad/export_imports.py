"""How the `module.py` that `fix -o` writes imports what the fixed graph refers to.

The model's own code is imported relative to the written folder (the files the command
line imported by path, noted in `_FILE_MODULES`), other modules by name with an error that
says how to make them importable. Where each object comes from is a question of its own,
apart from rendering the rest of the file in `fxgrad.export_render`.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from typing import Any

from fxgrad.errors import FxgradError

# Modules the CLI imported from a file path: name -> file (the written folder needs them).
_FILE_MODULES: dict[str, Path] = {}


# Modules whose import fails only where torch itself is missing: imported plainly. The
# others (the model's own code, other libraries) go through `_require`, whose error says
# what to do.
_PLAIN_IMPORTS = {"torch", "fxgrad", *sys.stdlib_module_names}


def _resolve(module_name: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module_name)
    for atom in qualname.split("."):
        obj = getattr(obj, atom)
    return obj


def _package_root(module_name: str) -> Path | None:
    """The folder holding the top package of `module_name`, when the CLI imported a file of
    that package (its modules import from there, wherever the written folder is)."""
    top = module_name.split(".")[0]
    for name, path in _FILE_MODULES.items():
        if "." in name and name.split(".")[0] == top:
            return path.parents[name.count(".") + (path.name == "__init__.py")]
    return None


def _model_folder(module_name: str) -> Path | None:
    """The folder of a model file the CLI imported by path, when `module_name` was imported
    from there: a module or package beside the model file (the CLI puts the file's folder
    on sys.path, as python does), which the written folder finds the same way as the file."""
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if not file or not _FILE_MODULES:
        return None
    path = Path(file).resolve()
    levels = module_name.count(".") + (path.name == "__init__.py")
    if levels >= len(path.parents):
        return None
    folder = path.parents[levels]
    return folder if any(folder == f.parent for f in _FILE_MODULES.values()) else None


class _Imports:
    """Import lines for the objects generated code refers to."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lines: list[str] = []
        self.sources: dict[str, str] = {}  # the model's files: module name -> alias
        self.modules: dict[str, str] = {}  # other modules through _require: name -> alias
        # What module.py imports besides torch, fxgrad and the standard library, for the
        # manifest and the load instructions: {"module": name, "file": path from the folder}.
        self.needs: list[dict[str, str]] = []

    def ref(self, obj: Any, what: str = "calls") -> str:
        """An expression evaluating to obj in the written module."""
        module_name = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not module_name or not qualname or "<" in qualname:
            raise FxgradError(
                f"The fixed graph {what} {obj!r}, which cannot be written as an import.",
                hint="Define it at the top level of a module (no lambdas or local functions).",
            )
        if (
            module_name in _FILE_MODULES
            or _package_root(module_name) is not None
            or _model_folder(module_name) is not None
        ):
            return f"{self._source(module_name)}.{qualname}"
        for candidate in (module_name.lstrip("_"), module_name):
            try:
                if _resolve(candidate, qualname) is obj:
                    return f"{self._module(candidate)}.{qualname}"
            except Exception:  # try the next spelling
                continue
        raise FxgradError(
            f"The fixed graph {what} {module_name}.{qualname}, which cannot be imported by "
            "that name.",
            hint="Define it at the top level of an importable module.",
        )

    def _source(self, module_name: str) -> str:
        """The alias of a module the CLI imported from a file (the model's own code), found
        relative to the written folder when it loads."""
        alias = self.sources.get(module_name)
        if alias is not None:
            return alias
        alias = self.sources[module_name] = f"_src_{len(self.sources)}"
        root = _package_root(module_name)
        file = _FILE_MODULES.get(module_name) or getattr(
            sys.modules.get(module_name), "__file__", None
        )
        if file is None and root is not None:  # a package's module the CLI did not import
            file = root.joinpath(*module_name.split(".")).with_suffix(".py")
        if file is None:
            raise FxgradError(
                f"The fixed module calls code from {module_name}, which has no source file "
                "to import it from.",
                hint="Keep that code in a module with a .py file, or save the fixed module "
                "with torch.save instead of writing a folder.",
            )
        if root is None and module_name not in _FILE_MODULES:  # beside the model file
            if "." in module_name or Path(file).name == "__init__.py":
                root = _model_folder(module_name)  # a package: imported by its name
        rel = os.path.relpath(str(file), self.folder)
        if root is not None:  # a package's module: imported from the package's folder
            where = os.path.relpath(root, self.folder)
            self.lines.append(f"{alias} = _source({module_name!r}, {rel!r}, {where!r})")
        else:
            self.lines.append(f"{alias} = _source({module_name!r}, {rel!r})")
        self.needs.append({"module": module_name, "file": rel})
        return alias

    def _module(self, name: str) -> str:
        """The expression for module `name`, imported by name."""
        if name.split(".")[0] in _PLAIN_IMPORTS:
            self.lines.append(f"import {name}")
            return name
        alias = self.modules.get(name)
        if alias is None:
            alias = self.modules[name] = f"_mod_{len(self.modules)}"
            self.lines.append(f"{alias} = _require({name!r})")
            self.needs.append({"module": name})
        return alias

    def add(self, name: str, obj: Any) -> None:
        from torch.fx.graph import _custom_builtins

        if name in _custom_builtins:
            self.lines.append(_custom_builtins[name].import_str)
        elif isinstance(obj, types.ModuleType):
            if obj.__name__.split(".")[0] in _PLAIN_IMPORTS:
                self.lines.append(f"import {obj.__name__} as {name}")
            else:
                self.lines.append(f"{name} = {self._module(obj.__name__)}")
        elif isinstance(obj, (str, int, float, bool)) or obj is None:
            self.lines.append(f"{name} = {obj!r}")
        elif getattr(obj, "_fxgrad_function", None) is not None:  # a custom autograd.Function
            self.lines.append("from fxgrad.runtime import function_apply")
            self.lines.append(f"{name} = function_apply({self.ref(obj._fxgrad_function)})")
        else:
            self.lines.append(f"{name} = {self.ref(obj)}")
