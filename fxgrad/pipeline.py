"""Run passes in order; after each one lint, recompile and verify, rolling back on failure."""

from __future__ import annotations

import copy
import dataclasses
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx

from fxgrad.autograd_run import differentiable_outputs, seeded, seeded_gradients
from fxgrad.changes import Change, Note
from fxgrad.context import Context
from fxgrad.errors import EquivalenceError, FxgradError, PassError, first_line
from fxgrad.graph_utils import location, run_forward
from fxgrad.observe import Observation
from fxgrad.registry import Pass
from fxgrad.tracing.callspec import box_objects


@dataclass
class Reference:
    """What eager PyTorch computed on the example inputs: outputs, gradients, or errors.

    The forward runs once up front; the backward only when something needs eager's
    gradients (verifying a rewrite) or its error (the captured graph's backward fails),
    so a model with nothing to rewrite runs eager forward only.
    """

    outputs: list[Any] | None = None
    # Whether each eager output carried a gradient (the outputs above are detached).
    carries_gradient: tuple[bool, ...] | None = None
    forward_error: BaseException | None = None
    # Names of what gradients are taken with respect to (parameters, then inputs), for
    # messages only: built when a message needs them.
    load_grad_names: Callable[[], list[str]] = list
    # Runs eager forward and backward: (gradients, backward error), as run_forward_backward.
    load_gradients: Callable[[], tuple[list[torch.Tensor | None] | None, BaseException | None]] = (
        lambda: ([], None)
    )
    _gradients: tuple[list[torch.Tensor | None] | None, BaseException | None] | None = None

    def gradients(self) -> tuple[list[torch.Tensor | None] | None, BaseException | None]:
        """Eager's gradients (None when backward fails) and backward error, computed once."""
        if self._gradients is None:
            self._gradients = self.load_gradients()
        return self._gradients

    @property
    def grad_names(self) -> list[str]:
        return self.load_grad_names()

    @property
    def grads(self) -> list[torch.Tensor | None] | None:
        return self.gradients()[0]

    @property
    def backward_error(self) -> BaseException | None:
        return self.gradients()[1]


def flat_outputs(out: Any) -> list[Any]:
    """A forward's outputs as a flat list, tensors inside plain objects (a cache) included."""
    return pytree.tree_leaves(box_objects(out))


def run_forward_backward(
    fn: Any, inputs: list[Any], params: list[torch.Tensor], seed: int
) -> tuple[list[Any], list[torch.Tensor | None] | None, BaseException | None]:
    """Run fn(*inputs) with a fixed seed; return flat outputs, gradients and backward error.

    The backward is `seeded_gradients` with respect to the parameters, then the inputs.
    """
    with seeded(seed):
        # gm() would print fx's own traceback for errors we expect
        out = run_forward(fn, *inputs) if isinstance(fn, fx.GraphModule) else fn(*inputs)
    flat = flat_outputs(out)
    wrt = [t for t in params if t.requires_grad] + [
        t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad
    ]
    diff = differentiable_outputs(flat)
    if not diff or not wrt:
        return flat, [], None
    try:
        grads = seeded_gradients(diff, wrt, seed)
    except RuntimeError as e:
        return flat, None, e
    return flat, grads, None


def compare_outputs(actual: list[Any], expected: list[Any]) -> tuple[int, str] | None:
    """Return (index, message) of the first output that differs, or None if all match."""
    if len(actual) != len(expected):
        return -1, f"{len(actual)} outputs instead of {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        if isinstance(e, torch.Tensor) or isinstance(a, torch.Tensor):
            if not (isinstance(a, torch.Tensor) and isinstance(e, torch.Tensor)):
                return i, f"output {i} is {type(a).__name__} instead of {type(e).__name__}"
            try:
                torch.testing.assert_close(a.detach(), e.detach(), equal_nan=True)
            except AssertionError:
                diff = _max_abs_diff(a, e)
                return i, f"output {i} differs (max abs difference {diff:.3g})"
        elif not _equal_values(a, e):
            return i, f"output {i} is {a!r} instead of {e!r}"
    return None


def _equal_values(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _max_abs_diff(a: torch.Tensor, e: torch.Tensor) -> float:
    try:
        return (a.detach().double() - e.detach().double()).abs().max().item()
    except Exception:
        return float("nan")


@dataclass(frozen=True)
class Reach:
    """Where gradients go: which outputs carry one, and which parameters and inputs get one.

    `grads` holds the positions (parameters, then inputs that require grad, as in
    `Observation.grads`) whose gradient is not None; None when backward could not run.
    """

    outputs: tuple[bool, ...]
    grads: frozenset[int] | None

    @classmethod
    def of(cls, obs: Observation) -> Reach:
        outputs = tuple(carries_gradient(o) for o in obs.outputs or ())
        grads = None
        if obs.grads is not None and obs.backward_error is None and not obs.stale:
            grads = frozenset(i for i, g in enumerate(obs.grads) if g is not None)
        return cls(outputs, grads)

    def lost(self, now: Reach, names: Callable[[], list[str]]) -> str | None:
        """What `now` no longer reaches that this did, in words; None if nothing.

        A rewrite may add reach (a NumPy detour made torch ops again) and never remove it.
        """
        cut = [i for i, (a, b) in enumerate(zip(self.outputs, now.outputs)) if a and not b]
        if cut:
            which = ", ".join(f"output {i}" for i in cut)
            return f"{which} no longer carries a gradient"
        if self.grads is not None and now.grads is not None and not self.grads <= now.grads:
            listed = names()
            missing = sorted(self.grads - now.grads)
            which = ", ".join(listed[i] if i < len(listed) else f"#{i}" for i in missing)
            return f"no gradient reaches {which} any more"
        return None


def carries_gradient(o: Any) -> bool:
    """Whether an output is a tensor autograd tracks: its gradient must still flow."""
    return isinstance(o, torch.Tensor) and o.requires_grad


def verify(
    gm: fx.GraphModule, ctx: Context, ref: Reference, reach: Reach | None = None
) -> str | None:
    """Check a rewritten graph on the example inputs; return what is wrong, or None.

    Forward values must equal eager's where eager runs; backward must run (and must not
    read a saved tensor a write changed); every output that carried a gradient before the
    rewrite still does and every parameter and input that got one still does (`reach`);
    gradients must be finite wherever eager's were. The run is the graph's observation,
    which the next pass then reads.
    """
    obs = ctx.observe(gm)
    e = obs.forward_error
    if e is not None:
        return f"the rewritten forward raises {type(e).__name__}: {first_line(e)}"
    if ref.outputs is not None and obs.outputs is not None:
        bad = compare_outputs(list(obs.outputs), ref.outputs)
        if bad is not None:
            return bad[1]
    if obs.backward_error is not None:
        return f"backward fails: {first_line(obs.backward_error)}"
    if reach is not None:
        lost = reach.lost(Reach.of(obs), lambda: ref.grad_names)
        if lost is not None:
            return f"the rewrite cuts gradients: {lost}"
    if obs.stale:
        return "backward reads a value a write changed"
    grads = obs.grads
    if grads and any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
        # Only a non-finite gradient needs eager's for comparison: eager backward runs
        # only then (and is computed once per fix()).
        ref_grads = ref.grads or []
        for g, r, name in zip(grads, ref_grads, ref.grad_names):
            if g is None or r is None:
                continue
            if bool(torch.isfinite(r).all()) and not bool(torch.isfinite(g).all()):
                return f"the gradient of {name} is no longer finite"
    return None


def check_capture(captured_gm: fx.GraphModule, ctx: Context, ref: Reference) -> Observation:
    """Fail loudly when the captured graph computes something other than eager PyTorch.

    Runs the graph forward and backward once: the graph's observation, which the passes
    then read instead of running the model again.
    """
    run = ctx.observe(captured_gm)
    e = run.forward_error
    if e is not None:
        if ref.forward_error is not None and type(e) is type(ref.forward_error):
            return run
        raise EquivalenceError(
            f"The captured graph raises {type(e).__name__} where eager PyTorch "
            f"{'raises ' + type(ref.forward_error).__name__ if ref.forward_error else 'runs'}: "
            f"{first_line(e)}",
            hint="This is a capture bug in fxgrad; please report it with the model. "
            'Meanwhile `fxgrad.fix(model, frontend="dynamo")` captures it with Dynamo.',
        ) from e
    if run.first_refusal and ref.forward_error is None and torch.is_grad_enabled():
        # The run went on past a write autograd refused; eager ran it without complaint.
        # (Under an outer no_grad eager refuses nothing, while the probe records grad.)
        raise EquivalenceError(
            f"The captured graph raises RuntimeError where eager PyTorch runs: {run.first_refusal}",
            hint="This is a capture bug in fxgrad; please report it with the model. "
            'Meanwhile `fxgrad.fix(model, frontend="dynamo")` captures it with Dynamo.',
        )
    if ref.outputs is None or run.outputs is None:
        return run
    bad = compare_outputs(run.outputs, ref.outputs)
    if bad is None and ref.carries_gradient is not None:
        now = Reach.of(run).outputs
        cut = [i for i, (a, b) in enumerate(zip(ref.carries_gradient, now)) if a and not b]
        if cut:
            bad = (cut[0], f"output {cut[0]} carries no gradient where eager's does")
    if bad is None:
        return run
    index, message = bad
    out_node = next(n for n in captured_gm.graph.nodes if n.op == "output")
    producers = pytree.tree_leaves(out_node.args[0])
    node = producers[index] if 0 <= index < len(producers) else None
    where = ""
    if isinstance(node, fx.Node):
        where = f" (node {node.name} at {location(node) or 'an unknown line'})"
    raise EquivalenceError(
        f"The captured graph differs from eager PyTorch: {message}{where}.",
        hint="fxgrad changed nothing; please report this model. Meanwhile "
        '`fxgrad.fix(model, frontend="dynamo")` captures it with Dynamo.',
    )


def _shape(graph: fx.Graph) -> list[tuple[str, str, str]]:
    """What a graph is made of, to tell whether a pass edited it: nodes and their targets."""
    return [(n.name, n.op, str(n.target)) for n in graph.nodes]


def _merged(before: Reach | None, now: Reach) -> Reach:
    """The reach to hold the next pass to: what the last verified graph reaches, keeping
    the parameter set known from before where backward could not run until now."""
    if before is None or now.grads is not None or before.grads is None:
        return now
    return Reach(now.outputs, before.grads)


def run_passes(
    gm: fx.GraphModule,
    passes: list[Pass],
    ctx: Context,
    ref: Reference | None,
    verify_results: bool = True,
) -> tuple[list[Change], list[str]]:
    """Run each pass on gm in order; roll back any whose result fails verification."""
    changes: list[Change] = []
    notes: list[str] = []
    can_verify = verify_results and ref is not None and ctx.example_inputs is not None
    # Gradient reach before the first pass: the captured graph's (cached) run, which equals
    # eager's (check_capture holds capture to the same rule).
    reach = Reach.of(ctx.observe(gm)) if can_verify else None
    for p in passes:
        if p.applies is not None and not p.applies(gm):
            continue
        # A snapshot to roll back to is needed only where a result can be verified.
        saved = copy.deepcopy(gm.graph) if can_verify else None
        try:
            found = [dataclasses.replace(c, kind=p.kind) for c in p.run(gm, ctx)]
            if any(c.applied for c in found):
                gm.graph.lint()
                gm.recompile()
        except FxgradError:
            raise
        except Exception as e:
            node = getattr(e, "fxgrad_node", "")
            raise PassError(
                f"Pass {p.code} ({p.name}) crashed: {type(e).__name__}: {first_line(e)}\n"
                + "".join(traceback.format_exception(e)[-3:]),
                hint=f"Skip it with ignore=['{p.code}'] (CLI: --ignore {p.code}) and please "
                "report this model; this is a bug in fxgrad.",
                code=p.code,
                node=str(node),
            ) from e
        edited = any(c.applied for c in found)
        if not edited and (saved is None or _shape(saved) == _shape(gm.graph)):
            changes.extend(found)
            continue
        if not edited:  # the graph changed although the pass reported no rewrite
            gm.graph.lint()
            gm.recompile()
        problem = verify(gm, ctx, ref, reach) if can_verify and ref is not None else None
        if problem is None and can_verify:
            reach = _merged(reach, Reach.of(ctx.observe(gm)))
        if problem is not None and saved is not None:
            gm.graph = saved
            notes.append(Note(f"{p.code} ({p.name}) was rolled back: {problem}.", actionable=True))
            found = _rolled_back(found, problem)
        changes.extend(found)
    return changes, notes


def _rolled_back(found: list[Change], problem: str) -> list[Change]:
    """A rolled-back pass's changes: what it applied is marked undone, with the reason."""
    return [
        dataclasses.replace(
            c,
            applied=False,
            rolled_back=True,
            note=f"{c.note}; rolled back: {problem}".lstrip("; "),
        )
        if c.applied
        else c
        for c in found
    ]
