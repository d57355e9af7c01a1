"""Exact mode: the unsafe writes as the observed run shows them.

With example inputs the graph has been run once while watching what autograd saves and
refuses, storages and version counters; a write is reported only when that run shows it
makes eager autograd fail or go silently wrong.
"""

from __future__ import annotations

import builtins
import operator
import re
from collections.abc import Callable

import torch
from torch import fx

from fxgrad.graph_utils import writes_to
from fxgrad.observe import Observation
from fxgrad.passes.inplace_op.aliases import StepKind, alias_map
from fxgrad.passes.inplace_op.findings import (
    _LEAF_WRITE,
    Finding,
    FindingKind,
    _at,
    _leaf_text,
    _q,
    _saver_text,
    _Site,
)
from fxgrad.passes.inplace_op.views import _fn_name
from fxgrad.state import storage_of


def _multi_views_by_root(aliases: dict) -> dict[fx.Node, list[fx.Node]]:
    """Nodes that are pieces of unbind/split/chunk outputs, grouped by the memory they view."""
    out: dict[fx.Node, list[fx.Node]] = {}
    for x, a in aliases.items():
        if a.has(StepKind.MULTI):
            out.setdefault(a.root, []).append(x)
    return out


def _stale_multi_views(
    w: fx.Node, pieces: list[fx.Node], obs: Observation, order: dict
) -> fx.Node | None:
    """The unbind/split/chunk node whose outputs, read after `w`, alias what `w` writes."""
    pos = order[w]
    for x in pieces:
        if order.get(x, pos) >= pos or x is w:
            continue
        v = obs.values.get(x)
        if not (isinstance(v, torch.Tensor) and v.requires_grad):
            continue
        if any(order.get(u, -1) > pos for u in x.users):
            src = x.args[0] if x.args and isinstance(x.args[0], fx.Node) else x
            while (
                src.op == "call_function"
                and src.target is operator.getitem
                and isinstance(src.args[0], fx.Node)
            ):
                src = src.args[0]
            return src
    return None


_VIEW_REFUSED = "is a view|view was created"


# How autograd's refusal of a write reads as a finding: the patterns that must all occur in
# its message (first match wins) -> the kind, and the reason from the write's text and its
# root. A message none matches is no autograd refusal: eager fails the same way, and the
# write is not reported.
_REFUSED: dict[tuple[str, ...], tuple[FindingKind, Callable[[str, fx.Node], str]]] = {
    ("leaf Variable", "view of a leaf"): (
        FindingKind.LEAF,
        lambda wt, root: f"{wt} writes into a view of {_leaf_text(root)}, {_LEAF_WRITE}",
    ),
    ("leaf Variable",): (
        FindingKind.LEAF,
        lambda wt, root: f"{wt} writes into {_leaf_text(root)}, {_LEAF_WRITE}",
    ),
    ("out=",): (
        FindingKind.LEAF,
        lambda wt, _root: (
            f"{wt} writes through `out=` while an argument requires grad, "
            "which autograd does not support"
        ),
    ),
    ("more than one element",): (
        FindingKind.VIEW,
        lambda wt, _root: f"{wt} writes into an expanded tensor whose elements overlap",
    ),
    (_VIEW_REFUSED, "multiple"): (
        FindingKind.VIEW,
        lambda wt, _root: (
            f"{wt} writes into an output of a function that returns several "
            "views (`unbind`/`split`/`chunk`)"
        ),
    ),
    (_VIEW_REFUSED, "no grad|no_grad"): (
        FindingKind.VIEW,
        lambda wt, _root: f"{wt} writes into a view created in no_grad mode",
    ),
    (_VIEW_REFUSED,): (
        FindingKind.VIEW,
        lambda wt, _root: f"{wt} writes into a view autograd refuses to write through",
    ),
}


def exact_findings(gm: fx.GraphModule, obs: Observation) -> tuple[list[Finding], dict]:
    aliases = alias_map(gm, obs.values)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    pieces = _multi_views_by_root(aliases)
    out: list[Finding] = []
    for w in gm.graph.nodes:
        if w not in obs.bumped:
            continue
        target = writes_to(w, gm)
        if target is None or not isinstance(obs.values.get(target), torch.Tensor):
            continue  # `n += 1` on a Python number
        site = _Site.of(w, target, aliases, obs.grad_on.get(w, True))
        finding = _exact_finding(site, obs, pieces.get(site.root, []), order)
        if finding is not None:
            out.append(finding)
    return out, aliases


def _exact_finding(
    site: _Site, obs: Observation, pieces: list[fx.Node], order: dict
) -> Finding | None:
    """Why the write makes eager autograd fail or go wrong on the observed run; None if safe."""
    if site.write in obs.refused:
        return _refused(site, obs.refused[site.write])
    rv = obs.values.get(site.root)
    leafish = site.root.op in ("placeholder", "get_attr")
    rg = isinstance(rv, torch.Tensor) and rv.requires_grad
    state = leafish and not (rg and site.grad_on)
    if site.through_data:
        return _exact_data(site, obs, state=state, leafish=leafish)
    stale = _stale_multi_views(site.write, pieces, obs, order)
    if stale is not None and site.grad_on:
        why = (
            f"{site.text} writes into memory that {_q(_fn_name(stale) or stale.name)}"
            f"{_at(stale)} split into several views, and those views are read after the "
            "write, which autograd refuses"
        )
        return site.finding(FindingKind.VIEW, why, state=state)
    return _exact_saved(site, obs, state=state, no_grad_write=not site.grad_on and rg)


def _refused(site: _Site, message: str) -> Finding | None:
    """The finding for a write autograd refused, told apart by the refusal's message."""
    for patterns, (kind, why) in _REFUSED.items():
        if all(re.search(p, message) for p in patterns):
            return site.finding(kind, why(site.text, site.root), state=False)
    return None  # not an autograd refusal; eager fails the same way


def _exact_data(site: _Site, obs: Observation, *, state: bool, leafish: bool) -> Finding:
    """A write through `.data`: wrong gradients if it overwrites what backward unpacks."""
    w = site.write
    first = obs.saved_before.get(w, 0)
    written = site.target if w.target is not builtins.setattr else w.args[0]
    tv = obs.values.get(written) if isinstance(written, fx.Node) else None
    clobbered = [
        i for i in range(first) if i in obs.needed and obs.saved[i].storage == storage_of(tv)
    ] + [i for i in obs.bumped[w] if i in obs.needed]
    # A save is always made while a node runs, so its node is known (None only types the
    # recorder's state before the first node).
    savers = [
        (s.node, s.role, s.arg) for s in (obs.saved[i] for i in clobbered) if s.node is not None
    ]
    if not savers:
        why = (
            f"{site.text} writes through `.data`: autograd does not see this write, so "
            "gradients treat the tensor as unchanged; nothing backward needs is overwritten"
        )
        return site.finding(FindingKind.DATA_SAFE, why, state=state)
    why = (
        f"{_saver_text(*savers[0])}; {site.text} overwrites it through `.data`, so its "
        "gradient is silently wrong"
    )
    # Writing a parameter or buffer through `.data` (weight clipping, a manual update) is
    # meant to change it: the write stays, the saver gets a copy.
    return site.finding(FindingKind.DATA, why, savers, state=state or leafish)


def _exact_saved(
    site: _Site, obs: Observation, *, state: bool, no_grad_write: bool
) -> Finding | None:
    """A write that bumps a saved value backward unpacks."""
    hit = [i for i in obs.bumped[site.write] if i in obs.needed]
    if not hit:
        return None  # nothing backward unpacks was changed: eager is right and saves memory
    savers: list[tuple[fx.Node, str, fx.Node | None]] = []
    for i in hit:
        s = obs.saved[i]
        if s.node is None:  # never: a save is made while a node runs
            continue
        key = (s.node, s.role, s.arg)
        if key not in savers:
            savers.append(key)
    why = f"{_saver_text(*savers[0])}; {site.text} overwrites it"
    if len(savers) > 1:
        why += f" (and {len(savers) - 1} more saved value{'s' if len(savers) > 2 else ''})"
    return site.finding(FindingKind.SAVED, why, savers, state=state, no_grad_write=no_grad_write)
