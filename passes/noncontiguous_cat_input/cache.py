"""Deciding each site: from the decision cache, or timed now and then kept there.

Identical sites are decided once; a cached decision applies only to the device, torch
version and timer it was measured with, and a record that does not fit is measured again.
"""

from __future__ import annotations

from torch import fx

from fxgrad.context import Context, default_measure
from fxgrad.decision_cache import DecisionCache, device_key, digest
from fxgrad.passes.noncontiguous_cat_input.cost import KEPT_UNMEASURED, Decision, Variant
from fxgrad.passes.noncontiguous_cat_input.layout import Observed
from fxgrad.passes.noncontiguous_cat_input.sites import Site
from fxgrad.passes.noncontiguous_cat_input.timing import _budget, _measure_site

SITE_TEXT_MAX = 200
"""A cached record's description of its site is cut to this many characters."""

CACHE_NAMESPACE = "fxg201"
CACHE_FORMAT = 2  # part of every key: bump when what is timed or decided changes
# 2: a site the budget left unmeasured is no longer kept (format 1 kept it for good)


def _timer_tag(ctx: Context) -> str:
    if ctx.measure is default_measure:
        return "torch.utils.benchmark"
    m = ctx.measure
    return f"injected {getattr(m, '__module__', '')}.{getattr(m, '__qualname__', type(m).__name__)}"


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
