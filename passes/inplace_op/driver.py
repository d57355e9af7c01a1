"""The pass: rounds of find, rewrite and roll back, and what it reports.

Each round decides on the graph as it now is, rewrites the earliest write into each written
tensor, and undoes the whole round when one rewrite cannot be proven; that write is then
reported as left as is.
"""

from __future__ import annotations

import copy

from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context
from fxgrad.graph_utils import location, writes_to
from fxgrad.passes.inplace_op.aliases import Alias
from fxgrad.passes.inplace_op.exact import exact_findings
from fxgrad.passes.inplace_op.findings import Finding, FindingKind, _write_text
from fxgrad.passes.inplace_op.rewrites import CannotRewrite, _drop_dead, rewrite
from fxgrad.passes.inplace_op.static import static_findings

CODE = "FXG101"
# What a node made by a rewrite takes over from the write it replaces.
_INHERITED_META = ("fxgrad_loc", "nn_module_stack", "stack_trace")
MAX_ROUNDS = 200  # a bound against a rewrite that keeps firing


def run(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    changes: list[Change] = []
    done: set[str] = set()
    how = "decided on example inputs" if ctx.example_inputs is not None else "decided statically"
    for _ in range(MAX_ROUNDS):
        findings, aliases, values = _findings(gm, ctx)
        todo = [f for f in findings if f.write.name not in done]
        if not todo:
            return changes
        batch = _one_write_per_root(todo, aliases)
        saved_graph = copy.deepcopy(gm.graph)
        had_users = {n for n in gm.graph.nodes if n.users}
        round_changes, failed = _rewrite_round(gm, batch, aliases, values, how)
        if failed is not None:
            # A rewrite may fail half-way: undo the whole round, record the failure, and
            # let the next round redo the others on the restored graph.
            gm.graph = saved_graph
            f, e = failed
            done.add(f.write.name)
            changes.append(_left_as_is(f, how, str(e)))
            continue
        _drop_dead(gm, had_users)
        done.update(c.node for c in round_changes)
        changes.extend(round_changes)
    findings, _, _ = _findings(gm, ctx)
    for f in [f for f in findings if f.write.name not in done]:
        # never silently: say which writes were not reached
        why = f"fxgrad stopped after {MAX_ROUNDS} rounds of rewrites"
        changes.append(_left_as_is(f, how, why))
    return changes


def _findings(gm: fx.GraphModule, ctx: Context) -> tuple[list[Finding], dict, dict | None]:
    """The unsafe writes of the graph as it is now, its aliases, and the observed values."""
    if ctx.example_inputs is None:
        findings, aliases = static_findings(gm)
        return findings, aliases, None
    obs = ctx.observe(gm)
    findings, aliases = exact_findings(gm, obs)
    return findings, aliases, obs.values


def _one_write_per_root(todo: list[Finding], aliases: dict) -> list[Finding]:
    """The earliest write into each written tensor (alias root): one round's rewrites.

    Rewriting a write may make later writes into the same memory safe (they then target a
    fresh tensor nobody saved), and the next round re-decides them on the new graph. Writes
    into different memory do not affect each other's rewrite, so they share a round.
    """
    batch: list[Finding] = []
    roots: set[fx.Node] = set()
    for f in todo:
        root = aliases.get(f.target, Alias(f.target)).root
        if root not in roots:
            roots.add(root)
            batch.append(f)
    return batch


# Findings that are reported, never rewritten, and what their note adds.
_REPORTED_ONLY: dict[FindingKind, str] = {
    FindingKind.DATA_SAFE: "",
    FindingKind.INPUT_STATIC: "; pass example inputs to decide",
}


def _rewrite_round(
    gm: fx.GraphModule, batch: list[Finding], aliases: dict, values: dict | None, how: str
) -> tuple[list[Change], tuple[Finding, CannotRewrite] | None]:
    """Rewrite each finding of the batch in turn; stop at the first that cannot be."""
    changes: list[Change] = []
    for f in batch:
        if f.kind in _REPORTED_ONLY:
            note = f"{f.reason} ({how}){_REPORTED_ONLY[f.kind]}"
            where = location(f.write)
            changes.append(
                Change(CODE, f.write.name, _write_text(f.write), "", where, note, applied=False)
            )
            continue
        try:
            changes.append(_rewrite_one(gm, f, aliases, values, how))
        except CannotRewrite as e:
            return changes, (f, e)
    return changes, None


def _rewrite_one(
    gm: fx.GraphModule, f: Finding, aliases: dict, values: dict | None, how: str
) -> Change:
    before, where, name = _write_text(f.write), location(f.write), f.write.name
    existing = set(gm.graph.nodes)
    meta = {k: f.write.meta[k] for k in _INHERITED_META if k in f.write.meta}
    r = rewrite(gm, f, aliases, values)
    for n in gm.graph.nodes:  # the rewrite's nodes name the user's line and block
        if n not in existing:
            for k, v in meta.items():
                n.meta.setdefault(k, v)
    note = f"{f.reason} ({how})"
    if r.note:
        note += f"; {r.note}"
    return Change(CODE, name, before, r.after, where, note)


def _left_as_is(f: Finding, how: str, why: str) -> Change:
    note = f"{f.reason} ({how}); left as is: {why}"
    w = f.write
    return Change(CODE, w.name, _write_text(w), "", location(w), note, applied=False)


def applies(gm: fx.GraphModule) -> bool:
    """Whether the graph writes anything at all (most models' graphs do not)."""
    return any(writes_to(n, gm) is not None for n in gm.graph.nodes)


# What autograd raises in forward when it refuses a write (all RuntimeError; the message
# is what tells them apart).
_REFUSALS = (
    "in-place operation",
    "inplace operation",
    "a view of a leaf",
    "arguments don't support automatic differentiation",  # out= on a tensor that requires grad
    "is being modified inplace",  # views of unbind/split/chunk, views made under no_grad
    "refers to a single memory location",  # writes into overlapping (expanded) tensors
)


def refused_write(error: BaseException) -> bool:
    """Whether autograd refused an in-place write: the errors this pass repairs."""
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _REFUSALS)
