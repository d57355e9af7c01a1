"""The pass's entry point: record the example run, find the detours, translate each in
program order, rewrite each exit whose whole upstream translated and report the others
with the call where the gradient still stops, then erase what the rewrite left unused.
"""

from __future__ import annotations

import builtins
import dataclasses
import operator

import torch
from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context
from fxgrad.graph_utils import closure, has_side_effect, location, render_node, writes_to
from fxgrad.passes.numpy_round_trip import dynamo
from fxgrad.passes.numpy_round_trip.aliasing import _Layout, _layout
from fxgrad.passes.numpy_round_trip.detours import (
    _Detours,
    _entry_nodes,
    _find_detours,
    _report_static,
)
from fxgrad.passes.numpy_round_trip.emitter import _Emitter
from fxgrad.passes.numpy_round_trip.helpers import (
    CODE,
    _entry_source,
    _is_meta_use,
    _is_numpy_call,
    _Unmapped,
)
from fxgrad.passes.numpy_round_trip.memory import _Memory
from fxgrad.passes.numpy_round_trip.recording import _record, _Run
from fxgrad.passes.numpy_round_trip.render import (
    _render_after,
    _render_call_name,
    _source_text,
    _with_sizes,
)
from fxgrad.passes.numpy_round_trip.translate import _check_same, _translate_exit, _translate_meta


def run(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    try:
        import numpy as np  # noqa: F401
    except ImportError:  # without NumPy no graph can hold a NumPy call
        return []
    if dynamo.has_wrapped_numpy(gm):  # a graph Dynamo captured: its NumPy is torch's
        return dynamo.run(gm)
    if not any(_is_numpy_call(n) for n in gm.graph.nodes):
        return []
    seen = _record(gm, ctx) if ctx.example_inputs is not None else None
    if seen is None:
        return _report_static(gm)
    return _translate_all(gm, _find_detours(gm, seen.values), seen)


def _translate_all(gm: fx.GraphModule, d: _Detours, seen: _Run) -> list[Change]:
    """Translate a detour in program order; rewrite each exit whose whole upstream translated."""
    values = seen.values
    lay = _layout(gm, d, seen)
    e = _Emitter(gm, dict(values))
    mem = _Memory(lay, e, seen, d.entries)
    exits = set(d.exits)
    # Every region node each exit depends on, through reads and the writes before them.
    ups = {x: closure(lay.deps.get(x, ()), lambda n: lay.deps.get(n, ())) for x in d.exits}
    before = {x: _source_text(x, ups[x] | _entry_nodes(ups[x] & d.entries)) for x in d.exits}
    finals: dict[fx.Node, fx.Node] = {}
    reasons: dict[fx.Node, _Unmapped] = {}
    pending: list[fx.Node] = []  # arrays no traced tensor flows into yet: made where one does
    for n in sorted(set(d.region) | exits, key=lay.pos.__getitem__):
        if n not in lay.traced:
            if n not in exits:  # an exit of constants only is no detour
                pending.append(n)
            continue
        if pending and e.anchor is not None and n not in d.entries:
            for p in pending:
                mem.step(p, at=n)
            pending = []
        if n not in exits:
            mem.step(n)
            continue
        entries = [a for a in d.region if a in ups[n] and a in d.entries]
        reason = mem.blocked(n) or _refusal(gm, n, ups[n], entries, values) or _shared_exit(n, lay)
        if reason is None:
            e.at, mark, saved = n, len(e.created), mem.snapshot()
            try:
                final = _translate_exit(e, n, mem.inputs(n), entries, values)
                _check_same(e.env[final], values[n], n)
                finals[n] = final
            except _Unmapped as err:
                err.node = err.node or n
                reason = err
                mem.undo(mark, saved)
        if reason is not None:
            reasons[n] = reason
    reported = [x for x in d.exits if x in finals or x in reasons]
    changes = [_change(x, before[x], finals, reasons, ups[x], d, seen) for x in reported]
    applied: set[fx.Node] = set()
    for x, final in finals.items():
        x.replace_all_uses_with(final)
        applied |= ups[x]
    _read_sizes_from_tensors(gm, d, mem, applied)
    shown = _with_sizes(set(e.created))
    changes = [
        dataclasses.replace(c, after=_render_after(finals[x], shown)) if c.applied else c
        for c, x in zip(changes, reported)
    ]
    _erase_dead(gm, d, lay, e, set(finals))
    return changes


def _shared_exit(x: fx.Node, lay: _Layout) -> _Unmapped | None:
    """`torch.from_numpy(b)` shares b's memory: a NumPy write into it later reaches the tensor."""
    if x.target is torch.tensor:
        return None  # copies
    data = x.args[0] if x.args else x.kwargs.get("data", x.kwargs.get("obj"))
    if not isinstance(data, fx.Node) or data not in lay.root:
        return None
    at = lay.pos[x]
    later = lay.writes_into(lay.linked(lay.root[data], len(lay.pos)), at, len(lay.pos))
    if later:
        return _Unmapped(
            f"the tensor shares the array's memory, and {_render_call_name(later[0])} "
            "writes into it afterwards",
            later[0],
        )
    return None


def _change(
    x: fx.Node,
    before: str,
    finals: dict,
    reasons: dict,
    up: set[fx.Node],
    d: _Detours,
    seen: _Run,
) -> Change:
    if x not in finals:
        reason = reasons[x]
        at = reason.node if reason.node is not None else x
        return Change(
            code=CODE,
            node=x.name,
            before=before,
            after="",
            where=location(at) or location(x),
            note=f"the gradient still stops at {_render_call_name(at)}: {reason}",
            applied=False,
        )
    entries = [a for a in d.region if a in up and a in d.entries]
    note = "gradients reach " + ", ".join(sorted({_entry_source(n)[0].name for n in entries}))
    note += " again"
    if x in seen.raised:
        err = seen.raised[x]
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        note += (
            f"; eager raises {type(err).__name__} here ({first.split(',')[0]}), "
            "the translation computes the values the code asks for"
        )
    return Change(
        code=CODE,
        node=x.name,
        before=before,
        after="",
        where=location(x) or location(entries[0]),
        note=note,
    )


def _read_sizes_from_tensors(
    gm: fx.GraphModule, d: _Detours, mem: _Memory, applied: set[fx.Node]
) -> None:
    """Sizes read from translated arrays (`a.shape[0]`, len() guards) now read the tensors."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in d.region:
        t = mem.first.get(n)
        if n not in applied or t is None:
            continue
        for u in list(n.users):
            # A source array made where it first met traced data is defined after its own
            # line: a size read before that keeps reading the NumPy array.
            if not _is_meta_use(u, n) or order[t] > order[u]:
                continue
            if u.target is builtins.getattr:
                mem.e.at = u
                u.replace_all_uses_with(_translate_meta(mem.e, u, t))
                gm.graph.erase_node(u)
            else:
                u.replace_input_with(n, t)


def _erase_dead(
    gm: fx.GraphModule, d: _Detours, lay: _Layout, e: _Emitter, applied_exits: set[fx.Node]
) -> None:
    """Erase what the rewrite left unused; NumPy writes go only with the whole detour."""
    graph = gm.graph
    region = set(d.region)
    done = _finished_components(d, lay, applied_exits)
    created = set(e.created)
    removable = region | set(d.exits) | created | _entry_nodes(d.entries)
    for node in reversed(list(graph.nodes)):
        if node.users:
            continue
        if node in lay.writes:
            if node not in done:
                continue  # NumPy still runs here: its writes stay
        elif node in created and node.target is operator.setitem:
            base = node.args[0]
            if any(u is not node and u.target is not operator.setitem for u in base.users):
                continue  # a translated write into a clone that is read
        elif has_side_effect(node, gm):
            continue
        if node in removable or (
            node.op == "call_function"
            and node.target is builtins.getattr
            and node.args[0] in removable
        ):
            graph.erase_node(node)


def _inside(u: fx.Node, members: set[fx.Node]) -> bool:
    """A use within the detour: a member, or an attribute (`a.dtype`) only members read."""
    if u in members:
        return True
    return u.target is builtins.getattr and all(v in members for v in u.users)


def _finished_components(d: _Detours, lay: _Layout, applied_exits: set[fx.Node]) -> set[fx.Node]:
    """Nodes of detours whose every exit was rewritten and whose values nothing else reads."""
    region = set(d.region)
    members = region | set(d.exits)
    left = set(members)
    done: set[fx.Node] = set()
    while left:
        start = left.pop()
        comp, stack = {start}, [start]
        while stack:
            n = stack.pop()
            written = (lay.writes[n].target,) if n in lay.writes else ()  # via `a.flat`
            for a in (*n.all_input_nodes, *n.users, *written):
                if a in left:
                    left.discard(a)
                    comp.add(a)
                    stack.append(a)
        finished = all(x in applied_exits for x in comp if x in d.exits) and all(
            _inside(u, members) for n in comp & region for u in n.users
        )
        if finished:
            done |= comp
    return done


def _refusal(
    gm: fx.GraphModule, x: fx.Node, up: set[fx.Node], entries: list[fx.Node], values: dict
) -> _Unmapped | None:
    """Why this exit's detour must stay as it is, before looking at any single call."""
    sources = {_entry_source(n)[0] for n in entries}
    watched = sources | up | {x} | set(x.users) | _entry_nodes(set(entries))
    for n in gm.graph.nodes:
        target = writes_to(n, gm)
        # NumPy writes are translated with the detour; a torch write into a tensor the
        # detour reads or hands back changes memory both sides share.
        if target in watched and isinstance(values.get(target), torch.Tensor):
            return _Unmapped(f"{render_node(n)} writes in place into memory the detour shares", n)
    needs_grad = any(
        isinstance(values.get(s), torch.Tensor) and values[s].requires_grad for s in sources
    )
    new_leaf = x.kwargs.get("requires_grad") or any(
        u.op == "call_method" and u.target == "requires_grad_" for u in x.users
    )
    if new_leaf and not needs_grad:
        return _Unmapped("it makes a new leaf of values that carry no gradient", x)
    return None
