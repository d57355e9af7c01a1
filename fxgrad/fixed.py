"""The drop-in module `fix()` returns, and how it picks the variant to run on each call.

A fixed module decides on real calls. Every call is checked against what the decisions it
holds assumed (fxgrad.guards): a call that fits reuses them, one that does not gets a
variant decided exactly on it (fxgrad.decide), up to a limit past which the module raises
an error naming the fact that keeps changing. A forward fxgrad's tracer refuses is handed
to the Dynamo front-end (fxgrad.dynamo), which then takes every call.
"""

from __future__ import annotations

import copy
import threading
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from fxgrad.autograd_run import gc_paused
from fxgrad.decide import FX_REFUSALS, Options, decide, describe_call, eager_error_on
from fxgrad.dynamo import Backend, compile_module, run_example_call
from fxgrad.errors import FxgradError
from fxgrad.guards import (
    TensorState,
    call_key,
    describe_change,
    mode_matters,
    structure,
    tensor_tables,
)
from fxgrad.interop import (
    fake_trace_refusal,
    fits_traced_call,
    forward_with_signature,
    in_jit_scope,
    jit_dynamo_refusal,
    jit_tracing_paused,
    run_eagerly_under_dynamo,
    tracer_of,
)
from fxgrad.report import Report
from fxgrad.serialize import variant_parts, variant_state
from fxgrad.tracing import ROOT_ATTR, call_spec
from fxgrad.tracing.callspec import is_array
from fxgrad.variant import Variant, bind, rebound
from fxgrad.view import TreeWatch, walk_modules

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


class _Shared:
    """What a fixed module shares with its DataParallel replicas: variants and constants."""

    def __init__(self, options: Options) -> None:
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
        self.backend: Backend | None = None
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
        view: nn.Module = object.__new__(view_cls)
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

    def __init__(self, root: nn.Module, options: Options) -> None:
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
    def training(self) -> bool:
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
                own = eager_error_on(self._base(), args, kwargs)
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
            described = describe_call(root, call, call_leaves, torch.is_grad_enabled())
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
            # mypy takes a class for unhashable where functools.cache wants Hashable (mypy#11470)
            moded = [m for m in mods if mode_matters(type(m))]  # type: ignore[arg-type]
            hit = d["_fxgrad_mods"] = _KeyModules(d["_modules"], tree.epoch, moded, mods)
        return hit.moded, hit.tables

    def _restatic(self, old: Variant) -> Variant:
        """The static decision again, after a Python value it read changed."""
        shared = self._fxgrad
        with shared.lock, gc_paused():
            variant = decide(
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
                    variant = decide(
                        self._base(),
                        args,
                        kwargs,
                        shared.options,
                        grad_enabled=torch.is_grad_enabled(),
                        at_call=True,
                    )
            except FX_REFUSALS as e:
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
        shared = self._fxgrad
        with shared.lock:
            if shared.dynamo is None:
                root = self.__dict__[ROOT_ATTR]
                shared.backend = Backend(type(root).__name__, shared.options)
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
            new._adopt(rebound(v, root, graph, constants))
        return new

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Not fx's own pickling, which traces the generated code again with a plain tracer
        # and would silently turn `z += 1` back into `z = z + 1`: the graphs are stored
        # node by node (fxgrad.serialize), with the user's module pickled once.
        shared = self._fxgrad
        state = {
            "root": self.__dict__[ROOT_ATTR],
            "verify": shared.options.verify,
            "codes": [p.code for p in shared.options.passes],
            "max_variants": shared.options.max_variants,
            "variants": [variant_state(v) for v in ([shared.static] if shared.static else [])]
            + [variant_state(v) for v in shared.variants],
        }
        return (unpickle_fixed, (state,))


def unpickle_fixed(state: dict[str, Any]) -> FixedModule:
    """A fixed module again from what `FixedModule.__reduce_ex__` stored."""
    # Looked up when called, not bound at import: tests swap fxgrad.passes.ALL.
    from fxgrad.passes import ALL

    codes = set(state["codes"])
    options = Options(
        [p for p in ALL if p.code in codes], state["verify"], None, state["max_variants"]
    )
    root = state["root"]
    fixed = FixedModule(root, options)
    for vs in state["variants"]:
        parts = variant_parts(vs)
        fixed._adopt(bind(root, **parts))
    return fixed


def _is_input(x: Any) -> bool:
    return isinstance(x, torch.Tensor) or is_array(x)


_DISPATCH: list[Callable] = []


def _dispatch_outside_dynamo() -> Callable:
    """`FixedModule._dispatch`, run eagerly when torch.compile traces a fixed module.

    Deciding captures and runs the model, which must not happen inside Dynamo's trace; the
    chosen variant's generated code is what Dynamo then compiles.
    """
    if not _DISPATCH:
        # Imported here: Dynamo is tracing this call, so it is loaded already, and
        # `import torch` alone does not load it.
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


def decide_example(fixed: FixedModule, args: tuple, kwargs: dict[str, Any] | None) -> None:
    """Decide on fix()'s example call now and keep the variant for calls like it.

    An explicit fix() decides for training: grad on, whatever the caller's mode. A forward
    fxgrad's tracer refuses goes to Dynamo where the front-end is "auto".
    """
    shared = fixed._fxgrad
    opts = shared.options
    if opts.frontend == "dynamo":
        decide_with_dynamo(fixed, args, kwargs)
        return
    model = fixed.__dict__[ROOT_ATTR]
    try:
        with gc_paused():
            variant = decide(model, args, kwargs, opts, grad_enabled=True)
    except FX_REFUSALS as e:
        if opts.frontend != "auto":
            raise
        decide_with_dynamo(fixed, args, kwargs, e.message)
        return
    skey, leaves = structure(args, dict(kwargs or {}))
    tensors = list(args) if leaves is None else [x for x in leaves if _is_input(x)]
    with torch.enable_grad():
        variant.key = call_key(skey, tensors, *fixed._modules_for_key(), shared.tensor_state)
    variant.shapes.remember(fixed, tensors)
    fixed._adopt(variant)


def decide_statically(fixed: FixedModule) -> None:
    """Decide without running anything: one variant that serves every call."""
    root = fixed.__dict__[ROOT_ATTR]
    with gc_paused():
        fixed._adopt(
            decide(root, None, None, fixed._fxgrad.options, grad_enabled=True, static=True)
        )


def decide_with_dynamo(
    fixed: FixedModule, args: tuple, kwargs: dict[str, Any] | None, refusal: str = ""
) -> None:
    """Hand `fixed` to the Dynamo front-end and decide each graph it captures on the
    example call now (`refusal`: why fxgrad's tracer did not capture the forward)."""
    run_example_call(fixed._use_dynamo(refusal), fixed.__dict__[ROOT_ATTR], args, kwargs)


def current_variant(fixed: FixedModule) -> Variant:
    """The variant `fixed` ran last: its graph, and the call structure it was decided on.

    A function rather than an attribute: every name FixedModule defines hides the user's
    model attribute of that name, which the fixed module otherwise passes through.
    """
    return fixed._variant()


def captured_by_dynamo(fixed: FixedModule) -> bool:
    """Whether the Dynamo front-end took `fixed` over (one graph per piece, and no one
    GraphModule)."""
    return fixed._fxgrad.backend is not None


# torch.compile(fixed): Dynamo runs forward as Python and compiles the variant's generated
# code it calls (fxgrad.variant registers `Variant.run`); dispatch and deciding it never
# compiles.
run_eagerly_under_dynamo(
    frame=[FixedModule.forward],
    tree=[FixedModule._dispatch, FixedModule._use_dynamo, _Shared.tree, eager_error_on],
)
