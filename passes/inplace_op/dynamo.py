"""FXG101 on Dynamo's graphs: values autograd saved that code after a graph break writes.

Across a graph break, an op in one graph can save a tensor for backward that code in a
later graph writes in place (the graph ends at `if h.sum() > 0:` after `h = sigmoid(...)`,
the next writes `h.mul_(2)`). No one graph holds both the save and the write, so the pass
cannot rebind the write; and a write into a graph's input is visible to the Python code
after it, so the later graph cannot simply rebind it either. Instead the graph that saved
the value hands out a copy of each output autograd saved inside it (unless the output
shares memory with another output or an input), so no later write can reach what backward
needs. The Dynamo front-end watches the copies, and the report names the write once a
later graph is seen making it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.utils._pytree as pytree
from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context
from fxgrad.graph_utils import location, render_node
from fxgrad.state import storage_of

CODE = "FXG101"


@dataclass
class SavedCopy:
    """An output a graph hands out as a copy, because autograd saved it inside the graph."""

    output: int  # index among the graph's flat outputs
    name: str
    before: str
    where: str
    written_at: str = ""  # where later code wrote the copy ("": no write seen)

    @property
    def label(self) -> str:
        return f"`{self.name}` ({self.where})"

    @property
    def why(self) -> str:
        return "autograd saved them, and code after a graph break could write them in place"

    def change(self) -> Change:
        return Change(
            CODE,
            self.name,
            self.before,
            f"{self.name}.clone() handed out",
            self.where,
            f"autograd saved `{self.name}` for backward and code after a graph break "
            f"writes it in place ({self.written_at}): that code gets a copy, so backward "
            "still has the value it saved",
        )


def protect_escaping(gm: fx.GraphModule, ctx: Context) -> list[SavedCopy]:
    """Hand out a copy of each output autograd saved inside the graph (see the module doc)."""
    obs = ctx.observe(gm)
    if not obs.complete or obs.backward_error is not None:
        return []
    output = gm.graph.output_node()
    leaves = pytree.tree_leaves(output.args[0])
    saved = {s.storage for s in obs.saved if s.storage is not None}
    inputs = {
        storage_of(obs.values.get(n)) for n in gm.graph.nodes if n.op in ("placeholder", "get_attr")
    }
    counts: dict[int | None, int] = {}
    for n in leaves:
        if isinstance(n, fx.Node):
            st = storage_of(obs.values.get(n))
            counts[st] = counts.get(st, 0) + 1
    copied: list[SavedCopy] = []
    done: set[fx.Node] = set()
    for i, n in enumerate(leaves):
        if not isinstance(n, fx.Node) or n in done:
            continue
        done.add(n)
        st = storage_of(obs.values.get(n))
        if st is None or st not in saved or st in inputs or counts[st] > 1:
            continue
        with gm.graph.inserting_before(output):
            clone = gm.graph.call_method("clone", (n,))
        clone.meta.update({k: v for k, v in n.meta.items() if k == "fxgrad_loc"})
        output.replace_input_with(n, clone)
        copied.append(SavedCopy(i, n.name, render_node(n), location(n)))
    if copied:
        gm.recompile()
    return copied
