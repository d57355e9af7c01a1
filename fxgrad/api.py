"""fix() and check(): trace -> capture check -> passes -> verify -> fixed module + Report."""

from __future__ import annotations

import contextlib
import copy
import gc
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from fxgrad.context import Context, FirstRun, Measure, clone_inputs, default_measure, seeded
from fxgrad.errors import FxgradError
from fxgrad.pipeline import (
    Reference,
    _first_line,
    check_capture,
    run_forward_backward,
    run_passes,
)
from fxgrad.registry import select_passes
from fxgrad.report import Report
from fxgrad.trace import CallSpec, Captured, call_spec, capture, has_hooks, twin

_AUTOGRAD_FORWARD_ERRORS = (
    "in-place operation",
    "inplace operation",
    "a view of a leaf",
    "arguments don't support automatic differentiation",  # out= on a tensor that requires grad
    "is being modified inplace",  # views of unbind/split/chunk, views made under no_grad
    "refers to a single memory location",  # writes into overlapping (expanded) tensors
)


class FixedModule(nn.Module):
    """The drop-in replacement `fix()` returns.

    It owns the same parameters and buffers as the original (shared tensors, the same
    `state_dict()` keys) and runs the rewritten graph for the current `training` mode.
    `.report` says what was changed and why; `.graph_module` is the rewritten GraphModule.
    """

    def __init__(
        self,
        root: nn.Module,
        graphs: dict[bool, Captured],
        report: Report,
        call: CallSpec,
    ) -> None:
        super().__init__()
        self.__dict__["_modules"] = root._modules
        self.__dict__["_parameters"] = root._parameters
        self.__dict__["_buffers"] = root._buffers
        self.__dict__["_non_persistent_buffers_set"] = root._non_persistent_buffers_set
        self.training = root.training
        self.__dict__["_fxgrad_graphs"] = graphs
        self.__dict__["_fxgrad_call"] = call
        self.__dict__["report"] = report
        self.__dict__["original_class"] = type(root)

    def _captured(self) -> Captured:
        graphs = self._fxgrad_graphs
        return graphs.get(self.training) or next(iter(graphs.values()))

    @property
    def graph_module(self) -> fx.GraphModule:
        """The rewritten GraphModule for the current mode."""
        return self._captured().gm

    @property
    def code(self) -> str:
        """The generated Python code of the rewritten forward for the current mode."""
        return self._captured().gm.code

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        cap = self._captured()
        leaves = cap.call.flatten(args, kwargs)
        prev = torch.is_grad_enabled()
        try:
            out = cap.gm.forward(*leaves)  # not gm(): fx prints its own traceback
        except BaseException:
            torch.set_grad_enabled(prev)  # a grad-mode region the error cut short
            raise
        if cap.out_spec.num_leaves == 1 and cap.out_spec.num_children == 0:
            return out[0]  # a single tensor output: skip the pytree rebuild
        return pytree.tree_unflatten(list(out), cap.out_spec)

    def extra_repr(self) -> str:
        return f"fixed {self.original_class.__name__}: {self.report.summary()}"

    def __deepcopy__(self, memo: dict) -> FixedModule:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Not fx's own pickling, which traces the generated code again with a plain tracer
        # and would silently turn `z += 1` back into `z = z + 1`: the graphs are stored
        # node by node (fxgrad.serialize). Parameters and buffers are pickled once, shared.
        from fxgrad.serialize import captured_state

        state = {
            "modules": self._modules,
            "parameters": self._parameters,
            "buffers": self._buffers,
            "non_persistent": self._non_persistent_buffers_set,
            "training": self.training,
            "graphs": {mode: captured_state(c) for mode, c in self._fxgrad_graphs.items()},
            "call": self._fxgrad_call,
            "report": self.report,
            "original_class": self.original_class,
        }
        return (_unpickle_fixed, (state,))


def _unpickle_fixed(state: dict[str, Any]) -> FixedModule:
    from fxgrad.serialize import captured_from_state

    root = nn.Module()
    root.__dict__["_modules"] = state["modules"]
    root.__dict__["_parameters"] = state["parameters"]
    root.__dict__["_buffers"] = state["buffers"]
    root.__dict__["_non_persistent_buffers_set"] = state["non_persistent"]
    root.training = state["training"]
    graphs = {mode: captured_from_state(c) for mode, c in state["graphs"].items()}
    fixed = FixedModule(root, graphs, state["report"], state["call"])
    fixed.__dict__["original_class"] = state["original_class"]
    return fixed


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
    if isinstance(model, FixedModule):
        raise FxgradError(
            "This model was already fixed by fxgrad.",
            hint="Call fxgrad.fix() on the original model instead.",
        )
    return model


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


def _check_leaves(model: nn.Module, inputs: tuple, leaves: list[Any]) -> None:
    if not any(isinstance(x, torch.Tensor) for x in leaves):
        given = pytree.tree_leaves(inputs)  # what the caller passed, not forward's defaults
        kinds = ", ".join(sorted({type(x).__name__ for x in given})) or "nothing"
        raise FxgradError(
            f"The example inputs hold no tensor (found {kinds}).",
            hint="Pass the tensors the model's forward takes, e.g. (torch.randn(8, 3, 32, 32),).",
        )
    if any(isinstance(x, torch.Tensor) and x.is_meta for x in leaves):
        raise _meta_error("example inputs")


def _meta_error(where: str) -> FxgradError:
    return FxgradError(
        f"The {where} are on the meta device: they have no values, and fxgrad decides "
        "on example inputs by running the model.",
        hint="Pass real tensors (on the CPU is fine), or call fxgrad.fix(model) without "
        "example inputs to decide statically.",
    )


@contextlib.contextmanager
def preserved_state(
    root: nn.Module, probing: bool = True
) -> Iterator[Callable[[], list[torch.Tensor]]]:
    """Probe on private copies of parameters and buffers, and restore the RNG afterwards.

    Probing runs the model forward and backward (BatchNorm updates its running stats,
    forwards bump counters, a buggy forward may even write a parameter). `root` is the
    twin of the user's module: while probing, its parameter and buffer slots hold fresh
    copies, given anew by `reset()` before each run, so the user's tensors are never
    written (not even their version counters) and no `.grad` is ever left on them.
    Without probing (no example inputs) nothing runs and nothing is copied.
    """
    slots: list[tuple[dict, str, torch.Tensor]] = []
    params_tables: dict[int, dict] = {}
    if probing:
        for m in root.modules():
            params_tables[id(m._parameters)] = m._parameters
            for table in (m._parameters, m._buffers):
                slots.extend((table, name, t) for name, t in table.items() if t is not None)
        if any(t.is_meta for _, _, t in slots):
            raise _meta_error("model's parameters or buffers")

    clones: dict[int, tuple[torch.Tensor, int]] = {}

    def reset() -> list[torch.Tensor]:
        """Give every parameter and buffer slot a private copy of its original value.

        A copy is made anew only when a probe wrote to it (its version moved), so the
        parameters of a large model are copied once, not once per probing run. Returns
        the parameters now in place, as `root.parameters()` lists them, without walking
        the module tree once more.
        """
        params: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for table, name, t in slots:
                hit = clones.get(id(t))
                if hit is None or hit[0]._version != hit[1]:
                    c = t.detach().clone()
                    if isinstance(t, nn.Parameter):
                        c = nn.Parameter(c, requires_grad=t.requires_grad)
                    hit = clones[id(t)] = (c, c._version)
                table[name] = hit[0]
                if id(table) in params_tables:
                    params.setdefault(id(hit[0]), hit[0])
        return list(params.values())

    devices = sorted({t.device.index or 0 for _, _, t in slots if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices, enabled=probing):
        try:
            reset()
            yield reset
        finally:
            for table, name, t in slots:
                table[name] = t


@contextlib.contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[None]:
    flags = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield
    finally:
        for m, f in flags:
            m.training = f


def _reads_training(module: nn.Module) -> bool:
    """True when some traced (non-torch.nn) code reads `.training`, so modes differ."""
    for m in module.modules():
        cls = type(m)
        if cls.__module__.startswith("torch.nn") or cls.__module__.startswith("torch.fx"):
            continue
        for klass in cls.__mro__:
            if klass is nn.Module or klass.__module__.startswith("torch.nn"):
                break
            for value in vars(klass).values():
                fn = getattr(value, "__func__", value)
                code = getattr(fn, "__code__", None)
                if code is not None and _code_mentions(code, "training"):
                    return True
    return False


def _code_mentions(code: types.CodeType, name: str) -> bool:
    if name in code.co_names:
        return True
    return any(isinstance(c, types.CodeType) and _code_mentions(c, name) for c in code.co_consts)


def _eager_reference(model: nn.Module, call: CallSpec, ctx: Context) -> Reference:
    """Run eager forward once; eager backward is left to `Reference.gradients()`."""
    ref = Reference()

    def eager(*leaves: Any) -> Any:
        args, kwargs = call.unflatten(list(leaves))
        return model(*args, **kwargs)

    try:
        cloned = ctx.inputs()
        with seeded(ctx.seed):
            out = eager(*cloned)
    except Exception as e:
        ref.forward_error = e
        if not any(s in str(e) for s in _AUTOGRAD_FORWARD_ERRORS):
            raise FxgradError(
                f"The model raises {type(e).__name__} in forward on the example inputs: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                hint="Check that the example inputs have the shapes, dtypes and devices the "
                "model expects; fxgrad needs a forward that runs in eager PyTorch.",
            ) from e
        return ref
    # Detached: holding the outputs must not hold eager's autograd graph (its activations).
    ref.outputs = [
        o.detach() if isinstance(o, torch.Tensor) else o for o in pytree.tree_leaves(out)
    ]
    del out

    def load_gradients() -> tuple[list[torch.Tensor | None] | None, BaseException | None]:
        _, grads, berr = run_forward_backward(eager, ctx.inputs(), ctx.params(), ctx.seed)
        return grads, berr

    ref.load_gradients = load_gradients

    def grad_names() -> list[str]:
        # In the order of ctx.params(), which lists the parameters as named_parameters().
        return [n for n, p in model.named_parameters() if p.requires_grad] + [
            f"input {i}"
            for i, t in enumerate(cloned)
            if isinstance(t, torch.Tensor) and t.requires_grad
        ]

    ref.load_grad_names = grad_names
    return ref


def _backward_note(ref: Reference, first: FirstRun) -> str:
    """Say why backward fails, in eager's own words (eager backward runs only for this)."""
    error = ref.backward_error
    if error is not None:
        return "eager backward fails on the example inputs: " + _first_line(error)
    what = first.backward_error
    return (
        "the captured graph's backward fails where eager's runs"
        + (f": {_first_line(what)}" if what is not None else "")
        + "; please report this model"
    )


def _still_failing(gm: fx.GraphModule, ctx: Context, eager_error: BaseException) -> list[str]:
    """Say so when the fixed forward still raises what eager raised: nothing is hidden."""
    try:
        with seeded(ctx.seed):
            gm.forward(*ctx.inputs())
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return [f"the forward raises in eager PyTorch and still does after fixing: {first}"]
    return []


def _fix(
    model: nn.Module,
    example_inputs: Any,
    select: Any,
    ignore: Any,
    verify: bool,
    measure: Measure | None,
) -> FixedModule:
    from fxgrad.passes import ALL

    model = _unwrap(model)
    passes = select_passes(ALL, select, ignore)
    inputs = _normalize_inputs(example_inputs)
    call, leaves = call_spec(model, inputs)
    if inputs is not None:
        _check_leaves(model, inputs, leaves)
    root = twin(model)
    modes = [root.training]
    if _reads_training(root):
        modes.append(not root.training)
    report = Report(mode="exact" if inputs is not None else "static", model=type(model).__name__)
    if has_hooks(model):
        report.notes.append(
            "hooks registered on the model itself do not run when the fixed module is "
            "called; register them on the fixed module"
        )
    graphs: dict[bool, Captured] = {}
    with preserved_state(root, probing=inputs is not None) as reset_state:
        for training in modes:
            with _mode(root, training) if training != modes[0] else contextlib.nullcontext():
                reset_state()
                captured = capture(root, call, clone_inputs(leaves) if inputs else None)
                ctx = Context(
                    example_inputs=[leaves[i] for i in captured.leaf_index] if inputs else None,
                    measure=measure or default_measure,
                    reset_state=reset_state,
                    private_state=inputs is not None,
                    module=root,
                )
                ref = None
                if inputs is not None:
                    ref = _eager_reference(root, call, ctx)
                    first = check_capture(captured.gm, ctx, ref, passes)
                    if first.backward_fails and training == modes[0]:
                        report.notes.append(_backward_note(ref, first))
                report.notes.extend(n for n in captured.notes if n not in report.notes)
                before = captured.gm.code
                changes, notes = run_passes(captured.gm, passes, ctx, ref, verify)
                if ref is not None and ref.forward_error is not None:
                    notes.extend(_still_failing(captured.gm, ctx, ref.forward_error))
                if training == modes[0]:
                    report.code_before, report.code_after = before, captured.gm.code
                    report.changes.extend(changes)
                else:
                    report.extend(changes)
                report.notes.extend(n for n in notes if n not in report.notes)
                graphs[training] = captured
    if len(graphs) == 2 and graphs[True].gm.code == graphs[False].gm.code:
        graphs = {modes[0]: graphs[modes[0]]}
    return FixedModule(root, graphs, report, call)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while fixing.

    Capture and the passes allocate many small objects (nodes, proxies, frames); each full
    collection walks every live object, so with the collector on, time per node grew with
    graph size (1.3x from 1k to 50k nodes, plain `symbolic_trace` 1.35x) and is flat with
    it paused. Garbage made meanwhile is collected as usual afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def fix(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
    verify: bool = True,
    measure: Measure | None = None,
) -> FixedModule:
    """Capture `model` and return a drop-in module with autograd hazards rewritten.

    With `example_inputs` (a tuple of positional arguments; a lone tensor is accepted)
    every decision is made on a real run and every rewrite is verified against eager;
    without them decisions are static and conservative. The original model is never
    changed; the result shares its parameters and buffers. See `.report` on the result.
    `select`/`ignore` take pass codes or prefixes ("FXG1"); `measure` replaces the timer
    measured passes use (for deterministic tests).
    """
    with _gc_paused():
        return _fix(model, example_inputs, select, ignore, verify, measure)


def check(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
    measure: Measure | None = None,
) -> Report:
    """Return the Report of what `fix()` would change, without keeping the fixed module."""
    with _gc_paused():
        return _fix(model, example_inputs, select, ignore, True, measure).report
