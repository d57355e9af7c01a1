"""Sites: the cats whose rewrite may pay, and what deciding each depends on.

A cat is a site when the observed run reached it, some input is not contiguous, enough
elements are read through strides, and its readers allow at least one candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxgrad.passes.noncontiguous_cat_input.consumers import VIEW_DEPTH, Consumer, _readers_timed
from fxgrad.passes.noncontiguous_cat_input.cost import Variant
from fxgrad.passes.noncontiguous_cat_input.downstream import readers
from fxgrad.passes.noncontiguous_cat_input.layout import Layout, Observed, Permuted, common_order

MIN_ELEMENTS = 1 << 16
"""Sites whose non-contiguous inputs hold fewer elements in all are not timed.

Measured on a CPU (benchmarks/fxg201.py, in benchmarks/RESULTS.md): at 1e4 elements both
candidates were 1.1-1.4x slower than the plain cat, forward+backward with the op reading
it, for every layout tried (the extra op costs 5-20 us, more than strided reads lose);
from 1e5 either could win (the permuted cat down to 0.34x at 1e6 for transposed matrices
read by `relu`) or lose (`.contiguous()` of channels_last maps up to 3.4x). On a GPU small
cats are bound by kernel launches, which both candidates add.
"""

CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate, torch.stack)


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


def cat_inputs(node: fx.Node) -> list[fx.Node]:
    """The tensors a cat that `is_cat` accepts joins: the nodes of its first argument."""
    tensors = node.args[0]
    assert isinstance(tensors, (list, tuple)), node.format_node()
    nodes = [t for t in tensors if isinstance(t, fx.Node)]
    assert len(nodes) == len(tensors), node.format_node()
    return nodes


def _dim(node: fx.Node, seen: Observed) -> Any:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", node.kwargs.get("axis", 0))
    if isinstance(dim, fx.Node):
        dim = seen.values.get(dim)
    return dim


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

    @property
    def function(self) -> Callable[..., torch.Tensor]:
        """The cat or stack it calls, one of CAT_FUNCTIONS."""
        target = self.node.target
        assert callable(target), self.node.format_node()
        return target


SMALL = "small"  # _site's answer for a cat too small to time


def _site(gm: fx.GraphModule, node: fx.Node, seen: Observed) -> Site | str | None:
    """The site to decide; a reason string when the analysis alone leaves it as is."""
    tensors = cat_inputs(node)
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
    keep |= {d for c in cats for d in c.all_input_nodes if d not in cat_inputs(c)}  # a traced dim
    return keep
