"""Static findings: the unsafe writes from the graph alone, conservatively.

Without example inputs, what ops save comes from the table in `saves`, and a write is
reported whenever it may be unsafe; one that only example inputs could settle says so.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from fxgrad import ops
from fxgrad.graph_utils import writes_to
from fxgrad.passes.inplace_op.aliases import Alias, StepKind, alias_map
from fxgrad.passes.inplace_op.findings import (
    _LEAF_WRITE,
    Finding,
    FindingKind,
    _leaf_text,
    _q,
    _saver_text,
    _Site,
)
from fxgrad.passes.inplace_op.saves import StaticFacts, _static_facts, _static_saves


def _made_under_no_grad(target: fx.Node, root: fx.Node, facts: StaticFacts) -> bool:
    """Whether a view between root and target was taken with grad mode off."""
    n: Any = target
    while isinstance(n, fx.Node) and n is not root:
        if not facts.grad_on.get(n, True):
            return True
        n = n.args[0] if n.args else None
    return False


# An op that may have saved a value, before a write: (op, role, arg, root of the value).
_Saved = tuple[fx.Node, str, fx.Node | None, fx.Node]


@dataclass(frozen=True)
class _StaticSite(_Site):
    """A write without example inputs, with the ops before it that may have saved its memory."""

    hit: tuple[_Saved, ...] = ()
    facts: StaticFacts = field(default_factory=StaticFacts)

    @property
    def savers(self) -> list[tuple[fx.Node, str, fx.Node | None]]:
        return [h[:3] for h in self.hit]

    @property
    def saver_text(self) -> str:
        return _saver_text(*self.hit[0][:3])

    @property
    def into_param(self) -> bool:
        return self.root.op == "get_attr" and self.facts.requires_grad.get(self.root, False)


def _static_data(s: _StaticSite) -> Finding:
    if s.hit:
        why = (
            f"{s.saver_text}; {s.text} may overwrite it through `.data`, so its gradient "
            "would be silently wrong"
        )
        state = s.root.op in ("placeholder", "get_attr")
        return s.finding(FindingKind.DATA, why, s.savers, state=state)
    why = (
        f"{s.text} writes through `.data`: autograd does not see this write, so gradients "
        "treat the tensor as unchanged"
    )
    return s.finding(FindingKind.DATA_SAFE, why)


def _static_input(s: _StaticSite) -> Finding:
    why = f"{s.text} writes into {_leaf_text(s.root)}: unsafe if it requires grad"
    if s.hit:
        why = f"{s.saver_text}; {s.text} overwrites it"
    return s.finding(FindingKind.INPUT_STATIC, why)


# Without example inputs, the first rule whose test holds decides a write: (test, finding).
_STATIC_RULES: tuple[
    tuple[Callable[[_StaticSite], bool], Callable[[_StaticSite], Finding]], ...
] = (
    (lambda s: s.through_data, _static_data),
    (
        lambda s: s.into_param and s.grad_on,
        lambda s: s.finding(
            FindingKind.LEAF, f"{s.text} writes into {_leaf_text(s.root)}, {_LEAF_WRITE}"
        ),
    ),
    (lambda s: s.root.op == "placeholder" and (bool(s.hit) or s.grad_on), _static_input),
    (
        lambda s: s.grad_on and _made_under_no_grad(s.target, s.root, s.facts),
        lambda s: s.finding(
            FindingKind.INPUT_STATIC,
            f"{s.text} writes into a view made under no_grad: eager refuses it if "
            f"{_q(s.root.name)} requires grad",
        ),
    ),
    (
        # Eager refuses a write into overlapping elements, in any grad mode; whether this
        # expand overlaps depends on sizes only example inputs show.
        lambda s: s.alias.has(StepKind.EXPAND),
        lambda s: s.finding(
            FindingKind.INPUT_STATIC,
            f"{s.text} writes into an expanded tensor: eager refuses it if elements overlap",
        ),
    ),
    (
        lambda s: (
            s.alias.has(StepKind.MULTI) and s.grad_on and s.facts.requires_grad.get(s.root, True)
        ),
        lambda s: s.finding(
            FindingKind.VIEW,
            f"{s.text} writes into an output of a function that returns several views "
            "(`unbind`/`split`/`chunk`)",
        ),
    ),
    (
        lambda s: bool(s.hit) and s.grad_on,
        lambda s: s.finding(
            FindingKind.SAVED,
            f"{s.saver_text}; {s.text} overwrites it",
            s.savers,
            state=s.root.op == "get_attr",
        ),
    ),
)


def static_findings(gm: fx.GraphModule) -> tuple[list[Finding], dict]:
    aliases = alias_map(gm, None)
    facts = _static_facts(gm)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    out: list[Finding] = []
    saves: dict[fx.Node, list[_Saved]] = {}  # by root
    for w in gm.graph.nodes:
        target = writes_to(w, gm)
        if target is not None and _maybe_tensor(target):
            root = aliases.get(target, Alias(target)).root
            hit = tuple(s for s in saves.get(root, ()) if order[s[0]] < order[w])
            site = _StaticSite.of(w, target, aliases, facts.grad_on[w], hit=hit, facts=facts)
            finding = _static_finding(site)
            if finding is not None:
                out.append(finding)
        if facts.requires_grad.get(w, False):
            _note_static_saves(gm, w, aliases, saves)
    return out, aliases


def _static_finding(s: _StaticSite) -> Finding | None:
    for applies, finding in _STATIC_RULES:
        if applies(s):
            return finding(s)
    return None


def _note_static_saves(
    gm: fx.GraphModule, w: fx.Node, aliases: dict, saves: dict[fx.Node, list[_Saved]]
) -> None:
    """Record, by the root of its memory, each value `w` may save for backward."""
    for role, arg in _static_saves(w, gm):
        node = w if role == "output" else arg
        if node is None or not _maybe_tensor(node):
            continue
        root = aliases.get(node, Alias(node)).root
        saves.setdefault(root, []).append((w, role, arg, root))


def _maybe_tensor(node: fx.Node) -> bool:
    """False for nodes that certainly hold Python numbers (sizes and arithmetic on them)."""
    if node.op in ("call_method", "call_function") and not ops.returns_tensor(node.target):
        return False  # `x.size()`, `x.item()`: the schema returns no tensor
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] not in ("shape", "ndim", "dtype", "device")
    if node.op == "call_function" and node.target in (builtins.len, operator.getitem):
        base = node.args[0]
        if isinstance(base, fx.Node) and not _maybe_tensor(base):
            return False
    return True
