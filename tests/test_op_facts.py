"""FXG101's in-place detection, checked against what ATen's schemas say about each op.

`writes_to` decides by name whether a call writes its first argument: a tensor method or a
`torch.*` function whose name ends in `_` writes, unless it only changes metadata
(`_NOT_VALUE_WRITES`). Torch knows better: an op's schema marks each argument it writes
(`Tensor(a!) self`). Here every public tensor method and every in-place `torch.*`
function that is an ATen op is asked both ways, so a torch release that adds an op or
changes one fails this test instead of silently changing what fxgrad rewrites.

An overload counts when its `self` is a tensor: `sort.int(int[](a!) self)` and the other
list overloads are TorchScript's `list.sort`, not anything a tensor method calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx

from fxgrad.graph_utils import writes_to

# Names where the schema and `writes_to` disagree on purpose: name -> why.
METHOD_EXCEPTIONS: dict[str, str] = {
    # The schema writes `self`, but only its autograd or allocator metadata: the values
    # stay, so a saved copy of them stays valid and there is nothing to rewrite.
    # `has_side_effect` still keeps these nodes alive when their result is unused.
    "requires_grad_": "sets the requires_grad flag; the values stay",
    "retain_grad": "asks autograd to keep .grad of a non-leaf; the values stay",
    "detach_": "cuts the tensor's history (a gradient cut, not a write); the values stay",
    "record_stream": "CUDA caching-allocator bookkeeping; the values stay",
}
FUNCTION_EXCEPTIONS: dict[str, str] = {}


def _packet(name: str) -> torch._ops.OpOverloadPacket | None:
    """The ATen op called `name`, or None (`torch.ops.aten.name` is the namespace's name)."""
    if not hasattr(torch.ops.aten, name):
        return None
    op = getattr(torch.ops.aten, name)
    return op if isinstance(op, torch._ops.OpOverloadPacket) else None


def _schema_writes_self(op: torch._ops.OpOverloadPacket) -> bool:
    """Whether some overload taking a tensor `self` marks it as written (`Tensor(a!)`)."""
    for overload in op.overloads():
        args = getattr(op, overload)._schema.arguments
        if not args or not isinstance(args[0].type, torch._C.TensorType):
            continue
        alias = args[0].alias_info
        if alias is not None and alias.is_write:
            return True
    return False


def _detected(op: str, target: str | Callable) -> bool:
    """What `writes_to` says about `target` called on a placeholder."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    node = graph.create_node(op, target, (x,), {})
    graph.output(node)
    return writes_to(node) is x


def _compare(op: str, names: list[str], exceptions: dict[str, str]) -> tuple[int, list[str]]:
    """How many names are ATen ops, and a line for each unexplained disagreement."""
    compared = 0
    problems = []
    for name in names:
        packet = _packet(name)
        if packet is None:
            continue
        compared += 1
        written = _schema_writes_self(packet)
        target = name if op == "call_method" else getattr(torch, name)
        detected = _detected(op, target)
        if written == detected:
            if name in exceptions:
                problems.append(f"{name}: listed as an exception, but now both say {written}")
            continue
        if name not in exceptions:
            problems.append(
                f"{name}: the schema {'writes' if written else 'does not write'} self, "
                f"writes_to says it {'does' if detected else 'does not'}"
            )
    stale = sorted(set(exceptions) - {n for n in names if _packet(n) is not None})
    problems += [f"{name}: listed as an exception, but no longer an ATen op" for name in stale]
    return compared, problems


def _message(kind: str, problems: list[str]) -> str:
    return (
        f"writes_to disagrees with ATen's schemas about these {kind}:\n"
        + "\n".join(f"  {p}" for p in problems)
        + "\nFix writes_to (fxgrad/graph_utils.py), or list the name in this file with why."
    )


def test_tensor_methods_match_schemas() -> None:
    names = sorted(m for m in dir(torch.Tensor) if not m.startswith("_"))
    compared, problems = _compare("call_method", names, METHOD_EXCEPTIONS)
    assert compared > 300, f"only {compared} tensor methods found as ATen ops"
    assert not problems, _message("tensor methods", problems)


def test_inplace_torch_functions_match_schemas() -> None:
    names = sorted(f for f in dir(torch) if f.endswith("_") and not f.startswith("_"))
    compared, problems = _compare("call_function", names, FUNCTION_EXCEPTIONS)
    assert compared > 40, f"only {compared} in-place torch functions found as ATen ops"
    assert not problems, _message("in-place torch functions", problems)
