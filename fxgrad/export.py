"""Write a fixed graph out of process: Graphviz DOT, and a loadable folder of code + weights.

Used by `fxgrad diff/check --dot FILE` and `fxgrad fix -o DIR`; kept apart from the CLI so
the command layer stays thin and these writers can be used from code.
"""

from __future__ import annotations

import importlib
import os
import re
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
# fix -o DIR: the fixed graph as importable code and a state dict

# The written module.py: fx's code for the graph (graph_forward), inside a module that
# rebuilds the submodules and tensors it reads and loads their weights.
_MODULE = string.Template('''\
"""${class_name}: ${model} with fxgrad's rewrites applied.

Written by `fxgrad fix`. forward takes the tensors the model was captured with, in
this order: ${params}. Weights are in state_dict.pt next to this file.
"""

import importlib
import importlib.util
import os
import sys

import torch
import torch.utils._pytree as _fxgrad_pytree


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
    """Import the model file the graph refers to, found relative to this folder.

    A file inside a package (`root` holds its top package) is imported as its package's
    module, so that its relative imports work.
    """
    if name in sys.modules:
        return sys.modules[name]
    here = os.path.dirname(os.path.abspath(__file__))
    if root is not None:
        root = os.path.normpath(os.path.join(here, root))
        if root not in sys.path:
            sys.path.insert(0, root)
        return importlib.import_module(name)
    path = os.path.join(here, relpath)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

_HERE = os.path.dirname(os.path.abspath(__file__))
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


class _Imports:
    """Import lines for the objects generated code refers to."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lines: list[str] = []
        self.sources: dict[str, str] = {}

    def _ref(self, obj: Any) -> str:
        """An expression evaluating to obj in the written module."""
        module_name = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not module_name or not qualname or "<" in qualname:
            raise FxgradError(
                f"The fixed graph calls {obj!r}, which cannot be written as an import.",
                hint="Define it at the top level of a module (no lambdas or local functions).",
            )
        root = _package_root(module_name)
        if module_name in _FILE_MODULES or root is not None:
            alias = self.sources.get(module_name)
            if alias is None:
                alias = f"_src_{len(self.sources)}"
                if root is not None:  # a package's module: imported from the package's folder
                    where = os.path.relpath(root, self.folder)
                    self.lines.append(f"{alias} = _source({module_name!r}, None, {where!r})")
                else:
                    rel = os.path.relpath(_FILE_MODULES[module_name], self.folder)
                    self.lines.append(f"{alias} = _source({module_name!r}, {rel!r})")
                self.sources[module_name] = alias
            return f"{alias}.{qualname}"
        for candidate in (module_name.lstrip("_"), module_name):
            try:
                if _resolve(candidate, qualname) is obj:
                    self.lines.append(f"import {candidate}")
                    return f"{candidate}.{qualname}"
            except Exception:  # try the next spelling
                continue
        raise FxgradError(
            f"The fixed graph calls {module_name}.{qualname}, which cannot be imported by "
            "that name.",
            hint="Define it at the top level of an importable module.",
        )

    def add(self, name: str, obj: Any) -> None:
        from torch.fx.graph import _custom_builtins

        if name in _custom_builtins:
            self.lines.append(_custom_builtins[name].import_str)
        elif isinstance(obj, types.ModuleType):
            self.lines.append(f"import {obj.__name__} as {name}")
        elif isinstance(obj, (str, int, float, bool)) or obj is None:
            self.lines.append(f"{name} = {obj!r}")
        elif getattr(obj, "_fxgrad_function", None) is not None:  # a custom autograd.Function
            self.lines.append("from fxgrad.runtime import function_apply")
            self.lines.append(f"{name} = function_apply({self._ref(obj._fxgrad_function)})")
        else:
            self.lines.append(f"{name} = {self._ref(obj)}")


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
        return None  # mixed dtypes: pickled with its weights instead
    return expr


def write_folder(fixed: fxgrad.FixedModule, folder: Path) -> str:
    """Write the fixed graph as `module.py` + `state_dict.pt`; return the class name."""
    gm = fixed.graph_module
    captured = fixed._captured()  # the graph and output structure for the current mode
    folder.mkdir(parents=True, exist_ok=True)
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
    _install_modules(gm, modules, contents)
    _install_attributes(gm, modules, contents)
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
    (folder / "module.py").write_text(text)
    (folder / "__init__.py").write_text(f"from .module import {class_name}\n")
    torch.save({k: v.detach().cpu() for k, v in contents.state.items()}, folder / "state_dict.pt")
    for target, obj in contents.blobs.items():
        torch.save(obj, folder / f"{target}.pt")
    return class_name


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
    blobs: dict[str, Any] = field(default_factory=dict)  # pickled, one `<target>.pt` each


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


def _install_modules(gm: fx.GraphModule, modules: list[str], contents: _Contents) -> None:
    """Rebuild each submodule from its repr, or unpickle it; its weights go to the state."""
    for target in modules:
        sub = gm.get_submodule(target)
        expr = _module_expr(sub)
        if expr is None:  # not rebuildable from its repr: pickle it, as to_folder does
            contents.blobs[target] = sub
            expr = f"torch.load(os.path.join(_HERE, {target + '.pt'!r}), weights_only=False)"
        contents.install.append(f"_install(self, {target!r}, {expr})")
        contents.state.update({f"{target}.{k}": v for k, v in sub.state_dict().items()})


def _install_attributes(gm: fx.GraphModule, modules: list[str], contents: _Contents) -> None:
    """Tensors the graph reads outside those modules: empty, loaded from the state; other
    values unpickled."""
    for node in gm.graph.nodes:
        if node.op != "get_attr" or node.target in contents.state:
            continue
        if any(node.target.startswith(m + ".") for m in modules):
            continue  # part of a module written above
        value = fx.graph_module._get_attr(gm, node.target)
        if not isinstance(value, torch.Tensor):
            contents.blobs[node.target] = value
            contents.install.append(
                f"setattr(self, {node.target!r}, torch.load(os.path.join(_HERE, "
                f"{node.target + '.pt'!r}), weights_only=False))"
            )
            continue
        init = f"torch.empty({list(value.shape)}, dtype={value.dtype})"
        if isinstance(value, nn.Parameter):
            init = f"torch.nn.Parameter({init}, requires_grad={value.requires_grad})"
        contents.install.append(f"_install(self, {node.target!r}, {init})")
        contents.state[node.target] = value


def _load_instructions(folder: Path, class_name: str) -> str:
    parent = str(folder.parent) or "."
    if folder.name.isidentifier():
        return (
            f"load it with:\n"
            f"    import sys; sys.path.insert(0, {parent!r})\n"
            f"    from {folder.name} import {class_name}\n"
            f"    model = {class_name}()"
        )
    return (
        f"load it with:\n"
        f"    import runpy\n"
        f"    model = runpy.run_path({str(folder / 'module.py')!r})[{class_name!r}]()"
    )
