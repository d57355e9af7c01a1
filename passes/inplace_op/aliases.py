"""Aliases: each tensor node is a root or a chain of view steps from a root.

A rewrite replays these chains on a new base, so every later reader of the written memory
(the tensor, its base, every view of either) sees what eager would show.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxgrad import ops
from fxgrad.graph_utils import writes_to
from fxgrad.passes.inplace_op.views import ViewOp, _basic_index, _fn_name, _view_kind
from fxgrad.runtime import writable_piece
from fxgrad.state import storage_of


class StepKind(enum.Enum):
    """How one step of an alias chain relates to its base, which decides how it replays."""

    VIEW = "view"  # a view on every input: replayed as written
    MAYBE = "maybe"  # a view or a copy depending on the input: replayed once proven a view
    MULTI = "multi"  # one output of unbind/split/chunk, which autograd refuses to write into
    EXPAND = "expand"  # expand/expand_as/broadcast_to: its elements may overlap
    DATA = "data"  # `.data`: the same memory outside autograd; nothing to replay
    OPAQUE = "opaque"  # memory shared through an op fxgrad cannot replay


@dataclass(frozen=True)
class Step:
    """One view op to replay on a new base: `base.<target>(*args, **kwargs)`."""

    op: str
    target: Any
    args: tuple
    kwargs: tuple = ()
    kind: StepKind = StepKind.VIEW
    index: int | None = None  # which output of a multi-view call (unbind/split/chunk)

    def __post_init__(self) -> None:
        # A plain string here would compare unequal to every StepKind and replay as a view.
        if not isinstance(self.kind, StepKind):
            raise TypeError(f"Step.kind must be a StepKind, not {self.kind!r}")

    def replay(self, graph: fx.Graph, base: fx.Node, *, writable: bool = False) -> fx.Node:
        """Rebuild this view on `base`; `writable` for the target of an in-place write."""
        if self.index is not None and writable:
            # Outputs of split/chunk refuse in-place writes; the same memory as a plain view.
            op = self.target if self.op == "call_function" else str(self.target)
            args = (base, op, self.args, dict(self.kwargs), self.index)
            return graph.create_node("call_function", writable_piece, args, {})
        node = graph.create_node(self.op, self.target, (base, *self.args), dict(self.kwargs))
        if self.index is None:
            return node
        with graph.inserting_after(node):
            return graph.create_node("call_function", operator.getitem, (node, self.index))

    def text(self) -> str:
        return (
            f"{self.target}" if self.op == "call_method" else getattr(self.target, "__name__", "?")
        )


@dataclass(frozen=True)
class Alias:
    root: fx.Node
    steps: tuple[Step, ...] = ()

    def has(self, kind: StepKind) -> bool:
        """Whether a step of this chain is of `kind`."""
        return any(s.kind is kind for s in self.steps)


def _step_of(node: fx.Node, kind: StepKind) -> Step:
    if kind is StepKind.DATA:
        return Step("call_function", builtins.getattr, ("data",), kind=StepKind.DATA)
    if node.target is operator.getitem or node.target is builtins.getattr:
        return Step("call_function", node.target, tuple(node.args[1:]), kind=StepKind.VIEW)
    if ops.may_overlap(node.target):
        kind = StepKind.EXPAND  # elements may share memory (stride 0): eager refuses writes
    return Step(node.op, node.target, tuple(node.args[1:]), tuple(node.kwargs.items()), kind)


def _dim_arg(node: fx.Node, pos: int, default: int = 0) -> Any:
    if "dim" in node.kwargs:
        return node.kwargs["dim"]
    if len(node.args) > pos:
        return node.args[pos]
    return default


def _multi_steps(node: fx.Node, values: dict | None) -> list[Step] | None:
    """A step per output of unbind/split/chunk: the same call, then that output.

    Replaying the call itself (`base.chunk(2)[0]`) rather than a `narrow` with the
    example's offsets keeps a rewrite right for inputs of any size.
    """
    out = values.get(node) if values is not None else None
    n = len(out) if isinstance(out, (tuple, list)) else _static_pieces(node)
    if n is None:
        return None
    rest, kwargs = tuple(node.args[1:]), tuple(node.kwargs.items())
    return [
        Step(node.op, node.target, rest, kwargs, kind=StepKind.MULTI, index=i) for i in range(n)
    ]


def _static_pieces(node: fx.Node) -> int | None:
    """How many outputs a multi-view call may have, without example inputs."""
    if _fn_name(node) == "split":
        sizes = node.kwargs.get(
            "split_size_or_sections", node.args[1] if len(node.args) > 1 else None
        )
        if isinstance(sizes, (list, tuple)):
            return len(sizes)
    return _MAX_STATIC_PIECES


_MAX_STATIC_PIECES = 64  # static mode: unbind pieces indexed by a constant below this


def alias_map(gm: fx.GraphModule, values: dict | None) -> dict[fx.Node, Alias]:
    """Map every node to its root and view chain; exact when `values` are known."""
    aliases = _Aliases(gm, values)
    for node in gm.graph.nodes:
        aliases.add(node)
    return aliases.of


class _Aliases:
    """alias_map's answer, built in graph order: each node's alias from its inputs' aliases."""

    def __init__(self, gm: fx.GraphModule, values: dict | None) -> None:
        self.gm, self.values = gm, values
        self.of: dict[fx.Node, Alias] = {}
        # The aliases of each output of an unbind/split/chunk call (or a slice of them),
        # by the node holding them; None where one cannot be told.
        self.pieces: dict[fx.Node, list[Alias | None]] = {}

    def get(self, node: fx.Node) -> Alias:
        return self.of.get(node, Alias(node))

    def add(self, node: fx.Node) -> None:
        target = writes_to(node, self.gm)
        if target is not None and not (
            node.op == "call_function" and node.target in (operator.setitem, builtins.setattr)
        ):
            self.of[node] = self.get(target)  # an in-place op returns its target
            return
        op = _view_kind(node)
        if op is not None:
            self.of[node] = _ALIAS_RULES[op](self, node)
        elif self.values is not None:
            self.of[node] = _opaque_alias(node, self.values, self.of)
        else:
            self.of[node] = Alias(node)

    def view(self, node: fx.Node, kind: StepKind) -> Alias:
        """`node` as one more step on its base's chain, unless the observed run shows a copy."""
        base = node.args[0]
        if not isinstance(base, fx.Node):  # a view of no graph value: nothing to alias
            return Alias(node)
        parent = self.get(base)
        if self.values is not None:
            v, b = self.values.get(node), self.values.get(base)
            if not isinstance(v, torch.Tensor) or not isinstance(b, torch.Tensor):
                return Alias(node)
            if v is b:
                return parent  # the op returned its input itself
            if storage_of(v) is None or storage_of(v) != storage_of(b):
                return Alias(node)  # it copied
            if kind is StepKind.MAYBE:
                kind = StepKind.VIEW
        return Alias(parent.root, parent.steps + (_step_of(node, kind),))

    def getitem(self, node: fx.Node) -> Alias:
        """`x[i]`: one output of a multi-view call, a view, or a copy (advanced indexing)."""
        base, index = node.args[0], node.args[1]
        if isinstance(base, fx.Node) and base in self.pieces:
            return self._piece(node, self.pieces[base], index)
        basic = _basic_index(index)
        if basic is False:
            return Alias(node)
        return self.view(node, StepKind.VIEW if basic else StepKind.MAYBE)

    def _piece(self, node: fx.Node, pieces: list[Alias | None], index: Any) -> Alias:
        if isinstance(index, int) and 0 <= index < len(pieces):
            piece = pieces[index]
            return piece if piece is not None else Alias(node)
        if isinstance(index, int) and -len(pieces) <= index < 0:
            # `pieces[-1]`: the last piece of *this* call, whose position moves with the
            # input's size, so its step keeps the negative index as written.
            piece = pieces[index]
            if piece is None or not piece.steps or piece.steps[-1].index is None:
                return Alias(node)
            last = dataclasses.replace(piece.steps[-1], index=index)
            return Alias(piece.root, piece.steps[:-1] + (last,))
        if isinstance(index, slice):
            self.pieces[node] = pieces[index]
        return Alias(node)

    def multi(self, node: fx.Node) -> Alias:
        """unbind/split/chunk: the node holds several views, aliased one by one at getitem."""
        base = node.args[0]
        if not isinstance(base, fx.Node):
            return Alias(node)
        parent = self.get(base)
        values = self.values
        steps = _multi_steps(node, values)
        n = len(steps) if steps else (len(values[node]) if values and node in values else 0)
        opaque = Step("call_method", "?", (), kind=StepKind.OPAQUE)
        self.pieces[node] = [
            Alias(parent.root, parent.steps + ((steps[i],) if steps else (opaque,)))
            for i in range(n)
        ]
        return Alias(node)


# How each kind of view op extends its base's alias chain.
_ALIAS_RULES: dict[ViewOp, Callable[[_Aliases, fx.Node], Alias]] = {
    ViewOp.VIEW: lambda aliases, node: aliases.view(node, StepKind.VIEW),
    ViewOp.MAYBE: lambda aliases, node: aliases.view(node, StepKind.MAYBE),
    ViewOp.DATA: lambda aliases, node: aliases.view(node, StepKind.DATA),
    ViewOp.GETITEM: _Aliases.getitem,
    ViewOp.MULTI: _Aliases.multi,
}


def _opaque_alias(node: fx.Node, values: dict, aliases: dict) -> Alias:
    """A node that is no known view op but shares memory with an input (exact mode)."""
    v = values.get(node)
    if not isinstance(v, torch.Tensor) or node.op in ("placeholder", "get_attr"):
        return Alias(node)
    for a in node.all_input_nodes:
        av = values.get(a)
        if av is v:
            return aliases.get(a, Alias(a))
        if (
            isinstance(av, torch.Tensor)
            and storage_of(av) is not None
            and storage_of(av) == storage_of(v)
        ):
            parent = aliases.get(a, Alias(a))
            return Alias(
                parent.root, parent.steps + (Step(node.op, node.target, (), kind=StepKind.OPAQUE),)
            )
    return Alias(node)
