"""Write a fixed graph out of process: Graphviz DOT, and a loadable folder of code + weights.

Used by `fxgrad diff/check --dot FILE` and `fxgrad fix -o DIR`; kept apart from the CLI so
the command layer stays thin and these writers can be used from code.

This module writes the `fix -o` folder safely (staged, never over files fxgrad did not
write) and fills a report's module paths. Its parts live beside it: `fxgrad.export_render`
turns the graph into module.py's text and the files' contents, `fxgrad.export_imports`
finds how that text imports what the graph refers to, `fxgrad.export_template` holds the
text around fx's code, and `fxgrad.export_dot` draws the graph.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import fx

import fxgrad
from fxgrad.errors import FxgradError
from fxgrad.export_dot import graph_to_dot, write_dot
from fxgrad.export_render import _render
from fxgrad.graph_utils import location, source_line
from fxgrad.report import Report

# The writers code and tests import from here, wherever they live.
__all__ = [
    "MANIFEST",
    "check_overwrite",
    "graph_to_dot",
    "module_paths",
    "with_module_paths",
    "write_dot",
    "write_folder",
]


# ---------------------------------------------------------------------------------------
# Module paths of nodes, for grouping a report's rows by block


def module_paths(gm: fx.GraphModule) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Node name -> module path, and `file.py:line` -> the module paths made there.

    The path is the innermost submodule whose forward made the node (`stage2.3`), from the
    tracer's `nn_module_stack`; nodes of the root forward have none.
    """
    by_node: dict[str, str] = {}
    by_where: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        if not isinstance(path, str) or not path:
            continue
        by_node[node.name] = path
        where = location(node)
        if where:
            paths = by_where.setdefault(where, [])
            if path not in paths:
                paths.append(path)
    return by_node, by_where


def with_module_paths(report: Report, gm: fx.GraphModule) -> Report:
    """The report with each change's module path and source line filled in from the graph.

    Only nodes still in the fixed graph are found by name (a change that was kept, or made
    by adding to a node); a rewritten node is gone, and its change keeps what its pass said.
    """
    wanted = {c.node for c in report.changes}
    sources = {n.name: source_line(n) for n in gm.graph.nodes if n.name in wanted}
    return report.with_modules(*module_paths(gm), sources={k: v for k, v in sources.items() if v})


# ---------------------------------------------------------------------------------------
# fix -o DIR: the folder, written safely


# What fxgrad wrote into a folder, with each file's SHA-256: a later run may replace those
# files (and only while unchanged); anything else there is the user's.
MANIFEST = "fxgrad-manifest.json"


# Every file fix -o writes. A manifest vouches for these names only, so a crafted one can
# never make fxgrad replace or remove another file.
_FILES = ("module.py", "__init__.py", "state_dict.pt", "objects.pt", MANIFEST)


def write_folder(fixed: fxgrad.FixedModule, folder: str | Path, force: bool = False) -> str:
    """Write the fixed graph as a folder; return the class name.

    The folder holds `module.py` (the code, its imports and a class that loads the
    weights), `__init__.py`, `state_dict.pt`, `objects.pt` when the graph keeps
    submodules or values that are not tensors, and `fxgrad-manifest.json`. Nothing in it
    is loaded by running pickled code: a kept submodule's class is imported by name.

    Files of those names that fxgrad did not write (or that changed since) are replaced
    only with `force`. The files are built in a new folder beside the target (inside it,
    when it exists) and moved into place once all are written, so a failure leaves the
    target as it was.
    """
    folder = Path(os.path.abspath(folder))
    class_name, text, contents = _render(fixed, folder)
    files = ["module.py", "__init__.py", "state_dict.pt"]
    files += ["objects.pt"] if contents.objects else []
    ours = check_overwrite(folder, force, [*files, MANIFEST])
    stage = _stage(folder)
    try:
        _inside(stage, "module.py").write_text(text)
        _inside(stage, "__init__.py").write_text(f"from .module import {class_name}\n")
        state = {k: v.detach().cpu() for k, v in contents.state.items()}
        torch.save(state, _inside(stage, "state_dict.pt"))
        if contents.objects:
            torch.save(contents.objects, _inside(stage, "objects.pt"))
        manifest = {
            "written_by": "fxgrad",
            "version": fxgrad.__version__,
            "class": class_name,
            "needs": contents.needs,
            "files": {name: _digest(stage / name) for name in files},
        }
        _inside(stage, MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _move_into_place(stage, folder, [*files, MANIFEST], stale=ours - {*files, MANIFEST})
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return class_name


def check_overwrite(
    folder: str | Path, force: bool = False, names: list[str] | None = None
) -> set[str]:
    """Refuse (FxgradError) to write `names` (by default the files every folder has) into
    `folder` where a file of that name is not fxgrad's own unchanged output, unless
    `force`. Return the files of `folder` that are fxgrad's."""
    folder = Path(os.path.abspath(folder))
    if folder.exists() and not folder.is_dir():
        raise FxgradError(f"{folder} is a file, not a folder.", hint="Pass a folder to write to.")
    if not folder.is_dir():
        return set()
    ours = _own_files(folder)
    wanted = names if names is not None else ["module.py", "__init__.py", "state_dict.pt", MANIFEST]
    theirs = [n for n in wanted if os.path.lexists(folder / n) and n not in ours]
    if theirs and not force:
        raise FxgradError(
            f"{folder} already holds {', '.join(theirs)}, which fxgrad did not write (or "
            "which changed since it did); fxgrad does not overwrite them.",
            hint="Pass --force (force=True from Python) to replace them, or write to "
            "another folder.",
        )
    return ours


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == "fxgrad" else None


def _own_files(folder: Path) -> set[str]:
    """The files of `folder` fxgrad wrote that nobody changed since: its manifest, and the
    files the manifest lists with the contents it records."""
    manifest = _manifest(folder)
    if manifest is None:
        return set()
    files = manifest.get("files")
    ours = {MANIFEST}
    for name, digest in (files if isinstance(files, dict) else {}).items():
        path = folder / name
        if name in _FILES and path.is_file() and not path.is_symlink() and _digest(path) == digest:
            ours.add(name)
    return ours


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _stage(folder: Path) -> Path:
    """A new empty folder on the file system of `folder`, to build the output in: beside
    it while it does not exist, else inside it (its parent may not be writable: `-o .`)."""
    if folder.is_dir():
        parent, prefix = folder, ".fxgrad-tmp-"
    else:
        parent, prefix = folder.parent, f".{folder.name}.fxgrad-tmp-"
        parent.mkdir(parents=True, exist_ok=True)
    while True:
        stage = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            stage.mkdir()  # not mkdtemp: a new folder gets the umask's permissions
            return stage
        except FileExistsError:
            continue


def _move_into_place(stage: Path, folder: Path, files: list[str], stale: set[str]) -> None:
    """The staged files into `folder`: one rename of the whole folder while it does not
    exist, else one rename per file, the manifest last; then fxgrad's own earlier files
    that this output no longer has go."""
    if not folder.exists():
        os.rename(stage, folder)
        return
    for name in files:
        os.replace(_inside(stage, name), _inside(folder, name))
    for name in stale:
        _inside(folder, name).unlink(missing_ok=True)


def _inside(folder: Path, name: str) -> Path:
    """`folder / name`, checked to be a file directly inside `folder`: nothing fxgrad
    writes lands elsewhere, whatever the model's names are."""
    path = Path(os.path.normpath(folder / name))
    if name in ("", os.curdir, os.pardir) or path.parent != Path(os.path.normpath(folder)):
        raise FxgradError(f"Refusing to write {name!r}, which is not a file name inside {folder}.")
    return path


def _load_instructions(folder: Path, class_name: str) -> str:
    folder = Path(os.path.abspath(folder))  # loads from any directory
    if folder.name.isidentifier():
        text = (
            f"load it with:\n"
            f"    import sys; sys.path.insert(0, {str(folder.parent)!r})\n"
            f"    from {folder.name} import {class_name}\n"
            f"    model = {class_name}()"
        )
    else:
        text = (
            f"load it with:\n"
            f"    import runpy\n"
            f"    model = runpy.run_path({str(folder / 'module.py')!r})[{class_name!r}]()"
        )
    needs = (_manifest(folder) or {}).get("needs") or []
    files = [n["file"] for n in needs if "file" in n]
    modules = [n["module"] for n in needs if "file" not in n]
    if files:
        text += (
            f"\nit imports the model's own code from {', '.join(files)} (relative to the "
            "folder); if the folder moves without that code, put the folder that holds it "
            "on sys.path or PYTHONPATH"
        )
    if modules:
        text += f"\nit imports {', '.join(modules)}, which must be importable where it loads"
    return text
