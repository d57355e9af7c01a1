"""Write a fixed graph out of process: Graphviz DOT, and a loadable folder of code + weights.

Used by `fxgrad diff/check --dot FILE` and `fxgrad fix -o DIR`; kept apart from the CLI so
the command layer stays thin and these writers can be used from code.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

import fxgrad
from fxgrad.errors import FxgradError
from fxgrad.fixed import current_variant
from fxgrad.report import Report

# Modules the CLI imported from a file path: name -> file (the written folder needs them).
_FILE_MODULES: dict[str, Path] = {}

# ---------------------------------------------------------------------------------------
# Module paths of nodes, for grouping a report's rows by block


def module_paths(gm: fx.GraphModule) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Node name -> module path, and `file.py:line` -> the module paths made there.

    The path is the innermost submodule whose forward made the node (`stage2.3`), from the
    tracer's `nn_module_stack`; nodes of the root forward have none.
    """
    from fxgrad.graph_utils import location

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
    from fxgrad.graph_utils import source_line

    wanted = {c.node for c in report.changes}
    sources = {n.name: source_line(n) for n in gm.graph.nodes if n.name in wanted}
    return report.with_modules(*module_paths(gm), sources={k: v for k, v in sources.items() if v})


# ---------------------------------------------------------------------------------------
# Graphviz


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _names_in(code: str) -> set[str]:
    names = set(re.findall(r"^\s*(\w+)\s*=", code, flags=re.M))
    sig = re.search(r"def forward\(self,?([^)]*)\)", code)
    if sig:
        names.update(p.split(":")[0].split("=")[0].strip() for p in sig.group(1).split(","))
    return names


def graph_to_dot(gm: fx.GraphModule, report: Report) -> str:
    """Graphviz DOT text of the graph; changed and new nodes are highlighted."""
    changed: dict[str, list[str]] = {}
    for c in report.applied:
        assigned = re.match(r"\s*(\w+)\s*=", c.after)  # `mul = sigmoid.mul(2)` names the new node
        for name in {c.node, assigned.group(1) if assigned else c.node}:
            changed.setdefault(name, []).append(c.code)
    before = _names_in(report.code_before)
    lines = [
        f"digraph {_dot_quote(report.model or 'model')} {{",
        "  node [shape=box, fontname=monospace, fontsize=10];",
    ]
    for node in gm.graph.nodes:
        target = (
            node.target
            if isinstance(node.target, str)
            else fx.node._get_qualified_name(node.target)
        )
        label = node.name if node.op == "output" else f"{node.name}\n{node.op} {target}"
        attrs = []
        if node.name in changed:
            label += "\n" + ", ".join(changed[node.name])
            attrs.append('style=filled, fillcolor="#ffd27f"')
        elif before and node.name not in before and node.op not in ("placeholder", "output"):
            label += "\n(new)"
            attrs.append('style=filled, fillcolor="#b6e3b6"')
        extra = (", " + ", ".join(attrs)) if attrs else ""
        lines.append(f"  {_dot_quote(node.name)} [label={_dot_quote(label)}{extra}];")
    for node in gm.graph.nodes:
        for arg in node.all_input_nodes:
            lines.append(f"  {_dot_quote(arg.name)} -> {_dot_quote(node.name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(path: str, gm: fx.GraphModule, report: Report) -> None:
    """Write the DOT file, and an SVG beside it when Graphviz's `dot` is on the PATH."""
    Path(path).write_text(graph_to_dot(gm, report))
    dot = shutil.which("dot")
    if dot is None:
        print(f"wrote {path} (install Graphviz for an SVG)", file=sys.stderr)
        return
    svg = str(Path(path).with_suffix(".svg"))
    done = subprocess.run([dot, "-Tsvg", path, "-o", svg], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"wrote {path}; dot failed: {done.stderr.strip()}", file=sys.stderr)
    else:
        print(f"wrote {path} and {svg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------
# fix -o DIR: the fixed graph as importable code, a state dict and the objects it keeps

# The written module.py: fx's code for the graph (graph_forward), inside a module that
# rebuilds the submodules and tensors it reads and loads their weights. Nothing it loads
# runs pickled code: every torch.load is weights_only=True, and the only classes
# objects.pt may rebuild are the ones this file imports by name.
_MODULE = string.Template('''\
"""${class_name}: ${model} with fxgrad's rewrites applied.

Written by `fxgrad fix`. forward takes the tensors the model was captured with, in
this order: ${params}. Weights are in state_dict.pt next to this file.
"""

import importlib
import io
import importlib.util
import os
import sys

import torch
import torch.utils._pytree as _fxgrad_pytree

_HERE = os.path.dirname(os.path.abspath(__file__))


def _install(root, target, value):
    """Set root.<target> (a dotted path), creating plain modules on the way."""
    *path, leaf = target.split(".")
    for atom in path:
        if not hasattr(root, atom):
            root.add_module(atom, torch.nn.Module())
        root = getattr(root, atom)
    if isinstance(value, torch.nn.Parameter):
        root.register_parameter(leaf, value)
    elif isinstance(value, torch.Tensor):
        root.register_buffer(leaf, value)
    else:
        root.add_module(leaf, value)


def _source(name, relpath, root=None):
    """Import the model's own code the graph refers to: the file at `relpath` from this
    folder, else a file of that name in a folder on sys.path.

    A file inside a package (`root` holds its top package) is imported by its package name,
    so that its relative imports work.
    """
    if name in sys.modules:
        return sys.modules[name]
    if root is not None:
        root = os.path.normpath(os.path.join(_HERE, root))
        if os.path.isdir(root) and root not in sys.path:
            sys.path.insert(0, root)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not _names(e, name):
                raise
            raise _missing(name, relpath, package=True) from None
    path = os.path.normpath(os.path.join(_HERE, relpath))
    if not os.path.isfile(path):
        filename = os.path.basename(relpath)
        found = [os.path.join(d or os.curdir, filename) for d in sys.path if isinstance(d, str)]
        path = next((p for p in found if os.path.isfile(p)), None)
        if path is None:
            raise _missing(name, relpath, package=False)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _require(name):
    """Import a module the graph refers to; if it is missing, say how to make it importable."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if not _names(e, name):
            raise
        raise ModuleNotFoundError(
            f"The fixed model in {_HERE} needs the module {name!r}, which cannot be "
            "imported here. Install it, or put the folder that holds it on sys.path "
            "(sys.path.insert(0, FOLDER)) or on PYTHONPATH, then load the model again.",
            name=name,
        ) from None


def _names(error, name):
    """Whether a ModuleNotFoundError is about `name` (or a package above it)."""
    return error.name is not None and (name == error.name or name.startswith(error.name + "."))


def _missing(name, relpath, package):
    if package:
        top = name.split(".")[0]
        what = f"the module {name!r} of the package {top!r}"
        holder = f"the folder that holds the package {top!r}"
    else:
        what = os.path.basename(relpath)
        holder = f"the folder that holds {what}"
    return ModuleNotFoundError(
        f"The fixed model in {_HERE} needs the model's own code, {what}, which is neither "
        f"at {os.path.normpath(os.path.join(_HERE, relpath))} ({relpath} from this folder, "
        f"as when it was written) nor importable from sys.path. Put {holder} on sys.path "
        "(sys.path.insert(0, FOLDER)) or on PYTHONPATH, then load the model again.",
        name=name,
    )


def _load_objects(classes, map_location):
    """objects.pt: the submodules and values other than tensors the graph keeps.

    weights_only=True rebuilds only tensors, plain containers and the classes passed here,
    which this file imports by name; no code stored in the file runs.
    """
    path = os.path.join(_HERE, "objects.pt")
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals(classes):
            return torch.load(path, map_location=map_location, weights_only=True)
    serialization.add_safe_globals(classes)  # torch 2.4: no context manager yet
    return torch.load(path, map_location=map_location, weights_only=True)


def _materialize(module):
    """A kept submodule from objects.pt, whose weights are stored there as shapes only
    (meta tensors): empty tensors in their place, for load_state_dict to fill."""
    done = {}
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for key, t in table.items():
                if t is None or not t.is_meta:
                    continue
                if id(t) not in done:
                    empty = torch.empty(t.shape, dtype=t.dtype)
                    if isinstance(t, torch.nn.Parameter):
                        empty = torch.nn.Parameter(empty, requires_grad=t.requires_grad)
                    done[id(t)] = empty
                table[key] = done[id(t)]
    return module

${statements}

class ${class_name}(torch.nn.Module):
    def __init__(self, map_location=None):
        super().__init__()
${install}\
        state = torch.load(
            os.path.join(_HERE, 'state_dict.pt'), map_location=map_location, weights_only=True
        )
        self.load_state_dict(state)
        self.train(${training})

${forward}
${graph_forward}''')

# forward: the graph's flat outputs, rebuilt into the model's output structure.
_FORWARD = string.Template("""\
    def forward(${signature}):
        out = self.graph_forward(${params})
        return _fxgrad_pytree.tree_unflatten(list(out), _OUT_SPEC)
""")
# forward for outputs whose structure pytree cannot write: the flat tuple.
_FORWARD_FLAT = string.Template("""\
    def forward(${signature}):
        return self.graph_forward(${params})
""")

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
        if root is None and module_name not in _FILE_MODULES:  # beside the model file
            if "." in module_name or Path(file).name == "__init__.py":
                root = _model_folder(module_name)  # a package: imported by its name
        rel = os.path.relpath(file, self.folder)
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


def _module_expr(module: nn.Module) -> str | None:
    """`torch.nn.Linear(in_features=8, ...)` when the repr rebuilds an equal module."""
    cls = type(module)
    if (
        not cls.__module__.startswith("torch.nn")
        or getattr(torch.nn, cls.__name__, None) is not cls
    ):
        return None
    text = repr(module)
    if "\n" in text:
        return None
    try:
        rebuilt = eval(text, dict(vars(torch.nn)))  # noqa: S307 (torch.nn's own repr)
    except Exception:
        return None
    if type(rebuilt) is not cls or rebuilt.extra_repr() != module.extra_repr():
        return None
    mine, theirs = module.state_dict(), rebuilt.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        return None
    expr = f"torch.nn.{text}"
    # load_state_dict copies into the rebuilt module's tensors and keeps their dtype, so a
    # `.double()` module must be rebuilt in float64 before loading.
    floats = {v.dtype for v in mine.values() if v.is_floating_point()}
    if len(floats) == 1 and floats != {v.dtype for v in theirs.values() if v.is_floating_point()}:
        (dtype,) = floats
        rebuilt = rebuilt.to(dtype)
        theirs = rebuilt.state_dict()
        expr += f".to({dtype})"
    if any(mine[k].dtype != theirs[k].dtype for k in mine):
        return None  # mixed dtypes: kept in objects.pt instead
    return expr


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


def _render(fixed: fxgrad.FixedModule, folder: Path) -> tuple[str, str, _Contents]:
    """The class name, module.py's text and what the other files hold."""
    gm = fixed.graph_module
    captured = current_variant(fixed)  # the graph and output structure for the current mode
    class_name = "Fixed" + re.sub(r"\W", "_", fixed.report.model or "Model")
    imports = _Imports(folder)
    code = gm.graph.python_code(root_module="self")
    used = set(re.findall(r"[A-Za-z_]\w*", code.src))
    for name, obj in code.globals.items():
        if name in used:  # fx lists every builtin it knows (numpy's `np` whenever installed)
            imports.add(name, obj)
    top_level, graph_forward = _split_prologue(code.src)
    contents = _Contents()
    modules = _module_targets(gm)
    _install_modules(gm, modules, contents, imports)
    _install_attributes(gm, modules, contents)
    if contents.objects:
        classes = ", ".join(contents.classes.values())
        contents.install.insert(0, f"objects = _load_objects([{classes}], map_location)")
    try:
        out_spec = pytree.treespec_dumps(captured.out_spec)
    except Exception:  # an output structure pytree cannot serialize: return the flat tuple
        out_spec = None
    params = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    forward = (_FORWARD if out_spec is not None else _FORWARD_FLAT).substitute(
        signature=", ".join(["self", *params]), params=", ".join(params)
    )
    seen: set[str] = set()
    import_lines = [ln for ln in imports.lines if not (ln in seen or seen.add(ln))]
    out_line = (
        f"_OUT_SPEC = _fxgrad_pytree.treespec_loads({out_spec!r})"
        if out_spec
        else "_OUT_SPEC = None"
    )
    text = _MODULE.substitute(
        class_name=class_name,
        model=fixed.report.model or "the model",
        params=", ".join(params) or "(none)",
        statements="\n".join([*import_lines, *top_level, out_line]),
        install="".join(f"        {ln}\n" for ln in contents.install),
        training=fixed.training,
        forward=forward,
        graph_forward=textwrap.indent(graph_forward.strip("\n"), "    ").rstrip() + "\n",
    )
    contents.needs = imports.needs
    return class_name, text, contents


def _inside(folder: Path, name: str) -> Path:
    """`folder / name`, checked to be a file directly inside `folder`: nothing fxgrad
    writes lands elsewhere, whatever the model's names are."""
    path = Path(os.path.normpath(folder / name))
    if name in ("", os.curdir, os.pardir) or path.parent != Path(os.path.normpath(folder)):
        raise FxgradError(f"Refusing to write {name!r}, which is not a file name inside {folder}.")
    return path


def _split_prologue(src: str) -> tuple[list[str], str]:
    """fx's code as (module-level statements, the forward renamed `graph_forward`).

    fx puts module-level statements before the function (`wrap("math_sqrt")` for wrapped
    functions such as math.sqrt); in a class body they raise, so they go to the top level.
    """
    prologue, sep, rest = src.partition("def forward(self")
    if not sep:
        return [], src
    top_level = [ln.strip() for ln in prologue.splitlines() if ln.strip()]
    return top_level, "def graph_forward(self" + rest


@dataclass
class _Contents:
    """What the written module installs in __init__, and the files that hold it."""

    install: list[str] = field(default_factory=list)  # lines of __init__
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # into state_dict.pt
    # Kept submodules and non-tensor values by target, all in objects.pt (the model's names
    # never become file names), and the classes its weights_only load may rebuild.
    objects: dict[str, Any] = field(default_factory=dict)
    classes: dict[type, str] = field(default_factory=dict)  # class -> its expression
    needs: list[dict[str, str]] = field(default_factory=list)  # see _Imports.needs


def _module_targets(gm: fx.GraphModule) -> list[str]:
    """The submodules the graph calls, or passes as values (`checkpoint(block, x)`)."""
    modules: list[str] = []
    for node in gm.graph.nodes:
        if node.target in modules:
            continue
        if node.op == "call_module" or (
            node.op == "get_attr"
            and isinstance(fx.graph_module._get_attr(gm, node.target), nn.Module)
        ):
            modules.append(node.target)
    return modules


def _install_modules(
    gm: fx.GraphModule, modules: list[str], contents: _Contents, imports: _Imports
) -> None:
    """Rebuild each submodule from its repr, or from objects.pt with its class imported by
    name; its weights go to the state."""
    for target in modules:
        sub = gm.get_submodule(target)
        expr = _module_expr(sub)
        if expr is None:  # not rebuildable from its repr: its tree goes to objects.pt
            for m in sub.modules():
                cls = type(m)
                if cls not in contents.classes:
                    contents.classes[cls] = imports.ref(cls, f"keeps {target!r}, of class")
            contents.objects[target] = _check_loadable(
                target, _without_weights(sub), list(contents.classes)
            )
            expr = f"_materialize(objects[{target!r}])"
        contents.install.append(f"_install(self, {target!r}, {expr})")
        contents.state.update({f"{target}.{k}": v for k, v in sub.state_dict().items()})


def _install_attributes(gm: fx.GraphModule, modules: list[str], contents: _Contents) -> None:
    """Tensors the graph reads outside those modules: empty, loaded from the state; other
    values from objects.pt."""
    for node in gm.graph.nodes:
        if node.op != "get_attr" or node.target in contents.state:
            continue
        if any(node.target.startswith(m + ".") for m in modules):
            continue  # part of a module written above
        value = fx.graph_module._get_attr(gm, node.target)
        if not isinstance(value, torch.Tensor):
            if node.target not in contents.objects:
                contents.objects[node.target] = _check_loadable(node.target, value, [])
                contents.install.append(f"setattr(self, {node.target!r}, objects[{node.target!r}])")
            continue
        init = f"torch.empty({list(value.shape)}, dtype={value.dtype})"
        if isinstance(value, nn.Parameter):
            init = f"torch.nn.Parameter({init}, requires_grad={value.requires_grad})"
        contents.install.append(f"_install(self, {node.target!r}, {init})")
        contents.state[node.target] = value


def _without_weights(module: nn.Module) -> nn.Module:
    """A copy of the module tree for objects.pt whose saved weights (those in its state
    dict, which state_dict.pt holds) are meta tensors: shapes and dtypes, no data. Other
    attributes are shared with the module, not copied; tied tensors and shared submodules
    stay shared."""
    saved = {id(t) for t in module.state_dict(keep_vars=True).values()}
    tensors: dict[int, torch.Tensor] = {}
    copies: dict[int, nn.Module] = {}

    def shape_only(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or id(t) not in saved:
            return t  # a non-persistent buffer keeps its values: no state dict holds them
        if id(t) not in tensors:
            meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
            if isinstance(t, nn.Parameter):
                meta = nn.Parameter(meta, requires_grad=t.requires_grad)
            tensors[id(t)] = meta
        return tensors[id(t)]

    def copy(m: nn.Module) -> nn.Module:
        if id(m) not in copies:
            new = copies[id(m)] = type(m).__new__(type(m))
            state = dict(m.__dict__)
            state["_parameters"] = {k: shape_only(v) for k, v in m._parameters.items()}
            state["_buffers"] = {k: shape_only(v) for k, v in m._buffers.items()}
            state["_modules"] = {k: v if v is None else copy(v) for k, v in m._modules.items()}
            new.__dict__.update(state)
        return copies[id(m)]

    return copy(module)


def _safe_load(source: Any, classes: list[type]) -> Any:
    """torch.load(weights_only=True) that may rebuild `classes` too, as module.py loads."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals(classes):
            return torch.load(source, weights_only=True)
    serialization.add_safe_globals(classes)  # torch 2.4: no context manager yet
    return torch.load(source, weights_only=True)


def _check_loadable(target: str, value: Any, classes: list[type]) -> Any:
    """`value`, once it is known to load back as module.py loads objects.pt: with
    weights_only=True, rebuilding no class but `classes`. Anything else could only be
    unpickled by running code stored in the file, which fix -o does not write."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        _safe_load(buffer, classes)
    except Exception as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        found = named.group(1) if named else _first_line(e)
        what = (
            f"the submodule {target!r} ({type(value).__module__}.{type(value).__qualname__})"
            if isinstance(value, nn.Module)
            else f"the value {target!r}"
        )
        raise FxgradError(
            f"The fixed graph keeps {what}, which holds {found}: loading it would mean "
            "unpickling code, which fxgrad does not write into a folder.",
            hint="Keep only tensors, numbers, strings, torch.nn modules and containers of "
            "these on it (a hook or another Python object cannot be written), or save the "
            "fixed module with torch.save(fixed) and load that only from a source you trust.",
        ) from e
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


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
