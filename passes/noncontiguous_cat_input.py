"""FXG201 noncontiguous-cat-input

## What it does
Makes non-contiguous `torch.cat` inputs contiguous first, where that is measured to be faster.
On the example inputs' real shapes, strides, dtype and device it times the forward and
backward of the `cat` (and of the ops that read its output, since the output's layout
follows the inputs') as written and with `.contiguous()` on each non-contiguous input, and
inserts `.contiguous()` only when that is faster by more than `MIN_SPEEDUP` (1.10x) in
each of three alternating comparisons (medians from `torch.utils.benchmark`). Covers
`torch.cat`, `torch.concat`, `torch.concatenate` and `torch.stack`.
## Why is this bad?
`cat` copies every input into the output. Reading a transposed, permuted, strided or
channels_last input element by element can be much slower than a dense copy followed by a
contiguous `cat`: on a CPU, concatenating four transposed 512 x 512 float32 matrices takes
about twice as long as making them contiguous first. For small inputs the opposite holds:
the extra copy costs more than it saves. Only a measurement on the real shapes can tell,
so every decision, taken or not, is reported with the times and the ratio.
## Example
    a = x.transpose(0, 1)          # x: 512 x 512
    return torch.cat([a, y], dim=0)
## Use instead
    a = x.transpose(0, 1)
    return torch.cat([a.contiguous(), y], dim=0)
## Left alone when
- every input is already contiguous (nothing to copy ahead of `cat`)
- `.contiguous()` is not faster by more than the 1.10x margin; the report gives both times
- there are no example inputs, so layouts and timings are unknown (reported once)
- the measuring budget is spent; the report says which `cat` calls were not timed
- the inputs are not a literal list of tensors (`torch.cat(x.split(2))`), or `out=` is given
- the cat cannot be replayed on fresh tensors of the same layouts (reported, not measured)
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context, seeded
from fxgrad.graph_utils import (
    has_side_effect,
    inplace_module,
    location,
    submodule,
    target_name,
)
from fxgrad.registry import Pass

MIN_SPEEDUP = 1.10
"""Insert `.contiguous()` only when it makes the timed code this many times faster.

Measurements on a busy machine wobble by a few percent; a 10% margin keeps noise from
turning into rewrites that make the model slower.
"""

ROUNDS = 3
"""Both variants are timed this many times, alternating; every round must show the gain.

On a busy machine a measurement now and then runs several times slower. Judging by the
least favourable round means such a disturbance can cost a rewrite, but never cause one.
"""

CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate, torch.stack)


@dataclass(frozen=True)
class Layout:
    """What a tensor's timing depends on: sizes, strides, offset, dtype, device, grad."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    contiguous: bool

    @classmethod
    def of(cls, t: torch.Tensor) -> Layout:
        return cls(
            tuple(t.shape),
            tuple(t.stride()),
            t.storage_offset(),
            t.dtype,
            t.device,
            t.requires_grad,
            t.is_contiguous(),
        )

    @property
    def key(self) -> tuple:
        return (self.shape, self.stride, self.dtype, str(self.device), self.requires_grad)

    def fresh(self) -> torch.Tensor:
        """A new tensor with this layout and random values (no NaNs or denormals).

        Built as a view of a dense buffer rather than with `empty_strided`, because expanded
        inputs have overlapping elements that cannot be filled in place.
        """
        extent = self.offset + 1
        if all(s > 0 for s in self.shape):
            extent += sum((s - 1) * st for s, st in zip(self.shape, self.stride))
        kw = {"dtype": self.dtype, "device": self.device}
        if self.dtype.is_floating_point or self.dtype.is_complex:
            base = torch.randn(extent, **kw)
        elif self.dtype == torch.bool:
            base = torch.zeros(extent, **kw)
        else:
            base = torch.randint(0, 8, (extent,), **kw)
        t = base.as_strided(self.shape, self.stride, self.offset).detach()
        return t.requires_grad_(self.requires_grad)


@dataclass
class Observed:
    """What one run of the graph on the example inputs showed."""

    layouts: dict[fx.Node, Layout]
    values: dict[fx.Node, Any]  # detached values of the nodes the timed consumers read


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node]) -> None:
        super().__init__(gm)
        self.keep = keep
        self.seen = Observed({}, {})

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if isinstance(value, torch.Tensor):
            self.seen.layouts[n] = Layout.of(value)
        if n in self.keep:
            self.seen.values[n] = value.detach() if isinstance(value, torch.Tensor) else value
        return value


def observe(gm: fx.GraphModule, ctx: Context, keep: set[fx.Node]) -> Observed:
    """Run the graph once on fresh example inputs, recording every tensor's layout.

    Runs with gradients on, as training does, so `requires_grad` is what backward will see;
    a forward that fails part way still leaves the layouts it reached.
    """
    recorder = _Recorder(gm, keep)
    prev = torch.is_grad_enabled()
    try:
        with seeded(ctx.seed), torch.enable_grad():
            recorder.run(*ctx.inputs())
    except Exception:
        pass  # the pipeline reports failing forwards; cats not reached are not candidates
    finally:
        torch.set_grad_enabled(prev)
    return recorder.seen


def is_cat(node: fx.Node) -> bool:
    """A cat/stack call whose inputs are a literal list of nodes and that writes no `out=`."""
    if node.op != "call_function" or not any(node.target is f for f in CAT_FUNCTIONS):
        return False
    if "out" in node.kwargs or not node.args:
        return False
    tensors = node.args[0]
    return (
        isinstance(tensors, (list, tuple))
        and len(tensors) > 0
        and all(isinstance(t, fx.Node) for t in tensors)
    )


def _dim(node: fx.Node, seen: Observed) -> Any:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", node.kwargs.get("axis", 0))
    if isinstance(dim, fx.Node):
        dim = seen.values.get(dim)
    return dim


def render(node: fx.Node, made_contiguous: Sequence[fx.Node] = ()) -> str:
    """`torch.cat([a, b], dim=1)`, with `.contiguous()` on the given inputs."""
    items = [f"{t.name}.contiguous()" if t in made_contiguous else t.name for t in node.args[0]]
    if isinstance(node.args[0], list):
        listed = f"[{', '.join(items)}]"
    else:
        listed = f"({', '.join(items)}{',' if len(items) == 1 else ''})"

    def text(a: Any) -> str:
        return a.name if isinstance(a, fx.Node) else repr(a)

    rest = [text(a) for a in node.args[1:]] + [f"{k}={text(v)}" for k, v in node.kwargs.items()]
    return f"{target_name(node.target)}({', '.join([listed, *rest])})"


def _ms(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


# ---------------------------------------------------------------------------------------
# What is timed: the cat and the ops that read its output


@dataclass
class Consumer:
    """An op reading the cat's output, replayable on a fresh output with its real arguments."""

    node: fx.Node
    call: Callable[[torch.Tensor], Any]
    leaves: list[torch.Tensor]  # its own tensors that get gradients (weights, other inputs)
    key: tuple


def _consumer(gm: fx.GraphModule, cat: fx.Node, user: fx.Node, seen: Observed) -> Consumer | None:
    """Return the replayable form of `user`, or None when replaying it is unsafe or unknown."""
    if user.op not in ("call_function", "call_method", "call_module"):
        return None
    out = seen.layouts.get(user)
    if out is None:
        return None  # not a tensor (a size, a tuple): nothing of it to time
    module = None
    if user.op == "call_module":
        if inplace_module(gm, user) is not None:
            return None
        module = submodule(gm, str(user.target))
        if any(True for _ in module.buffers()):
            # Timing runs it many times; a copy keeps running statistics untouched.
            module = copy.deepcopy(module)
    elif has_side_effect(user, gm):
        return None  # replaying it would write into memory or module state

    others = [a for a in user.all_input_nodes if a is not cat]
    if any(a not in seen.values for a in others):
        return None
    leaves: list[torch.Tensor] = []
    fixed: dict[fx.Node, Any] = {}
    for a in others:
        v = seen.values[a]
        if isinstance(v, torch.Tensor) and seen.layouts[a].requires_grad:
            v = v.detach().requires_grad_()
            leaves.append(v)
        fixed[a] = v
    if module is not None:
        leaves.extend(p for p in module.parameters() if p.requires_grad)
    if out.requires_grad != (seen.layouts[cat].requires_grad or bool(leaves)):
        return None  # it runs under another grad mode than the replay would

    def describe(a: Any) -> Any:
        if a is cat:
            return "<cat>"
        if isinstance(a, fx.Node):
            return seen.layouts[a].key if a in seen.layouts else repr(fixed[a])
        return repr(a)

    args_key = tuple(describe(a) for a in pytree.tree_leaves((user.args, user.kwargs)))
    what = repr(module) if module is not None else str(user.target)
    key = (user.op, what, args_key)

    def call(value: torch.Tensor) -> Any:
        def pick(a: fx.Node) -> Any:
            return value if a is cat else fixed[a]

        args = fx.node.map_arg(user.args, pick)
        kwargs = fx.node.map_arg(user.kwargs, pick)
        if module is not None:
            return module(*args, **kwargs)
        if user.op == "call_method":
            return getattr(args[0], str(user.target))(*args[1:], **kwargs)
        return user.target(*args, **kwargs)

    return Consumer(user, call, leaves, key)


@dataclass
class Bench:
    """The two timed variants of one cat, built from fresh tensors of the same layouts."""

    original: Callable[[], Any]
    contiguous: Callable[[], Any]
    label: str  # "cat + conv fwd+bwd"


def _bench(
    cat: fx.Node, layouts: list[Layout], candidates: set[int], consumers: list[Consumer], dim: Any
) -> Bench:
    tensors = [lay.fresh() for lay in layouts]
    leaves = [t for t in tensors if t.requires_grad] + [x for c in consumers for x in c.leaves]
    grad = bool(leaves)
    # Cotangents are fixed up front so both variants do the same backward work.
    cotangents: list[torch.Tensor] | None = None
    target = cat.target

    def step(contiguous: bool) -> Any:
        nonlocal cotangents
        with torch.set_grad_enabled(grad):
            ins = [
                t.contiguous() if contiguous and i in candidates else t
                for i, t in enumerate(tensors)
            ]
            out = target(ins, dim)
            if not consumers:
                outs = [out]
            else:
                outs = [o for c in consumers for o in pytree.tree_leaves(c.call(out))]
            if not grad:
                return outs
            diff = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
            if cotangents is None:
                cotangents = [torch.randn_like(o) for o in diff]
            return torch.autograd.grad(diff, leaves, cotangents, allow_unused=True)

    names = " + ".join([str(getattr(target, "__name__", "cat"))] + [c.node.name for c in consumers])
    return Bench(lambda: step(False), lambda: step(True), f"{names} {'fwd+bwd' if grad else 'fwd'}")


# ---------------------------------------------------------------------------------------
# Deciding


@dataclass(frozen=True)
class Verdict:
    original_s: float
    contiguous_s: float
    label: str
    measured_at: str  # the cat node that was timed

    @property
    def ratio(self) -> float:
        return self.original_s / self.contiguous_s if self.contiguous_s > 0 else 0.0

    @property
    def pays_off(self) -> bool:
        return self.ratio > MIN_SPEEDUP

    def note(self, node: fx.Node) -> str:
        there = (
            "measured" if self.measured_at == node.name else f"as measured at {self.measured_at}"
        )
        if self.pays_off:
            times = f"{self.label} {_ms(self.original_s)} -> {_ms(self.contiguous_s)}"
            return f"{times} ({self.ratio:.2f}x, {there})"
        return (
            f"{self.label} {_ms(self.original_s)} as is, {_ms(self.contiguous_s)} with "
            f".contiguous() ({self.ratio:.2f}x, not above the {MIN_SPEEDUP:.2f}x margin, {there})"
        )


def _measure(ctx: Context, node: fx.Node, make_bench: Callable[[], Bench]) -> Verdict | None:
    """Time both variants ROUNDS times, alternating; None if the budget allows no round.

    Each round times a freshly built pair, so that a state one pair got stuck in (where its
    allocations landed) cannot repeat in every round. The verdict is the round least in
    favour of `.contiguous()`; rounds the budget cut short are left out.
    """
    rounds: list[tuple[float, float]] = []
    label = ""
    for _ in range(ROUNDS):
        bench = make_bench()
        label = bench.label
        original = ctx.timed(f"{node.name}:original", bench.original)
        contiguous = (
            None if original is None else ctx.timed(f"{node.name}:contiguous", bench.contiguous)
        )
        if original is None or contiguous is None:
            break
        rounds.append((original, contiguous))
    if not rounds:
        return None
    original, contiguous = min(rounds, key=lambda r: r[0] / r[1] if r[1] > 0 else 0.0)
    return Verdict(original, contiguous, label, node.name)


def _working_bench(
    cat: fx.Node, layouts: list[Layout], candidates: set[int], consumers: list[Consumer], dim: int
) -> Callable[[], Bench] | None:
    """A maker of Benches whose variants run: with the consumers, else the cat alone."""
    for timed in (consumers, []) if consumers else ([],):
        try:
            bench = _bench(cat, layouts, candidates, timed, dim)
            bench.original(), bench.contiguous()  # warm up, and fail here rather than in a timer
        except Exception:
            continue
        return functools.partial(_bench, cat, layouts, candidates, timed, dim)
    return None


def _insert(graph: fx.Graph, node: fx.Node, made: list[fx.Node]) -> None:
    replacement: dict[fx.Node, fx.Node] = {}
    with graph.inserting_before(node):
        for t in made:
            c = graph.call_method("contiguous", (t,))
            if "fxgrad_loc" in node.meta:
                c.meta["fxgrad_loc"] = node.meta["fxgrad_loc"]
            replacement[t] = c
    tensors = node.args[0]
    new = type(tensors)(replacement.get(t, t) for t in tensors)
    node.args = (new, *node.args[1:])


def run(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    cats = [n for n in gm.graph.nodes if is_cat(n)]
    if not cats:
        return []
    if ctx.example_inputs is None:
        first = cats[0]
        return [
            Change(
                "FXG201",
                first.name,
                render(first),
                "",
                location(first),
                f"no example inputs: {len(cats)} cat call{'s' if len(cats) != 1 else ''} left "
                "as is; whether .contiguous() pays off is measured on real layouts",
                applied=False,
            )
        ]

    keep = {a for c in cats for u in c.users for a in u.all_input_nodes if a is not c}
    keep |= {d for c in cats for d in c.all_input_nodes if d not in c.args[0]}  # a traced dim
    seen = observe(gm, ctx, keep)
    verdicts: dict[tuple, Verdict] = {}
    changes: list[Change] = []
    for node in cats:
        tensors = list(node.args[0])
        if node not in seen.layouts or any(t not in seen.layouts for t in tensors):
            continue  # the example run never reached it, so its layouts are unknown
        layouts = [seen.layouts[t] for t in tensors]
        candidates = {
            i for i, lay in enumerate(layouts) if not lay.contiguous and 0 not in lay.shape
        }
        if not candidates:
            continue  # contiguous inputs: cat already reads them densely
        dim = _dim(node, seen)
        if not isinstance(dim, int):
            continue  # a named dimension; nothing to time it with
        made = list(dict.fromkeys(tensors[i] for i in sorted(candidates)))
        before, after = render(node), render(node, made)

        consumers = [c for u in node.users if (c := _consumer(gm, node, u, seen)) is not None]
        rank = len(layouts[0].shape) + (node.target is torch.stack)
        key = (
            getattr(node.target, "__name__", ""),
            tuple(lay.key for lay in layouts),
            dim % rank if rank else dim,
            tuple(c.key for c in consumers),
        )
        verdict = verdicts.get(key)
        if verdict is None:
            make_bench = _working_bench(node, layouts, candidates, consumers, dim)
            verdict = None if make_bench is None else _measure(ctx, node, make_bench)
            if verdict is None:
                why = (
                    "it fails when replayed on fresh tensors of the same layouts"
                    if make_bench is None
                    else f"the measuring budget ({ctx.measure_budget_s:g} s) was spent "
                    "before it was timed"
                )
                note = f"not measured: {why}; no measurement, no rewrite"
                changes.append(Change("FXG201", node.name, before, "", location(node), note, False))
                continue
            verdicts[key] = verdict
        if not verdict.pays_off:
            changes.append(
                Change("FXG201", node.name, before, "", location(node), verdict.note(node), False)
            )
            continue
        _insert(gm.graph, node, made)
        changes.append(
            Change("FXG201", node.name, before, after, location(node), verdict.note(node))
        )
    return changes


PASS = Pass(
    code="FXG201",
    name="noncontiguous-cat-input",
    run=run,
    doc=__doc__,
    applies=lambda gm: any(is_cat(n) for n in gm.graph.nodes),
)
