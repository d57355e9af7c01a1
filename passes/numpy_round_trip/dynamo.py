"""FXG301 on Dynamo's graphs: NumPy detours that Dynamo already turned into torch ops.

Dynamo captures `h.detach().numpy()` -> NumPy math -> `torch.from_numpy(...)` as
`h.detach()`, a `view_as`, calls of NumPy functions it wraps to run on tensors
(`torch._dynamo.utils` wrappers, NumPy's semantics on torch ops) and `torch.as_tensor`.
The math is already torch's and differentiable; only the `detach()` cuts the gradient.
Where every use of the detached value stays inside such a detour until it comes back
through `torch.as_tensor`/`from_numpy`/`tensor`, the `detach()` goes, and gradients reach
`h` again with the values unchanged.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from fxgrad.changes import Change
from fxgrad.graph_utils import location, source_line
from fxgrad.passes.numpy_round_trip.helpers import CODE

_EXITS = tuple(getattr(torch, n) for n in ("as_tensor", "from_numpy", "tensor", "asarray"))
_PASS_THROUGH = {"cpu", "view_as", "contiguous", "numpy"}


def is_wrapped_numpy(node: fx.Node) -> bool:
    """A call of a NumPy function or method Dynamo wrapped to run on tensors."""
    cls = type(node.target)
    return (
        node.op == "call_function"
        and cls.__module__ == "torch._dynamo.utils"
        and cls.__name__.startswith("numpy_")
    )


def has_wrapped_numpy(gm: fx.GraphModule) -> bool:
    return any(is_wrapped_numpy(n) for n in gm.graph.nodes)


def _detour(detach: fx.Node) -> set[fx.Node] | None:
    """The nodes between a detach and where they come back to torch, if that is all."""
    seen: set[fx.Node] = set()
    todo = list(detach.users)
    wrapped = False
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_function" and n.target in _EXITS:
            continue  # back in torch: what follows is the model's own code
        if is_wrapped_numpy(n):
            wrapped = True
        elif not (n.op == "call_method" and n.target in _PASS_THROUGH) and not (
            n.op == "call_function" and n.target is operator.getitem
        ):
            return None  # used for something else: the detach may be meant
        todo.extend(n.users)
    return seen if wrapped else None


def run(gm: fx.GraphModule) -> list[Change]:
    """Drop the `detach()` of every NumPy detour Dynamo turned into torch ops."""
    changes = []
    for node in list(gm.graph.nodes):
        if not (node.op == "call_method" and node.target == "detach"):
            continue
        if not isinstance(node.args[0], fx.Node) or _detour(node) is None:
            continue
        source = node.args[0]
        before = source_line(node) or f"{source.name}.detach()"
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        changes.append(
            Change(
                CODE,
                node.name,
                before,
                f"{source.name} (no detach)",
                location(node),
                "gradients reach it again: Dynamo already runs this NumPy code as torch "
                "ops, and only the detach() cut the gradient; decided on the call Dynamo compiled",
            )
        )
    return changes
