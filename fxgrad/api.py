"""fix() and check(): capture -> capture check -> passes -> verify -> fixed module + Report.

A fixed module decides on real calls. `fix(model)` captures lazily, on the first call and
with that call's inputs; `fix(model, inputs)` decides on the example call right away.
Every later call is checked against what those decisions assumed (fxgrad.guards): a call
that fits reuses them, one that does not gets a variant decided exactly on it, up to a
limit past which the module raises an error naming the fact that keeps changing.

This module reads the arguments; the fixed module and its per-call dispatch live in
fxgrad.fixed, the decision sequence in fxgrad.decide, the Dynamo front-end in
fxgrad.dynamo.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fxgrad.autograd_run import gc_paused
from fxgrad.context import Measure
from fxgrad.decide import (
    FX_REFUSALS,
    MAX_VARIANTS,
    Options,
    add_other_mode,
    check_leaves,
    decide_on,
)
from fxgrad.errors import FxgradError
from fxgrad.fixed import (
    FixedModule,
    decide_example,
    decide_statically,
    decide_with_dynamo,
    unpickle_fixed,
)
from fxgrad.interop import (
    initialize_lazy,
    inner_module,
    lazy_refusal,
    refuse_distributed,
    refuse_scripted,
    uninitialized,
)
from fxgrad.registry import select_passes
from fxgrad.report import Report
from fxgrad.state import forked_rng
from fxgrad.tracing import call_spec

__all__ = ["MAX_VARIANTS", "FixedModule", "check", "fix", "fix_static"]

# Fixed modules pickled by earlier versions (0.1 included) name their loader here.
_unpickle_fixed = unpickle_fixed


def _unwrap(model: Any) -> nn.Module:
    """Return the module to capture, seeing through DDP, DataParallel and torch.compile."""
    if not isinstance(model, nn.Module):
        raise FxgradError(
            f"fxgrad.fix() needs an nn.Module, got {type(model).__name__}.",
            hint="Pass the model instance, e.g. fxgrad.fix(MyModel(), (x,)).",
        )
    model = inner_module(model)
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


_FRONTENDS = ("auto", "fx", "dynamo")


def _options(
    select: Any,
    ignore: Any,
    verify: bool,
    measure: Measure | bool | None,
    max_variants: int,
    frontend: str = "auto",
) -> Options:
    # Looked up when called, not bound at import: tests swap fxgrad.passes.ALL.
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
    return Options(select_passes(ALL, select, ignore), verify, measure, max_variants, frontend)


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
    decide_example(fixed, inputs or (), example_kwargs)
    return fixed


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
    decide_statically(fixed)
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
            check_leaves(inputs or (), example_kwargs or {}, leaves)
        try:
            first = decide_on(
                model, call, leaves, opts, grad_enabled=True, static=static, at_call=False
            )
        except FX_REFUSALS as e:
            if static:
                raise
            # Dynamo captures what fxgrad's tracer refuses, in the model's own mode only.
            fixed = FixedModule(model, opts)
            decide_with_dynamo(fixed, inputs or (), example_kwargs, e.message)
            return fixed.report
        assert first is not None
        if first.captured.reads_mode:
            add_other_mode(first, model, call, leaves, opts, static)
    return first.report
