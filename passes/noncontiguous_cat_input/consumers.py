"""The ops timed with a cat: those that read its output, replayable on fresh tensors.

What a new layout changes is the speed of the op that computes with the cat's output, so
each such op is rebuilt as a call with its real arguments, and timed with the cat.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from fxgrad.graph_utils import has_side_effect, inplace_module, submodule, writes_to
from fxgrad.passes.noncontiguous_cat_input.downstream import Flow, _flow
from fxgrad.passes.noncontiguous_cat_input.layout import Observed


@dataclass
class Consumer:
    """An op reading the cat's output, replayable on a fresh output with its real arguments."""

    node: fx.Node
    call: Callable[[torch.Tensor], Any]
    leaves: list[torch.Tensor]  # its own tensors that get gradients (weights, other inputs)
    key: tuple


def _consumer(gm: fx.GraphModule, cat: fx.Node, user: fx.Node, seen: Observed) -> Consumer | None:
    """Return the replayable form of `user`, or None when replaying it is unsafe or unknown."""
    if user.op not in ("call_function", "call_method", "call_module"):
        return None
    out = seen.layouts.get(user)
    if out is None:
        return None  # not a tensor (a size, a tuple): nothing of it to time
    if not _safe_to_replay(gm, user):
        return None
    module = _module_to_time(gm, user)
    others = [a for a in user.all_input_nodes if a is not cat]
    if any(a not in seen.values for a in others):
        return None
    fixed, leaves = _own_inputs(others, seen)
    if module is not None:
        leaves.extend(p for p in module.parameters() if p.requires_grad)
    if out.requires_grad != (seen.layouts[cat].requires_grad or bool(leaves)):
        return None  # it runs under another grad mode than the replay would
    key = _consumer_key(cat, user, module, fixed, seen)
    return Consumer(user, _replay(cat, user, module, fixed), leaves, key)


def _safe_to_replay(gm: fx.GraphModule, user: fx.Node) -> bool:
    """Whether running `user` again changes nothing: no in-place module, no side effect."""
    if user.op == "call_module":
        return inplace_module(gm, user) is None
    return not has_side_effect(user, gm)  # replaying it would write into memory or module state


def _module_to_time(gm: fx.GraphModule, user: fx.Node) -> nn.Module | None:
    """The module `user` calls, copied when it has buffers; None for other ops."""
    if user.op != "call_module":
        return None
    module = submodule(gm, str(user.target))
    if any(True for _ in module.buffers()):
        # Timing runs it many times; a copy keeps running statistics untouched.
        module = copy.deepcopy(module)
    return module


def _own_inputs(
    others: list[fx.Node], seen: Observed
) -> tuple[dict[fx.Node, Any], list[torch.Tensor]]:
    """The consumer's other inputs as observed, and which of them get gradients."""
    leaves: list[torch.Tensor] = []
    fixed: dict[fx.Node, Any] = {}
    for a in others:
        v = seen.values[a]
        if isinstance(v, torch.Tensor) and seen.layouts[a].requires_grad:
            v = v.detach().requires_grad_()
            leaves.append(v)
        fixed[a] = v
    return fixed, leaves


def _consumer_key(
    cat: fx.Node, user: fx.Node, module: nn.Module | None, fixed: dict, seen: Observed
) -> tuple:
    """What the consumer's timing depends on: its op, and the layouts or values it reads."""

    def describe(a: Any) -> Any:
        if a is cat:
            return "<cat>"
        if isinstance(a, fx.Node):
            return seen.layouts[a].key if a in seen.layouts else repr(fixed[a])
        return repr(a)

    args_key = tuple(describe(a) for a in pytree.tree_leaves((user.args, user.kwargs)))
    what = repr(module) if module is not None else str(user.target)
    return (user.op, what, args_key)


def _replay(
    cat: fx.Node, user: fx.Node, module: nn.Module | None, fixed: dict
) -> Callable[[torch.Tensor], Any]:
    """`user` as a call on a fresh cat output, its other inputs as observed."""

    def call(value: torch.Tensor) -> Any:
        def pick(a: fx.Node) -> Any:
            return value if a is cat else fixed[a]

        args = fx.node.map_arg(user.args, pick)
        kwargs = fx.node.map_arg(user.kwargs, pick)
        if module is not None:
            return module(*args, **kwargs)
        if user.op == "call_method":
            return getattr(args[0], str(user.target))(*args[1:], **kwargs)
        function = user.target
        assert callable(function)  # a call_function: fx names the targets of the other ops
        return function(*args, **kwargs)

    return call


VIEW_DEPTH = 3  # views followed from the cat to the ops that compute with it


def _readers_timed(
    gm: fx.GraphModule, src: fx.Node, seen: Observed, depth: int = 0
) -> list[Consumer]:
    """The ops to time with the cat: its users, and through views, the ops reading those.

    A view (`transpose`, slicing) costs nothing; what a new layout changes is the speed of
    the op that computes with it (`q @ k.transpose(-1, -2)`), so that op is timed.
    """
    timed = []
    for user in src.users:
        c = _consumer(gm, src, user, seen)
        if c is None:
            continue
        if depth < VIEW_DEPTH and writes_to(user, gm) is None and _flow(gm, user) is Flow.ALIAS:
            inner = _readers_timed(gm, user, seen, depth + 1)
            if inner and len(inner) == sum(1 for _ in user.users):
                timed += [_through(c, i) for i in inner]
                continue
        timed.append(c)
    return timed


def _through(view: Consumer, reader: Consumer) -> Consumer:
    """`reader` applied to `view`'s result: one replayable call from the cat's output."""
    return Consumer(
        reader.node,
        lambda value: reader.call(view.call(value)),
        view.leaves + reader.leaves,
        (view.key, reader.key),
    )
