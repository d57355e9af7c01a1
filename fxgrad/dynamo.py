"""The Dynamo front-end: fxgrad's passes on the graphs torch.compile hands a backend.

fxgrad's own tracer sees the whole forward as one graph, but refuses what a graph cannot
hold (`if x.sum() > 0:`, a `.item()` deciding a loop). Dynamo captures such a forward in
pieces, breaking the graph where Python must run, and calls a backend with each piece: a
torch-level graph whose inputs are the tensors it reads (parameters and buffers included)
and whose nodes carry the user's stack traces. This backend runs the same passes on each
piece, decided exactly on the piece's first real inputs and verified against the piece as
Dynamo captured it, and runs the rewritten piece eagerly (no Inductor). Dynamo's own guards
decide when a piece is captured anew (another dtype, grad mode, sizes), and each new piece
is decided on its first call.

Across a graph break, an op in one piece can save a tensor for backward that code in a
later piece writes in place (the piece ends at `if h.sum() > 0:` after `h = sigmoid(...)`,
the next writes `h.mul_(2)`). A write into a piece's input is visible to the Python code
after it, so it cannot simply be rebound; instead a piece hands out a copy of each output
that autograd saved inside it (unless the output shares memory with another output or an
input), so no later write can reach what backward needs.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context, default_measure, seeded
from fxgrad.errors import FxgradError
from fxgrad.graph_utils import _is_internal, location, render_node
from fxgrad.observe import storage_of
from fxgrad.pipeline import (
    Reference,
    flat_outputs,
    run_forward_backward,
    run_passes,
)
from fxgrad.registry import Pass
from fxgrad.report import Report
from fxgrad.state import forked_rng

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def locate(gm: fx.GraphModule) -> None:
    """Give each node the user's `file.py:line`, from the stack trace Dynamo recorded."""
    for node in gm.graph.nodes:
        trace = node.meta.get("stack_trace") or ""
        frames = [(f, int(n)) for f, n in _FRAME.findall(trace) if not _is_internal(f)]
        if frames:
            node.meta["fxgrad_loc"] = frames[-1]


class Piece:
    """One graph Dynamo captured: decided on its first call, then run rewritten."""

    def __init__(self, gm: fx.GraphModule, backend: Backend, index: int) -> None:
        self.gm = gm
        self.backend = backend
        self.index = index
        self.run: Callable[..., Any] | None = None
        self.report: Report | None = None

    def __call__(self, *args: Any) -> Any:
        run = self.run
        if run is None:
            run = self.run = self._decide(list(args))
        return run(*args)

    def _decide(self, inputs: list[Any]) -> Callable[..., Any]:
        from fxgrad.api import _gc_paused

        work = fx.GraphModule(self.gm, copy.deepcopy(self.gm.graph))
        locate(work)
        passes = self.backend.passes
        report = Report(mode="exact", model=f"{self.backend.name} (graph {self.index})")
        with forked_rng(), _gc_paused():
            ctx = Context(
                example_inputs=inputs,
                measure=self.backend.measure or default_measure,
                measure_enabled=self.backend.measure is not False,
                private_state=True,
                grad_enabled=torch.is_grad_enabled(),
                extensions=[make for p in passes for make in p.observes],
            )
            ref = _reference(self.gm, ctx)
            report.code_before = work.code
            changes, notes = run_passes(work, list(passes), ctx, ref, self.backend.verify)
            changes += protect_escaping(work, ctx)
            report.code_after = work.code
            ctx.forget_observation()
        report.changes.extend(changes)
        report.notes.extend(notes)
        report.variant = "captured by Dynamo: " + _describe(inputs)
        self.report = report
        self.backend.pieces.append(self)
        return work.forward


def _describe(inputs: Sequence[Any]) -> str:
    parts = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and not isinstance(x, torch.nn.Parameter):
            text = f"{str(x.dtype).removeprefix('torch.')}[{', '.join(map(str, x.shape))}]"
            parts.append(text + (" requires grad" if x.requires_grad else ""))
    return ", ".join(parts) or "no tensor inputs"


def _reference(gm: fx.GraphModule, ctx: Context) -> Reference:
    """The piece as Dynamo captured it is the reference: it computes what eager does."""
    ref = Reference()
    try:
        with seeded(ctx.seed), torch.set_grad_enabled(ctx.grad_enabled):
            out = gm.forward(*ctx.inputs())
    except Exception as e:
        ref.forward_error = e
        return ref
    ref.outputs = [o.detach() if isinstance(o, torch.Tensor) else o for o in flat_outputs(out)]

    def load_gradients() -> tuple[list[torch.Tensor | None] | None, BaseException | None]:
        with torch.set_grad_enabled(ctx.grad_enabled):
            _, grads, err = run_forward_backward(gm, ctx.inputs(), [], ctx.seed)
        return grads, err

    ref.load_gradients = load_gradients
    ref.load_grad_names = lambda: [
        f"input {i}"
        for i, t in enumerate(ctx.example_inputs or [])
        if isinstance(t, torch.Tensor) and t.requires_grad
    ]
    return ref


def protect_escaping(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    """Hand out a copy of each output autograd saved inside the piece (see the module doc)."""
    obs = ctx.observe(gm)
    if not obs.complete or obs.backward_error is not None:
        return []
    output = gm.graph.output_node()
    leaves = [a for a in pytree.tree_leaves(output.args[0]) if isinstance(a, fx.Node)]
    saved = {s.storage for s in obs.saved if s.storage is not None}
    inputs = {
        storage_of(obs.values.get(n)) for n in gm.graph.nodes if n.op in ("placeholder", "get_attr")
    }
    counts: dict[int | None, int] = {}
    for n in leaves:
        st = storage_of(obs.values.get(n))
        counts[st] = counts.get(st, 0) + 1
    changes = []
    for n in dict.fromkeys(leaves):
        st = storage_of(obs.values.get(n))
        if st is None or st not in saved or st in inputs or counts[st] > 1:
            continue
        with gm.graph.inserting_before(output):
            copied = gm.graph.call_method("clone", (n,))
        copied.meta.update({k: v for k, v in n.meta.items() if k == "fxgrad_loc"})
        output.replace_input_with(n, copied)
        changes.append(
            Change(
                "FXG101",
                n.name,
                render_node(n),
                f"{copied.name} = {n.name}.clone()",
                location(n),
                f"`{n.name}` leaves the graph at a graph break and autograd saved it for "
                "backward: the code after the break gets a copy, so a write there cannot "
                "change what backward needs; decided on the call Dynamo compiled",
            )
        )
    if changes:
        gm.recompile()
    return changes


class Backend:
    """A torch.compile backend running fxgrad's passes; it keeps every piece it decided."""

    def __init__(
        self, name: str, passes: Sequence[Pass], verify: bool, measure: Any = None
    ) -> None:
        self.name = name
        self.passes = tuple(passes)
        self.verify = verify
        self.measure = measure
        self.pieces: list[Piece] = []
        self._made = 0

    def __call__(self, gm: fx.GraphModule, _example_inputs: Sequence[Any]) -> Callable[..., Any]:
        self._made += 1
        return Piece(gm, self, self._made)

    def report(self, fx_refusal: str = "") -> Report:
        """One report of every piece decided so far."""
        out = Report(mode="exact" if self.pieces else "pending", model=self.name)
        out.variant = f"captured by Dynamo in {len(self.pieces)} graph(s)"
        if fx_refusal:
            out.notes.append(
                f"captured by Dynamo because fxgrad's tracer refused the forward: {fx_refusal}"
            )
        before, after = [], []
        for piece in self.pieces:
            assert piece.report is not None
            # A recompile of the same code (another size) decides the same change again.
            out.changes.extend(c for c in piece.report.changes if c not in out.changes)
            out.notes.extend(n for n in piece.report.notes if n not in out.notes)
            before.append(f"# graph {piece.index}\n{piece.report.code_before}")
            after.append(f"# graph {piece.index}\n{piece.report.code_after}")
        out.code_before, out.code_after = "\n".join(before), "\n".join(after)
        return out


def compile_module(module: torch.nn.Module, backend: Backend) -> Callable[..., Any]:
    """The module compiled with the backend; Dynamo's graph breaks are allowed.

    Dynamo's own errors (its fake tensors refuse a write autograd forbids, an internal
    failure) come back as one FxgradError naming the user's line, chained to Dynamo's.
    """
    compiled = torch.compile(module, backend=backend, fullgraph=False, dynamic=False)

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as e:
            raise dynamo_error(e, backend.name) from e

    return run


_USER_FRAME = re.compile(r'from user code:.*File "([^"]+)", line (\d+)', re.S)
_GOT = re.compile(r"got (\w+)\((['\"])(.*?)\2\)", re.S)


def dynamo_error(e: Exception, model: str) -> FxgradError:
    """A plain sentence for an error Dynamo raised while compiling the forward."""
    text = str(e)
    got = _GOT.search(text)
    what = f"{got.group(1)}: {got.group(3)}" if got else text.strip().splitlines()[0]
    frames = _USER_FRAME.findall(text)
    where = f" at {os.path.basename(frames[-1][0])}:{frames[-1][1]}" if frames else ""
    return FxgradError(
        f"Dynamo could not compile {model}'s forward{where}: {what}",
        hint="Run the model without fxgrad: if eager PyTorch raises the same error, fix "
        "that line by hand (an out-of-place op, a clone() before the write); otherwise make "
        "the forward traceable for fix(model, frontend='fx') (fxgrad explain capture).",
    )
