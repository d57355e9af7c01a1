"""One observed run of a graph: forward and backward on a call's inputs, recorded once.

The capture check, every pass and the verification of a rewrite read the same kind of
record, made by the one recorder here, the way torch's ShapeProp writes what it learns into
the graph for later passes: the value of every node, the grad mode it ran in, what autograd
saved for backward and which saved tensors backward unpacked (saved-tensor hooks), which
saved tensors each in-place write changed (version counters, storages), the writes autograd
refused (and the run went on past), the outputs, the backward's gradients or error, and how
long forward and backward took. `Context.observe(gm)` keeps the record of a graph until the
graph changes, so a pass that finds nothing to change costs no run of the model.

What one pass needs beyond that, node by node, it adds as an `Extension` (the NumPy pass
keeps copies of NumPy values as they were computed): extensions ride along in the same run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree
from torch import fx

from fxgrad.autograd_run import cotangents, differentiable_outputs, seeded
from fxgrad.graph_utils import fresh_containers, writes_to
from fxgrad.state import restored, storage_of

if TYPE_CHECKING:
    from fxgrad.context import Context


def same_view(a: torch.Tensor, b: Any) -> bool:
    """Whether b is the very same view of memory as a (storage, offset, shape, strides)."""
    return bool(  # a symbolic size's comparison gives a SymBool
        isinstance(b, torch.Tensor)
        and storage_of(a) is not None
        and storage_of(a) == storage_of(b)
        and a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
    )


@dataclass
class Saved:
    """A tensor autograd saved for backward, and which node's op saved it."""

    node: fx.Node | None
    tensor: torch.Tensor
    version: int
    storage: int | None
    role: str = "internal"  # "output", "input" (then `arg` is the input node) or "internal"
    arg: fx.Node | None = None


@dataclass
class Observation:
    """What one forward and backward of a graph on a call's inputs showed."""

    values: dict[fx.Node, Any] = field(default_factory=dict)  # live values, node by node
    grad_on: dict[fx.Node, bool] = field(default_factory=dict)
    saved: list[Saved] = field(default_factory=list)
    needed: set[int] = field(default_factory=set)  # saved entries backward unpacked
    saved_before: dict[fx.Node, int] = field(default_factory=dict)  # write -> len(saved)
    bumped: dict[fx.Node, list[int]] = field(default_factory=dict)  # write -> saved it changed
    refused: dict[fx.Node, str] = field(default_factory=dict)  # write -> what autograd said
    outputs: list[Any] | None = None  # the graph's flat outputs
    forward_error: BaseException | None = None  # what stopped the forward, if anything
    backward_error: BaseException | None = None
    stale: bool = False  # backward used a saved tensor a write changed (eager would raise)
    grads: list[torch.Tensor | None] | None = None  # w.r.t. params, then inputs (grad)
    forward_s: float = 0.0
    backward_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)  # what extensions recorded

    @property
    def complete(self) -> bool:
        """Whether the forward ran to the end."""
        return self.forward_error is None

    @property
    def backward_fails(self) -> bool:
        """Backward raised, or would have in eager (it read a saved tensor a write changed)."""
        return self.backward_error is not None or self.stale

    @property
    def first_refusal(self) -> str | None:
        """The first write autograd refused in forward (the run went on past it), if any."""
        return next(iter(self.refused.values()), None)

    def step_seconds(self) -> float | None:
        """Seconds of the forward plus its backward, or None when either failed."""
        if not self.complete or self.backward_error is not None:
            return None
        return self.forward_s + self.backward_s


class Extension:
    """What a pass records beyond the core facts, node by node, in the same run."""

    key = ""  # where its result goes in Observation.extras

    def scope(self) -> contextlib.AbstractContextManager:
        """A context the whole forward runs in (NumPy's error state, for instance)."""
        return contextlib.nullcontext()

    def before(self, run: Observer, node: fx.Node) -> None:
        """Called before a node runs."""

    def after(self, run: Observer, node: fx.Node, value: Any) -> None:
        """Called with a node's value once it ran."""

    def failed(self, _run: Observer, _node: fx.Node, error: Exception) -> Any:
        """A node raised: return what stands in for its value, or raise (the default)."""
        raise error

    def result(self) -> Any:
        """What goes into Observation.extras[key]."""
        return self


class Observer(fx.Interpreter):
    """The recorder: runs a graph once, node by node, filling an Observation."""

    def __init__(self, gm: fx.GraphModule, extensions: Sequence[Extension] = ()) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.obs = Observation()
        self.extensions = list(extensions)
        self.current: fx.Node | None = None
        self.writes = {n: t for n in gm.graph.nodes if (t := writes_to(n, gm)) is not None}
        self.by_storage: dict[int | None, list[int]] = {}  # saved entries by storage

    # -- saved-tensor hooks ----------------------------------------------------------------

    def pack(self, t: torch.Tensor) -> int:
        st = storage_of(t)
        self.obs.saved.append(Saved(self.current, t, t._version, st))
        i = len(self.obs.saved) - 1
        self.by_storage.setdefault(st, []).append(i)
        return i

    def unpack(self, i: int) -> torch.Tensor:
        self.obs.needed.add(i)
        s = self.obs.saved[i]
        if s.tensor._version != s.version or storage_of(s.tensor) != s.storage:
            self.obs.stale = True  # eager's own unpack would refuse this tensor
        return s.tensor

    # -- nodes -------------------------------------------------------------------------------

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple, dict]:
        return fresh_containers(*super().fetch_args_kwargs_from_env(n))

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        obs = self.obs
        obs.grad_on[n] = torch.is_grad_enabled()
        first = len(obs.saved)
        for ext in self.extensions:
            ext.before(self, n)
        if n in self.writes:
            out = self._run_write(n, first)
        else:
            out = self._run_guarded(n)
        self._classify(n, first, out)
        for ext in self.extensions:
            ext.after(self, n, out)
        return out

    def _run_guarded(self, n: fx.Node) -> Any:
        try:
            return super().run_node(n)
        except Exception as error:
            for ext in self.extensions:
                with contextlib.suppress(type(error)):
                    return ext.failed(self, n, error)
            raise

    def _run_write(self, n: fx.Node, first: int) -> Any:
        obs = self.obs
        obs.saved_before[n] = first
        # A write can only change saved tensors that share its target's storage (views
        # share storage; `.data` shares storage too), so only those are compared: checking
        # every saved tensor at every write made the run quadratic in graph size.
        st = storage_of(self.env.get(self.writes[n]))
        candidates = list(self.by_storage.get(st, ())) if st is not None else range(len(obs.saved))
        before = [
            (i, obs.saved[i].tensor._version, storage_of(obs.saved[i].tensor)) for i in candidates
        ]
        try:
            out = super().run_node(n)
        except RuntimeError as e:
            obs.refused[n] = str(e).strip().splitlines()[0]
            out = self._run_refused(n)
        obs.bumped[n] = [
            i
            for i, ver, st in before
            if obs.saved[i].tensor._version != ver or storage_of(obs.saved[i].tensor) != st
        ]
        return out

    def _run_refused(self, n: fx.Node) -> Any:
        """A write autograd refused: run it anyway, to observe the rest of the forward."""
        try:
            with torch.no_grad():
                return super().run_node(n)
        except RuntimeError:
            if "more than one element" not in self.obs.refused[n]:
                raise
            # An expanded target whose elements overlap: write a clone, as PyTorch's
            # message suggests, and as the rewrite will.
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            args = (args[0].clone(), *args[1:])
            return getattr(self, n.op)(n.target, args, kwargs)

    def _classify(self, n: fx.Node, first: int, out: Any) -> None:
        """Say, for what node n's op saved, whether it is its output, an input, or neither."""
        saved = self.obs.saved[first:]
        if not saved:
            return
        outs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        for s in saved:
            if any(same_view(s.tensor, o) for o in outs):
                s.role = "output"
                continue
            arg = next((a for a in n.all_input_nodes if same_view(s.tensor, self.env.get(a))), None)
            if arg is None:
                arg = next(
                    (a for a in n.all_input_nodes if storage_of(self.env.get(a)) == s.storage),
                    None,
                )
            if arg is not None:
                s.role, s.arg = "input", arg


@contextlib.contextmanager
def _scopes(extensions: Sequence[Extension]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for ext in extensions:
            stack.enter_context(ext.scope())
        yield


def observe(gm: fx.GraphModule, ctx: Context, extensions: Sequence[Extension] = ()) -> Observation:
    """Run gm once on fresh copies of the call's inputs, forward and backward, and record.

    Runs in the grad mode the decision is for (`ctx.grad_enabled`), under the context's
    seed. Module state is left as it was: inside fix() parameters and buffers are private
    copies reset before every run; otherwise whatever the run wrote is put back
    (fxgrad.state.restored).
    """
    state = [] if ctx.private_state else [*gm.parameters(), *gm.buffers()]
    run = Observer(gm, extensions)
    obs = run.obs
    with restored(state):
        inputs = ctx.inputs()
        prev = torch.is_grad_enabled()
        with (
            seeded(ctx.seed),
            _scopes(run.extensions),
            torch.autograd.graph.saved_tensors_hooks(run.pack, run.unpack),
        ):
            torch.set_grad_enabled(ctx.grad_enabled)
            start = time.perf_counter()
            try:
                out = run.run(*inputs)
            except Exception as e:
                obs.forward_error = e
                out = None
            finally:
                obs.forward_s = time.perf_counter() - start
                torch.set_grad_enabled(prev)
        obs.values = dict(run.env)
        if out is not None:
            obs.outputs = list(out)
            params = ctx.params() if ctx.module is not None else list(gm.parameters())
            _backward(obs, params, inputs, ctx.seed)
    for ext in run.extensions:
        obs.extras[ext.key] = ext.result()
    return obs


def _backward(obs: Observation, params: list, inputs: list, seed: int) -> None:
    wrt = [p for p in params if p.requires_grad] + [
        t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad
    ]
    diff = differentiable_outputs(pytree.tree_leaves(obs.outputs))
    if not diff or not wrt:
        obs.grads = []
        return
    start = time.perf_counter()
    try:
        obs.grads = list(torch.autograd.grad(diff, wrt, cotangents(diff, seed), allow_unused=True))
    except RuntimeError as e:
        obs.backward_error = e
        obs.needed = set(range(len(obs.saved)))  # be conservative: all saved may be needed
    finally:
        obs.backward_s = time.perf_counter() - start


# Makes a pass's extension for a graph, or None when the pass has nothing to record there.
ExtensionFactory = Callable[[fx.GraphModule], Extension | None]
