"""The pass: find the sites, decide each, rewrite those that pay, report every one.

Every cat the analysis leaves as is is reported with the reason, every decided site with
its times, and small ones in one line, all in graph order.
"""

from __future__ import annotations

from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context
from fxgrad.graph_utils import location
from fxgrad.passes.noncontiguous_cat_input.cache import _decide
from fxgrad.passes.noncontiguous_cat_input.cost import Decision, Variant
from fxgrad.passes.noncontiguous_cat_input.layout import Observed, observe
from fxgrad.passes.noncontiguous_cat_input.rewrites import REWRITES, render
from fxgrad.passes.noncontiguous_cat_input.sites import (
    MIN_ELEMENTS,
    SMALL,
    Site,
    _site,
    _values_to_keep,
    is_cat,
)


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
