"""FXG201 noncontiguous-cat-input

## What it does
Rewrites a `torch.cat` of non-contiguous inputs where that is measured to be faster, with
one of two candidates: `.contiguous()` on each non-contiguous input, or, when every input
is a permuted view of a dense tensor with one common permutation (transposed matrices,
channels_last images, attention heads after `permute`), a cat of the dense tensors along
the matching dimension, permuted once afterwards. On the example inputs' real shapes,
strides, dtype and device it times the forward and backward of the cat and the ops that
read its output, as written and with each candidate, in `ROUNDS` interleaved rounds
(original, candidates, original, ...), and applies the fastest candidate only when the
medians show it faster by more than `MIN_SPEEDUP` (1.10x). Covers `torch.cat`,
`torch.concat`, `torch.concatenate` and `torch.stack`.

Sites that cannot pay are never timed: fewer than `MIN_ELEMENTS` elements in the
non-contiguous inputs, inputs that are all contiguous (a stride that differs only in a
size-1 dimension does not count). Identical sites (same shapes, strides, dtype, device,
dim and consumers) are timed once. All timing together stays within about one forward and
backward of the model (`BUDGET_STEPS`, at least `BUDGET_FLOOR_S`), most promising sites
first. Decisions are kept in the user's cache directory per site, device and torch
version (`$FXGRAD_CACHE_DIR`, else `$XDG_CACHE_HOME/fxgrad`, else `~/.cache/fxgrad`; see
`fxgrad.decision_cache`), so fixing the same model on the same machine again times
nothing and gives the same code; delete `fxg201.json` there to measure again. A site left
unmeasured because the budget ran out is not kept: the next fix measures it. A cached
record that does not fit its site (a variant it lacks, times that are not finite and
non-negative, a choice its times do not give) is ignored with a warning and measured
again. With measuring off (`Context.measure_enabled`), only cached decisions are applied.
## Why is this bad?
`cat` copies every input into its output. Reading a transposed, permuted, strided or
channels_last input element by element can be much slower than dense copies: on a CPU,
joining two transposed 707 x 707 float32 matrices read by `relu`, forward and backward,
took 3.1 ms as written, 2.4 ms with `.contiguous()` and 1.0 ms as a permuted cat. For
small inputs the opposite holds: the extra op costs more than it saves. And the op that
reads the output matters: with a matmul reading permuted attention heads, neither candidate
was faster at any size. Only a measurement on the real shapes can tell, so every
decision, taken or not, is reported with the times.
## Example
    a = x.transpose(0, 1)          # x, y: 707 x 707
    b = y.transpose(0, 1)
    return torch.cat([a, b], dim=0).relu()
## Use instead
    # the same values for any input; only the output's strides differ
    return torch.cat([a.permute(1, 0), b.permute(1, 0)], 1).permute(1, 0).relu()
## Left alone when
- every input is contiguous, or the non-contiguous ones are small (under `MIN_ELEMENTS`)
- no candidate is faster by more than the 1.10x margin; the report gives all times
- later code depends on the output's strides: `view` (fails on some strides),
  `reshape`/`flatten`/`contiguous` whose result or source is written in place (a view
  or a copy, depending on strides), stride queries, unknown ops; the permuted cat is
  also not returned from the model, whose callers may rely on a contiguous result
- there are no example inputs, so layouts and timings are unknown (reported once)
- measuring is off or the budget is spent and no decision is cached (reported per site)
- the inputs are not a literal list of tensors (`torch.cat(x.split(2))`), or `out=` is given
- the cat cannot be replayed on fresh tensors of the same layouts (reported, not measured)
- the cat runs inside a torch.func transform the graph runs itself (`vmap` as Dynamo
  captures it): its tensors exist only inside the transform (reported, not measured)
"""

from __future__ import annotations

import builtins
import copy
import enum
import math
import operator
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import fx, nn

from fxgrad.changes import Change, PassKind
from fxgrad.context import Context, default_measure
from fxgrad.decision_cache import DecisionCache, device_key, digest
from fxgrad.graph_utils import (
    as_primary,
    has_side_effect,
    inplace_module,
    location,
    source_list_items,
    submodule,
    target_name,
    writes_to,
)
from fxgrad.registry import Pass

MIN_SPEEDUP = 1.10
"""Apply a candidate only when it makes the timed code this many times faster.

Measurements on a busy machine wobble by a few percent; a 10% margin on medians keeps
noise from turning into rewrites that make the model slower.
"""

ROUNDS = 5
"""Interleaved rounds: each round times every variant once, in alternating order.

The decision compares per-variant medians over the rounds, so one disturbed sample (a
burst of other work on the machine) can neither cause a rewrite nor prevent one.
"""

MIN_ROUNDS = 3
"""When the budget runs out after this many complete rounds, the medians so far decide."""

MIN_ELEMENTS = 1 << 16
"""Sites whose non-contiguous inputs hold fewer elements in all are not timed.

Measured on a CPU (benchmarks/fxg201.py, in benchmarks/RESULTS.md): at 1e4 elements both
candidates were 1.1-1.4x slower than the plain cat, forward+backward with the op reading
it, for every layout tried (the extra op costs 5-20 us, more than strided reads lose);
from 1e5 either could win (the permuted cat down to 0.34x at 1e6 for transposed matrices
read by `relu`) or lose (`.contiguous()` of channels_last maps up to 3.4x). On a GPU small
cats are bound by kernel launches, which both candidates add.
"""

BUDGET_STEPS = 1.0
"""All timing for one graph stays within this many forward+backward runs of the model."""

BUDGET_FLOOR_S = 0.05
"""...but at least this many seconds: small against fix()'s own fixed cost."""

SAMPLE_S = 1e-3
"""With fix()'s default timer one sample is as many calls as take about this long."""

SITE_TEXT_MAX = 200
"""A cached record's description of its site is cut to this many characters."""

CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate, torch.stack)

CACHE_NAMESPACE = "fxg201"
CACHE_FORMAT = 2  # part of every key: bump when what is timed or decided changes
# 2: a site the budget left unmeasured is no longer kept (format 1 kept it for good)

REPLAY_FAILS = "it fails when replayed on fresh tensors of the same layouts"

KEPT_UNMEASURED = frozenset({REPLAY_FAILS})
"""Why a site went untimed, where the next fix would find the same: kept in the cache.

Other reasons (the budget was spent, timing would take more than is left of it) depend
on what else this fix timed; such sites are not kept, so the next fix measures them.
"""

_LABEL = re.compile(r"\w+(?: \+ \w+)* fwd(?:\+bwd)?")  # "cat + conv fwd+bwd"


class Variant(enum.Enum):
    """What a cat can become."""

    ORIGINAL = "original"
    CONTIGUOUS = "contiguous"  # .contiguous() on each non-contiguous input
    PERMUTED = "permuted"  # cat of the dense tensors, permuted once afterwards


VARIANT_TEXT = {
    Variant.ORIGINAL: "as is",
    Variant.CONTIGUOUS: "with .contiguous()",
    Variant.PERMUTED: "as a permuted cat",
}


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
        return (self.shape, self.stride, str(self.dtype), str(self.device), self.requires_grad)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def dense_in(self, order: Sequence[int]) -> bool:
        """True when `permute(order)` of this tensor is contiguous (size-1 dims aside)."""
        expected = 1
        for d in reversed(order):
            if self.shape[d] == 1:
                continue
            if self.stride[d] != expected:
                return False
            expected *= self.shape[d]
        return True

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
    """What the graph's observed run (fxgrad.observe) showed, as this pass reads it."""

    layouts: dict[fx.Node, Layout]
    values: dict[fx.Node, Any]  # detached values of the nodes the timed consumers read
    step_s: float | None = None  # the observed forward plus its backward
    # Nodes computed inside a torch.func transform the graph runs (Dynamo inlines
    # `torch.func.vmap` as nesting calls): their values are wrappers that outlived it.
    transformed: set[fx.Node] = field(default_factory=set)

    def step_seconds(self) -> float | None:
        """Seconds of the observed forward plus its backward; None if either failed."""
        return self.step_s


def observe(gm: fx.GraphModule, ctx: Context, keep: set[fx.Node]) -> Observed:
    """Every tensor's layout in the graph's observed run, and the values of `keep`.

    The run is made with gradients on, as training does, so `requires_grad` is what
    backward will see; a forward that fails part way still leaves the layouts it reached.
    """
    obs = ctx.observe(gm)
    transformed = {n for n, v in obs.values.items() if _transformed(v)}
    layouts = {
        n: Layout.of(v)
        for n, v in obs.values.items()
        if isinstance(v, torch.Tensor) and n not in transformed
    }
    values = {
        n: v.detach() if isinstance(v, torch.Tensor) else v
        for n, v in obs.values.items()
        if n in keep and n not in transformed
    }
    return Observed(layouts, values, obs.step_seconds(), transformed)


def _transformed(v: Any) -> bool:
    """Whether `v` is a torch.func wrapper (a vmapped or grad-tracked tensor) left over
    from a transform the graph ran: it cannot be read, timed or even detached outside."""
    return isinstance(v, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(v)


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


def _ms(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


# ---------------------------------------------------------------------------------------
# The permutation: inputs that are permuted views of dense tensors, all in one order


def common_order(layouts: Sequence[Layout]) -> tuple[int, ...] | None:
    """The dim order in which every input is dense, if it is not the identity; else None.

    `order` lists the input's dims from outermost to innermost in memory, so for each input
    `t`, `t.permute(order)` is contiguous. Orders are tried from each input's strides
    (largest first); a dim of size 1 has no meaningful stride and fits anywhere.
    """
    rank = len(layouts[0].shape)
    identity = tuple(range(rank))
    tried = set()
    for lay in layouts:
        order = tuple(sorted(identity, key=lambda d: (-lay.stride[d], d)))
        if order in tried or order == identity:
            continue
        tried.add(order)
        if all(other.dense_in(order) for other in layouts):
            return order
    return None


def inverse(order: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(order)
    for j, d in enumerate(order):
        inv[d] = j
    return tuple(inv)


@dataclass(frozen=True)
class Permuted:
    """`cat(ts, dim)` as `cat([t.permute(order) ...], inner_dim).permute(outer)`.

    For any tensors, whatever their strides: `t.permute(order)` puts t's dim `order[j]` at
    j, so t's dim `dim` is at `inverse(order)[dim]`, and `permute(inverse(order))` puts
    every dim back. For `stack` the dense tensors are stacked at dim 0 (each a contiguous
    block of the result) and the new dim is moved to `dim`.
    """

    order: tuple[int, ...]
    inner_dim: int
    outer: tuple[int, ...]

    @classmethod
    def of(cls, order: tuple[int, ...], dim: int, stack: bool) -> Permuted:
        p = inverse(order)
        if not stack:
            return cls(order, p[dim], p)
        outer = tuple(0 if i == dim else p[i if i < dim else i - 1] + 1 for i in range(len(p) + 1))
        return cls(order, 0, outer)

    def apply(self, target: Callable, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return target([t.permute(self.order) for t in tensors], self.inner_dim).permute(self.outer)


# ---------------------------------------------------------------------------------------
# Who reads the output: may its strides change?


class Flow(enum.Enum):
    """How an op reading a tensor passes on that tensor's layout and storage."""

    CARRY = "carry"  # a new tensor in the input's layout (pointwise, conv, norms)
    ALIAS = "alias"  # a view whatever the strides (permute, slicing, split)
    VIEW = "view"  # `view`: a view, or an error for strides it cannot view
    VIEW_OR_COPY = "view or copy"  # reshape, flatten, contiguous: which one depends on strides
    FRESH = "fresh"  # a new tensor in a layout of its own (matmul, linear, layer_norm)
    SCALAR = "scalar"  # not a tensor (sizes, dtype)


_POINTWISE = (
    "add sub mul div true_divide neg abs exp log sqrt rsqrt pow clamp clip where "
    "relu sigmoid tanh gelu silu softmax log_softmax dropout sum mean amax amin "
    "masked_fill float half bfloat16 double to type_as clone detach cat concat "
    "concatenate stack"
).split()
_ALIASING = (
    "permute transpose t unsqueeze squeeze narrow select split chunk unbind expand "
    "expand_as movedim moveaxis swapaxes swapdims unflatten"
).split()

METHOD_FLOW: dict[str, Flow] = {
    **dict.fromkeys(_POINTWISE, Flow.CARRY),
    **dict.fromkeys(_ALIASING, Flow.ALIAS),
    "view": Flow.VIEW,
    "view_as": Flow.VIEW,
    **dict.fromkeys(["reshape", "reshape_as", "flatten", "contiguous"], Flow.VIEW_OR_COPY),
    **dict.fromkeys(["matmul", "mm", "bmm"], Flow.FRESH),
    **dict.fromkeys(["size", "dim", "numel"], Flow.SCALAR),
}

FUNCTION_FLOW: dict[Any, Flow] = {
    **{getattr(torch, n): f for n, f in METHOD_FLOW.items() if callable(getattr(torch, n, None))},
    **{
        getattr(F, n): Flow.CARRY
        for n in (
            "relu gelu silu sigmoid tanh softmax log_softmax dropout leaky_relu hardswish "
            "hardsigmoid elu mish conv1d conv2d conv3d batch_norm group_norm avg_pool2d "
            "max_pool2d adaptive_avg_pool2d pad"
        ).split()
    },
    **dict.fromkeys([operator.add, operator.sub, operator.mul, operator.truediv], Flow.CARRY),
    **dict.fromkeys([operator.neg, operator.pow], Flow.CARRY),
    operator.getitem: Flow.ALIAS,  # basic indexing views; advanced indexing copies
    operator.matmul: Flow.FRESH,
    F.linear: Flow.FRESH,
    F.layer_norm: Flow.FRESH,
}

MODULE_FLOW: dict[type, Flow] = {
    **{
        getattr(nn, n): Flow.CARRY
        for n in (
            "Conv1d Conv2d Conv3d BatchNorm1d BatchNorm2d BatchNorm3d GroupNorm ReLU ReLU6 "
            "GELU SiLU Sigmoid Tanh Hardswish Hardsigmoid LeakyReLU ELU Mish Softmax Dropout "
            "Dropout2d Identity MaxPool2d AvgPool2d AdaptiveAvgPool2d"
        ).split()
    },
    nn.Flatten: Flow.VIEW_OR_COPY,
    nn.Linear: Flow.FRESH,
    nn.LayerNorm: Flow.FRESH,
}

_SCALAR_ATTRS = {"shape", "dtype", "device", "ndim", "requires_grad", "is_cuda"}
MAX_WALK = 2048  # nodes followed downstream of one cat before giving up as "too far"


def _flow(gm: fx.GraphModule, node: fx.Node) -> Flow | None:
    """How node passes on its tensor input's layout; None when unknown (strides may matter)."""
    if node.op == "call_method":
        return METHOD_FLOW.get(str(node.target))
    if node.op == "call_module":
        try:
            module = submodule(gm, str(node.target))
        except AttributeError:
            return None
        return MODULE_FLOW.get(type(module))  # exact types: a subclass may do anything
    if node.op != "call_function":
        return None
    if node.target is builtins.getattr:
        attr = node.args[1] if len(node.args) > 1 else None
        if attr in _SCALAR_ATTRS:
            return Flow.SCALAR
        return Flow.ALIAS if attr in ("T", "mT") else None
    try:
        return FUNCTION_FLOW.get(node.target)
    except TypeError:
        return None  # an unhashable target


class Blocker(enum.Enum):
    """A reader of the cat's output that could tell its strides, so a new layout could show."""

    UNKNOWN = "{node} ({at}) is not known to treat every layout alike"
    FAR = f"its layout reaches more than {MAX_WALK} ops, which were not all followed"
    WRITTEN_VIEW_OR_COPY = (
        "{node} ({at}) is a view or a copy depending on strides, and "
        "one of them is written in place"
    )
    VIEW = "{node} ({at}) fails on some strides"
    OUTPUT = "it would reach the model's callers in other strides"

    def text(self, node: fx.Node) -> str:
        return self.value.format(node=node.name, at=location(node) or "?")


# What keeps each variant from being tried, in the order a reason is given. Every variant
# changes the layout `reshape`/`flatten`/`contiguous` and unknown ops see; the permuted cat
# also changes the output's strides, which `view` and the model's callers see.
_ANY_LAYOUT = (Blocker.UNKNOWN, Blocker.FAR, Blocker.WRITTEN_VIEW_OR_COPY)
BLOCKED_BY: dict[Variant, tuple[Blocker, ...]] = {
    Variant.CONTIGUOUS: _ANY_LAYOUT,
    Variant.PERMUTED: (*_ANY_LAYOUT, Blocker.VIEW, Blocker.OUTPUT),
}


@dataclass
class Readers:
    """What reads the cat's output, directly or through ops that keep its layout."""

    blockers: dict[Blocker, fx.Node] = field(default_factory=dict)  # the first node of each

    def allows(self, variant: Variant) -> str | None:
        """None when `variant` keeps every reader right; else why not, naming the reader."""
        for blocker in BLOCKED_BY.get(variant, _ANY_LAYOUT):
            if blocker in self.blockers:
                return blocker.text(self.blockers[blocker])
        return None


def readers(gm: fx.GraphModule, cat: fx.Node) -> Readers:
    """Follow the cat's output through layout-keeping ops and note what could tell strides.

    Values never depend on strides, except where code asks for them: `view` fails on some
    strides, and `reshape`/`flatten`/`contiguous` return a view or a copy depending on
    them, which matters when the result or its source is then written in place. Storage
    groups (union-find over views and in-place writes) tell which writes can reach such
    a result.
    """
    walk = _ReaderWalk(gm, cat)
    while walk.queue:
        n = walk.queue.pop()
        for user in n.users:
            walk.visit(n, user)
    written = {walk.groups.find(w) for w in walk.writes}
    for n in walk.view_or_copy:
        if walk.groups.find(n) in written:
            walk.block(Blocker.WRITTEN_VIEW_OR_COPY, n)
    return walk.found


class _StorageGroups:
    """Union-find over nodes: those in one group may share storage."""

    def __init__(self) -> None:
        self.parent: dict[fx.Node, fx.Node] = {}

    def find(self, n: fx.Node) -> fx.Node:
        while self.parent.get(n, n) is not n:
            n = self.parent[n]
        return n

    def union(self, a: fx.Node, b: fx.Node) -> None:
        self.parent[self.find(a)] = self.find(b)


# Flows whose result shares the storage of the tensor it reads.
_SHARING = (Flow.ALIAS, Flow.VIEW, Flow.VIEW_OR_COPY)


class _ReaderWalk:
    """The state of `readers`' walk downstream of one cat."""

    def __init__(self, gm: fx.GraphModule, cat: fx.Node) -> None:
        self.gm = gm
        self.found = Readers()
        self.groups = _StorageGroups()
        self.seen = {cat}
        self.queue = [cat]
        self.writes: list[fx.Node] = []
        self.view_or_copy: list[fx.Node] = []

    def block(self, blocker: Blocker, node: fx.Node) -> None:
        self.found.blockers.setdefault(blocker, node)

    def visit(self, n: fx.Node, user: fx.Node) -> None:
        """Note what `user`, reading `n`, does with its layout, and follow it if it keeps it."""
        if user.op == "output":
            self.block(Blocker.OUTPUT, user)
            return
        written = writes_to(user, self.gm)
        flow = Flow.ALIAS if written is not None else _flow(self.gm, user)
        if flow is None:
            self.block(Blocker.UNKNOWN, user)
            return
        if flow in (Flow.SCALAR, Flow.FRESH):
            return
        if written is not None:
            self.writes.append(user)
            self.groups.union(user, written)
        if flow is Flow.VIEW:
            self.block(Blocker.VIEW, user)
        if flow is Flow.VIEW_OR_COPY:
            self.view_or_copy.append(user)
        if flow in _SHARING:
            self.groups.union(user, n)
        self._follow(user)

    def _follow(self, user: fx.Node) -> None:
        if user in self.seen:
            return
        if len(self.seen) >= MAX_WALK:
            self.block(Blocker.FAR, user)
            return
        self.seen.add(user)
        self.queue.append(user)


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
    if not _safe_to_replay(gm, user):
        return None
    module = _module_to_time(gm, user)
    others = [a for a in user.all_input_nodes if a is not cat]
    if any(a not in seen.values for a in others):
        return None
    fixed, leaves = _own_inputs(others, seen)
    if module is not None:
        leaves.extend(p for p in module.parameters() if p.requires_grad)
    if out.requires_grad != (seen.layouts[cat].requires_grad or bool(leaves)):
        return None  # it runs under another grad mode than the replay would
    key = _consumer_key(cat, user, module, fixed, seen)
    return Consumer(user, _replay(cat, user, module, fixed), leaves, key)


def _safe_to_replay(gm: fx.GraphModule, user: fx.Node) -> bool:
    """Whether running `user` again changes nothing: no in-place module, no side effect."""
    if user.op == "call_module":
        return inplace_module(gm, user) is None
    return not has_side_effect(user, gm)  # replaying it would write into memory or module state


def _module_to_time(gm: fx.GraphModule, user: fx.Node) -> nn.Module | None:
    """The module `user` calls, copied when it has buffers; None for other ops."""
    if user.op != "call_module":
        return None
    module = submodule(gm, str(user.target))
    if any(True for _ in module.buffers()):
        # Timing runs it many times; a copy keeps running statistics untouched.
        module = copy.deepcopy(module)
    return module


def _own_inputs(
    others: list[fx.Node], seen: Observed
) -> tuple[dict[fx.Node, Any], list[torch.Tensor]]:
    """The consumer's other inputs as observed, and which of them get gradients."""
    leaves: list[torch.Tensor] = []
    fixed: dict[fx.Node, Any] = {}
    for a in others:
        v = seen.values[a]
        if isinstance(v, torch.Tensor) and seen.layouts[a].requires_grad:
            v = v.detach().requires_grad_()
            leaves.append(v)
        fixed[a] = v
    return fixed, leaves


def _consumer_key(
    cat: fx.Node, user: fx.Node, module: nn.Module | None, fixed: dict, seen: Observed
) -> tuple:
    """What the consumer's timing depends on: its op, and the layouts or values it reads."""

    def describe(a: Any) -> Any:
        if a is cat:
            return "<cat>"
        if isinstance(a, fx.Node):
            return seen.layouts[a].key if a in seen.layouts else repr(fixed[a])
        return repr(a)

    args_key = tuple(describe(a) for a in pytree.tree_leaves((user.args, user.kwargs)))
    what = repr(module) if module is not None else str(user.target)
    return (user.op, what, args_key)


def _replay(
    cat: fx.Node, user: fx.Node, module: nn.Module | None, fixed: dict
) -> Callable[[torch.Tensor], Any]:
    """`user` as a call on a fresh cat output, its other inputs as observed."""

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

    return call


VIEW_DEPTH = 3  # views followed from the cat to the ops that compute with it


def _readers_timed(
    gm: fx.GraphModule, src: fx.Node, seen: Observed, depth: int = 0
) -> list[Consumer]:
    """The ops to time with the cat: its users, and through views, the ops reading those.

    A view (`transpose`, slicing) costs nothing; what a new layout changes is the speed of
    the op that computes with it (`q @ k.transpose(-1, -2)`), so that op is timed.
    """
    timed = []
    for user in src.users:
        c = _consumer(gm, src, user, seen)
        if c is None:
            continue
        if depth < VIEW_DEPTH and writes_to(user, gm) is None and _flow(gm, user) is Flow.ALIAS:
            inner = _readers_timed(gm, user, seen, depth + 1)
            if inner and len(inner) == sum(1 for _ in user.users):
                timed += [_through(c, i) for i in inner]
                continue
        timed.append(c)
    return timed


def _through(view: Consumer, reader: Consumer) -> Consumer:
    """`reader` applied to `view`'s result: one replayable call from the cat's output."""
    return Consumer(
        reader.node,
        lambda value: reader.call(view.call(value)),
        view.leaves + reader.leaves,
        (view.key, reader.key),
    )


@dataclass
class Site:
    """One cat whose rewrite may pay, with what deciding it depends on."""

    node: fx.Node
    layouts: list[Layout]
    dim: int
    candidates: set[int]  # inputs that are not contiguous
    variants: list[Variant]  # ORIGINAL first, then the candidates allowed here
    permuted: Permuted | None
    consumers: list[Consumer]
    signature: tuple

    @property
    def weight(self) -> int:
        """How much a rewrite could save: the elements read through strides."""
        return sum(self.layouts[i].numel for i in self.candidates)


def _bench(site: Site, consumers: list[Consumer]) -> tuple[dict[Variant, Callable[[], Any]], str]:
    """Each variant as a call on fresh tensors of the site's layouts, forward and backward."""
    tensors = [lay.fresh() for lay in site.layouts]
    leaves = [t for t in tensors if t.requires_grad] + [x for c in consumers for x in c.leaves]
    grad = bool(leaves)
    # Cotangents are fixed up front so every variant does the same backward work.
    cotangents: list[torch.Tensor] | None = None
    target = site.node.target

    def forward(variant: Variant) -> torch.Tensor:
        if variant is Variant.PERMUTED:
            assert site.permuted is not None
            return site.permuted.apply(target, tensors)
        if variant is Variant.CONTIGUOUS:
            ins = [t.contiguous() if i in site.candidates else t for i, t in enumerate(tensors)]
            return target(ins, site.dim)
        return target(tensors, site.dim)

    def step(variant: Variant) -> Any:
        nonlocal cotangents
        with torch.set_grad_enabled(grad):
            out = forward(variant)
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
    calls = {v: (lambda v=v: step(v)) for v in site.variants}
    return calls, f"{names} {'fwd+bwd' if grad else 'fwd'}"


# ---------------------------------------------------------------------------------------
# Deciding


@dataclass(frozen=True)
class Decision:
    """What a site becomes and why; also what the cache keeps (as a dict)."""

    choice: Variant
    times: dict[Variant, float]  # median seconds per call of each timed variant
    label: str = ""  # "cat + conv fwd+bwd"
    why_unmeasured: str = ""  # set when nothing was timed

    @property
    def measured(self) -> bool:
        return not self.why_unmeasured

    def ratio(self, variant: Variant) -> float:
        t = self.times.get(variant, 0.0)
        return self.times.get(Variant.ORIGINAL, 0.0) / t if t > 0 else 0.0

    def to_record(self) -> dict:
        return {
            "choice": self.choice.value,
            "times": {v.value: t for v, t in self.times.items()},
            "label": self.label,
            "why_unmeasured": self.why_unmeasured,
        }

    @classmethod
    def from_record(cls, record: Any, variants: Sequence[Variant]) -> Decision:
        """The decision a cached record holds for a site with these variants.

        ValueError, saying what is wrong without quoting the record, for one this version
        would not have written for the site: read from disk, it may be anything.
        """
        try:
            choice = Variant(record["choice"])
            times = {Variant(k): _seconds(t) for k, t in record["times"].items()}
            label, why = record["label"], record["why_unmeasured"]
        except (KeyError, ValueError, TypeError, AttributeError):
            raise ValueError("a record of another shape") from None
        if any(t is None for t in times.values()):
            raise ValueError("a time that is not a finite, non-negative number")
        if choice not in variants or not set(times) <= set(variants):
            raise ValueError("a variant this site does not have")
        if not isinstance(why, str) or not isinstance(label, str):
            raise ValueError("a record of another shape")
        if why:
            if why not in KEPT_UNMEASURED or times or choice is not Variant.ORIGINAL:
                raise ValueError("an unmeasured decision that is not kept")
            return cls(choice, {}, "", why)
        if set(times) != set(variants) or not _LABEL.fullmatch(label):
            raise ValueError("a measurement of other variants or ops")
        times = {v: times[v] for v in variants}
        if _choose(times) is not choice:
            raise ValueError("a choice its own times do not give")
        return cls(choice, times, label)

    def note(self, source: str) -> str:
        if not self.measured:
            cached = " (cached)" if source == "cached" else ""
            if source != "analysis only" and self.why_unmeasured not in KEPT_UNMEASURED:
                cached = "; not cached, the next fix measures it"
            return f"not measured: {self.why_unmeasured}; no measurement, no rewrite{cached}"
        original = self.times[Variant.ORIGINAL]
        others = [v for v in self.times if v not in (Variant.ORIGINAL, self.choice)]
        alternatives = ", ".join(
            f"{_ms(self.times[v])} {VARIANT_TEXT[v]} ({self.ratio(v):.2f}x)" for v in others
        )
        if self.choice is Variant.ORIGINAL:
            return (
                f"{self.label} {_ms(original)} as is, {alternatives}; not above the "
                f"{MIN_SPEEDUP:.2f}x margin ({source})"
            )
        rest = f"; {alternatives}" if alternatives else ""
        return (
            f"{self.label} {_ms(original)} -> {_ms(self.times[self.choice])} "
            f"({self.ratio(self.choice):.2f}x{rest}; {source})"
        )


def _seconds(value: Any) -> float | None:
    """A time read from the cache as seconds; None unless a finite, non-negative number."""
    if type(value) not in (int, float):  # not bool, nor a string of digits
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def decide(samples: dict[Variant, list[float]], label: str) -> Decision:
    """The fastest candidate whose median beats the original's by MIN_SPEEDUP, else as is."""
    times = {v: statistics.median(s) for v, s in samples.items()}
    return Decision(_choose(times), times, label)


def _choose(times: dict[Variant, float]) -> Variant:
    """The variant these median times decide for."""
    original = times[Variant.ORIGINAL]

    def ratio(v: Variant) -> float:
        return original / times[v] if times[v] > 0 else 0.0

    best = max((v for v in times if v is not Variant.ORIGINAL), key=ratio, default=None)
    if best is not None and ratio(best) > MIN_SPEEDUP:
        return best
    return Variant.ORIGINAL


class _Sampler:
    """fix()'s default timer, in short samples: `number` calls of one `timeit` each.

    `default_measure` runs `blocked_autorange` for at least 50 ms per call, far beyond a
    budget of one forward+backward; the pass sizes samples to the budget instead, with
    the same `torch.utils.benchmark` Timer (synchronized on CUDA) and thread count.
    """

    def __init__(self, number: int) -> None:
        from torch.utils import benchmark

        self.number = number
        self.timers: dict[str, Any] = {}
        self._timer = benchmark.Timer

    def __call__(self, key: str, fn: Callable[[], Any]) -> float:
        timer = self.timers.get(key)
        if timer is None:
            timer = self._timer(
                stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()
            )
            self.timers[key] = timer
        return timer.timeit(self.number).median


@dataclass
class Budget:
    """Seconds of timing left for this graph; what an injected timer takes is charged."""

    total_s: float
    spent_s: float = 0.0

    @property
    def left_s(self) -> float:
        return self.total_s - self.spent_s


def _spent(budget: Budget) -> str:
    return f"the measuring budget ({budget.total_s:.3g} s) was spent"


def _measure_site(
    ctx: Context, site: Site, budget: Budget, own_timer: bool
) -> tuple[Decision | None, str]:
    """Time the site's variants in interleaved rounds; (None, why) when it cannot be timed."""
    if budget.left_s <= 0:  # not even a warm-up: building and running it costs time too
        return None, _spent(budget)
    start = time.perf_counter()
    warm = _warm_up(site)
    if own_timer:
        budget.spent_s += time.perf_counter() - start
    if warm is None:
        return None, REPLAY_FAILS
    calls, label, cost = warm
    measure: Callable[[str, Callable[[], Any]], float] = ctx.measure
    samples: dict[Variant, list[float]] = {v: [] for v in calls}
    first = 0
    if own_timer:
        plan = _sample_plan(cost, budget)
        if isinstance(plan, str):
            return None, plan
        number, first = plan
        if first:  # calls this long are samples of one call each: the warm-up was round 0
            samples = {v: [cost[v]] for v in calls}
        measure = _Sampler(number)
    why = _time_rounds(site, calls, measure, samples, first, budget)
    if why:
        return None, why
    return decide(samples, label), ""


def _warm_up(
    site: Site,
) -> tuple[dict[Variant, Callable[[], Any]], str, dict[Variant, float]] | None:
    """The site's variants as calls, each run once: (calls, label, seconds of that run).

    With the consumers when they replay, else the cat alone; None when neither runs.
    """
    for timed in (site.consumers, []) if site.consumers else ([],):
        try:
            calls, label = _bench(site, timed)
            cost = {}
            for v, call in calls.items():  # warm up, and fail here, not in a timer
                t0 = time.perf_counter()
                call()
                cost[v] = time.perf_counter() - t0
        except Exception:
            continue
        return calls, label, cost
    return None


def _sample_plan(cost: dict[Variant, float], budget: Budget) -> tuple[int, int] | str:
    """fix()'s own timer: (calls per sample, first round), or why the site is not timed."""
    fastest = max(min(cost.values()), 1e-7)
    number = max(1, math.ceil(SAMPLE_S / fastest))
    first = 1 if number == 1 else 0
    # Enough for MIN_ROUNDS rounds is enough to start: later rounds run while it lasts.
    expected = (MIN_ROUNDS - first) * number * sum(cost.values())
    if budget.left_s <= 0:
        return _spent(budget)
    if expected > budget.left_s:
        return (
            f"timing it would take about {_ms(expected)}, more than the "
            f"{_ms(budget.left_s)} left of the measuring budget"
        )
    return number, first


def _time_rounds(
    site: Site,
    calls: dict[Variant, Callable[[], Any]],
    measure: Callable[[str, Callable[[], Any]], float],
    samples: dict[Variant, list[float]],
    first: int,
    budget: Budget,
) -> str:
    """Add each round's sample of each variant to `samples`; why it stopped short, or ""."""
    order = list(calls)
    for r in range(first, ROUNDS):
        if budget.left_s <= 0 and r >= MIN_ROUNDS:
            break  # enough complete rounds for medians; the budget is spent
        # Alternate the order, so a variant is not always the one right after another.
        for v in order if r % 2 == 0 else order[::-1]:
            if budget.left_s <= 0 and r < MIN_ROUNDS:
                return _spent(budget)
            t0 = time.perf_counter()
            try:
                seconds = measure(f"{site.node.name}:{v.value}", calls[v])
            finally:
                budget.spent_s += time.perf_counter() - t0
            if seconds is None:  # a timer that keeps its own budget says it is spent
                return "the timer's budget was spent"
            samples[v].append(seconds)
    return ""


def _budget(ctx: Context, seen: Observed) -> Budget:
    """About one forward+backward of the model, at least BUDGET_FLOOR_S, at most the cap.

    Unless the caller timed one (`Context.step_s`), the step is the observing forward
    (interpreted node by node, so a little slower than the model's own) and its backward.
    """
    step = ctx.step_s
    if step is None and ctx.measure_budget_s > BUDGET_FLOOR_S:
        step = seen.step_seconds()
    total = min(ctx.measure_budget_s, max(BUDGET_FLOOR_S, BUDGET_STEPS * (step or 0.0)))
    return Budget(total)


# ---------------------------------------------------------------------------------------
# Rewriting


def render(node: fx.Node, decision: Variant = Variant.ORIGINAL, site: Site | None = None) -> str:
    """`torch.cat([a, b], dim=1)` as written, or as the chosen variant would read."""
    tensors = node.args[0]
    made = set() if site is None else set(site.candidates)
    # The user's own expressions (`a.t()`) where the source line shows them, else fx's names.
    names = source_list_items(node, len(tensors)) or [t.name for t in tensors]

    def item(i: int) -> str:
        if decision is Variant.CONTIGUOUS and i in made:
            return f"{as_primary(names[i])}.contiguous()"
        if decision is Variant.PERMUTED and site is not None and site.permuted is not None:
            return f"{as_primary(names[i])}.permute({', '.join(map(str, site.permuted.order))})"
        return names[i]

    items = [item(i) for i in range(len(tensors))]
    if isinstance(tensors, list) or decision is Variant.PERMUTED:
        listed = f"[{', '.join(items)}]"
    else:
        listed = f"({', '.join(items)}{',' if len(items) == 1 else ''})"

    def text(a: Any) -> str:
        return a.name if isinstance(a, fx.Node) else repr(a)

    if decision is Variant.PERMUTED and site is not None and site.permuted is not None:
        outer = ", ".join(map(str, site.permuted.outer))
        return f"{target_name(node.target)}({listed}, {site.permuted.inner_dim}).permute({outer})"
    rest = [text(a) for a in node.args[1:]] + [f"{k}={text(v)}" for k, v in node.kwargs.items()]
    return f"{target_name(node.target)}({', '.join([listed, *rest])})"


def _copy_loc(src: fx.Node, dst: fx.Node) -> None:
    if "fxgrad_loc" in src.meta:
        dst.meta["fxgrad_loc"] = src.meta["fxgrad_loc"]


def _make_contiguous(graph: fx.Graph, site: Site) -> None:
    node = site.node
    tensors = node.args[0]
    replacement: dict[fx.Node, fx.Node] = {}
    with graph.inserting_before(node):
        for i in sorted(site.candidates):
            t = tensors[i]
            if t not in replacement:
                replacement[t] = c = graph.call_method("contiguous", (t,))
                _copy_loc(node, c)
    new = type(tensors)(replacement.get(t, t) for t in tensors)
    node.args = (new, *node.args[1:])


def _make_permuted(graph: fx.Graph, site: Site) -> None:
    node, permuted = site.node, site.permuted
    assert permuted is not None
    views: dict[fx.Node, fx.Node] = {}
    with graph.inserting_before(node):
        for t in node.args[0]:
            if t not in views:
                views[t] = v = graph.call_method("permute", (t, *permuted.order))
                _copy_loc(node, v)
    node.args = ([views[t] for t in node.args[0]], permuted.inner_dim)
    node.kwargs = {}
    with graph.inserting_after(node):
        out = graph.call_method("permute", (node, *permuted.outer))
    _copy_loc(node, out)
    node.replace_all_uses_with(out, delete_user_cb=lambda user: user is not out)


REWRITES: dict[Variant, Callable[[fx.Graph, Site], None]] = {
    Variant.CONTIGUOUS: _make_contiguous,
    Variant.PERMUTED: _make_permuted,
}


# ---------------------------------------------------------------------------------------
# The pass


SMALL = "small"  # _site's answer for a cat too small to time


def _site(gm: fx.GraphModule, node: fx.Node, seen: Observed) -> Site | str | None:
    """The site to decide; a reason string when the analysis alone leaves it as is."""
    tensors = list(node.args[0])
    if node in seen.transformed or any(t in seen.transformed for t in tensors):
        return (
            "not timed: it runs inside a torch.func transform (vmap), whose per-sample "
            "tensors cannot be measured outside it"
        )
    if node not in seen.layouts or any(t not in seen.layouts for t in tensors):
        return None  # the example run never reached it, so its layouts are unknown
    layouts = [seen.layouts[t] for t in tensors]
    candidates = {i for i, lay in enumerate(layouts) if not lay.contiguous and lay.numel > 0}
    if not candidates:
        return None  # contiguous inputs (strides of size-1 dims aside): a dense copy already
    dim = _dim(node, seen)
    if not isinstance(dim, int):
        return None  # a named dimension; nothing to time it with
    stack = node.target is torch.stack
    rank = len(layouts[0].shape) + stack
    dim = dim % rank if rank else dim
    if sum(layouts[i].numel for i in candidates) < MIN_ELEMENTS:
        return SMALL

    uses = readers(gm, node)
    variants = [Variant.ORIGINAL]
    blocked: list[str] = []
    # Only a 4-d or 5-d cat can come out channels_last; `.contiguous()` inputs make it
    # contiguous, so only then can its readers see other strides.
    contiguous_blocker = uses.allows(Variant.CONTIGUOUS) if rank in (4, 5) else None
    if contiguous_blocker is None:
        variants.append(Variant.CONTIGUOUS)
    else:
        blocked.append(contiguous_blocker)
    order = common_order(layouts) if all(lay.numel > 0 for lay in layouts) else None
    permuted = None
    if order is not None:
        permuted_blocker = uses.allows(Variant.PERMUTED)
        if permuted_blocker is None:
            permuted = Permuted.of(order, dim, stack)
            variants.append(Variant.PERMUTED)
        else:
            blocked.append(permuted_blocker)
    if len(variants) == 1:
        return f"not timed: its output's strides matter: {blocked[0]}"

    consumers = _readers_timed(gm, node, seen)
    signature = (
        getattr(node.target, "__name__", ""),
        tuple(lay.key for lay in layouts),
        dim,
        tuple(v.value for v in variants),
        tuple(c.key for c in consumers),
    )
    return Site(node, layouts, dim, candidates, variants, permuted, consumers, signature)


def _timer_tag(ctx: Context) -> str:
    if ctx.measure is default_measure:
        return "torch.utils.benchmark"
    m = ctx.measure
    return f"injected {getattr(m, '__module__', '')}.{getattr(m, '__qualname__', type(m).__name__)}"


def _no_example_inputs(cats: list[fx.Node]) -> list[Change]:
    first = cats[0]
    return [
        Change(
            "FXG201",
            first.name,
            render(first),
            "",
            location(first),
            f"no example inputs: {len(cats)} cat call{'s' if len(cats) != 1 else ''} left "
            "as is; whether a rewrite pays off is measured on real layouts",
            applied=False,
        )
    ]


def run(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    cats = [n for n in gm.graph.nodes if is_cat(n)]
    if not cats:
        return []
    if ctx.example_inputs is None:
        return _no_example_inputs(cats)
    seen = observe(gm, ctx, _values_to_keep(cats))
    sites, changes, small = _classify(gm, cats, seen)
    decisions = _decide(ctx, sites, seen)
    changes += [_apply(gm, site, *decisions[site.node]) for site in sites]
    if small:
        changes.append(_small_change(small))
    position = {n.name: i for i, n in enumerate(cats)}
    changes.sort(key=lambda c: position[c.node])  # stable: in graph order, as written
    return changes


def _values_to_keep(cats: list[fx.Node]) -> set[fx.Node]:
    """What the timed readers take besides the cat's output: their other inputs, also of
    ops reading views of it (a view of a view of it, at most VIEW_DEPTH deep)."""
    near = {c: {c} for c in cats}
    for c in cats:
        frontier = {c}
        for _ in range(VIEW_DEPTH):
            frontier = {u for n in frontier for u in n.users}
            near[c] |= frontier
    keep = {a for c in cats for n in near[c] for u in n.users for a in u.all_input_nodes} - {
        n for c in cats for n in near[c]
    }
    keep |= {d for c in cats for d in c.all_input_nodes if d not in c.args[0]}  # a traced dim
    return keep


def _classify(
    gm: fx.GraphModule, cats: list[fx.Node], seen: Observed
) -> tuple[list[Site], list[Change], list[fx.Node]]:
    """Sites to decide, changes for cats the analysis leaves as is, and cats too small."""
    sites: list[Site] = []
    changes: list[Change] = []
    small: list[fx.Node] = []
    for node in cats:
        site = _site(gm, node, seen)
        if site is SMALL:
            small.append(node)
        elif isinstance(site, str):
            changes.append(
                Change("FXG201", node.name, render(node), "", location(node), site, False)
            )
        elif site is not None:
            sites.append(site)
    return sites, changes, small


def _apply(gm: fx.GraphModule, site: Site, decision: Decision, source: str) -> Change:
    """Rewrite the site as decided; the change says what was timed, either way."""
    node = site.node
    before, after = render(node), render(node, decision.choice, site)
    if decision.choice is Variant.ORIGINAL:
        note = decision.note(source)
        return Change("FXG201", node.name, before, "", location(node), note, False)
    REWRITES[decision.choice](gm.graph, site)
    return Change("FXG201", node.name, before, after, location(node), decision.note(source))


def _small_change(small: list[fx.Node]) -> Change:
    first = small[0]
    n = len(small)
    return Change(
        "FXG201",
        first.name,
        render(first),
        "",
        location(first),
        f"{n} cat call{'s' if n != 1 else ''} with non-contiguous inputs not timed: "
        f"under {MIN_ELEMENTS} elements read through strides, too few for a rewrite "
        "to pay",
        applied=False,
    )


def _cached(cache: DecisionCache, key: str, site: Site) -> Decision | None:
    """The decision cached for the site, or None; a record that does not fit it is
    rejected (a warning), so the site is measured again and the record replaced."""
    record = cache.lookup(key)
    if record is None:
        return None
    try:
        return Decision.from_record(record, site.variants)
    except ValueError as e:
        cache.reject(key, str(e))
        return None


def _record(decision: Decision, site: Site) -> dict:
    """What the cache keeps: the decision, and the site in words for a reader of the file."""
    text = repr(site.signature)  # never read back
    if len(text) > SITE_TEXT_MAX:
        text = text[: SITE_TEXT_MAX - 3] + "..."
    return {**decision.to_record(), "site": text}


def _decide(ctx: Context, sites: list[Site], seen: Observed) -> dict[fx.Node, tuple[Decision, str]]:
    """A decision per site: from this run, from the cache, or timed now within the budget."""
    out: dict[fx.Node, tuple[Decision, str]] = {}
    if not sites:
        return out
    cache = DecisionCache(CACHE_NAMESPACE)
    tag = _timer_tag(ctx)
    groups: dict[tuple, list[Site]] = {}
    for site in sites:
        groups.setdefault(site.signature, []).append(site)

    def key(group: list[Site]) -> str:
        device = device_key(group[0].layouts[0].device)
        return digest(("FXG201", CACHE_FORMAT, group[0].signature, device, tag))

    pending: list[list[Site]] = []
    for group in groups.values():
        decision = _cached(cache, key(group), group[0])
        if decision is not None:
            for site in group:
                out[site.node] = (decision, "cached")
        else:
            pending.append(group)
    if not pending:
        return out
    if not ctx.measure_enabled:
        off = Decision(
            Variant.ORIGINAL, {}, why_unmeasured="measuring is off and no decision is cached"
        )
        for group in pending:
            for site in group:
                out[site.node] = (off, "analysis only")
        cache.flush()  # drops records found invalid
        return out

    budget = _budget(ctx, seen)
    own_timer = ctx.measure is default_measure
    # Most promising first: the most elements read through strides, over all its copies.
    pending.sort(key=lambda g: -sum(s.weight for s in g))
    for group in pending:
        first = group[0]
        decision, why = _measure_site(ctx, first, budget, own_timer)
        if decision is None:
            decision = Decision(Variant.ORIGINAL, {}, why_unmeasured=why)
        # A site that cannot be timed is kept too, so the same model gets the same code next
        # time; one the budget left out is not: the next fix measures it.
        if decision.measured or decision.why_unmeasured in KEPT_UNMEASURED:
            cache.store(key(group), _record(decision, first))
        for site in group:
            source = "measured" if site is first else f"as measured at {first.node.name}"
            out[site.node] = (decision, source)
    cache.flush()
    return out


PASS = Pass(
    code="FXG201",
    name="noncontiguous-cat-input",
    run=run,
    doc=__doc__,
    kind=PassKind.SPEED,  # a layout decision to keep code is never a finding
    applies=lambda gm: any(is_cat(n) for n in gm.graph.nodes),
)
