"""A variant: one graph decided on one call, bound to the user's module, and how it runs.

The decision sequence (fxgrad.decide) makes variants; a fixed module (fxgrad.fixed) keeps
them and picks one per call. A variant's graph reads the module it runs for through
`self`, so one variant serves a fixed module and its DataParallel replicas alike.
"""

from __future__ import annotations

import functools
import linecache
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from fxgrad.code_cache import drops_transient_code
from fxgrad.code_cache import keep as keep_code
from fxgrad.guards import ShapeCheck, number_value, size_guard_program
from fxgrad.interop import code_is_recorded, run_eagerly_under_dynamo
from fxgrad.report import Report
from fxgrad.runtime import autocast_state, restore_autocast
from fxgrad.tracing import ROOT_ATTR, CallSpec, fresh_constant_name
from fxgrad.tracing.callspec import is_number
from fxgrad.view import ViewGuard
from fxgrad.view import build as build_view


@dataclass
class Variant:
    """One specialization: a graph decided on one call, and the key of the calls it serves.

    `key` is None for a static variant (decided without running anything), which serves
    every call of its structure. The graph reads the module it runs for through `self`,
    so one variant serves a fixed module and its DataParallel replicas alike.
    """

    key: tuple | None
    call: CallSpec
    out_spec: pytree.TreeSpec
    leaf_index: list[int] | None  # placeholders' positions among the call's leaves
    gm: fx.GraphModule  # the rewritten graph, bound to the user's module
    report: Report
    shapes: ShapeCheck
    constants: dict[str, Any] = field(default_factory=dict)
    view: ViewGuard = field(default_factory=ViewGuard)  # the Python values it read

    def __post_init__(self) -> None:
        self.single = self.out_spec.num_leaves == 1 and self.out_spec.num_children == 0
        self._bound: tuple[Any, ...] | None = None
        # Python numbers this variant baked in (its forward branched on them, or used one
        # as a size): it serves only calls that pass the same values.
        self.numbers = tuple(
            (i, number_value(c)) for i, c in self.call.constants.items() if is_number(c)
        )

    def numbers_hold(self, leaves: list[Any] | None) -> bool:
        """Whether a call passes the numbers this variant baked in (if it baked any)."""
        if not self.numbers:
            return True
        return leaves is not None and all(number_value(leaves[i]) == v for i, v in self.numbers)

    def numbers_changed(self, leaves: list[Any]) -> list[str]:
        names = self.call.leaf_names
        return [
            f"the argument {names[i]} ({v[1]!r} -> {leaves[i]!r})"
            for i, v in self.numbers
            if number_value(leaves[i]) != v
        ]

    def run(self, module: nn.Module, leaves: list[Any]) -> Any:
        """Run the graph for `module` on a call's leaves; rebuild the output structure."""
        if self.leaf_index is not None:
            leaves = [leaves[i] for i in self.leaf_index]
        prev = torch.is_grad_enabled()
        autocast = autocast_state()
        forward = self._forward_for(module)
        try:
            out = forward(module, *leaves)
        except BaseException as e:
            torch.set_grad_enabled(prev)  # a grad-mode region the error cut short
            restore_autocast(autocast)  # and an autocast region
            self._name_the_line(e, forward)
            raise
        if self.single:
            return out[0]  # a single tensor output: skip the pytree rebuild
        return pytree.tree_unflatten(list(out), self.out_spec)

    def _name_the_line(self, error: BaseException, forward: Callable[..., Any]) -> None:
        """Say which line of the user's forward the failing generated line came from: the
        traceback ends in fxgrad's generated code, which names no line of the model."""
        bound = self._bound
        runner = bound[3] if bound is not None else None
        gm = runner if runner is not None and type(runner).forward is forward else self.gm
        code = getattr(forward, "__code__", None)
        tb, lineno = error.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code is code:
                lineno = tb.tb_lineno
            tb = tb.tb_next
        lines = getattr(gm, "_lineno_map", None)
        if lineno is None or not lines or code is None:
            return
        index = lines.get(lineno - code.co_firstlineno)
        nodes = list(gm.graph.nodes)
        if index is None or not 0 <= index < len(nodes):
            return
        loc = nodes[index].meta.get("fxgrad_loc")
        if loc and hasattr(error, "add_note"):
            text = linecache.getline(loc[0], loc[1]).strip()
            where = f"{os.path.basename(loc[0])}:{loc[1]}"
            error.add_note(f"raised by the fixed forward at {where}: {text}")

    def _forward_for(self, module: nn.Module) -> Callable[..., Any]:
        """The generated code to run for `module`, with its submodules bound in.

        fx's code looks every submodule up by attribute on every call
        (`getattr(self.layer1, "0")`), which costs as much as a small layer; this code
        calls the very module objects, bound once. It is made again when the module's own
        tree changes (its `TreeWatch` epoch moves: an insert, a swap, a `_modules` edit) or
        `graph_module` is edited and recompiled. A DataParallel replica (its own
        submodules, made anew for every call) runs fx's code, which looks them up.

        Binding generates and compiles code as long as the graph (a quarter of a second on
        a 2,000-node graph), so the first call of a variant in a tree runs fx's code, and
        the second binds: a variant called once never pays for it.
        """
        plain = type(self.gm).forward
        root = module.__dict__.get(ROOT_ATTR)
        shared = module.__dict__.get("_fxgrad")
        if root is None or root._modules is not module._modules or shared is None:
            return plain
        epoch = shared.tree(root).epoch
        hit = self._bound
        if hit is not None and hit[0] is module and hit[2] is plain:
            if hit[1] != epoch and hit[3] is not None and _same_submodules(hit[3], module):
                # The tree's dicts changed but not its modules (`train()`/`eval()` write
                # `training`): the same code, which torch.compile has compiled already.
                hit = self._bound = (module, epoch, plain, hit[3])
            if hit[1] == epoch:
                if hit[3] is not None:
                    return type(hit[3]).forward
                if code_is_recorded():
                    return plain  # compiled or traced: the code its first call ran
                runner = _bind_submodules(self.gm, module)  # the second call: worth binding
                self._bound = (module, epoch, plain, runner)
                return type(runner).forward
        self._bound = (module, epoch, plain, None)
        return plain


@drops_transient_code
def _bind_submodules(gm: fx.GraphModule, owner: nn.Module) -> fx.GraphModule:
    """A graph module running `gm`'s code with each call_module node calling its module
    object directly (only its `forward` is used, with the module it runs for as `self`)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, env))
    bound: list[tuple[str, nn.Module]] = []
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        mod: Any = owner
        for atom in str(node.target).split("."):
            mod = getattr(mod, atom)
        bound.append((str(node.target), mod))
        caller = functools.partial(mod)  # calls mod(...) from C, hooks included
        caller.__name__ = "m_" + str(node.target).replace(".", "_")  # type: ignore[attr-defined]
        caller.__module__ = "fxgrad_bound"
        with graph.inserting_before(node):
            call = graph.call_function(caller, node.args, node.kwargs)
        call.meta = node.meta
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        call.name = node.name
    runner = fx.GraphModule({}, fx.Graph(), class_name=type(gm).__name__)
    runner.__dict__.update({k: gm.__dict__[k] for k in ("_modules", "_parameters", "_buffers")})
    runner.graph = graph
    runner.__dict__["_fxgrad_bound"] = bound
    keep_code(runner)
    return runner


def _same_submodules(runner: fx.GraphModule, owner: nn.Module) -> bool:
    """Whether each module `runner` calls is still the one at its path under `owner`."""
    for target, bound in runner.__dict__["_fxgrad_bound"]:
        mod: Any = owner
        for atom in target.split("."):
            mod = getattr(mod, atom, None)
        if mod is not bound:
            return False
    return True


@drops_transient_code
def bind(
    root: nn.Module,
    *,
    graph: fx.Graph,
    call: CallSpec,
    out_spec: pytree.TreeSpec,
    leaf_index: list[int] | None,
    report: Report,
    constants: dict[str, Any],
    key: tuple | None,
    view: ViewGuard | None = None,
) -> Variant:
    """A variant whose graph reads `root`'s submodules, tensors and attributes.

    Without `view` (a variant copied or unpickled) only the module tree is guarded: the
    Python values its capture read are not known any more."""
    gm = fx.GraphModule({}, fx.Graph(), class_name=type(root).__name__)
    d = gm.__dict__
    d["_modules"], d["_parameters"], d["_buffers"] = root._modules, root._parameters, root._buffers
    d[ROOT_ATTR] = root
    d.update(constants)
    gm.graph = graph  # generates and compiles the code
    keep_code(gm)
    shapes = ShapeCheck(size_guard_program(gm))
    if view is None:
        view = build_view(root, [], [], [], [])
    return Variant(key, call, out_spec, leaf_index, gm, report, shapes, constants, view)


def rebound(v: Variant, root: nn.Module, graph: fx.Graph, constants: dict) -> Variant:
    return bind(
        root,
        graph=graph,
        call=v.call,
        out_spec=v.out_spec,
        leaf_index=v.leaf_index,
        report=v.report,
        constants=constants,
        key=v.key,
    )


_ROOT_NAMES = ("_buffers", "_parameters", "_modules", ROOT_ATTR)


def take_constants(gm: fx.GraphModule, base: nn.Module) -> dict[str, Any]:
    """Objects the decided graph reads that are not the user's module's own.

    Constants capture kept and anything a pass added to the graph module move to names
    unique in the process, so the fixed module can hold those of all its variants.
    """
    constants: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op not in ("get_attr", "call_module"):
            continue
        target = str(node.target)
        first, _, rest = target.partition(".")
        if (
            first in _ROOT_NAMES
            or first in base._parameters
            or first in base._buffers
            or first in base._modules
        ):
            continue
        value = getattr(gm, first)
        name = fresh_constant_name()  # unique among all the variants a module holds
        constants[name] = value
        node.target = name + ("." + rest if rest else "")
    return constants


# torch.compile(fixed): Dynamo runs `Variant.run` as Python and compiles the generated code
# it calls; binding and naming a failing line it never compiles (fxgrad.fixed registers the
# fixed module's own frames the same way).
run_eagerly_under_dynamo(
    frame=[Variant.run, Variant._forward_for, code_is_recorded],
    tree=[
        _same_submodules,
        _bind_submodules,
        Variant._name_the_line,
        autocast_state,
        restore_autocast,
    ],
)
