"""Assertions for a model repository's tests: catch autograd hazards before a training run does.

Each helper takes the model and the positional inputs of its forward, runs them for real,
and raises `AutogradCheckError` (an `AssertionError`) whose message is plain sentences plus
fxgrad's report table, naming the user's own `file.py:line`. A model wrapped in
`DistributedDataParallel`, `DataParallel` or `torch.compile` is checked through the module
inside, because that is the code the wrapper runs.

    from fxgrad.testing import assert_autograd_safe, assert_grads_flow

    def test_model_trains():
        model, x = MyModel(), torch.randn(8, 3, 32, 32)
        assert_autograd_safe(model, x)
        assert_grads_flow(model, x)

The runs these helpers judge a model by (where gradients stop in the captured graph, eager
forward and backward, gradcheck) are in `fxgrad.testing_oracles`; this module holds the
helpers and the sentences they fail with.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from tabulate import tabulate
from torch import fx, nn

import fxgrad
from fxgrad.autograd_run import differentiable_outputs, seeded_gradients
from fxgrad.changes import PassKind
from fxgrad.context import clone_inputs
from fxgrad.export import with_module_paths
from fxgrad.fixed import FixedModule
from fxgrad.graph_utils import ancestors, descendants, location, writes_to
from fxgrad.interop import inner_module
from fxgrad.pipeline import carries_gradient, compare_outputs
from fxgrad.report import Report, clean_torch_error
from fxgrad.testing_oracles import (
    _SEED,
    _capture,
    _code,
    _Cut,
    _eager_failure,
    _explain_none,
    _find_cuts,
    _first_line,
    _FunctionRecorder,
    _gradcheck_call,
    _leaves,
    _nonfinite_origin,
    _numpy_detours,
    _observe,
    _run,
    _uses,
    preserved_state,
)

__all__ = [
    "AutogradCheckError",
    "assert_autograd_safe",
    "assert_fix_equivalent",
    "assert_grads_flow",
    "check_custom_functions",
]


class AutogradCheckError(AssertionError):
    """A model failed an fxgrad check; the message says what, where and what to try."""

    __tracebackhide__ = True

    def __init__(self, message: str, report: Report | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.report = report

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------------------
# Shared plumbing


def _inner(model: Any) -> nn.Module:
    """See through DDP, DataParallel and torch.compile: the inner module is what runs."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"fxgrad.testing needs an nn.Module, got {type(model).__name__}; "
            "pass the model instance, e.g. assert_autograd_safe(MyModel(), x)."
        )
    return inner_module(model)


def _name(module: nn.Module) -> str:
    if isinstance(module, FixedModule):
        return f"fixed {module.original_class.__name__}"
    return type(module).__name__


def _input_names(module: nn.Module, n: int) -> list[str]:
    try:
        names = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        names = []
    return [f"input {names[i]}" if i < len(names) else f"input {i}" for i in range(n)]


def _fail(lines: Sequence[str], report: Report | None = None) -> AutogradCheckError:
    text = "\n".join(lines).rstrip()
    if report is not None and (report.changes or report.notes):
        # A note quoting an error the sentences above already quote is said once.
        notes = [n for n in report.notes if not _quoted_in(n, text)]
        shown = dataclasses.replace(report, notes=notes)
        text += "\n\nfxgrad's report:\n" + shown.table()
    return AutogradCheckError(text, report)


def _quoted_in(note: str, text: str) -> bool:
    _, sep, quoted = clean_torch_error(note).partition(": ")
    return bool(sep) and len(quoted) > 20 and quoted in text


# ---------------------------------------------------------------------------------------
# assert_autograd_safe


def assert_autograd_safe(model: nn.Module, *inputs: Any) -> Report:
    """Fail when the model has an unsafe in-place write or a gradient-cutting NumPy detour.

    A training run finds these late: the in-place write as a version-counter error in the
    first backward, the NumPy detour never (its gradients are silently zero). Here they fail
    the test with fxgrad's report table, naming the user's lines and what fxgrad would
    rewrite. Returns the report when the model is safe.
    """
    __tracebackhide__ = True
    module = _inner(model)
    fixed = fxgrad.fix(module, inputs) if not isinstance(module, FixedModule) else module
    report = fixed.report
    # A fixed module is judged by what is left unrewritten.
    hazards = [
        c
        for c in report.changes
        if c.kind is PassKind.HAZARD and not (isinstance(module, FixedModule) and c.applied)
    ]
    # Dynamo's graphs are pieces of the forward: only the report speaks for them.
    whole = report.frontend == "fx"
    gm, cuts, _ = _find_cuts(fixed, inputs) if whole else (None, [], set())
    rows = _unreported_detours(gm, cuts, report) if gm is not None else []
    lines: list[str] = []
    failure = _eager_failure(module, inputs)
    if failure is not None:
        error, saved_at = failure
        lines = _eager_failure_lines(error, saved_at)
        if gm is not None:
            rows += _unreported_writes(gm, report, saved_at)
    if not hazards and not rows and failure is None:
        return report
    out = _unsafe_message(module, len(hazards) + len(rows), lines, rows)
    raise _fail(out, with_module_paths(report, gm) if gm is not None else report)


def _unreported_detours(gm: fx.GraphModule, cuts: list[_Cut], report: Report) -> list[list[str]]:
    """Rows for NumPy detours that cut gradients and that the NumPy pass does not report."""
    rows = []
    reported = {c.where for c in report.changes if c.kind is PassKind.HAZARD}
    for cut, back in _numpy_detours(gm, cuts):
        chain = descendants([cut.node]) & ancestors([back])
        if reported & {location(n) for n in chain}:
            continue  # a pass's row already reports this detour
        rows.append(
            [
                location(cut.node) or "?",
                _code(cut.node),
                f"leaves autograd here and comes back at {location(back) or '?'}: "
                "everything before it gets no gradient through this path",
            ]
        )
    return rows


def _eager_failure_lines(error: str, saved_at: str) -> list[str]:
    lines = [f"Eager backward fails on these inputs: {error}"]
    if saved_at:
        lines.append(
            f"The value autograd needed was saved by the op at {saved_at}; "
            "a later in-place write changed it."
        )
    return lines


def _unreported_writes(gm: fx.GraphModule, report: Report, saved_at: str) -> list[list[str]]:
    """Rows for the in-place writes after the op whose saved value broke (all, if unknown)
    that the in-place pass does not report."""
    nodes = list(gm.graph.nodes)
    savers = [i for i, n in enumerate(nodes) if saved_at and location(n) == saved_at]
    after = nodes[savers[0] + 1 :] if savers else nodes
    reported_writes = {c.where for c in report.changes if c.kind is PassKind.HAZARD}
    rows = []
    for n in (n for n in after if writes_to(n, gm) is not None):
        if location(n) in reported_writes:
            continue  # a pass's row says it better
        rows.append([location(n) or "?", _code(n), "in-place write in the forward"])
    return rows


def _unsafe_message(
    module: nn.Module, count: int, lines: list[str], rows: list[list[str]]
) -> list[str]:
    head = f"{_name(module)} is not autograd-safe on these inputs" + (
        f": {count} finding{'s' if count != 1 else ''}." if count else "."
    )
    out = [head, *lines]
    if rows:
        out.append("")
        out.append(tabulate(rows, headers=["where", "code", "why"], tablefmt="simple"))
    out.append("")
    out.append(
        "Fix these lines, or train fxgrad.fix(model, example_inputs), which rewrites the "
        "hazards it can (see the table)."
    )
    return out


# ---------------------------------------------------------------------------------------
# assert_grads_flow


def _resolve_params(module: nn.Module, params: Iterable[Any] | None) -> dict[str, torch.Tensor]:
    named = dict(module.named_parameters())
    if params is None:
        return {n: p for n, p in named.items() if p.requires_grad}
    by_id = {id(p): n for n, p in named.items()}
    out: dict[str, torch.Tensor] = {}
    for p in params:
        if isinstance(p, str):
            if p not in named:
                raise ValueError(
                    f"{_name(module)} has no parameter {p!r}; it has: {', '.join(named) or 'none'}."
                )
            out[p] = named[p]
        elif isinstance(p, torch.Tensor) and id(p) in by_id:
            out[by_id[id(p)]] = p
        else:
            raise ValueError("params takes parameter names or parameters of the model.")
    return out


def assert_grads_flow(
    model: nn.Module,
    *inputs: Any,
    params: Iterable[str | torch.Tensor] | None = None,
    check_inputs: bool = True,
) -> dict[str, torch.Tensor]:
    """Fail unless every trainable parameter and floating input gets a finite gradient.

    A parameter that gets no gradient never trains, and nothing in a training loop says so;
    a NaN gradient ruins the weights a step later. The message names each such parameter
    or input and, by walking the captured graph, where its path to the outputs is cut
    (`detach()`, `.numpy()`, `.item()`, a `no_grad` block). `params` limits the check to
    these parameters (names or tensors); `check_inputs=False` skips the inputs. Returns
    the gradients by name.
    """
    __tracebackhide__ = True
    module = _inner(model)
    wanted = _resolve_params(module, params)
    args = clone_inputs(list(inputs))
    names = _input_names(module, len(args))
    checked_inputs = _inputs_to_check(args, names) if check_inputs else {}
    targets = {**wanted, **checked_inputs}
    if not targets:
        return {}
    wrt = list(targets.values())
    result = dict(zip(targets, _gradients(module, args, wrt)))
    missing = [n for n, g in result.items() if g is None]
    nonfinite = {
        n: g for n, g in result.items() if g is not None and not bool(torch.isfinite(g).all())
    }
    if not missing and not nonfinite:
        return {n: g for n, g in result.items() if g is not None}

    lines = [f"Gradients do not flow through {_name(module)} on these inputs."]
    if missing:
        lines += _no_gradient_lines(module, inputs, names, wanted, missing)
    if nonfinite:
        lines += _nonfinite_lines(module, args, wrt, wanted, nonfinite)
    lines.append(
        "Parameters that should not train can be frozen with requires_grad_(False), "
        "or left out with params=[...]."
    )
    raise _fail(lines)


def _inputs_to_check(args: list[Any], names: list[str]) -> dict[str, torch.Tensor]:
    """Make each floating input of `args` a leaf that requires grad; those leaves by name."""
    checked: dict[str, torch.Tensor] = {}
    for i, t in enumerate(args):
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            args[i] = t.detach().clone().requires_grad_(True)
            checked[names[i]] = args[i]
    return checked


def _gradients(
    module: nn.Module, args: list[Any], wrt: list[torch.Tensor]
) -> list[torch.Tensor | None]:
    """The gradients of `wrt` from one forward and backward; fail if backward fails."""
    __tracebackhide__ = True
    with preserved_state(module, args):
        try:
            torch.manual_seed(_SEED)
            diff = differentiable_outputs(pytree.tree_leaves(module(*args)))
            if not diff:
                return [None] * len(wrt)
            return seeded_gradients(diff, wrt, _SEED)
        except RuntimeError as e:
            raise _fail(
                [
                    f"Backward of {_name(module)} fails on these inputs: {_first_line(e)}",
                    "assert_autograd_safe(model, *inputs) shows the in-place write that causes it.",
                ]
            ) from None


def _no_gradient_lines(
    module: nn.Module, inputs: tuple, names: list[str], wanted: dict, missing: list[str]
) -> list[str]:
    """For each parameter or input without a gradient, where the captured graph cuts it."""
    fixed = _capture(module, inputs)
    if fixed.report.frontend != "fx":
        return [
            f"- {name} gets no gradient (the forward was captured by Dynamo in pieces, so "
            "fxgrad cannot point at where the path is cut)."
            for name in missing
        ]
    gm, cuts, reaches = _find_cuts(fixed, inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    leaf_ids = [id(t) for t in _leaves(fixed, tuple(inputs))]
    lines = []
    for name in missing:
        if name in wanted:
            uses = _uses(gm, name)
            what = f"parameter {name}"
        else:
            i = names.index(name)
            j = leaf_ids.index(id(inputs[i])) if id(inputs[i]) in leaf_ids else -1
            uses = [placeholders[j]] if 0 <= j < len(placeholders) else []
            what = name
        lines.append(f"- {what} gets no gradient: {_explain_none(uses, cuts, reaches, what)}.")
    return lines


def _nonfinite_lines(
    module: nn.Module,
    args: list[Any],
    wrt: list[torch.Tensor],
    wanted: dict,
    nonfinite: dict[str, torch.Tensor],
) -> list[str]:
    """Each non-finite gradient, and which backward made the first NaN (anomaly mode)."""
    lines = []
    for name, g in nonfinite.items():
        bad = int((~torch.isfinite(g)).sum())
        what = f"parameter {name}" if name in wanted else name
        lines.append(
            f"- {what} gets a non-finite gradient ({bad} of {g.numel()} entries NaN or inf)."
        )
    origin = _nonfinite_origin(module, args, wrt)
    if origin:
        lines.append(f"Anomaly mode: {origin}")
    return lines


# ---------------------------------------------------------------------------------------
# assert_fix_equivalent


def _gradient_problems(
    grad_names: list[str],
    e_out: list[Any] | None,
    f_out: list[Any] | None,
    e_grads: list | None,
    f_grads: list | None,
) -> list[str]:
    """Where the fixed module's gradients differ from eager's: reach first, then values."""
    problems: list[str] = []
    if e_out is not None and f_out is not None:
        for i, (e, f) in enumerate(zip(e_out, f_out)):
            if carries_gradient(e) and not carries_gradient(f):
                # Restoring gradient flow is the product: "eager has gradients, the fixed
                # module has none" is the one mismatch that must never pass.
                problems.append(f"output {i} carries no gradient in the fixed module, unlike eager")
    if e_grads and f_grads:
        for name, e, f in zip(grad_names, e_grads, f_grads):
            if (e is None) != (f is None):
                got = "no gradient" if f is None else "a gradient"
                problems.append(f"{name} gets {got} in the fixed module, unlike eager")
            elif e is not None and f is not None:
                try:
                    torch.testing.assert_close(f, e, equal_nan=True)
                except AssertionError:
                    diff = (f.detach().double() - e.detach().double()).abs().max().item()
                    problems.append(
                        f"the gradient of {name} differs (max abs difference {diff:.3g})"
                    )
    return problems


def assert_fix_equivalent(
    model: nn.Module, *inputs: Any, fixed: nn.Module | None = None
) -> FixedModule:
    """Fail unless `fxgrad.fix(model)` computes what the model computes, values and gradients.

    Swapping a model for its fixed version in training code is only safe if nothing else
    changes: the forward must equal eager, and the gradients must equal eager's wherever
    eager's backward works (where it fails, the fixed backward must run). `fixed` checks an
    already-fixed module (for example one fixed with `select=`). Returns the fixed module.
    """
    __tracebackhide__ = True
    module = _inner(model)
    if isinstance(module, FixedModule):
        raise TypeError(
            "assert_fix_equivalent compares a model with its fix: pass the original model."
        )
    fixed_module = fixed if fixed is not None else fxgrad.fix(module, inputs)
    report = getattr(_inner(fixed_module), "report", None)
    params = [p for p in module.parameters() if p.requires_grad]
    names = {id(p): n for n, p in module.named_parameters()}
    grad_names = [names[id(p)] for p in params] + [
        n
        for n, t in zip(_input_names(module, len(inputs)), inputs)
        if isinstance(t, torch.Tensor) and t.requires_grad
    ]
    e_out, e_grads, e_ferr, e_berr = _run(module, inputs, params)
    f_out, f_grads, f_ferr, f_berr = _run(fixed_module, inputs, params)

    problems: list[str] = []
    if f_ferr is not None:
        problems.append(f"the fixed forward raises {type(f_ferr).__name__}: {_first_line(f_ferr)}")
    elif e_out is not None:
        bad = compare_outputs(list(f_out), list(e_out))
        if bad is not None:
            problems.append(f"forward: {bad[1]}")
    if f_ferr is None and f_berr is not None and e_berr is None and e_ferr is None:
        problems.append(f"the fixed backward fails: {_first_line(f_berr)}")
    problems += _gradient_problems(grad_names, e_out, f_out, e_grads, f_grads)
    if not problems:
        return fixed_module  # type: ignore[return-value]
    lines = [f"fxgrad.fix({_name(module)}) does not match eager PyTorch on these inputs:"]
    lines += [f"- {p}" for p in problems]
    if e_ferr is not None or e_berr is not None:
        err = e_ferr or e_berr
        lines.append(f"(eager itself fails: {_first_line(err)}; compared what eager computes.)")
    lines.append("This is a bug in fxgrad or in a rewrite; please report it with the model.")
    raise _fail(lines, report)


# ---------------------------------------------------------------------------------------
# check_custom_functions


def check_custom_functions(
    model: nn.Module,
    *inputs: Any,
    skip: Iterable[type | str] = (),
    fast_mode: bool | None = None,
) -> list[str]:
    """Gradcheck, in float64, every custom autograd.Function the forward calls.

    A hand-written backward that is subtly wrong trains without an error, just worse. Each
    Function node in the captured graph is checked on the inputs it actually receives for
    these model inputs (recorded by running the graph, then cast to float64), against finite
    differences. `skip` takes Function classes or names whose backward is a deliberate
    surrogate (a straight-through estimator). `fast_mode` defaults to gradcheck's fast mode
    for large inputs. Returns the names of the Functions checked.
    """
    __tracebackhide__ = True
    module = _inner(model)
    fixed = _capture(module, inputs)
    leaves = clone_inputs(_leaves(fixed, tuple(inputs)))
    rec = _FunctionRecorder()
    _observe(fixed, leaves, rec)
    skipped = {s if isinstance(s, str) else s.__name__ for s in skip}
    checked: list[str] = []
    failures: list[str] = []
    failing_names: list[str] = []
    for call in rec.calls:
        name = call.cls.__name__
        if name in skipped:
            continue
        problem = _gradcheck_call(call, fast_mode)
        checked.append(name)
        if problem is not None:
            where = location(call.node) or "an unknown line"
            failures.append(f"- {name} at {where}: {problem}")
            failing_names.append(name)
    if not failures:
        return checked
    failing = ", ".join(dict.fromkeys(failing_names))
    if skipped:
        advice = (
            f"skip= already leaves out {', '.join(sorted(skipped))}; the backward of "
            f"{failing} is wrong: fix it."
        )
    else:
        advice = (
            f"Fix the backward of {failing}; if it is a deliberate surrogate (a "
            f"straight-through estimator), pass skip=[{failing}]."
        )
    lines = [
        f"{len(failures)} custom autograd.Function call{'s' if len(failures) != 1 else ''} in "
        f"{_name(module)} fail{'s' if len(failures) == 1 else ''} float64 gradcheck on the "
        f"inputs {'it receives' if len(failures) == 1 else 'they receive'}: the backward "
        "disagrees with finite differences of the forward.",
        *failures,
        advice,
    ]
    raise _fail(lines)


class Checks:
    """The helpers under short names, as the `fxgrad_check` pytest fixture hands them out."""

    autograd_safe = staticmethod(assert_autograd_safe)
    grads_flow = staticmethod(assert_grads_flow)
    fix_equivalent = staticmethod(assert_fix_equivalent)
    custom_functions = staticmethod(check_custom_functions)
