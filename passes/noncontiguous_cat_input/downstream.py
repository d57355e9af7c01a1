"""Downstream of a cat: who reads its output, and whether a new layout of it could show.

Values never depend on strides except where code asks for them; this walk follows the
output through ops that keep its layout and notes every reader that could tell.
"""

from __future__ import annotations

import builtins
import enum
import operator
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from fxgrad import ops
from fxgrad.graph_utils import location, submodule, writes_to
from fxgrad.ops import Output, Strides
from fxgrad.passes.noncontiguous_cat_input.cost import Variant


class Flow(enum.Enum):
    """How an op reading a tensor passes on that tensor's layout and storage."""

    CARRY = "carry"  # a new tensor in the input's layout (pointwise, conv, norms)
    ALIAS = "alias"  # a view whatever the strides (permute, slicing, split)
    VIEW = "view"  # `view`: a view, or an error for strides it cannot view
    VIEW_OR_COPY = "view or copy"  # reshape, flatten, contiguous: which one depends on strides
    FRESH = "fresh"  # a new tensor in a layout of its own (matmul, linear, layer_norm)
    SCALAR = "scalar"  # not a tensor (sizes, dtype)


# How each kind of op's output passes on its input's layout, by fxgrad.ops. A new tensor
# is CARRY only where the op is pointwise (TensorIterator lays the result out as its input).
_OUTPUT_FLOW = {
    Output.VIEW: Flow.ALIAS,
    Output.VIEWS: Flow.ALIAS,
    Output.MAYBE_VIEW: Flow.VIEW_OR_COPY,  # `to`, `float`, `dropout` in eval: maybe the input
    Output.NOT_TENSOR: Flow.SCALAR,
}
# New tensors of ops that are not pointwise: a schema does not say which layout they take,
# so these stay named, as this pass has known them; any other is unknown, and blocks.
_NEW_TENSOR_FLOW: dict[str, Flow] = {
    **dict.fromkeys(
        (
            "sum mean amax amin softmax log_softmax where cat concat concatenate stack "
            "hardswish conv1d conv2d conv3d batch_norm group_norm avg_pool2d max_pool2d "
            "adaptive_avg_pool2d pad"
        ).split(),
        Flow.CARRY,
    ),
    **dict.fromkeys(["matmul", "mm", "bmm", "linear", "layer_norm"], Flow.FRESH),
}
# No tensor, yet the layout shows: `x.numpy()` is an ndarray over the same memory, with the
# tensor's strides (and a write through it reaches the tensor).
_SHOWS_STRIDES = frozenset({"numpy"})
# Python operators on tensors, which are no torch ops.
_OPERATOR_FLOW: dict[Any, Flow] = {
    **dict.fromkeys([operator.add, operator.sub, operator.mul, operator.truediv], Flow.CARRY),
    **dict.fromkeys([operator.neg, operator.pow], Flow.CARRY),
    operator.getitem: Flow.ALIAS,  # basic indexing views; advanced indexing copies
    operator.matmul: Flow.FRESH,
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


def _op_flow(op: Any) -> Flow | None:
    """How a torch op (a method name or a torch callable) passes on its input's layout."""
    f = ops.facts(op)
    if f.name in _SHOWS_STRIDES:
        return None
    if f.strides is Strides.RAISE:
        return Flow.VIEW  # `view`: fails on strides it cannot view
    if f.strides is Strides.READ:
        return None  # `stride()`, `as_strided`: the strides are the answer
    if f.output is Output.NEW:
        return Flow.CARRY if f.pointwise else _NEW_TENSOR_FLOW.get(f.name)
    return _OUTPUT_FLOW.get(f.output)


def _flow(gm: fx.GraphModule, node: fx.Node) -> Flow | None:
    """How node passes on its tensor input's layout; None when unknown (strides may matter)."""
    if node.op == "call_method":
        return _op_flow(str(node.target))
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
        found = _OPERATOR_FLOW.get(node.target)
    except TypeError:
        return None  # an unhashable target
    return found if found is not None else _op_flow(node.target)


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
