"""Timing: each variant of a site, forward and backward, in interleaved rounds.

All timing for one graph shares a budget of about one forward and backward of the model;
a site that cannot be timed within what is left of it is not timed.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from fxgrad.context import Context
from fxgrad.passes.noncontiguous_cat_input.consumers import Consumer
from fxgrad.passes.noncontiguous_cat_input.cost import REPLAY_FAILS, Decision, Variant, _ms, decide
from fxgrad.passes.noncontiguous_cat_input.layout import Observed
from fxgrad.passes.noncontiguous_cat_input.sites import Site

ROUNDS = 5
"""Interleaved rounds: each round times every variant once, in alternating order.

The decision compares per-variant medians over the rounds, so one disturbed sample (a
burst of other work on the machine) can neither cause a rewrite nor prevent one.
"""

MIN_ROUNDS = 3
"""When the budget runs out after this many complete rounds, the medians so far decide."""

BUDGET_STEPS = 1.0
"""All timing for one graph stays within this many forward+backward runs of the model."""

BUDGET_FLOOR_S = 0.05
"""...but at least this many seconds: small against fix()'s own fixed cost."""

SAMPLE_S = 1e-3
"""With fix()'s default timer one sample is as many calls as take about this long."""


def _bench(site: Site, consumers: list[Consumer]) -> tuple[dict[Variant, Callable[[], Any]], str]:
    """Each variant as a call on fresh tensors of the site's layouts, forward and backward."""
    tensors = [lay.fresh() for lay in site.layouts]
    leaves = [t for t in tensors if t.requires_grad] + [x for c in consumers for x in c.leaves]
    grad = bool(leaves)
    # Cotangents are fixed up front so every variant does the same backward work.
    cotangents: list[torch.Tensor] | None = None
    target = site.function

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
    calls: dict[Variant, Callable[[], Any]] = {v: functools.partial(step, v) for v in site.variants}
    return calls, f"{names} {'fwd+bwd' if grad else 'fwd'}"


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
