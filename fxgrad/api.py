"""fix() and check(): capture -> capture check -> passes -> verify -> fixed module + Report.

A fixed module decides on real calls. `fix(model)` captures lazily, on the first call and
with that call's inputs; `fix(model, inputs)` decides on the example call right away.
Every later call is checked against what those decisions assumed (fxgrad.guards): a call
that fits reuses them, one that does not gets a variant decided exactly on it, up to a
limit past which the module raises an error naming the fact that keeps changing.
"""

from __future__ import annotations

import copy
import functools
import linecache
import os
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from fxgrad.autograd_run import gc_paused, seeded
from fxgrad.changes import Note
from fxgrad.code_cache import drops_transient_code
from fxgrad.code_cache import keep as keep_code
from fxgrad.context import Context, Measure, clone_inputs, default_measure
from fxgrad.errors import EquivalenceError, FxgradError, ModelError, TraceError
from fxgrad.graph_utils import run_forward
from fxgrad.guards import (
    ShapeCheck,
    TensorState,
    call_key,
    describe_change,
    mode_matters,
    number_value,
    numbers_only_feed_values,
    size_guard_program,
    structure,
    tensor_tables,
)
from fxgrad.interop import (
    code_is_recorded,
    fake_trace_refusal,
    fits_traced_call,
    forward_with_signature,
    in_jit_scope,
    initialize_lazy,
    jit_dynamo_refusal,
    jit_tracing_paused,
    lazy_refusal,
    outside_transforms,
    refuse_distributed,
    refuse_scripted,
    refuse_sharded,
    run_eagerly_under_dynamo,
    tracer_of,
    uninitialized,
)
from fxgrad.observe import Observation
from fxgrad.pipeline import (
    Reference,
    check_capture,
    first_line,
    flat_outputs,
    run_forward_backward,
    run_passes,
)
from fxgrad.registry import Pass, select_passes
from fxgrad.report import Report
from fxgrad.runtime import autocast_state, restore_autocast
from fxgrad.state import (
    PrivateState,
    forked_rng,
    plain_tensor_attributes,
    private_state,
    python_state_restored,
)
from fxgrad.tracing import (
    ROOT_ATTR,
    CallSpec,
    Captured,
    call_spec,
    capture,
    fresh_constant_name,
    twin,
)
from fxgrad.tracing.callspec import is_number
from fxgrad.tracing.errors import innermost_user_line
from fxgrad.tracing.module_copy import quiet_user_hooks
from fxgrad.view import TreeWatch, ViewGuard, walk_modules
from fxgrad.view import build as build_view

# How many variants one fixed module keeps before it refuses a call that needs another.
MAX_VARIANTS = 8

# Attributes a fixed module keeps for itself; any other attribute set on it is the user's.
# (`_is_torch_compile`: torch.compile marks the module it wraps, the fixed one, not yours;
# `__class__`: FSDP's fully_shard gives the module it shards, the fixed one, a subclass.)
_OWN_NAMES = frozenset(nn.Module().__dict__) | {"training", "_is_torch_compile", "__class__"}

# nn.Module's hook tables: a fixed module shares them with the user's module, so hooks
# registered on either run when the fixed module is called.
_HOOK_TABLES = tuple(k for k in nn.Module().__dict__ if "hook" in k)


class _NoGraph(FxgradError, AttributeError):
    """No one graph to give (nothing decided yet, or Dynamo's several): an AttributeError
    too, so `hasattr(fixed, "code")` is False, as tools that scan a module's attributes
    expect (torch.jit.trace looks for exported methods on the module it traces)."""


# FixedModule's properties that raise _NoGraph; Python then asks __getattr__, which must
# raise it again rather than look the name up on the user's module.
_GRAPH_PROPERTIES = frozenset({"graph_module", "code"})


@dataclass
class _Options:
    passes: list[Pass]
    verify: bool
    measure: Measure | bool | None  # False: measured passes use only cached decisions
    max_variants: int = MAX_VARIANTS
    frontend: str = "auto"  # "fx", "dynamo", or "auto": fx, then Dynamo where fx refuses


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


class _KeyModules:
    """What `_modules_for_key` keeps on a fixed module between calls. Not a tuple, which
    torch.export would search for tensors: the tables hold the parameters, and export
    warns about tensors it finds assigned to module attributes while it traced."""

    __slots__ = ("epoch", "moded", "modules", "tables")

    def __init__(self, modules: dict, epoch: int, moded: list, mods: list[nn.Module]) -> None:
        self.modules = modules
        self.epoch = epoch
        self.moded = moded
        self.tables = tensor_tables(mods)


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
        caller.__module__ = "fxgrad_bound"  # type: ignore[attr-defined]
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


class _Shared:
    """What a fixed module shares with its DataParallel replicas: variants and constants."""

    def __init__(self, options: _Options) -> None:
        self.options = options
        self.variants: list[Variant] = []
        self.table: dict[tuple, list[Variant]] = {}
        self.static: Variant | None = None
        self.constants: dict[str, Any] = {}
        self.current: Variant | None = None
        self.lock = threading.RLock()
        # The Dynamo front-end, once in use: the compiled module, its backend, and why fx
        # could not capture the forward.
        self.dynamo: Callable[..., Any] | None = None
        self.backend: Any = None
        self.fx_refusal = ""
        self._tree: TreeWatch | None = None
        self.tensor_state = TensorState()  # the parameters' and buffers' facts, per call
        self.view: nn.Module | None = None  # see _forward_view

    def tree(self, root: nn.Module) -> TreeWatch:
        """The watch over the user's module tree (see fxgrad.view)."""
        if self._tree is None or self._tree.root is not root:
            self._tree = TreeWatch(root)
        return self._tree


def _forward_view(fixed: FixedModule) -> nn.Module | None:
    """The user's model as its own methods should see it once fixed: an instance of a
    subclass of the user's class that shares the model's `__dict__` (its attributes,
    submodules, parameters and hook tables, read and written in place) and whose forward
    is the fixed module's. `type(self)`, `super()` and `isinstance` inside the method work
    as on the model itself (transformers' `generate` looks decoding methods up on the
    class). None where the class refuses a subclass."""
    shared = fixed.__dict__["_fxgrad"]
    root = fixed.__dict__[ROOT_ATTR]
    if shared.view is not None and shared.view.__dict__ is root.__dict__:
        return shared.view
    cls = type(root)

    def forward(_self: Any, *args: Any, **kwargs: Any) -> Any:
        return fixed.forward(*args, **kwargs)

    try:
        view_cls = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})
        view = object.__new__(view_cls)
        object.__setattr__(view, "__dict__", root.__dict__)
    except TypeError:
        return None
    shared.view = view
    return view


class FixedModule(nn.Module):
    """The drop-in replacement `fix()` returns.

    It is a view of the user's module: the same submodules, parameters, buffers and hook
    tables (shared, not copied), so `state_dict()`, optimizers, `train()`/`eval()` and
    buffers updated in forward act on the user's module as eager calls would. Its forward
    runs the rewritten graph decided for calls like the current one (see `reports`).
    `.report` says what was changed in the variant used last, and why.
    """

    def __init__(self, root: nn.Module, options: _Options) -> None:
        super().__init__()
        d = self.__dict__
        d[ROOT_ATTR] = root
        d["_modules"] = root._modules
        d["_parameters"] = root._parameters
        d["_buffers"] = root._buffers
        d["_non_persistent_buffers_set"] = root._non_persistent_buffers_set
        for name in _HOOK_TABLES:
            if name in root.__dict__:
                d[name] = root.__dict__[name]
        d["_fxgrad"] = _Shared(options)
        d["original_class"] = type(root)
        forward = forward_with_signature(self, root)  # inspect.signature: the model's
        if forward is not None:
            d["forward"] = forward

    # -- the user's module, seen through -------------------------------------------------

    @property
    def training(self) -> bool:  # type: ignore[override]
        root = self.__dict__.get(ROOT_ATTR)
        return True if root is None else root.training

    @training.setter
    def training(self, mode: bool) -> None:
        root = self.__dict__.get(ROOT_ATTR)
        if root is not None:  # nn.Module.__init__ sets it before the root is known
            root.training = mode

    def __getattr__(self, name: str) -> Any:
        # Generated code looks submodules, parameters and buffers up here on every call:
        # nn.Module's own lookup, inlined.
        d = self.__dict__
        for table in ("_modules", "_parameters", "_buffers"):
            t = d.get(table)
            if t is not None and name in t:
                return t[name]
        shared = d.get("_fxgrad")
        if shared is not None and name in shared.constants:
            return shared.constants[name]  # a DataParallel replica reads the shared ones
        root = d.get(ROOT_ATTR)
        if root is None or name.startswith("__"):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        if name in _GRAPH_PROPERTIES:  # the property raised _NoGraph: raise it, not root's
            return getattr(FixedModule, name).fget(self)
        value = getattr(root, name)  # the user's own attributes: config, num_classes...
        if isinstance(value, types.MethodType) and value.__self__ is root:
            # A method of the user's class (`embed`, `generate`): bound to the user's model
            # seen with the fixed forward, so `self(x)` and `self.forward(x)` inside it run
            # the fixed forward, while everything else is the user's own.
            view = _forward_view(self)
            if view is not None:
                return types.MethodType(value.__func__, view)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        root = d.get(ROOT_ATTR)
        if root is None or name in d or name in _OWN_NAMES or d.get("_is_replica"):
            super().__setattr__(name, value)  # fxgrad's and DataParallel's own bookkeeping
        else:
            setattr(root, name, value)  # `fixed.temperature = 0.5` sets the user's value

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        root = d.get(ROOT_ATTR)
        if root is None or name in d or d.get("_is_replica"):
            super().__delattr__(name)
        else:
            delattr(root, name)

    # -- what was decided ------------------------------------------------------------------

    def _variant(self) -> Variant:
        shared = self._fxgrad
        v = shared.current or shared.static or (shared.variants[-1] if shared.variants else None)
        if v is None:
            raise _NoGraph(
                "This fixed module has not been called yet, so nothing has been decided.",
                hint="Call it once (fxgrad decides on the first call's inputs), or pass "
                "example inputs: fxgrad.fix(model, (x,)).",
            )
        return v

    def _captured(self) -> Variant:
        return self._variant()

    @property
    def report(self) -> Report:
        """The report of the variant used last (before the first call: nothing decided)."""
        shared = self._fxgrad
        if shared.backend is not None:
            return shared.backend.report(shared.fx_refusal)
        if shared.current is None and shared.static is None and not shared.variants:
            return Report(mode="pending", model=self.original_class.__name__)
        return self._variant().report

    @property
    def reports(self) -> list[Report]:
        """The reports of every variant, in the order they were decided."""
        shared = self._fxgrad
        if shared.backend is not None:
            return [p.report for p in shared.backend.pieces if p.report is not None]
        return ([shared.static.report] if shared.static else []) + [
            v.report for v in shared.variants
        ]

    @property
    def graph_module(self) -> fx.GraphModule:
        """The rewritten GraphModule of the variant used last."""
        backend = self._fxgrad.backend
        if backend is not None:
            raise _NoGraph(
                f"This model was captured by Dynamo in {len(backend.pieces)} graph(s), "
                "so there is no one GraphModule to return or export.",
                hint="fixed.report.code_after shows every rewritten graph; to export one "
                "graph, make the forward traceable (see the report's note on why fxgrad's "
                "tracer refused it) and fix it with frontend='fx'.",
            )
        return self._variant().gm

    @property
    def code(self) -> str:
        """The generated Python code of the rewritten forward of the variant used last
        (with the Dynamo front-end: every graph decided so far, one after another)."""
        if self._fxgrad.backend is not None:
            return self.report.code_after
        return self._variant().gm.code

    # -- calling -------------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        dynamo = self._fxgrad.dynamo
        if dynamo is None and self._fxgrad.options.frontend == "dynamo":
            dynamo = self._use_dynamo("")
        if dynamo is not None:
            try:
                return dynamo(*args, **kwargs)
            except FxgradError as e:
                if not getattr(e, "dynamo_refused", False):
                    raise
                own = _eager_error_on(self._base(), args, kwargs)
                if own is not None:
                    raise own from None  # the model's own error, not Dynamo's words for it
                raise
        try:
            if torch.compiler.is_dynamo_compiling():  # inlined into a caller's trace
                variant, leaves = _dispatch_outside_dynamo()(self, args, kwargs)
            else:
                variant, leaves = self._dispatch(args, kwargs)
        except _UseDynamo as e:  # fxgrad's tracer refused this forward
            return self._use_dynamo(e.refusal)(*args, **kwargs)
        return variant.run(self, leaves)

    def _slow_forward(self, *args: Any, **kwargs: Any) -> Any:
        """What nn.Module calls instead of forward while torch.jit.trace records: dispatch,
        and any decision, outside the recording; the chosen variant's graph inside it."""
        if torch._C._get_tracing_state() is None:
            return self.forward(*args, **kwargs)
        shared = self._fxgrad
        if shared.dynamo is not None or shared.options.frontend == "dynamo":
            raise jit_dynamo_refusal()
        try:
            with jit_tracing_paused():
                variant, leaves = self._dispatch(args, kwargs)
        except _UseDynamo:
            raise jit_dynamo_refusal() from None
        return in_jit_scope(self, lambda: variant.run(self, leaves))

    def _dispatch(self, args: tuple, kwargs: dict) -> tuple[Variant, list[Any]]:
        shared = self._fxgrad
        skey, leaves = structure(args, kwargs)
        if leaves is None:
            leaves = list(args)
            tensors = leaves
        else:
            tensors = [x for x in leaves if _is_input(x)]
        root = self.__dict__[ROOT_ATTR]
        tree = shared.tree(root)
        epoch = tree.check()
        if shared.static is not None:
            if shared.static.view.holds(root, epoch):
                return shared.static, leaves
            return self._restatic(shared.static), leaves
        key = call_key(skey, tensors, *self._modules_for_key(tree), shared.tensor_state)
        v = shared.current
        if v is not None and v.key == key and v.shapes.holds(self, tensors):
            if v.numbers_hold(leaves) and v.view.holds(root, epoch):
                return v, leaves  # the common case: a call like the last one
        for v in shared.table.get(key, ()):
            if (
                v.shapes.holds(self, tensors)
                and v.numbers_hold(leaves)
                and v.view.holds(root, epoch)
            ):
                shared.current = v
                return v, leaves
        tracer = tracer_of(tensors)
        if tracer is not None:  # torch.export, make_fx, torch.jit.trace (fxgrad.interop)
            return self._traced_call(args, kwargs, key, tensors, leaves, tracer), leaves
        return self._specialize(args, kwargs, key, tensors, leaves), leaves

    def _traced_call(
        self,
        args: tuple,
        kwargs: dict,
        key: tuple,
        tensors: list,
        leaves: list[Any] | None,
        tracer: str,
    ) -> Variant:
        """The variant to record for a traced call that no variant serves as it stands.

        A variant decided on the same facts but for the tracer's own tensor types, or with
        grad enabled where the trace runs without, is recorded as is (see
        `fits_traced_call`). Otherwise jit's real inputs are decided on, with its
        recording paused and grad enabled (the trace serves training too); a trace
        without values is refused."""
        shared = self._fxgrad
        root = self.__dict__[ROOT_ATTR]
        epoch = shared.tree(root).check()
        for v in [shared.current, *reversed(shared.variants)]:
            if (
                v is not None
                and v.key is not None
                and fits_traced_call(v.key, key, tracer)
                and v.shapes.holds(self, tensors)
                and v.numbers_hold(leaves)
                and v.view.holds(root, epoch)
            ):
                shared.current = v
                return v
        if tracer != "jit":
            call, call_leaves = call_spec(self._base(), args, kwargs)
            described = _describe_call(root, call, call_leaves, torch.is_grad_enabled())
            raise fake_trace_refusal(described)
        with jit_tracing_paused(), torch.enable_grad():
            return self._specialize(args, kwargs, key, tensors, leaves)

    def _modules_for_key(self, tree: TreeWatch | None = None) -> tuple[list[nn.Module], list[dict]]:
        """The modules whose training flag is in the key (see `mode_matters`), and the
        parameter and buffer tables of every module of the tree."""
        d = self.__dict__
        tree = tree or d["_fxgrad"].tree(d[ROOT_ATTR])
        hit = d.get("_fxgrad_mods")
        if hit is None or hit.modules is not d["_modules"] or hit.epoch != tree.epoch:
            if d["_modules"] is tree.root._modules:
                mods = tree.modules
            else:  # a DataParallel replica: its own submodules
                mods = [d[ROOT_ATTR], *walk_modules(d["_modules"])]
            moded = [m for m in mods if mode_matters(type(m))]
            hit = d["_fxgrad_mods"] = _KeyModules(d["_modules"], tree.epoch, moded, mods)
        return hit.moded, hit.tables

    def _restatic(self, old: Variant) -> Variant:
        """The static decision again, after a Python value it read changed."""
        shared = self._fxgrad
        with shared.lock, gc_paused():
            variant = _decide(
                self._base(), None, None, shared.options, grad_enabled=True, static=True
            )
        variant.report.notes.append(_decided_anew(old, self.__dict__[ROOT_ATTR]))
        self._adopt(variant)
        return variant

    def _base(self) -> nn.Module:
        """The module to decide on: the user's module, or a replica's view of it."""
        root = self.__dict__[ROOT_ATTR]
        if self._modules is root._modules and self._parameters is root._parameters:
            return root
        view = copy.copy(root)  # a DataParallel replica: its own submodules and tensors
        view.__dict__.update(
            _modules=self._modules, _parameters=self._parameters, _buffers=self._buffers
        )
        return view

    def _specialize(
        self, args: tuple, kwargs: dict, key: tuple, tensors: list, leaves: list[Any] | None
    ) -> Variant:
        shared = self._fxgrad
        with shared.lock:
            root = self.__dict__[ROOT_ATTR]
            epoch = shared.tree(root).check()
            stale = [v for v in shared.table.get(key, ()) if v.shapes.holds(self, tensors)]
            for v in stale:  # another thread may have decided it
                if v.numbers_hold(leaves) and v.view.holds(root, epoch):
                    shared.current = v
                    return v
            if len(shared.variants) >= shared.options.max_variants:
                raise _too_many_variants(shared, key, stale[-1] if stale else None)
            try:
                with gc_paused():
                    variant = _decide(
                        self._base(),
                        args,
                        kwargs,
                        shared.options,
                        grad_enabled=torch.is_grad_enabled(),
                        at_call=True,
                    )
            except _FX_REFUSALS as e:
                if shared.options.frontend != "auto":
                    raise
                refusal = e.message
                if shared.variants:
                    refusal = _later_refusal(e, shared, self._base())
                raise _UseDynamo(refusal) from e
            variant.key = key
            variant.shapes.remember(self, tensors)
            if stale:  # the same kind of call: a Python value the last decision read changed
                variant.report.notes.append(_decided_anew(stale[-1], root, leaves))
            self._adopt(variant)
            return variant

    def _use_dynamo(self, refusal: str) -> Callable[..., Any]:
        """Switch to the Dynamo front-end: the user's module compiled with fxgrad's backend."""
        from fxgrad.dynamo import Backend, compile_module

        shared = self._fxgrad
        with shared.lock:
            if shared.dynamo is None:
                opts = shared.options
                root = self.__dict__[ROOT_ATTR]
                shared.backend = Backend(
                    type(root).__name__, opts.passes, opts.verify, opts.measure, opts.max_variants
                )
                shared.dynamo = compile_module(root, shared.backend)
                shared.fx_refusal = refusal
        return shared.dynamo

    def _adopt(self, variant: Variant) -> None:
        shared = self._fxgrad
        shared.constants.update(variant.constants)
        self.__dict__.update(variant.constants)
        if variant.key is None:
            shared.static = variant
        else:
            shared.variants.append(variant)
            shared.table.setdefault(variant.key, []).append(variant)
        shared.current = variant

    # -- copies ----------------------------------------------------------------------------

    def _replicate_for_data_parallel(self) -> FixedModule:
        replica = super()._replicate_for_data_parallel()
        forward = replica.__dict__.get("forward")
        if isinstance(forward, types.MethodType):  # bound to the replica, not to self
            replica.__dict__["forward"] = types.MethodType(forward.__func__, replica)
        return replica

    def extra_repr(self) -> str:
        return f"fixed {self.original_class.__name__}: {self.report.summary()}"

    def __deepcopy__(self, memo: dict) -> FixedModule:
        root = copy.deepcopy(self.__dict__[ROOT_ATTR], memo)
        shared = self._fxgrad
        new = FixedModule(root, shared.options)
        memo[id(self)] = new
        for v in ([shared.static] if shared.static else []) + shared.variants:
            graph = copy.deepcopy(v.gm.graph, memo)
            constants = copy.deepcopy(v.constants, memo)
            new._adopt(_rebound(v, root, graph, constants))
        return new

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Not fx's own pickling, which traces the generated code again with a plain tracer
        # and would silently turn `z += 1` back into `z = z + 1`: the graphs are stored
        # node by node (fxgrad.serialize), with the user's module pickled once.
        from fxgrad.serialize import variant_state

        shared = self._fxgrad
        state = {
            "root": self.__dict__[ROOT_ATTR],
            "verify": shared.options.verify,
            "codes": [p.code for p in shared.options.passes],
            "max_variants": shared.options.max_variants,
            "variants": [variant_state(v) for v in ([shared.static] if shared.static else [])]
            + [variant_state(v) for v in shared.variants],
        }
        return (_unpickle_fixed, (state,))


def _unpickle_fixed(state: dict[str, Any]) -> FixedModule:
    from fxgrad.passes import ALL
    from fxgrad.serialize import variant_parts

    codes = set(state["codes"])
    options = _Options(
        [p for p in ALL if p.code in codes], state["verify"], None, state["max_variants"]
    )
    root = state["root"]
    fixed = FixedModule(root, options)
    for vs in state["variants"]:
        parts = variant_parts(vs)
        fixed._adopt(_bind(root, **parts))
    return fixed


def _is_input(x: Any) -> bool:
    return isinstance(x, torch.Tensor) or (
        type(x).__module__ == "numpy" and type(x).__name__ == "ndarray"
    )


_DISPATCH: list[Callable] = []


def _dispatch_outside_dynamo() -> Callable:
    """`FixedModule._dispatch`, run eagerly when torch.compile traces a fixed module.

    Deciding captures and runs the model, which must not happen inside Dynamo's trace; the
    chosen variant's generated code is what Dynamo then compiles.
    """
    if not _DISPATCH:
        import torch._dynamo

        _DISPATCH.append(torch._dynamo.disable(lambda m, a, k: m._dispatch(a, k)))
    return _DISPATCH[0]


def _decided_anew(old: Variant, root: nn.Module, leaves: list[Any] | None = None) -> str:
    changed = old.view.changed(root)
    if leaves is not None:
        changed = old.numbers_changed(leaves) + changed
    what = "; ".join(changed) or "the Python values it read"
    return f"decided anew on this call: since the last decision, {what} changed"


def _too_many_variants(shared: _Shared, key: tuple, stale: Variant | None) -> FxgradError:
    last = shared.variants[-1]
    names = last.call.leaf_names
    if stale is not None:
        changed = "; ".join(stale.view.changed(stale.gm.__dict__[ROOT_ATTR])) or "Python values"
    else:
        changed = describe_change(last.key or (), key, [n for n in names])
    return FxgradError(
        f"This fixed module already holds {len(shared.variants)} variants, each decided on "
        f"calls that differ in what fxgrad's decisions depend on; this call differs again "
        f"in {changed}.",
        hint="Keep that fact the same between calls where you can (pass a changing number "
        "as a tensor, keep dtypes fixed), or raise the limit: "
        "fxgrad.fix(model, max_variants=16).",
    )


# ---------------------------------------------------------------------------------------
# Deciding on one call


def _unwrap(model: Any) -> nn.Module:
    """Return the module to capture, seeing through DDP, DataParallel and torch.compile."""
    if not isinstance(model, nn.Module):
        raise FxgradError(
            f"fxgrad.fix() needs an nn.Module, got {type(model).__name__}.",
            hint="Pass the model instance, e.g. fxgrad.fix(MyModel(), (x,)).",
        )
    inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
    if isinstance(inner, nn.Module):
        return _unwrap(inner)
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return _unwrap(model.module)
    refuse_scripted(model)
    if isinstance(model, FixedModule):
        raise FxgradError(
            "This model was already fixed by fxgrad.",
            hint="Call fxgrad.fix() on the original model instead.",
        )
    return model


def _initialized_copy(model: nn.Module, args: tuple, kwargs: dict) -> nn.Module:
    """A copy of a model with lazy modules, initialized on a call (the RNG put back after),
    for checking without changing the model."""
    copied = copy.deepcopy(model)
    with forked_rng():
        initialize_lazy(copied, args, kwargs)
    return copied


def _normalize_inputs(example_inputs: Any) -> tuple | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, tuple):
        return example_inputs
    raise FxgradError(
        f"example_inputs must be a tuple of positional arguments, got "
        f"{type(example_inputs).__name__}.",
        hint="Wrap them in a tuple: fxgrad.fix(model, (x,)) or (x, mask); a single list "
        "argument is passed as (my_list,).",
    )


def _check_leaves(args: tuple, kwargs: dict, leaves: list[Any]) -> None:
    if not any(isinstance(x, torch.Tensor) for x in leaves):
        given = pytree.tree_leaves((args, kwargs))
        kinds = ", ".join(sorted({type(x).__name__ for x in given})) or "nothing"
        raise FxgradError(
            f"The example inputs hold no tensor (found {kinds}).",
            hint="Pass the tensors the model's forward takes, e.g. (torch.randn(8, 3, 32, 32),).",
        )
    if any(isinstance(x, torch.Tensor) and x.is_meta for x in leaves):
        raise FxgradError(
            "The example inputs are on the meta device: they have no values, and fxgrad "
            "decides on example inputs by running the model.",
            hint="Pass real tensors (on the CPU is fine), or use fxgrad.check(model) "
            "without example inputs to decide statically.",
        )


@contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[None]:
    flags = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield
    finally:
        for m, f in flags:
            m.training = f


# What makes `frontend="auto"` hand a call to Dynamo: a forward fxgrad's tracer cannot
# capture, or whose capture the check against eager finds different (the capture check is
# the only source of EquivalenceError; a pass's result that differs is rolled back).
_FX_REFUSALS = (TraceError, EquivalenceError)


def _later_refusal(error: FxgradError, shared: _Shared, base: nn.Module) -> str:
    """Why a module fxgrad's tracer served so far goes to Dynamo on this call."""
    n = len(shared.variants)
    mode = "train" if base.training else "eval"
    return (
        f"{error.message} (on a later call, in {mode} mode; from then on Dynamo takes "
        f"every call, and the {n} variant{'s' if n != 1 else ''} fxgrad's tracer decided "
        "before are no longer used)"
    )


class _UseDynamo(Exception):
    """fxgrad's tracer refused the forward; the Dynamo front-end is to take over."""

    def __init__(self, refusal: str) -> None:
        super().__init__(refusal)
        self.refusal = refusal


class _ModelError(Exception):
    """The model itself raised on the call being decided on (not an autograd refusal)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _eager_reference(
    model: nn.Module, call: CallSpec, ctx: Context, passes: Sequence[Pass]
) -> Reference:
    """Run eager forward once; eager backward is left to `Reference.gradients()`."""
    ref = Reference()

    def eager(*leaves: Any) -> Any:
        args, kwargs = call.unflatten(list(leaves))
        # forward, not __call__: the model's own hooks run around the fixed module's graph
        # (it shares their tables), so the graph must equal the forward without them.
        return model.forward(*args, **kwargs)

    try:
        cloned = ctx.inputs()
        with seeded(ctx.seed):
            out = eager(*cloned)
    except Exception as e:
        ref.forward_error = e
        if not any(p.repairs(e) for p in passes):
            raise _ModelError(e) from e  # no pass repairs it: the model's own error
        return ref  # an error a pass repairs (selected or not: the report says if it stays)
    # Detached: holding the outputs must not hold eager's autograd graph (its activations).
    flat = flat_outputs(out)
    ref.carries_gradient = tuple(isinstance(o, torch.Tensor) and o.requires_grad for o in flat)
    ref.outputs = [o.detach() if isinstance(o, torch.Tensor) else o for o in flat]
    del flat
    del out

    def load_gradients() -> tuple[list[torch.Tensor | None] | None, BaseException | None]:
        _, grads, berr = run_forward_backward(eager, ctx.inputs(), ctx.params(), ctx.seed)
        return grads, berr

    ref.load_gradients = load_gradients

    def grad_names() -> list[str]:
        # In the order of ctx.params(), which lists the parameters as named_parameters().
        plain = [
            f"{path}.{k}" if path else k
            for path, m in model.named_modules()
            for k in plain_tensor_attributes(m)
            if m.__dict__[k].requires_grad
        ]
        return (
            [n for n, p in model.named_parameters() if p.requires_grad]
            + plain
            + [
                f"input {i}"
                for i, t in enumerate(cloned)
                if isinstance(t, torch.Tensor) and t.requires_grad
            ]
        )

    ref.load_grad_names = grad_names
    return ref


def _eager_error(
    root: nn.Module, call: CallSpec, leaves: list[Any], state: PrivateState
) -> BaseException | None:
    """What eager's forward raises on this call (on the private twin), if anything.

    A call the model itself rejects (a wrong shape, an `assert`, a `raise`) must surface as
    the model's own exception, not as fxgrad's capture error; one a pass repairs (autograd
    refusing a write) is fxgrad's to handle.
    """
    state.reset()
    args, kwargs = call.unflatten(clone_inputs(leaves))
    try:
        root.forward(*args, **kwargs)
    except Exception as e:
        if not any(p.repairs(e) for p in _all_passes()):
            return e
    return None


def _eager_error_on(base: nn.Module, args: tuple, kwargs: dict) -> BaseException | None:
    """What eager's forward raises on this call, run on a private twin of `base`."""
    call, leaves = call_spec(base, args, kwargs)
    root = twin(base)
    quiet_user_hooks(root)
    with outside_transforms(), gc_paused(), private_state(root) as state:
        return _eager_error(root, call, leaves, state)


def _backward_note(ref: Reference, first: Observation) -> str:
    """Say why backward fails, in eager's own words (eager backward runs only for this)."""
    error = ref.backward_error
    if error is not None:
        return Note(
            "eager backward fails on the example inputs: " + first_line(error), actionable=True
        )
    what = first.backward_error
    return Note(
        "the captured graph's backward fails where eager's runs"
        + (f": {first_line(what)}" if what is not None else "")
        + "; please report this model",
        actionable=True,
    )


def _still_failing(gm: fx.GraphModule, ctx: Context) -> list[str]:
    """Say so when the fixed forward still raises what eager raised: nothing is hidden."""
    try:
        with seeded(ctx.seed):
            run_forward(gm, *ctx.inputs())
    except Exception as e:
        return [
            Note(
                "the forward raises in eager PyTorch and still does after fixing: " + first_line(e),
                actionable=True,
            )
        ]
    return []


def _writes_through_data(gm: fx.GraphModule) -> bool:
    """Whether the graph reads `.data` or assigns it: writes no version counter sees."""
    return any(
        n.op == "call_function"
        and n.target in (getattr, setattr)
        and len(n.args) > 1
        and n.args[1] == "data"
        for n in gm.graph.nodes
    )


def _describe_call(root: nn.Module, call: CallSpec, leaves: list[Any], grad: bool) -> str:
    """One line saying which call a variant was decided on."""
    parts = [
        "train mode" if root.training else "eval mode",
        "grad enabled" if grad else "grad disabled",
    ]
    names = [n for i, n in enumerate(call.leaf_names) if i not in call.constants]
    for name, x in zip(names, [x for i, x in enumerate(leaves) if i not in call.constants]):
        if isinstance(x, torch.Tensor):
            dtype = str(x.dtype).removeprefix("torch.")
            text = f"{name}: {dtype}[{', '.join(map(str, x.shape))}]"
            if x.device.type != "cpu":
                text += f" on {x.device}"
            if x.requires_grad:
                text += " requires grad"
            parts.append(text)
    for i in sorted(call.numbers):
        parts.append(f"{call.leaf_names[i]}: any {type(leaves[i]).__name__}")
    for i, value in call.constants.items():
        if value is not None:
            parts.append(f"{call.leaf_names[i]}={value!r}")
    return "; ".join(parts)


@dataclass
class _Decision:
    captured: Captured
    report: Report
    code: str  # the captured code before any pass, to compare modes


@drops_transient_code
def _decide_on(
    base: nn.Module,
    call: CallSpec,
    leaves: list[Any],
    opts: _Options,
    *,
    grad_enabled: bool,
    static: bool,
    at_call: bool,
    flip_mode: bool = False,
    skip_if_code: str | None = None,
    numbers_as_inputs: bool = False,
) -> _Decision | None:
    """Capture `base` (on a twin) for one call and run the passes on the graph.

    With `numbers_as_inputs`, raises `_NumbersStay` when a number placeholder decides a
    shape (see `numbers_only_feed_values`), before any pass runs."""
    root = twin(base)
    quiet_user_hooks(root)
    report = Report(mode="static" if static else "exact", model=type(base).__name__)
    with (
        _mode(root, not root.training) if flip_mode else _nothing(),
        torch.set_grad_enabled(grad_enabled),
    ):
        if static:
            return _decide_static(root, call, leaves, opts, report, grad_enabled, skip_if_code)
        with private_state(root) as state:
            captured = _capture_on(root, call, leaves, state, at_call)
            if captured.counters:  # numbers the forward writes back: read them live
                state.reset()
                captured = _capture_on(root, call, leaves, state, at_call, captured.counters)
            if captured.gm.code == skip_if_code:
                return None
            code = captured.gm.code
            example = [leaves[i] for i in captured.leaf_index]
            if numbers_as_inputs:
                why = numbers_only_feed_values(captured.gm, example)
                if why is not None:
                    raise _NumbersStay(why)
            _decide_captured(root, call, captured, example, state, opts, report, at_call)
    report.variant = _describe_call(root, call, leaves, grad_enabled)
    return _Decision(captured, report, code)


def _capture_on(
    root: nn.Module,
    call: CallSpec,
    leaves: list[Any],
    state: PrivateState,
    at_call: bool,
    live: set[tuple[str, str]] | frozenset = frozenset(),
) -> Captured:
    """Capture the twin `root` on a call; where capture fails, say whose failure it is.

    An error the model raises in eager PyTorch on this call is the model's: raised as eager
    raises it on a real call, as the capture error (which names the line) on example inputs.
    One that only tracing raised (an op run on traced values, a check that tests a traced
    value) is a capture failure, a TraceError, even where tracing saw it as the model's.
    """
    try:
        return capture(root, call, clone_inputs(leaves), live=live)
    except FxgradError as e:
        own = _eager_error(root, call, leaves, state)
        if own is not None:
            if at_call:
                raise own from None  # the model's own error, from the user's line
            if isinstance(e, ModelError) and type(e.exception) is not type(own):
                raise _model_raises(own) from own  # in eager's words, not tracing's
            raise
        if isinstance(e, ModelError):
            raise _tracing_raised(e) from e
        raise


def _model_raises(error: BaseException) -> ModelError:
    """The ModelError for what eager's forward raises on the example inputs."""
    where = innermost_user_line(error)
    text = str(error).strip()
    known = where != "an unknown line"
    return ModelError(
        f"The model raises {type(error).__name__} in forward on the example inputs"
        + (f" at {where}" if known else "")
        + f": {text.splitlines()[0] if text else ''}",
        hint="Check that the example inputs have the shapes, dtypes and devices the "
        "model expects; fxgrad needs a forward that runs in eager PyTorch.",
        exception=error,
        where=where if known else "",
    )


def _tracing_raised(e: ModelError) -> TraceError:
    """A TraceError for an error tracing ran into that eager does not raise on the call."""
    inner = e.exception if e.exception is not None else e
    text = str(inner).strip()
    first = text.splitlines()[0] if text else ""
    where = e.where or "an unknown line"
    return TraceError(
        f"fxgrad could not capture the forward at {where}: tracing it raised "
        f"{type(inner).__name__} ({first}) where eager PyTorch runs on the same inputs.",
        hint="This is a capture bug in fxgrad; please report it with the model. Meanwhile "
        '`fxgrad.fix(model)` (frontend="auto") or frontend="dynamo" captures it with Dynamo.',
    )


def _decide_static(
    root: nn.Module,
    call: CallSpec,
    leaves: list[Any],
    opts: _Options,
    report: Report,
    grad_enabled: bool,
    skip_if_code: str | None,
) -> _Decision | None:
    """Capture the twin `root` without running it, and run the passes statically."""
    with forked_rng():
        captured = capture(root, call, None)
        if captured.counters:  # numbers the forward writes back: read them live
            captured = capture(root, call, None, live=captured.counters)
    if captured.gm.code == skip_if_code:
        return None
    code = captured.gm.code
    ctx = Context(
        example_inputs=None,
        measure=_timer(opts),
        measure_enabled=opts.measure is not False,
        module=root,
    )
    changes, notes = run_passes(captured.gm, opts.passes, ctx, None, opts.verify)
    report.code_before, report.code_after = code, captured.gm.code
    report.changes.extend(changes)
    report.notes.extend(n for n in captured.notes + notes if n not in report.notes)
    report.variant = _describe_call(root, call, leaves, grad_enabled) + "; static"
    return _Decision(captured, report, code)


def _decide_captured(
    root: nn.Module,
    call: CallSpec,
    captured: Captured,
    example: list[Any],
    state: PrivateState,
    opts: _Options,
    report: Report,
    at_call: bool,
) -> None:
    """Check the capture against eager on the call, then run and verify the passes."""
    state.copy_always = _writes_through_data(captured.gm)
    ctx = Context(
        example_inputs=example,
        measure=_timer(opts),
        measure_enabled=opts.measure is not False,
        reset_state=state.reset,
        private_state=True,
        module=root,
        grad_enabled=torch.is_grad_enabled(),
        extensions=[make for p in opts.passes for make in p.observes],
    )
    try:
        ref = _eager_reference(root, call, ctx, _all_passes())
    except _ModelError as e:
        if at_call:
            raise e.error from None  # what eager raises on this call, as eager raises it
        err = e.error
        text = str(err).strip()
        raise ModelError(
            f"The model raises {type(err).__name__} in forward on the example inputs: "
            f"{text.splitlines()[0] if text else ''}",
            hint="Check that the example inputs have the shapes, dtypes and devices the "
            "model expects; fxgrad needs a forward that runs in eager PyTorch.",
            exception=err,
        ) from err
    first = check_capture(captured.gm, ctx, ref)
    if first.backward_fails:
        report.notes.append(_backward_note(ref, first))
    report.notes.extend(n for n in captured.notes if n not in report.notes)
    before = captured.gm.code
    changes, notes = run_passes(captured.gm, opts.passes, ctx, ref, opts.verify)
    if ref.forward_error is not None:
        notes.extend(_still_failing(captured.gm, ctx))
    report.code_before, report.code_after = before, captured.gm.code
    report.changes.extend(changes)
    report.notes.extend(n for n in notes if n not in report.notes)
    ctx.forget_observation()  # its values hold a forward's activations


def _decide(
    base: nn.Module,
    args: tuple | None,
    kwargs: dict | None,
    opts: _Options,
    *,
    grad_enabled: bool,
    at_call: bool = False,
    static: bool = False,
) -> Variant:
    """Decide on one call (or statically) and bind the result to the user's module.

    Python numbers among the arguments are tried as graph inputs first: one variant then
    serves every value (a diffusion timestep, an annealed scale). When the forward uses
    one as a Python value (a branch, a size), it is baked in as a constant instead, and a
    call with another value is decided anew.

    A call made under inference mode or inside torch.func transforms is decided outside
    them (fxgrad.interop); a call's lazy modules are initialized first, as eager would.
    """
    with outside_transforms():
        if at_call:
            refuse_sharded(base)  # fully_shard(layer) after fix(): what fxgrad cannot copy
            if uninitialized(base):
                initialize_lazy(base, args or (), kwargs or {})
        return _decide_numbers_first(
            base, args, kwargs, opts, grad_enabled=grad_enabled, at_call=at_call, static=static
        )


def _decide_numbers_first(
    base: nn.Module,
    args: tuple | None,
    kwargs: dict | None,
    opts: _Options,
    *,
    grad_enabled: bool,
    at_call: bool,
    static: bool,
) -> Variant:
    kept = ""
    if not static:
        call, leaves = call_spec(base, args, kwargs, numbers=True)
        _check_leaves(args or (), kwargs or {}, leaves)
        if call.numbers:
            try:
                decision = _decide_on(
                    base,
                    call,
                    leaves,
                    opts,
                    grad_enabled=grad_enabled,
                    static=False,
                    at_call=at_call,
                    numbers_as_inputs=True,
                )
            except _NumbersStay as e:
                kept = e.why
            except Exception:  # noqa: BLE001 - tried again with the numbers as constants
                kept = "the forward uses it as a Python value"
            else:
                assert decision is not None
                names = ", ".join(call.leaf_names[i] for i in sorted(call.numbers))
                decision.report.notes.append(
                    f"{names}: a number taken as an input of the graph (any value runs this code)"
                )
                return _variant_of(base, decision)
    call, leaves = call_spec(base, args, kwargs)
    decision = _decide_on(
        base, call, leaves, opts, grad_enabled=grad_enabled, static=static, at_call=at_call
    )
    assert decision is not None
    if kept:
        names = ", ".join(call.leaf_names[i] for i, c in call.constants.items() if is_number(c))
        decision.report.notes.append(
            f"{names}: a number kept as a constant ({kept}); a call with another value "
            "is decided anew"
        )
    return _variant_of(base, decision)


class _NumbersStay(Exception):
    """A number argument cannot be an input of the graph; `why` says what it decides."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _variant_of(base: nn.Module, decision: _Decision) -> Variant:
    cap = decision.captured
    constants = _take_constants(cap.gm, base)
    graph = cap.gm.graph
    n = cap.call.in_spec.num_leaves
    identity = not cap.call.constants and cap.leaf_index == list(range(n))
    user = base.__dict__.get(ROOT_ATTR, base)
    view = build_view(user, cap.attributes, cap.globals, cap.cells, cap.traced)
    return _bind(
        base,
        graph=graph,
        call=cap.call,
        out_spec=cap.out_spec,
        leaf_index=None if identity else list(cap.leaf_index),
        report=decision.report,
        constants=constants,
        key=None,
        view=view,
    )


@drops_transient_code
def _bind(
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


def _rebound(v: Variant, root: nn.Module, graph: fx.Graph, constants: dict) -> Variant:
    return _bind(
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


def _take_constants(gm: fx.GraphModule, base: nn.Module) -> dict[str, Any]:
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


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _all_passes() -> Sequence[Pass]:
    from fxgrad.passes import ALL

    return ALL


def _timer(opts: _Options) -> Measure:
    return opts.measure if callable(opts.measure) else default_measure


_FRONTENDS = ("auto", "fx", "dynamo")


def _options(
    select: Any,
    ignore: Any,
    verify: bool,
    measure: Measure | bool | None,
    max_variants: int,
    frontend: str = "auto",
) -> _Options:
    from fxgrad.passes import ALL

    if frontend not in _FRONTENDS:
        raise FxgradError(
            f"frontend must be one of {', '.join(_FRONTENDS)}, got {frontend!r}.",
            hint="'auto' (the default) captures with fxgrad's tracer and hands what it "
            "refuses to Dynamo.",
        )
    if max_variants < 1:
        raise FxgradError(
            f"max_variants must be at least 1, got {max_variants}.",
            hint="Leave it at its default (8) unless calls keep changing.",
        )
    return _Options(select_passes(ALL, select, ignore), verify, measure, max_variants, frontend)


def fix(
    model: nn.Module,
    example_inputs: Any = None,
    example_kwargs: dict[str, Any] | None = None,
    *,
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
    verify: bool = True,
    measure: Measure | bool | None = None,
    max_variants: int = MAX_VARIANTS,
    frontend: str = "auto",
) -> FixedModule:
    """Return a drop-in module that runs `model` with its autograd hazards rewritten.

    Decisions are made on real calls, so they are exact: with `example_inputs` (a tuple
    of positional arguments, a lone tensor accepted, and `example_kwargs`) on that call
    right away, without them on the first call. A later call that differs in something a
    decision depended on (dtypes, `requires_grad`, train/eval, ...) gets its own variant,
    decided on it; see `fxgrad.guards`. Every rewrite is verified against eager on the
    call it was decided on. The original model is never changed by fixing; the fixed
    module shares its submodules, parameters and buffers. `select`/`ignore` take pass
    codes or prefixes ("FXG1"); `measure` replaces the timer measured passes use, and
    `measure=False` makes them time nothing (only decisions cached earlier apply).
    `frontend="auto"` captures with fxgrad's tracer and hands a forward it cannot capture
    (data-dependent control flow) to Dynamo, whose graphs get the same passes (see
    fxgrad.dynamo); "fx" and "dynamo" use one of them only.
    """
    refuse_distributed(model)  # DDP and FSDP wrap the fixed module, not the other way
    model = _unwrap(model)
    opts = _options(select, ignore, verify, measure, max_variants, frontend)
    inputs = _normalize_inputs(example_inputs)
    fixed = FixedModule(model, opts)
    if inputs is None and example_kwargs is None:
        return fixed  # decided on the first call
    if uninitialized(model):
        # Lazy modules initialize on the first call, which fix() must not make for you:
        # that call decides (fxgrad.interop).
        return fixed
    if frontend == "dynamo":
        _decide_with_dynamo(fixed, model, inputs or (), example_kwargs)
        return fixed
    try:
        with gc_paused():
            # An explicit fix() decides for training: grad on, whatever the caller's mode.
            variant = _decide(model, inputs or (), example_kwargs, opts, grad_enabled=True)
    except _FX_REFUSALS as e:
        if frontend != "auto":
            raise
        _decide_with_dynamo(fixed, model, inputs or (), example_kwargs, e.message)
        return fixed
    args, kwargs = inputs or (), dict(example_kwargs or {})
    skey, leaves = structure(args, kwargs)
    tensors = list(args) if leaves is None else [x for x in leaves if _is_input(x)]
    with torch.enable_grad():
        variant.key = call_key(skey, tensors, *fixed._modules_for_key(), fixed._fxgrad.tensor_state)
    variant.shapes.remember(fixed, tensors)
    fixed._adopt(variant)
    return fixed


def _decide_with_dynamo(
    fixed: FixedModule,
    model: nn.Module,
    args: tuple,
    kwargs: dict[str, Any] | None,
    refusal: str = "",
) -> None:
    """Run the example call through Dynamo now, so each graph it captures is decided on it.

    The call runs on private copies of the model's tensors with the RNG restored after, and
    what it changes in the modules' Python state (a hook a forward installs) is put back, so
    fixing leaves the model as it was; later calls reuse the decided graphs wherever
    Dynamo's guards hold, and graphs first met later are decided on their first call.
    """
    run = fixed._use_dynamo(refusal)
    call_args = clone_inputs(list(args))
    call_kwargs = dict(zip(kwargs or {}, clone_inputs(list((kwargs or {}).values()))))
    with gc_paused(), python_state_restored(model), private_state(model), torch.enable_grad():
        run(*call_args, **call_kwargs)


def fix_static(
    model: nn.Module,
    *,
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
) -> FixedModule:
    """Decide without running anything: conservative decisions for every call.

    For tools that cannot run the model (the CLI without `--input`); the result serves
    every call with the forward's own parameters.
    """
    refuse_distributed(model)
    model = _unwrap(model)
    if uninitialized(model):
        raise lazy_refusal("Deciding without example inputs")
    opts = _options(select, ignore, True, None, MAX_VARIANTS)
    fixed = FixedModule(model, opts)
    with gc_paused():
        fixed._adopt(_decide(model, None, None, opts, grad_enabled=True, static=True))
    return fixed


def check(
    model: nn.Module,
    example_inputs: Any = None,
    example_kwargs: dict[str, Any] | None = None,
    *,
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
    measure: Measure | bool | None = None,
) -> Report:
    """Return the Report of what fixing would change, in both train and eval mode.

    With example inputs the decisions are exact; without them they are static (nothing
    runs) and conservative. The mode the model is not in is checked too, and its findings
    are added when its graph differs.
    """
    refuse_distributed(model, ddp=False)  # a report only: DDP's module is what it runs
    model = _unwrap(model)
    opts = _options(select, ignore, True, measure, MAX_VARIANTS)
    inputs = _normalize_inputs(example_inputs)
    static = inputs is None and example_kwargs is None
    if uninitialized(model):
        if static:
            raise lazy_refusal("fxgrad.check() without example inputs")
        model = _initialized_copy(model, inputs or (), example_kwargs or {})
    with gc_paused():
        call, leaves = call_spec(model, None if static else inputs or (), example_kwargs)
        if not static:
            _check_leaves(inputs or (), example_kwargs or {}, leaves)
        try:
            first = _decide_on(
                model, call, leaves, opts, grad_enabled=True, static=static, at_call=False
            )
        except _FX_REFUSALS as e:
            if static:
                raise
            # Dynamo captures what fxgrad's tracer refuses, in the model's own mode only.
            fixed = FixedModule(model, opts)
            _decide_with_dynamo(fixed, model, inputs or (), example_kwargs, e.message)
            return fixed.report
        assert first is not None
        if first.captured.reads_mode:
            _add_other_mode(first, model, call, leaves, opts, static)
    return first.report


def _add_other_mode(
    first: _Decision,
    model: nn.Module,
    call: CallSpec,
    leaves: list[Any],
    opts: _Options,
    static: bool,
) -> None:
    """Add to `first`'s report what the mode the model is not in finds, where its capture
    differs. Only called when traced code read a `training` flag: otherwise the other
    mode's capture is the same code, which is all the second decision compares."""
    report = first.report
    try:
        other = _decide_on(
            model,
            call,
            leaves,
            opts,
            grad_enabled=True,
            static=static,
            at_call=False,
            flip_mode=True,
            skip_if_code=first.code,
        )
    except _FX_REFUSALS as e:
        if static:
            raise
        # A fixed module hands such calls to Dynamo; this report is fxgrad's tracer's.
        mode = "eval" if model.training else "train"
        report.notes.append(
            f"in {mode} mode fxgrad's tracer cannot capture or verify the forward, so a "
            f"fixed module hands {mode}-mode calls to Dynamo (not checked here): {e.message}"
        )
        return
    if other is not None:
        report.extend(other.report.changes)
        report.notes.extend(n for n in other.report.notes if n not in report.notes)


# torch.compile(fixed): Dynamo runs forward and variant.run as Python and compiles the
# variant's generated code they call; dispatch and deciding it never compiles.
run_eagerly_under_dynamo(
    frame=[FixedModule.forward, Variant.run, Variant._forward_for, code_is_recorded],
    tree=[
        FixedModule._dispatch,
        FixedModule._use_dynamo,
        _Shared.tree,
        _same_submodules,
        _bind_submodules,
        Variant._name_the_line,
        _eager_error_on,
        autocast_state,
        restore_autocast,
    ],
)
