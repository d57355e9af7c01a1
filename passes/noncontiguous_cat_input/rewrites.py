"""Rewriting a site as decided, and how a cat reads in the report before and after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import fx

from fxgrad.graph_utils import as_primary, source_list_items, target_name
from fxgrad.passes.noncontiguous_cat_input.cost import Variant
from fxgrad.passes.noncontiguous_cat_input.sites import Site, cat_inputs


def render(node: fx.Node, decision: Variant = Variant.ORIGINAL, site: Site | None = None) -> str:
    """`torch.cat([a, b], dim=1)` as written, or as the chosen variant would read."""
    tensors = cat_inputs(node)
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
    if isinstance(node.args[0], list) or decision is Variant.PERMUTED:
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
    tensors = cat_inputs(node)
    replacement: dict[fx.Node, fx.Node] = {}
    with graph.inserting_before(node):
        for i in sorted(site.candidates):
            t = tensors[i]
            if t not in replacement:
                replacement[t] = c = graph.call_method("contiguous", (t,))
                _copy_loc(node, c)
    new = [replacement.get(t, t) for t in tensors]
    node.args = (new if isinstance(node.args[0], list) else tuple(new), *node.args[1:])


def _make_permuted(graph: fx.Graph, site: Site) -> None:
    node, permuted = site.node, site.permuted
    assert permuted is not None
    tensors = cat_inputs(node)
    views: dict[fx.Node, fx.Node] = {}
    with graph.inserting_before(node):
        for t in tensors:
            if t not in views:
                views[t] = v = graph.call_method("permute", (t, *permuted.order))
                _copy_loc(node, v)
    node.args = ([views[t] for t in tensors], permuted.inner_dim)
    node.kwargs = {}
    with graph.inserting_after(node):
        out = graph.call_method("permute", (node, *permuted.outer))
    _copy_loc(node, out)
    node.replace_all_uses_with(out, delete_user_cb=lambda user: user is not out)


REWRITES: dict[Variant, Callable[[fx.Graph, Site], None]] = {
    Variant.CONTIGUOUS: _make_contiguous,
    Variant.PERMUTED: _make_permuted,
}
