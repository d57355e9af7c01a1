"""The decision sequence: capture one call, check the capture, run and verify the passes.

Both front-ends decide through it. fxgrad's tracer captures the whole forward on a private
twin of the model (`decide`, `decide_on`), checks the capture against eager, and binds the
result to the user's module as a variant (fxgrad.variant); Dynamo hands each graph it
captured to fxgrad.dynamo, which holds the graph as Dynamo captured it for the reference.
Either way the passes then run in the same context on the same kind of reference, each
result verified and rolled back where it fails (`decision_context`, `decide_graph`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from fxgrad.autograd_run import gc_paused, seeded
from fxgrad.changes import Note
from fxgrad.code_cache import drops_transient_code
from fxgrad.context import Context, Measure, clone_inputs, default_measure
from fxgrad.errors import EquivalenceError, FxgradError, ModelError, TraceError, first_line
from fxgrad.graph_utils import run_forward
from fxgrad.guards import numbers_only_feed_values
from fxgrad.interop import (
    initialize_lazy,
    outside_transforms,
    refuse_sharded,
    uninitialized,
)
from fxgrad.observe import Observation
from fxgrad.pipeline import (
    Reference,
    check_capture,
    flat_outputs,
    run_forward_backward,
    run_passes,
)
from fxgrad.registry import Pass
from fxgrad.report import Report
from fxgrad.state import PrivateState, forked_rng, plain_tensor_attributes, private_state
from fxgrad.tracing import ROOT_ATTR, CallSpec, Captured, call_spec, capture, twin
from fxgrad.tracing.callspec import is_number
from fxgrad.tracing.errors import innermost_user_line
from fxgrad.tracing.module_copy import quiet_user_hooks
from fxgrad.variant import Variant, bind, take_constants
from fxgrad.view import build as build_view

T = TypeVar("T")


# How many variants one fixed module keeps before it refuses a call that needs another.
MAX_VARIANTS = 8


@dataclass
class Options:
    """What a fixed module was asked for: the passes, whether to verify each result, the
    timer of measured passes, how many variants to keep, and which front-end captures."""

    passes: list[Pass]
    verify: bool
    measure: Measure | bool | None  # False: measured passes use only cached decisions
    max_variants: int = MAX_VARIANTS
    frontend: str = "auto"  # "fx", "dynamo", or "auto": fx, then Dynamo where fx refuses


def check_leaves(args: tuple, kwargs: dict, leaves: list[Any]) -> None:
    """Refuse example inputs nothing can be decided on: no tensor, or tensors without values."""
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
FX_REFUSALS = (TraceError, EquivalenceError)


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


def eager_error_on(base: nn.Module, args: tuple, kwargs: dict) -> BaseException | None:
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


def describe_call(root: nn.Module, call: CallSpec, leaves: list[Any], grad: bool) -> str:
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
class Decision:
    """One call decided by fxgrad's tracer: the rewritten capture and its report."""

    captured: Captured
    report: Report
    code: str  # the captured code before any pass, to compare modes


@drops_transient_code
def decide_on(
    base: nn.Module,
    call: CallSpec,
    leaves: list[Any],
    opts: Options,
    *,
    grad_enabled: bool,
    static: bool,
    at_call: bool,
    flip_mode: bool = False,
    skip_if_code: str | None = None,
    numbers_as_inputs: bool = False,
) -> Decision | None:
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
    report.variant = describe_call(root, call, leaves, grad_enabled)
    return Decision(captured, report, code)


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
    opts: Options,
    report: Report,
    grad_enabled: bool,
    skip_if_code: str | None,
) -> Decision | None:
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
    report.variant = describe_call(root, call, leaves, grad_enabled) + "; static"
    return Decision(captured, report, code)


def _decide_captured(
    root: nn.Module,
    call: CallSpec,
    captured: Captured,
    example: list[Any],
    state: PrivateState,
    opts: Options,
    report: Report,
    at_call: bool,
) -> None:
    """Check the capture against eager on the call, then run and verify the passes."""
    state.copy_always = _writes_through_data(captured.gm)
    ctx = decision_context(opts, example, reset_state=state.reset, module=root)
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
    decide_graph(captured.gm, ctx, ref, opts, report)


def decision_context(opts: Options, example: list[Any], **facts: Any) -> Context:
    """The context the passes decide in on one call, whichever front-end captured it.

    The call's inputs, the options' timer, the grad mode the call runs in, and what the
    passes record in an observed run; the tensors it reads are private copies (`facts`
    says how to reset them, and on which module, where the front-end keeps them).
    """
    return Context(
        example_inputs=example,
        measure=_timer(opts),
        measure_enabled=opts.measure is not False,
        private_state=True,
        grad_enabled=torch.is_grad_enabled(),
        extensions=[make for p in opts.passes for make in p.observes],
        **facts,
    )


def decide_graph(
    gm: fx.GraphModule,
    ctx: Context,
    ref: Reference,
    opts: Options,
    report: Report,
    finish: Callable[[fx.GraphModule, Context], T] | None = None,
) -> T | None:
    """Run the passes on a captured graph, verified against `ref`, into `report`.

    The step both front-ends share once they hold a graph and what it must compute: each
    pass's result is verified on the call and rolled back where it fails, and a forward
    that raised in the reference and still raises says so. `finish` runs last on the
    rewritten graph while its observed run is still kept (Dynamo's front-end runs the
    selected passes' `on_dynamo_graph` there), and its result is returned.
    """
    before = gm.code
    changes, notes = run_passes(gm, opts.passes, ctx, ref, opts.verify)
    if ref.forward_error is not None:
        notes.extend(_still_failing(gm, ctx))
    done = finish(gm, ctx) if finish is not None else None
    report.code_before, report.code_after = before, gm.code
    report.changes.extend(changes)
    report.notes.extend(n for n in notes if n not in report.notes)
    ctx.forget_observation()  # its values hold a forward's activations
    return done


def decide(
    base: nn.Module,
    args: tuple | None,
    kwargs: dict | None,
    opts: Options,
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
    opts: Options,
    *,
    grad_enabled: bool,
    at_call: bool,
    static: bool,
) -> Variant:
    kept = ""
    if not static:
        call, leaves = call_spec(base, args, kwargs, numbers=True)
        check_leaves(args or (), kwargs or {}, leaves)
        if call.numbers:
            try:
                decision = decide_on(
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
    decision = decide_on(
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


def _variant_of(base: nn.Module, decision: Decision) -> Variant:
    cap = decision.captured
    constants = take_constants(cap.gm, base)
    graph = cap.gm.graph
    n = cap.call.in_spec.num_leaves
    identity = not cap.call.constants and cap.leaf_index == list(range(n))
    user = base.__dict__.get(ROOT_ATTR, base)
    view = build_view(user, cap.attributes, cap.globals, cap.cells, cap.traced)
    return bind(
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


def add_other_mode(
    first: Decision,
    model: nn.Module,
    call: CallSpec,
    leaves: list[Any],
    opts: Options,
    static: bool,
) -> None:
    """Add to `first`'s report what the mode the model is not in finds, where its capture
    differs. Only called when traced code read a `training` flag: otherwise the other
    mode's capture is the same code, which is all the second decision compares."""
    report = first.report
    try:
        other = decide_on(
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
    except FX_REFUSALS as e:
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


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _all_passes() -> Sequence[Pass]:
    # Looked up when called, not bound at import: tests swap fxgrad.passes.ALL.
    from fxgrad.passes import ALL

    return ALL


def _timer(opts: Options) -> Measure:
    return opts.measure if callable(opts.measure) else default_measure
