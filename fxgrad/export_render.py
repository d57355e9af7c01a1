"""The fixed graph rendered as the `fix -o` folder's contents: module.py's text and weights.

`fxgrad.export.write_folder` writes what this returns. Rendering decides how each
submodule and value the graph keeps comes back when the folder loads: rebuilt from its
repr, or kept in objects.pt once it is known to load without unpickling code.
"""

from __future__ import annotations

import io
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

import fxgrad
from fxgrad.errors import FxgradError, first_line
from fxgrad.export_imports import _Imports
from fxgrad.export_template import _FORWARD, _FORWARD_FLAT, _MODULE
from fxgrad.fixed import current_variant


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
    import_lines = list(dict.fromkeys(imports.lines))  # each once, in order
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
    allowed: list[Any] = list(classes)  # classes are what torch's list of callables holds
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals(allowed):
            return torch.load(source, weights_only=True)
    serialization.add_safe_globals(allowed)  # torch 2.4: no context manager yet
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
        found = named.group(1) if named else first_line(e, named=True)
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
