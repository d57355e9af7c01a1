"""The Dynamo front-end: fxgrad's passes on the graphs torch.compile hands a backend.

fxgrad's own tracer sees the whole forward as one graph, but refuses what a graph cannot
hold (`if x.sum() > 0:`, a `.item()` deciding a loop). Dynamo captures such a forward in
pieces, breaking the graph where Python must run, and calls a backend with each piece: a
torch-level graph whose inputs are the tensors it reads (parameters and buffers included)
and whose nodes carry the user's stack traces. This backend runs the same passes on each
piece through the same decision sequence (fxgrad.decide), decided exactly on the piece's
first real inputs and verified against the piece as Dynamo captured it, and runs the
rewritten piece eagerly (no Inductor). Dynamo's own guards decide when a piece is captured
anew (another dtype, grad mode, sizes), and each new piece is decided on its first call.

Across a graph break, code in a later piece can write in place what an earlier piece
returned, out of either piece's reach (an op in one piece saved it for backward, the next
writes it). A selected pass may answer for that (`Pass.on_dynamo_graph`): run on each piece
after the passes, it hands outputs out as copies and returns a record of each
(`fxgrad.changes.HandedOut`). The backend watches the copies' version counters on later
calls, and when a piece decided later writes one, asks its record for the Change the
report shows.
"""

from __future__ import annotations

import copy
import os
import re
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx

from fxgrad import ops
from fxgrad.autograd_run import gc_paused, seeded
from fxgrad.changes import HandedOut
from fxgrad.context import Context, clone_inputs
from fxgrad.decide import Options, decide_graph, decision_context
from fxgrad.errors import FxgradError
from fxgrad.graph_utils import is_internal, location, run_forward
from fxgrad.interop import (
    in_transform,
    initialize_lazy,
    outside_transforms,
    transform_refusal,
    uninitialized,
)
from fxgrad.pipeline import Reference, flat_outputs, run_forward_backward
from fxgrad.registry import Pass
from fxgrad.report import Report
from fxgrad.state import forked_rng, private_state, python_state_restored
from fxgrad.tracing.errors import TOO_DEEP_HINT, too_deep, too_deep_message

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def locate(gm: fx.GraphModule) -> None:
    """Give each node the user's `file.py:line`, from the stack trace Dynamo recorded."""
    for node in gm.graph.nodes:
        trace = node.meta.get("stack_trace") or ""
        frames = [(f, int(n)) for f, n in _FRAME.findall(trace) if not is_internal(f)]
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
        self.copied: list[HandedOut] = []
        self.decided = gm  # the rewritten graph, once decided

    def __call__(self, *args: Any) -> Any:
        run = self.run
        if run is None:
            run = self.run = self._decide(list(args))
            watched = self.backend.watching(args)
            out = run(*args)
            for i, t, version, copied in watched:  # did this graph write a handed-out copy?
                if t._version != version and not copied.written_at:
                    copied.written_at = _written_at(self.decided, i, self.index)
        else:
            out = run(*args)
        if self.copied:
            self.backend.watch(self, out)
        return out

    def _decide(self, inputs: list[Any]) -> Callable[..., Any]:
        """Decide on the piece's first inputs, through the decision sequence fxgrad's own
        tracer uses (fxgrad.decide), with the piece as Dynamo captured it for reference."""
        work = fx.GraphModule(self.gm, copy.deepcopy(self.gm.graph))
        locate(work)
        report = Report(
            mode="exact", model=f"{self.backend.name} (graph {self.index})", frontend="dynamo"
        )
        opts = self.backend.options
        with outside_transforms(), forked_rng(), gc_paused():
            ctx = decision_context(opts, inputs)
            ref = _reference(self.gm, ctx)
            copied = decide_graph(
                work, ctx, ref, opts, report, finish=lambda gm, c: hand_out(gm, c, opts.passes)
            )
        self.copied = copied or []
        report.variant = "captured by Dynamo: " + _describe(inputs)
        self.report = report
        self.decided = work
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
            out = run_forward(gm, *ctx.inputs())
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


def hand_out(gm: fx.GraphModule, ctx: Context, passes: Sequence[Pass]) -> list[HandedOut]:
    """Run the selected passes' Dynamo hooks on a decided piece: the copies it hands out."""
    copied: list[HandedOut] = []
    for p in passes:
        if p.on_dynamo_graph is not None:
            copied.extend(p.on_dynamo_graph(gm, ctx))
    return copied


def _written_at(gm: fx.GraphModule, index: int, piece: int) -> str:
    """The user's line of the first in-place op on the piece's input `index`."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if index < len(placeholders):
        for user in placeholders[index].users:
            if ops.is_inplace(user.target) and user.args[:1] == (placeholders[index],):
                return location(user) or f"graph {piece}"
    return f"graph {piece}"


class Backend:
    """A torch.compile backend running fxgrad's passes; it keeps every piece it decided."""

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self.max_variants = options.max_variants
        self._compiles: dict[Any, int] = {}  # Dynamo frame -> graphs compiled for it
        self.pieces: list[Piece] = []
        self._made = 0
        # The copies pieces handed out on their last call, to see whether a graph decided
        # later writes one: (piece, output) -> (the copy, its version then, its record).
        self._watched: dict[tuple[int, int], tuple[weakref.ref, int, HandedOut]] = {}

    def watch(self, piece: Piece, out: Any) -> None:
        """Remember the copies `piece` just handed out (cheap: one weak reference each)."""
        flat = pytree.tree_leaves(out)
        for c in piece.copied:
            t = flat[c.output]
            self._watched[(piece.index, c.output)] = (weakref.ref(t), t._version, c)

    def watching(self, args: Sequence[Any]) -> list[tuple[int, torch.Tensor, int, HandedOut]]:
        """The handed-out copies among a graph's inputs, with their versions now."""
        live = {}
        for ref, _, copied in self._watched.values():
            t = ref()
            if t is not None:
                live[id(t)] = (t, copied)
        found = []
        for i, a in enumerate(args):
            hit = live.get(id(a))
            if hit is not None and hit[0] is a:
                found.append((i, a, a._version, hit[1]))
        return found

    def __call__(self, gm: fx.GraphModule, _example_inputs: Sequence[Any]) -> Callable[..., Any]:
        compile_id = torch._guards.CompileContext.current_compile_id()
        frame = compile_id.frame_id if compile_id is not None else None
        count = self._compiles[frame] = self._compiles.get(frame, 0) + 1
        if count > self.max_variants:
            raise FxgradError(
                f"{self.name}'s forward was captured by Dynamo {self.max_variants} times for "
                "calls that differ in what its graphs depend on, and this call differs "
                "again; fxgrad will not run the original, unfixed code in its place.",
                hint="Keep dtypes and the kinds of arguments the same between calls, or "
                "raise the limit: fxgrad.fix(model, max_variants=16).",
            )
        self._made += 1
        return Piece(gm, self, self._made)

    def report(self, fx_refusal: str = "") -> Report:
        """One report of every piece decided so far."""
        out = Report(mode="exact" if self.pieces else "pending", model=self.name, frontend="dynamo")
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
            written = [c.change() for c in piece.copied if c.written_at]
            out.changes.extend(c for c in written if c not in out.changes)
            out.notes.extend(n for n in _unwritten(piece) if n not in out.notes)
            before.append(f"# graph {piece.index}\n{piece.report.code_before}")
            after.append(f"# graph {piece.index}\n{piece.report.code_after}")
        out.code_before, out.code_after = "\n".join(before), "\n".join(after)
        return out


def _unwritten(piece: Piece) -> list[str]:
    """One note per reason a piece hands out copies no later code was seen writing."""
    kept: dict[str, list[str]] = {}
    for c in piece.copied:
        if not c.written_at:
            kept.setdefault(c.why, []).append(c.label)
    head = f"graph {piece.index} hands out copies of"
    return [
        f"{head} {', '.join(labels)}: {why} (no write seen so far)" for why, labels in kept.items()
    ]


_DYNAMO_LIMIT = 256  # graphs Dynamo keeps of one code object while fxgrad calls it


def compile_module(module: torch.nn.Module, backend: Backend) -> Callable[..., Any]:
    """The module compiled with the backend; Dynamo's graph breaks are allowed.

    Sizes that change between calls are made dynamic (Dynamo's automatic dynamic shapes),
    so calls of many batch sizes share one graph. Past the backend's `max_variants` graphs
    of one frame the call raises: Dynamo's own answer to a full cache, running the original
    code silently (a NumPy detour cutting gradients again while the report says it was
    fixed), is never taken. Dynamo's own
    errors (its fake tensors refuse a write autograd forbids, an internal failure) come
    back as one FxgradError naming the user's line, chained to Dynamo's.
    """
    had_flag = "_is_torch_compile" in module.__dict__
    compiled = torch.compile(module, backend=backend, fullgraph=False, dynamic=None)
    if not had_flag:  # torch.compile marks the module it wraps; the user's must not change
        module.__dict__.pop("_is_torch_compile", None)
    # Dynamo counts the graphs of every backend against one limit per code object (other
    # fixed modules of the same class included) and past it runs the original code
    # silently; the backend counts its own (`max_variants`), and Dynamo's limit, raised
    # out of its way, fails loudly if it is ever reached.
    limits = {
        "fail_on_recompile_limit_hit": True,
        "recompile_limit": _DYNAMO_LIMIT,
        "accumulated_recompile_limit": _DYNAMO_LIMIT * 4,
        # NumPy's random draws run as NumPy, from its own generator, as in eager (traced,
        # Dynamo draws them from torch's stream instead: other numbers for the same seed).
        "use_numpy_random_stream": True,
    }

    # Lazy modules are initialized before Dynamo sees the call, as eager's first call
    # would (Dynamo, meeting them mid-trace, runs the whole forward unfixed instead).
    lazy = [uninitialized(module)]

    def run(*args: Any, **kwargs: Any) -> Any:
        if in_transform():
            raise transform_refusal(backend.name)
        if lazy[0]:
            with outside_transforms():
                initialize_lazy(module, args, kwargs)
            lazy[0] = uninitialized(module)
        try:
            with torch._dynamo.config.patch(limits):
                return compiled(*args, **kwargs)
        except torch._dynamo.exc.FailOnRecompileLimitHit as e:
            raise FxgradError(
                f"Dynamo holds {_DYNAMO_LIMIT} graphs of {backend.name}'s forward (of every "
                "module fixed from that class); fxgrad will not run the original, unfixed "
                "code in its place.",
                hint="Fix fewer instances of the class in one process, or call "
                "torch._dynamo.reset() between them.",
            ) from e
        except torch._dynamo.exc.TorchDynamoException as e:
            inner = getattr(e, "inner_exception", None)
            if isinstance(inner, FxgradError):
                raise inner from None
            raise dynamo_error(e, backend.name) from e

    return run


def run_example_call(
    run: Callable[..., Any], model: torch.nn.Module, args: tuple, kwargs: dict[str, Any] | None
) -> None:
    """Run the example call through Dynamo now, so each graph it captures is decided on it.

    The call runs on private copies of the model's tensors with the RNG restored after, and
    what it changes in the modules' Python state (a hook a forward installs) is put back, so
    fixing leaves the model as it was; later calls reuse the decided graphs wherever
    Dynamo's guards hold, and graphs first met later are decided on their first call.
    """
    call_args = clone_inputs(list(args))
    call_kwargs = dict(zip(kwargs or {}, clone_inputs(list((kwargs or {}).values()))))
    with gc_paused(), python_state_restored(model), private_state(model), torch.enable_grad():
        run(*call_args, **call_kwargs)


_USER_FRAME = re.compile(r'from user code:.*File "([^"]+)", line (\d+)', re.S)
_GOT = re.compile(r"got (\w+)\((['\"])(.*?)\2\)", re.S)


def dynamo_error(e: Exception, model: str) -> FxgradError:
    """A plain sentence for an error Dynamo raised while compiling the forward."""
    text = str(e)
    got = _GOT.search(text)
    what = f"{got.group(1)}: {got.group(3)}" if got else text.strip().splitlines()[0]
    frames = _USER_FRAME.findall(text)
    where = f" at {os.path.basename(frames[-1][0])}:{frames[-1][1]}" if frames else ""
    if too_deep(e):
        return FxgradError(
            f"Dynamo could not compile {model}'s forward{where}: {too_deep_message()}",
            hint=TOO_DEEP_HINT,
        )
    error = FxgradError(
        f"Dynamo could not compile {model}'s forward{where}: {what}",
        hint="Run the model without fxgrad: if eager PyTorch raises the same error, fix "
        "that line by hand (an out-of-place op, a clone() before the write); otherwise make "
        "the forward one fxgrad's own tracer captures (`fxgrad explain capture` says what it "
        "supports).",
    )
    error.dynamo_refused = True  # type: ignore[attr-defined]  # the model may raise too
    return error
