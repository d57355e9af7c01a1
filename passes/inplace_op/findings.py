"""Findings: which writes are unsafe and why, and how a report names them.

Both ways of deciding (`exact` on an observed run, `static` from the graph alone) describe
a write as a `_Site` and answer with a `Finding`, which the rewrites then act on.
"""

from __future__ import annotations

import builtins
import enum
import operator
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from fxgrad.graph_utils import location, render_node, source_line
from fxgrad.passes.inplace_op.aliases import Alias, StepKind


class FindingKind(enum.Enum):
    """Why a write is reported."""

    SAVED = "saved"  # it overwrites a value an op saved for backward
    LEAF = "leaf"  # it writes into a leaf that requires grad, or through `out=` into one
    VIEW = "view"  # it writes into a view autograd refuses to write through
    DATA = "data"  # through `.data`, it overwrites a value backward needs
    DATA_SAFE = "data-safe"  # through `.data`, overwriting nothing backward needs
    INPUT_STATIC = "input-static"  # without example inputs: unsafe if an input requires grad


@dataclass
class Finding:
    write: fx.Node
    target: fx.Node
    kind: FindingKind
    reason: str
    savers: list[tuple[fx.Node, str, fx.Node | None]] = field(default_factory=list)
    state: bool = False  # the written memory is state a caller observes
    no_grad_write: bool = False


def _q(text: str) -> str:
    return f"`{text}`"


def _at(node: fx.Node) -> str:
    loc = location(node)
    return f" at {loc}" if loc else ""


def _write_text(node: fx.Node) -> str:
    return source_line(node) or render_node(node)


def _op_text(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"self.{node.target}"
    if node.op == "call_method":
        return str(node.target)
    if node.target in (operator.mul, operator.imul):
        return "*"
    return getattr(node.target, "__name__", render_node(node))


def _saver_text(saver: fx.Node, role: str, arg: fx.Node | None) -> str:
    what = (
        "its output"
        if role == "output"
        else (
            f"its input {_q(arg.name)}"
            if arg is not None
            else "a tensor sharing the written memory"
        )
    )
    return f"{_q(_op_text(saver))}{_at(saver)} saved {what}"


def _leaf_text(root: fx.Node) -> str:
    if root.op == "get_attr":
        return f"parameter {_q('self.' + str(root.target))}"
    return f"input {_q(str(root.target))}"


_LEAF_WRITE = "a leaf that requires grad, while grad mode is on"


@dataclass(frozen=True)
class _Site:
    """One in-place write, with what every decision about it reads."""

    write: fx.Node
    target: fx.Node
    alias: Alias  # of the written tensor
    grad_on: bool  # grad mode at the write
    text: str  # "`h.mul_(2)` at model.py:3"

    @classmethod
    def of(cls, w: fx.Node, target: fx.Node, aliases: dict, grad_on: bool, **more: Any) -> Any:
        alias = aliases.get(target, Alias(target))
        return cls(w, target, alias, grad_on, f"{_q(_write_text(w))}{_at(w)}", **more)

    @property
    def root(self) -> fx.Node:
        return self.alias.root

    @property
    def through_data(self) -> bool:
        """Whether it writes through `.data` (a view of it, or `x.data = ...`)."""
        return self.alias.has(StepKind.DATA) or self.write.target is builtins.setattr

    def finding(self, kind: FindingKind, why: str, *args: Any, **kwargs: Any) -> Finding:
        return Finding(self.write, self.target, kind, why, *args, **kwargs)
