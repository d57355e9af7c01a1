"""Rewrites: make a finding's write functional and repoint every later reader.

A write into a whole tensor becomes its twin; a write into a view becomes the same write on
a clone of its base, with the views read later rebuilt on the clone; a write a caller
observes is kept and each op that saved the old value gets a copy instead.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxgrad.graph_utils import INPLACE_OPERATORS, has_side_effect, render_node, source_line
from fxgrad.passes.inplace_op.aliases import Alias, Step, StepKind
from fxgrad.passes.inplace_op.findings import Finding, FindingKind, _leaf_text, _op_text
from fxgrad.passes.inplace_op.twins import _keep_dtype, _twin


class CannotRewrite(Exception):
    """A rewrite that cannot be proven; the message says why."""


@dataclass
class Rewrite:
    after: str
    note: str = ""


def _check_replayable(s: Step, static: bool, what: str) -> None:
    """Refuse a view step that cannot be rebuilt on a new base (or not proven to be a view)."""
    if s.kind is StepKind.OPAQUE:
        raise CannotRewrite(f"{what} shares the written memory through an op fxgrad cannot rebuild")
    if s.kind is StepKind.MAYBE and static:
        raise CannotRewrite(
            f"without example inputs fxgrad cannot tell whether `{s.text()}` copies or makes a view"
        )


def _users_after(node: fx.Node, pos: int, order: dict[fx.Node, int]) -> list[fx.Node]:
    return [u for u in node.users if order.get(u, -1) > pos]


def _repoint(
    gm: fx.GraphModule,
    w: fx.Node,
    root: fx.Node,
    aliases: dict[fx.Node, Alias],
    new_root: fx.Node,
    cursor: fx.Node,
    static: bool,
    skip: set[fx.Node],
    direct: dict[fx.Node, fx.Node],
) -> None:
    """Point every reader after `w` of any alias of `root` at the matching view of new_root."""
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    pos = order[w]
    family = [n for n, a in aliases.items() if a.root is root and n in order and order[n] <= pos]
    for x in family:
        if x in skip:
            continue
        users = _users_after(x, pos, order)
        if not users:
            continue
        steps = tuple(s for s in aliases[x].steps if s.kind is not StepKind.DATA)
        if x in direct:
            repl = direct[x]
        elif not steps:
            repl = new_root
        else:
            with graph.inserting_after(cursor):
                cur = cursor
                repl = new_root
                for s in steps:
                    _check_replayable(s, static, f"`{x.name}`")
                    with graph.inserting_after(cur):
                        repl = s.replay(graph, repl)
                    cur = repl
                cursor = cur
        for u in users:
            u.replace_input_with(x, repl)


def rewrite(
    gm: fx.GraphModule, f: Finding, aliases: dict[fx.Node, Alias], values: dict | None
) -> Rewrite:
    """Make finding f's write functional, or give its saver a clone (state writes)."""
    w, target = f.write, f.target
    a = aliases.get(target, Alias(target))
    if f.state or f.no_grad_write or _savers_read_slices(f, aliases, a.root):
        return _clone_for_savers(gm, f, a.root)
    if w.op == "call_function" and w.target is builtins.setattr:
        return _rewrite_data_assignment(gm, f, aliases, static=values is None)
    steps = tuple(s for s in a.steps if s.kind is not StepKind.DATA)
    if any(s.kind is StepKind.EXPAND for s in steps):
        return _rewrite_expanded(gm, f, values)
    if not steps:
        done = _rewrite_plain(gm, f, aliases, values)
        if done is not None:
            return done
    return _rewrite_on_clone(gm, f, aliases, steps, static=values is None)


def _rewrite_data_assignment(
    gm: fx.GraphModule, f: Finding, aliases: dict[fx.Node, Alias], *, static: bool
) -> Rewrite:
    """`x.data = t`: later readers of x read t, which gradients then reach."""
    w = f.write
    a = aliases.get(f.target, Alias(f.target))
    if w.args[1] != "data" or not isinstance(w.args[2], fx.Node):
        raise CannotRewrite("only `.data = tensor` assignments can be rewritten")
    if a.steps:
        raise CannotRewrite("the tensor whose `.data` is replaced is itself a view")
    new = w.args[2]
    _repoint(gm, w, a.root, aliases, new, w, static, set(), {})
    gm.graph.erase_node(w)
    return Rewrite(f"{a.root.name} = {new.name}", "gradients now flow to the assigned tensor")


def _rewrite_expanded(gm: fx.GraphModule, f: Finding, values: dict | None) -> Rewrite:
    """A write into an expanded view: its out-of-place twin, and the base left as it is."""
    w, target = f.write, f.target
    graph = gm.graph
    if values is None or w not in values:
        raise CannotRewrite("the write goes into an expanded view")
    with graph.inserting_before(w):
        new = _twin(gm, w, target)
    if new is None:
        raise CannotRewrite("the write into an expanded view has no out-of-place form")
    for u in list(w.users) + [u for u in target.users if u is not w and _after(u, w)]:
        u.replace_input_with(w if w in u.all_input_nodes else target, new)
    graph.erase_node(w)
    return Rewrite(
        f"{new.name} = {render_node(new)}", "the base is not updated: eager refuses this write"
    )


def _leaf_note(root: fx.Node) -> str:
    if root.op not in ("placeholder", "get_attr"):
        return ""
    return f"{_leaf_text(root)} itself is no longer changed (eager refused the write)"


# What a plain rewrite adds to the report, by the kind of finding it repairs.
_PLAIN_NOTES: dict[FindingKind, Callable[[fx.Node], str]] = {
    FindingKind.LEAF: _leaf_note,
    FindingKind.DATA: lambda _root: "gradients now see the write",
}


def _rewrite_plain(
    gm: fx.GraphModule, f: Finding, aliases: dict[fx.Node, Alias], values: dict | None
) -> Rewrite | None:
    """A write into a whole tensor: `h = h.mul(2)`; None when it has no out-of-place twin."""
    w, target = f.write, f.target
    root = aliases.get(target, Alias(target)).root
    graph = gm.graph
    with graph.inserting_before(w):
        new = _twin(gm, w, root)
    if new is None:
        return None
    new = _keep_dtype(gm, new, target, values)
    _repoint(gm, w, root, aliases, new, new, values is None, set(), {})
    for u in list(w.users):
        u.replace_input_with(w, new)
    if not w.users:
        graph.erase_node(w)
    note = _PLAIN_NOTES[f.kind](root) if f.kind in _PLAIN_NOTES else ""
    return Rewrite(_plain_after(w, new), note)


def _rewrite_on_clone(
    gm: fx.GraphModule,
    f: Finding,
    aliases: dict[fx.Node, Alias],
    steps: tuple[Step, ...],
    *,
    static: bool,
) -> Rewrite:
    """A clone of the base, the same write on the clone's view, readers moved to the clone."""
    w, target = f.write, f.target
    root = aliases.get(target, Alias(target)).root
    graph = gm.graph
    with graph.inserting_before(w):
        clone = graph.call_method("clone", (root,))
        view = clone
        for s in steps:
            _check_replayable(s, static, "the write target")
            view = s.replay(graph, view, writable=True)
    if "out" in w.kwargs and w.kwargs["out"] is target:
        w.update_kwarg("out", view)
    elif w.op == "call_function" and w.target is builtins.getattr:
        raise CannotRewrite("unexpected write form")
    else:
        w.update_arg(0, view)
    _repoint(gm, w, root, aliases, clone, w, static, {w}, {target: view} if steps else {})
    text = [f"{clone.name} = {root.name}.clone()"]
    if view is not clone:
        text.append(f"{view.name} = {render_node(view)}")
    text.append(render_node(w))
    return Rewrite("; ".join(text))


def _after(u: fx.Node, w: fx.Node) -> bool:
    n = w.next
    while n.op != "root":
        if n is u:
            return True
        n = n.next
    return False


# Steps after which a saved value is no plain slice of the written tensor.
_NOT_SLICES = frozenset({StepKind.OPAQUE, StepKind.EXPAND, StepKind.DATA})


def _savers_read_slices(f: Finding, aliases: dict[fx.Node, Alias], root: fx.Node) -> bool:
    """Whether every op that saved the overwritten memory saved a view of it it was given.

    Then handing each such op a copy of its slice (`cell(x[t], h[t].clone())`) is enough,
    and far cheaper than a copy of the whole tensor at every write: a recurrence written
    into slots of one preallocated tensor (`h[t + 1] = cell(x[t], h[t])`) keeps its writes
    in place and copies one slot per step.
    """
    if f.kind is not FindingKind.SAVED or not f.savers:
        return False
    for _saver, role, arg in f.savers:
        if role != "input" or arg is None:
            return False
        a = aliases.get(arg)
        if a is None or a.root is not root or not a.steps:
            return False
        if any(s.kind in _NOT_SLICES for s in a.steps):
            return False
    return True


def _own_tensor(saver: fx.Node, root: fx.Node) -> str | None:
    """The name of the written parameter or buffer inside the module `saver` calls, if it is one."""
    if saver.op != "call_module" or root.op != "get_attr":
        return None
    prefix = f"{saver.target}."
    name = str(root.target)
    return name[len(prefix) :] if name.startswith(prefix) else None


def _clone_for_savers(gm: fx.GraphModule, f: Finding, root: fx.Node) -> Rewrite:
    """Keep a state write and hand each op that saved the old value a clone instead.

    An op given the value as an argument gets a clone of it; a module that saved one of
    its own parameters (a weight clipped through `.data` after the layer ran) is called
    with a clone of that parameter in its place (`torch.func.functional_call`).
    """
    if not f.savers:
        raise CannotRewrite("the write changes state a caller observes")
    for saver, role, arg in f.savers:
        if (role != "input" or arg is None) and _own_tensor(saver, root) is None:
            raise CannotRewrite(
                f"`{_op_text(saver)}` saved {'its output' if role == 'output' else 'an internal tensor'} "
                "and the write changes state a caller observes"
            )
    done: set[tuple[fx.Node, Any]] = set()
    texts = []
    graph = gm.graph
    for saver, role, arg in f.savers:
        own = _own_tensor(saver, root) if role != "input" or arg is None else None
        if (saver, own or arg) in done:
            continue
        done.add((saver, own or arg))
        if own is None:
            assert arg is not None  # an op given the value: the check above ruled out others
            with graph.inserting_before(saver):
                c = graph.call_method("clone", (arg,))
            saver.replace_input_with(arg, c)
            texts.append(f"{c.name} = {arg.name}.clone(); {render_node(saver)}")
            continue
        with graph.inserting_before(saver):
            value = graph.create_node("get_attr", root.target, (), {})
            c = graph.call_method("clone", (value,))
            module = graph.create_node("get_attr", saver.target, (), {})
            call = graph.call_function(
                torch.func.functional_call, (module, {own: c}, saver.args, saver.kwargs)
            )
        saver.replace_all_uses_with(call)
        graph.erase_node(saver)
        texts.append(
            f"{c.name} = self.{root.target}.clone(); functional_call(self.{module.target}, "
            f"{{{own!r}: {c.name}}}, ...)"
        )
    why = "the write is kept: it changes state a caller observes"
    if not f.state and not f.no_grad_write:
        why = "the write is kept in place: each op that saved a slice of it gets a copy"
    if f.no_grad_write:
        why = "the write is kept: it runs under no_grad, where gradients treat it as unseen"
    return Rewrite("; ".join(texts), why)


_METHOD_LINE = re.compile(r"^([A-Za-z_][\w.]*)\.([a-z][\w]*)_\((.*)\)$")
_AUG_LINE = re.compile(r"^([A-Za-z_][\w.]*)\s*(\*\*|//|<<|>>|[-+*/@%&|^])=\s*(.+)$")


def _plain_after(w: fx.Node, new: fx.Node) -> str:
    """The rewrite as the user would write it (`h = h.mul(2)`), else as the graph reads."""
    line = source_line(w)
    m = _METHOD_LINE.match(line)
    if m and w.op == "call_method" and new.op == "call_method" and new.target == m.group(2):
        name = m.group(1).removesuffix(".data")
        return f"{name} = {name}.{m.group(2)}({m.group(3)})"
    m = _AUG_LINE.match(line)
    if m and w.target in INPLACE_OPERATORS:
        return f"{m.group(1)} = {m.group(1)} {m.group(2)} {m.group(3)}"
    return f"{new.name} = {render_node(new)}"


def _drop_dead(gm: fx.GraphModule, had_users: set[fx.Node]) -> None:
    """Erase nodes a rewrite left unused (old views of the written tensor), never writes."""
    todo = [n for n in had_users if not getattr(n, "_erased", False) and not n.users]
    while todo:
        n = todo.pop()
        if n.users or n.op in ("placeholder", "output", "get_attr") or has_side_effect(n, gm):
            continue
        if n.op == "call_module":
            continue
        inputs = n.all_input_nodes
        gm.graph.erase_node(n)
        todo.extend(a for a in inputs if not a.users)
