"""FXG101 inplace-op

## What it does
Rewrites the in-place writes that break autograd into functional code, and only those:
`h.mul_(2)` becomes `h = h.mul(2)`, `relu(x, inplace=True)` becomes `relu(x)`, `z += 1`
becomes `z = z + 1`, and a write into a view (`y[1:3].mul_(2)`, `y.t().add_(1)`,
`a, b = x.unbind(); a.zero_()`) becomes the same write on a clone of its base. Every
later reader of the written memory (the tensor, its base, every view of either) is
repointed, and views read later are rebuilt on the new base, so each sees what eager
PyTorch would show. All write forms are recognised: in-place methods and torch functions,
`inplace=True` calls and modules (`nn.ReLU(inplace=True)` and its siblings), item and
augmented assignment, `out=` arguments, and writes through `.data`.

With example inputs the decision is exact: the graph is run once while watching what
autograd saves for backward, which saved tensors backward unpacks, storages and version
counters. Without them it is static and conservative, from a table of which ops save
their inputs or outputs. Each report line says which way it was decided and names both
lines: the op that saved the value and the write that destroys it.

## Why is this bad?
A write is unsafe when eager autograd fails or is silently wrong:
1. it overwrites a tensor, or any alias of its storage, that an earlier op saved for
   backward ("one of the variables needed for gradient computation has been modified by
   an inplace operation"), and anomaly mode names only the op that saved it;
2. it writes into a leaf that requires grad (a parameter, an input) while grad mode is on;
3. it writes into a view autograd refuses (outputs of `unbind`/`split`/`chunk`, views
   made under `no_grad`, expanded tensors whose elements overlap);
4. it writes through `.data`, around the version counter: backward then uses the new
   values where it needed the old ones, and no error tells you.

## Example
    h = torch.sigmoid(x)   # sigmoid saves its output for backward
    h.mul_(2)              # overwrites it: backward fails
    y = x * 2
    a, b = y.unbind(0)
    a.add_(1)              # unbind outputs cannot be written in place
    return h, y

## Use instead
    h = torch.sigmoid(x)
    h = h.mul(2)
    y = x * 2
    y = y.clone()
    y.select(0, 0).add_(1)
    return h, y

## Left alone when
- nothing backward still needs is overwritten and the target is no leaf that requires
  grad: `ReLU(inplace=True)` after a conv, linear or batch norm, `x += b` on a fresh
  tensor nobody saved, `y = x * 2; y[0] = 10` (autograd records it as `CopySlices`);
  these writes save memory, so rewriting them would only cost
- the write is module state a caller observes (a buffer such as BatchNorm's running
  statistics, an input that does not require grad): it is kept, and when an op saved the
  value before the write, that op is given a clone to save instead
- the write goes through `.data` but nothing backward needs is overwritten: it is
  reported, not rewritten, because gradients then ignore the write by design
- a rewrite cannot be proven (an alias fxgrad cannot rebuild, a static decision about
  `reshape` that may copy): the code is kept and the report says why
"""

from __future__ import annotations

import builtins
import copy
import enum
import operator
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from fxgrad.changes import Change
from fxgrad.context import Context
from fxgrad.graph_utils import (
    ENTER_INFERENCE_MODE,
    EXIT_INFERENCE_MODE,
    INPLACE_OPERATORS,
    has_side_effect,
    location,
    render_node,
    source_line,
    submodule,
    writes_to,
)
from fxgrad.observe import Observation, storage_of
from fxgrad.registry import Pass
from fxgrad.runtime import writable_piece
from fxgrad.tracing import has_hooks

CODE = "FXG101"
# What a node made by a rewrite takes over from the write it replaces.
_INHERITED_META = ("fxgrad_loc", "nn_module_stack", "stack_trace")
MAX_ROUNDS = 200  # a bound against a rewrite that keeps firing

# ---------------------------------------------------------------------------------------
# Which ops make views of their first argument

_VIEW_METHODS = {
    "view", "view_as", "transpose", "t", "permute", "unsqueeze", "squeeze", "select",
    "narrow", "diagonal", "expand", "expand_as", "unflatten", "movedim", "moveaxis",
    "swapaxes", "swapdims", "unfold", "as_strided", "detach", "alias", "view_as_real",
    "view_as_complex",
}  # fmt: skip
# Ops that return a view or the tensor itself on some inputs and a copy on others.
_MAYBE_VIEW_METHODS = {
    "reshape", "reshape_as", "contiguous", "flatten", "to", "type", "type_as", "float",
    "double", "half", "bfloat16", "cpu", "cuda", "ravel",
}  # fmt: skip
_MULTI_VIEW = {"unbind", "split", "chunk", "tensor_split", "split_with_sizes", "hsplit", "vsplit"}
_VIEW_ATTRS = {"T", "mT", "H", "mH", "real", "imag"}
# Random in-place fills: rewritten as the same fill on a clone, so the RNG stream is kept.
_NO_TWIN = {
    "copy_", "uniform_", "normal_", "bernoulli_", "random_", "exponential_", "geometric_",
    "log_normal_", "cauchy_", "set_", "resize_", "resize_as_", "put_", "index_put_",
}  # fmt: skip


def _fn_name(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", "") or ""
        name = getattr(node.target, "__name__", "")
        if mod.startswith("torch"):
            return name
    return None


def _view_kind(node: fx.Node) -> str | None:
    """ "view", "maybe", "multi", "data", "attr" or None for a node of the shape f(x, ...)."""
    if node.op not in ("call_method", "call_function") or not node.args:
        return None
    if not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_function" and node.target is builtins.getattr:
        attr = node.args[1]
        if attr == "data":
            return "data"
        return "view" if attr in _VIEW_ATTRS else None
    if node.op == "call_function" and node.target is operator.getitem:
        return "getitem"
    name = _fn_name(node)
    if name in _VIEW_METHODS:
        return "view"
    if name in _MAYBE_VIEW_METHODS:
        return "maybe"
    if name in _MULTI_VIEW:
        return "multi"
    return None


def _basic_index(index: Any) -> bool | None:
    """True for int/slice/None/Ellipsis indexing (a view), False for advanced, None unknown."""
    items = index if isinstance(index, tuple) else (index,)
    unknown = False
    for it in items:
        if it is None or it is Ellipsis or isinstance(it, (int, slice)):
            if isinstance(it, slice) and any(
                isinstance(s, fx.Node) for s in (it.start, it.stop, it.step)
            ):
                unknown = True
            continue
        if isinstance(it, (list, torch.Tensor)):
            return False
        if isinstance(it, fx.Node):
            unknown = True
            continue
        return False
    return None if unknown else True


# ---------------------------------------------------------------------------------------
# Aliases: each tensor node is a root or a chain of view steps from a root


@dataclass(frozen=True)
class Step:
    """One view op to replay on a new base: `base.<target>(*args, **kwargs)`."""

    op: str
    target: Any
    args: tuple
    kwargs: tuple = ()
    kind: str = "view"  # view, identity, data, multi, maybe, expand, opaque
    index: int | None = None  # which output of a multi-view call (unbind/split/chunk)

    def replay(self, graph: fx.Graph, base: fx.Node, *, writable: bool = False) -> fx.Node:
        """Rebuild this view on `base`; `writable` for the target of an in-place write."""
        if self.index is not None and writable:
            # Outputs of split/chunk refuse in-place writes; the same memory as a plain view.
            op = self.target if self.op == "call_function" else str(self.target)
            args = (base, op, self.args, dict(self.kwargs), self.index)
            return graph.create_node("call_function", writable_piece, args, {})
        node = graph.create_node(self.op, self.target, (base, *self.args), dict(self.kwargs))
        if self.index is None:
            return node
        with graph.inserting_after(node):
            return graph.create_node("call_function", operator.getitem, (node, self.index))

    def text(self) -> str:
        return (
            f"{self.target}" if self.op == "call_method" else getattr(self.target, "__name__", "?")
        )


@dataclass(frozen=True)
class Alias:
    root: fx.Node
    steps: tuple[Step, ...] = ()


def _step_of(node: fx.Node, kind: str) -> Step:
    name = _fn_name(node)
    if kind == "data":
        return Step("call_function", builtins.getattr, ("data",), kind="data")
    if node.target is operator.getitem or node.target is builtins.getattr:
        return Step("call_function", node.target, tuple(node.args[1:]), kind="view")
    if name in ("expand", "expand_as"):
        kind = "expand"
    return Step(node.op, node.target, tuple(node.args[1:]), tuple(node.kwargs.items()), kind)


def _dim_arg(node: fx.Node, pos: int, default: int = 0) -> Any:
    if "dim" in node.kwargs:
        return node.kwargs["dim"]
    if len(node.args) > pos:
        return node.args[pos]
    return default


def _multi_steps(node: fx.Node, values: dict | None) -> list[Step] | None:
    """A step per output of unbind/split/chunk: the same call, then that output.

    Replaying the call itself (`base.chunk(2)[0]`) rather than a `narrow` with the
    example's offsets keeps a rewrite right for inputs of any size.
    """
    out = values.get(node) if values is not None else None
    n = len(out) if isinstance(out, (tuple, list)) else _static_pieces(node)
    if n is None:
        return None
    rest, kwargs = tuple(node.args[1:]), tuple(node.kwargs.items())
    return [Step(node.op, node.target, rest, kwargs, kind="multi", index=i) for i in range(n)]


def _static_pieces(node: fx.Node) -> int | None:
    """How many outputs a multi-view call may have, without example inputs."""
    if _fn_name(node) == "split":
        sizes = node.kwargs.get(
            "split_size_or_sections", node.args[1] if len(node.args) > 1 else None
        )
        if isinstance(sizes, (list, tuple)):
            return len(sizes)
    return _MAX_STATIC_PIECES


_MAX_STATIC_PIECES = 64  # static mode: unbind pieces indexed by a constant below this


_storage = storage_of


def alias_map(gm: fx.GraphModule, values: dict | None) -> dict[fx.Node, Alias]:
    """Map every node to its root and view chain; exact when `values` are known."""
    aliases: dict[fx.Node, Alias] = {}
    multi: dict[fx.Node, list[Alias | None]] = {}
    for node in gm.graph.nodes:
        aliases[node] = Alias(node)
        target = writes_to(node, gm)
        if target is not None and not (
            node.op == "call_function" and node.target in (operator.setitem, builtins.setattr)
        ):
            aliases[node] = aliases.get(target, Alias(target))  # returns its target
            continue
        kind = _view_kind(node)
        if kind is None:
            if values is not None:
                aliases[node] = _opaque_alias(node, values, aliases)
            continue
        base = node.args[0]
        parent = aliases.get(base, Alias(base))
        if kind == "getitem" and base in multi:
            idx = node.args[1]
            pieces = multi[base]
            if isinstance(idx, int) and 0 <= idx < len(pieces):
                if pieces[idx] is not None:
                    aliases[node] = pieces[idx]
            elif isinstance(idx, slice):
                multi[node] = pieces[idx]
            continue
        if kind == "multi":
            steps = _multi_steps(node, values)
            n = len(steps) if steps else (len(values[node]) if values and node in values else 0)
            opaque = Step("call_method", "?", (), kind="opaque")
            multi[node] = [
                Alias(parent.root, parent.steps + ((steps[i],) if steps else (opaque,)))
                for i in range(n)
            ]
            continue
        if kind == "getitem":
            basic = _basic_index(node.args[1])
            if basic is False:
                continue
            kind = "view" if basic else "maybe"
        if values is not None:
            v, b = values.get(node), values.get(base)
            if not isinstance(v, torch.Tensor) or not isinstance(b, torch.Tensor):
                continue
            if v is b:
                aliases[node] = parent  # the op returned its input itself
                continue
            if _storage(v) is None or _storage(v) != _storage(b):
                continue  # it copied
            if kind == "maybe":
                kind = "view"
        aliases[node] = Alias(parent.root, parent.steps + (_step_of(node, kind),))
    return aliases


def _opaque_alias(node: fx.Node, values: dict, aliases: dict) -> Alias:
    """A node that is no known view op but shares memory with an input (exact mode)."""
    v = values.get(node)
    if not isinstance(v, torch.Tensor) or node.op in ("placeholder", "get_attr"):
        return Alias(node)
    for a in node.all_input_nodes:
        av = values.get(a)
        if av is v:
            return aliases.get(a, Alias(a))
        if (
            isinstance(av, torch.Tensor)
            and _storage(av) is not None
            and _storage(av) == _storage(v)
        ):
            parent = aliases.get(a, Alias(a))
            return Alias(
                parent.root, parent.steps + (Step(node.op, node.target, (), kind="opaque"),)
            )
    return Alias(node)


# ---------------------------------------------------------------------------------------
# Static mode: a table of what ops save for backward


class Saves(enum.Flag):
    """What an op keeps for its backward that a later in-place write could change."""

    NOTHING = 0
    INPUTS = enum.auto()  # its tensor arguments, or views of them
    OUTPUT = enum.auto()  # its result
    BOTH = INPUTS | OUTPUT


_N, _I, _O, _B = Saves.NOTHING, Saves.INPUTS, Saves.OUTPUT, Saves.BOTH

# What ops save, for decisions without example inputs. Each entry is checked against what
# autograd actually saves on OpInfo samples (tests/test_static_saves.py), so a wrong entry,
# or a torch release that changes a backward formula, fails the tests. An op not listed is
# assumed to save both its inputs and its output. In-place variants are listed on their own
# (`elu` saves its input, `elu_` its result).
STATIC_SAVES: dict[str, Saves] = {
    # derivatives computed from the result
    **dict.fromkeys(
        ("exp", "exp_", "exp2", "expm1", "sigmoid", "sigmoid_", "tanh", "tanh_", "relu",
         "relu_", "sqrt", "rsqrt", "reciprocal", "tan", "softmax", "_softmax", "log_softmax",
         "elu_", "selu_", "celu_", "leaky_relu_", "hardtanh_"),
        _O,
    ),
    # derivatives computed from the arguments (masked_fill keeps its mask)
    **dict.fromkeys(
        ("mul", "mul_", "imul", "div", "div_", "truediv", "itruediv", "matmul", "mm", "bmm",
         "linear", "conv1d", "conv2d", "batch_norm", "layer_norm", "sin", "cos", "log",
         "abs", "clamp", "clamp_", "hardtanh", "leaky_relu", "gelu", "silu", "silu_", "mish",
         "hardswish", "hardsigmoid", "sinh", "cosh", "atan", "elu", "selu", "celu",
         "logsigmoid", "masked_fill", "masked_fill_", "pad"),
        _I,
    ),
    # both: `x ** y` with a tensor exponent, max pooling (its indices are an output)
    **dict.fromkeys(("pow", "max_pool2d"), _B),
    # derivatives that need neither (views, sums, copies, factories, shapes)
    **dict.fromkeys(
        ("add", "add_", "iadd", "sub", "sub_", "isub", "neg", "clone", "cat", "concat",
         "stack", "getitem", "contiguous", "to", "expand", "expand_as", "sum", "mean",
         "dropout", "flatten", "reshape", "view", "view_as", "transpose", "t", "permute",
         "unsqueeze", "squeeze", "select", "narrow", "diagonal", "detach", "zeros_like",
         "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full",
         "new_empty", "unbind", "split", "chunk", "float", "double", "size", "dim", "numel",
         "getattr", "flip", "roll", "repeat", "movedim", "unflatten", "zero_", "fill_",
         "copy_", "setitem", "identity", "zeros", "ones", "empty", "full", "rand", "randn",
         "randint", "randperm", "arange", "linspace", "logspace", "eye", "tril_indices",
         "triu_indices"),
        _N,
    ),
}  # fmt: skip

# torch.nn modules by the op they run (an in-place module runs the op's `_` variant).
MODULE_OPS: dict[type, str] = {
    nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Softmax: "softmax",
    nn.LogSoftmax: "log_softmax", nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu",
    nn.GELU: "gelu", nn.SiLU: "silu", nn.Mish: "mish", nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid", nn.LeakyReLU: "leaky_relu", nn.Hardtanh: "hardtanh",
    nn.ReLU6: "hardtanh", nn.LogSigmoid: "logsigmoid", nn.Linear: "linear",
    nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.BatchNorm1d: "batch_norm",
    nn.BatchNorm2d: "batch_norm", nn.BatchNorm3d: "batch_norm", nn.LayerNorm: "layer_norm",
    nn.MaxPool2d: "max_pool2d", nn.Dropout: "dropout", nn.Dropout1d: "dropout",
    nn.Dropout2d: "dropout", nn.Dropout3d: "dropout", nn.AlphaDropout: "dropout",
    nn.Identity: "identity", nn.Flatten: "flatten", nn.Unflatten: "unflatten",
}  # fmt: skip


def module_op(mod: nn.Module) -> str | None:
    """The op name a torch.nn module runs, with `_` when it runs in place; None if unknown."""
    name = MODULE_OPS.get(type(mod))
    if name is None:
        return None
    inplace = mod.__dict__.get("inplace", False) is True
    return f"{name}_" if inplace and name != "dropout" else name


def _saves(node: fx.Node, gm: fx.GraphModule) -> Saves:
    if node.op == "call_module":
        try:
            name = module_op(submodule(gm, str(node.target)))
        except AttributeError:
            name = None
        return _B if name is None else STATIC_SAVES.get(name, _B)
    if node.op not in ("call_method", "call_function"):
        return _N
    if _view_kind(node) is not None:
        return _N
    name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_function" and not name.endswith("_") and writes_to(node, gm) is not None:
        name += "_"  # `F.elu(x, inplace=True)` runs elu_
    return STATIC_SAVES.get(name, _B)


def _static_saves(node: fx.Node, gm: fx.GraphModule) -> list[tuple[str, fx.Node | None]]:
    """(role, arg) pairs a node may save: ("output", None) or ("input", arg)."""
    saves = _saves(node, gm)
    out: list[tuple[str, fx.Node | None]] = []
    if saves & Saves.INPUTS:
        out.extend(("input", a) for a in node.all_input_nodes)
    if saves & Saves.OUTPUT:
        out.append(("output", None))
    return out


@dataclass
class StaticFacts:
    grad_on: dict[fx.Node, bool] = field(default_factory=dict)
    requires_grad: dict[fx.Node, bool] = field(default_factory=dict)


def _static_facts(gm: fx.GraphModule) -> StaticFacts:
    facts = StaticFacts()
    mode = True
    recorded: dict[fx.Node, bool] = {}
    inference: list[bool] = []  # grad mode outside each open inference_mode region
    for node in gm.graph.nodes:
        facts.grad_on[node] = mode
        if node.op == "call_function" and node.target is torch.is_grad_enabled:
            recorded[node] = mode
        elif node.op == "call_function" and node.target is torch._C._set_grad_enabled:
            arg = node.args[0]
            mode = recorded.get(arg, True) if isinstance(arg, fx.Node) else bool(arg)
        elif node.op == "call_function" and node.target is ENTER_INFERENCE_MODE:
            inference.append(mode)
            mode = mode and not node.args[0]
        elif node.op == "call_function" and node.target is EXIT_INFERENCE_MODE and inference:
            mode = inference.pop()
        if node.op == "placeholder":
            rg = True  # unknown without example inputs: assume it may
        elif node.op == "get_attr":
            rg = bool(getattr(_fetch(gm, node), "requires_grad", False))
        else:
            rg = mode and any(facts.requires_grad.get(a, False) for a in node.all_input_nodes)
            if node.op == "call_module":
                mod = submodule(gm, str(node.target))
                rg = rg or (mode and any(p.requires_grad for p in mod.parameters()))
        facts.requires_grad[node] = rg
    return facts


def _fetch(gm: fx.GraphModule, node: fx.Node) -> Any:
    obj: Any = gm
    for atom in str(node.target).split("."):
        obj = getattr(obj, atom, None)
    return obj


# ---------------------------------------------------------------------------------------
# Findings: which writes are unsafe, and why


@dataclass
class Finding:
    write: fx.Node
    target: fx.Node
    kind: str  # saved, leaf, view, data, data-safe, input-static
    reason: str
    savers: list[tuple[fx.Node, str, fx.Node | None]] = field(default_factory=list)
    state: bool = False  # the written memory is state a caller observes
    no_grad_write: bool = False


def _q(text: str) -> str:
    return f"`{text}`"


def _at(node: fx.Node) -> str:
    loc = location(node)
    return f" at {loc}" if loc else ""


def _write_text(node: fx.Node) -> str:
    return source_line(node) or render_node(node)


def _op_text(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"self.{node.target}"
    if node.op == "call_method":
        return str(node.target)
    if node.target in (operator.mul, operator.imul):
        return "*"
    return getattr(node.target, "__name__", render_node(node))


def _saver_text(saver: fx.Node, role: str, arg: fx.Node | None) -> str:
    what = (
        "its output"
        if role == "output"
        else (
            f"its input {_q(arg.name)}"
            if arg is not None
            else "a tensor sharing the written memory"
        )
    )
    return f"{_q(_op_text(saver))}{_at(saver)} saved {what}"


def _leaf_text(root: fx.Node) -> str:
    if root.op == "get_attr":
        return f"parameter {_q('self.' + str(root.target))}"
    return f"input {_q(str(root.target))}"


def _multi_views_by_root(aliases: dict) -> dict[fx.Node, list[fx.Node]]:
    """Nodes that are pieces of unbind/split/chunk outputs, grouped by the memory they view."""
    out: dict[fx.Node, list[fx.Node]] = {}
    for x, a in aliases.items():
        if any(s.kind == "multi" for s in a.steps):
            out.setdefault(a.root, []).append(x)
    return out


def _stale_multi_views(
    w: fx.Node, pieces: list[fx.Node], obs: Observation, order: dict
) -> fx.Node | None:
    """The unbind/split/chunk node whose outputs, read after `w`, alias what `w` writes."""
    pos = order[w]
    for x in pieces:
        if order.get(x, pos) >= pos or x is w:
            continue
        v = obs.values.get(x)
        if not (isinstance(v, torch.Tensor) and v.requires_grad):
            continue
        if any(order.get(u, -1) > pos for u in x.users):
            src = x.args[0] if x.args and isinstance(x.args[0], fx.Node) else x
            while src.op == "call_function" and src.target is operator.getitem:
                src = src.args[0]
            return src
    return None


def exact_findings(gm: fx.GraphModule, obs: Observation) -> tuple[list[Finding], dict]:
    aliases = alias_map(gm, obs.values)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    pieces = _multi_views_by_root(aliases)
    out: list[Finding] = []
    for w in gm.graph.nodes:
        if w not in obs.bumped:
            continue
        target = writes_to(w, gm)
        if not isinstance(obs.values.get(target), torch.Tensor):
            continue  # `n += 1` on a Python number
        a = aliases.get(target, Alias(target))
        root = a.root
        rv = obs.values.get(root)
        grad_on = obs.grad_on.get(w, True)
        leafish = root.op in ("placeholder", "get_attr")
        rg = isinstance(rv, torch.Tensor) and rv.requires_grad
        state = leafish and not (rg and grad_on)
        through_data = any(s.kind == "data" for s in a.steps) or (
            w.op == "call_function" and w.target is builtins.setattr
        )
        wt = f"{_q(_write_text(w))}{_at(w)}"
        if w in obs.refused:
            msg = obs.refused[w]
            if "leaf Variable" in msg:
                kind, why = (
                    "leaf",
                    f"{wt} writes into {_leaf_text(root)}, a leaf that requires grad, while grad mode is on",
                )
                if "view of a leaf" in msg:
                    why = f"{wt} writes into a view of {_leaf_text(root)}, a leaf that requires grad, while grad mode is on"
            elif "out=" in msg:
                kind, why = (
                    "leaf",
                    f"{wt} writes through `out=` while an argument requires grad, which autograd does not support",
                )
            elif "more than one element" in msg:
                kind, why = "view", f"{wt} writes into an expanded tensor whose elements overlap"
            elif "is a view" in msg or "view was created" in msg:
                kind = "view"
                src = "a view autograd refuses to write through"
                if "multiple" in msg:
                    src = "an output of a function that returns several views (`unbind`/`split`/`chunk`)"
                elif "no grad" in msg or "no_grad" in msg:
                    src = "a view created in no_grad mode"
                why = f"{wt} writes into {src}"
            else:
                continue  # not an autograd refusal; eager fails the same way
            out.append(Finding(w, target, kind, why, state=False))
            continue
        if through_data:
            first = obs.saved_before.get(w, 0)
            tv = (
                obs.values.get(target)
                if w.target is not builtins.setattr
                else obs.values.get(w.args[0])
            )
            clobbered = [
                i for i in range(first) if i in obs.needed and obs.saved[i].storage == _storage(tv)
            ] + [i for i in obs.bumped[w] if i in obs.needed]
            savers = [(obs.saved[i].node, obs.saved[i].role, obs.saved[i].arg) for i in clobbered]
            if savers:
                s = savers[0]
                why = f"{_saver_text(*s)}; {wt} overwrites it through `.data`, so its gradient is silently wrong"
                # Writing a parameter or buffer through `.data` (weight clipping, a manual
                # update) is meant to change it: the write stays, the saver gets a copy.
                out.append(Finding(w, target, "data", why, savers, state=state or leafish))
            else:
                why = f"{wt} writes through `.data`: autograd does not see this write, so gradients treat the tensor as unchanged; nothing backward needs is overwritten"
                out.append(Finding(w, target, "data-safe", why, state=state))
            continue
        stale = _stale_multi_views(w, pieces.get(root, []), obs, order)
        if stale is not None and grad_on:
            why = (
                f"{wt} writes into memory that {_q(_fn_name(stale) or stale.name)}{_at(stale)} "
                "split into several views, and those views are read after the write, "
                "which autograd refuses"
            )
            out.append(Finding(w, target, "view", why, state=state))
            continue
        hit = [i for i in obs.bumped[w] if i in obs.needed]
        if not hit:
            continue  # nothing backward unpacks was changed: eager is right and saves memory
        savers = []
        for i in hit:
            s = obs.saved[i]
            key = (s.node, s.role, s.arg)
            if key not in savers:
                savers.append(key)
        why = f"{_saver_text(*savers[0])}; {wt} overwrites it"
        if len(savers) > 1:
            why += f" (and {len(savers) - 1} more saved value{'s' if len(savers) > 2 else ''})"
        no_grad_write = not grad_on and rg
        out.append(
            Finding(w, target, "saved", why, savers, state=state, no_grad_write=no_grad_write)
        )
    return out, aliases


def _made_under_no_grad(target: fx.Node, root: fx.Node, facts: StaticFacts) -> bool:
    """Whether a view between root and target was taken with grad mode off."""
    n: Any = target
    while isinstance(n, fx.Node) and n is not root:
        if not facts.grad_on.get(n, True):
            return True
        n = n.args[0] if n.args else None
    return False


def static_findings(gm: fx.GraphModule) -> tuple[list[Finding], dict]:
    aliases = alias_map(gm, None)
    facts = _static_facts(gm)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    out: list[Finding] = []
    saves: dict[fx.Node, list[tuple[fx.Node, str, fx.Node | None, fx.Node]]] = {}  # by root
    for w in gm.graph.nodes:
        target = writes_to(w, gm)
        if target is not None and not _maybe_tensor(target):
            target = None
        if target is not None:
            a = aliases.get(target, Alias(target))
            root = a.root
            grad_on = facts.grad_on[w]
            wt = f"{_q(_write_text(w))}{_at(w)}"
            through_data = any(s.kind == "data" for s in a.steps) or w.target is builtins.setattr
            hit = [s for s in saves.get(root, ()) if order[s[0]] < order[w]]
            param = root.op == "get_attr" and facts.requires_grad.get(root, False)
            finding = None
            if through_data:
                if hit:
                    why = f"{_saver_text(*hit[0][:3])}; {wt} may overwrite it through `.data`, so its gradient would be silently wrong"
                    finding = Finding(
                        w,
                        target,
                        "data",
                        why,
                        [h[:3] for h in hit],
                        state=root.op != "call_module" and root.op in ("placeholder", "get_attr"),
                    )
                else:
                    why = f"{wt} writes through `.data`: autograd does not see this write, so gradients treat the tensor as unchanged"
                    finding = Finding(w, target, "data-safe", why)
            elif param and grad_on:
                finding = Finding(
                    w,
                    target,
                    "leaf",
                    f"{wt} writes into {_leaf_text(root)}, a leaf that requires grad, while grad mode is on",
                )
            elif root.op == "placeholder" and (hit or grad_on):
                why = f"{wt} writes into {_leaf_text(root)}: unsafe if it requires grad"
                if hit:
                    why = f"{_saver_text(*hit[0][:3])}; {wt} overwrites it"
                finding = Finding(w, target, "input-static", why)
            elif grad_on and _made_under_no_grad(target, root, facts):
                why = (
                    f"{wt} writes into a view made under no_grad: eager refuses it if "
                    f"{_q(root.name)} requires grad"
                )
                finding = Finding(w, target, "input-static", why)
            elif any(s.kind == "expand" for s in a.steps):
                # Eager refuses a write into overlapping elements, in any grad mode; whether
                # this expand overlaps depends on sizes only example inputs show.
                why = f"{wt} writes into an expanded tensor: eager refuses it if elements overlap"
                finding = Finding(w, target, "input-static", why)
            elif (
                any(s.kind == "multi" for s in a.steps)
                and grad_on
                and facts.requires_grad.get(root, True)
            ):
                finding = Finding(
                    w,
                    target,
                    "view",
                    f"{wt} writes into an output of a function that returns several views (`unbind`/`split`/`chunk`)",
                )
            elif hit and grad_on:
                why = f"{_saver_text(*hit[0][:3])}; {wt} overwrites it"
                state = root.op == "get_attr"
                finding = Finding(w, target, "saved", why, [h[:3] for h in hit], state=state)
            if finding is not None:
                out.append(finding)
        if facts.requires_grad.get(w, False):
            for role, arg in _static_saves(w, gm):
                node = w if role == "output" else arg
                if node is None or not _maybe_tensor(node):
                    continue
                root = aliases.get(node, Alias(node)).root
                saves.setdefault(root, []).append((w, role, arg, root))
    return out, aliases


def _maybe_tensor(node: fx.Node) -> bool:
    """False for nodes that certainly hold Python numbers (sizes and arithmetic on them)."""
    if node.op == "call_method" and node.target in ("size", "dim", "numel", "item", "tolist"):
        return False
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] not in ("shape", "ndim", "dtype", "device")
    if node.op == "call_function" and node.target in (builtins.len, operator.getitem):
        base = node.args[0]
        if isinstance(base, fx.Node) and not _maybe_tensor(base):
            return False
    return True


# ---------------------------------------------------------------------------------------
# Rewrites


class CannotRewrite(Exception):
    """A rewrite that cannot be proven; the message says why."""


_MODULE_FUNCTIONAL = {
    nn.ReLU: lambda m: (F.relu, {}),
    nn.ReLU6: lambda m: (F.relu6, {}),
    nn.LeakyReLU: lambda m: (F.leaky_relu, {"negative_slope": m.negative_slope}),
    nn.Hardtanh: lambda m: (F.hardtanh, {"min_val": m.min_val, "max_val": m.max_val}),
    nn.ELU: lambda m: (F.elu, {"alpha": m.alpha}),
    nn.CELU: lambda m: (F.celu, {"alpha": m.alpha}),
    nn.SELU: lambda m: (F.selu, {}),
    nn.SiLU: lambda m: (F.silu, {}),
    nn.Hardswish: lambda m: (F.hardswish, {}),
    nn.Hardsigmoid: lambda m: (F.hardsigmoid, {}),
    nn.Mish: lambda m: (F.mish, {}),
    nn.Threshold: lambda m: (F.threshold, {"threshold": m.threshold, "value": m.value}),
}


def _twin(gm: fx.GraphModule, w: fx.Node, base: fx.Node, values: dict | None) -> fx.Node | None:
    """Insert (before w) the out-of-place op computing w's result from `base`, or None."""
    graph = gm.graph
    args, kwargs = list(w.args), dict(w.kwargs)
    if "out" in kwargs and isinstance(kwargs["out"], fx.Node):
        del kwargs["out"]
        return graph.create_node(w.op, w.target, tuple(args), kwargs)
    if w.op == "call_method":
        name = str(w.target)
        if name in _NO_TWIN:
            return None
        rest = tuple(args[1:])
        if name == "zero_":
            return graph.create_node("call_function", torch.zeros_like, (base,), {})
        if name == "fill_":
            if rest and isinstance(rest[0], (int, float, bool)):
                return graph.create_node("call_function", torch.full_like, (base, rest[0]), {})
            return None
        plain = name[:-1]
        if not hasattr(torch.Tensor, plain):
            return None
        return graph.create_node("call_method", plain, (base, *rest), kwargs)
    if w.op == "call_function":
        if w.target in INPLACE_OPERATORS:
            return graph.create_node(
                "call_function", INPLACE_OPERATORS[w.target], (base, *args[1:]), kwargs
            )
        if w.target in (operator.setitem, builtins.setattr):
            return None
        name = getattr(w.target, "__name__", "")
        if "inplace" in kwargs:
            kwargs.pop("inplace")
            return graph.create_node("call_function", w.target, (base, *args[1:]), kwargs)
        if name.endswith("_"):
            mod = getattr(w.target, "__module__", None) or "torch"
            for ns in (F, torch) if mod.startswith("torch.nn") else (torch, F):
                fn = getattr(ns, name[:-1], None)
                if callable(fn):
                    return graph.create_node("call_function", fn, (base, *args[1:]), kwargs)
            return None
        from fxgrad.graph_utils import _inplace_param_index

        index = _inplace_param_index(w.target)
        if index is not None and index < len(args):
            args[index] = False
            return graph.create_node("call_function", w.target, (base, *args[1:]), kwargs)
        return None
    if w.op == "call_module":
        mod = submodule(gm, str(w.target))
        make = _MODULE_FUNCTIONAL.get(type(mod))
        if make is not None and not has_hooks(mod):
            fn, kw = make(mod)
            return graph.create_node("call_function", fn, (base,), kw)
        # The module itself, on a copy of its input: its hooks still run and see the
        # module they were registered on, and Dropout follows train()/eval() as before.
        copied = graph.call_method("clone", (base,))
        return graph.create_node("call_module", w.target, (copied, *args[1:]), kwargs)
    return None


def _keep_dtype(gm: fx.GraphModule, new: fx.Node, target: fx.Node, values: dict | None) -> fx.Node:
    """In-place ops keep their target's dtype; out-of-place ones promote. Cast back if so."""
    if values is None:
        return new
    tv = values.get(target)
    if not isinstance(tv, torch.Tensor):
        return new

    def meta(a: Any) -> Any:
        if isinstance(a, fx.Node):
            v = values.get(a) if a is not new else None
            return torch.empty_like(v, device="meta") if isinstance(v, torch.Tensor) else v
        return a

    try:
        args = fx.node.map_aggregate(new.args, meta)
        kwargs = fx.node.map_aggregate(new.kwargs, meta)
        if new.op == "call_method":
            res = getattr(args[0], new.target)(*args[1:], **kwargs)
        elif new.op == "call_function":
            res = new.target(*args, **kwargs)
        else:
            return new
    except Exception:
        return new
    if isinstance(res, torch.Tensor) and res.dtype != tv.dtype:
        # Cast to the written tensor's dtype as it is on each call, not the example's.
        with gm.graph.inserting_after(new):
            dtype = gm.graph.call_function(builtins.getattr, (target, "dtype"))
        with gm.graph.inserting_after(dtype):
            cast = gm.graph.call_method("to", (new, dtype))
        return cast
    return new


@dataclass
class Rewrite:
    after: str
    note: str = ""


def _check_replayable(s: Step, static: bool, what: str) -> None:
    """Refuse a view step that cannot be rebuilt on a new base (or not proven to be a view)."""
    if s.kind == "opaque":
        raise CannotRewrite(f"{what} shares the written memory through an op fxgrad cannot rebuild")
    if s.kind == "maybe" and static:
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
        steps = tuple(s for s in aliases[x].steps if s.kind != "data")
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
    static = values is None
    w, target = f.write, f.target
    a = aliases.get(target, Alias(target))
    root = a.root
    graph = gm.graph
    if f.state or f.no_grad_write or _savers_read_slices(f, aliases, root):
        return _clone_for_savers(gm, f, root)
    if w.op == "call_function" and w.target is builtins.setattr:
        if w.args[1] != "data" or not isinstance(w.args[2], fx.Node):
            raise CannotRewrite("only `.data = tensor` assignments can be rewritten")
        if a.steps:
            raise CannotRewrite("the tensor whose `.data` is replaced is itself a view")
        new = w.args[2]
        _repoint(gm, w, root, aliases, new, w, static, set(), {})
        graph.erase_node(w)
        return Rewrite(f"{root.name} = {new.name}", "gradients now flow to the assigned tensor")
    steps = tuple(s for s in a.steps if s.kind != "data")
    if any(s.kind == "expand" for s in steps):
        if values is None or w not in (values or {}):
            raise CannotRewrite("the write goes into an expanded view")
        with graph.inserting_before(w):
            new = _twin(gm, w, target, values)
        if new is None:
            raise CannotRewrite("the write into an expanded view has no out-of-place form")
        for u in list(w.users) + [u for u in target.users if u is not w and _after(u, w)]:
            u.replace_input_with(w if w in u.all_input_nodes else target, new)
        graph.erase_node(w)
        return Rewrite(
            f"{new.name} = {render_node(new)}", "the base is not updated: eager refuses this write"
        )
    if not steps:
        with graph.inserting_before(w):
            new = _twin(gm, w, root, values)
        if new is not None:
            new = _keep_dtype(gm, new, target, values)
            _repoint(gm, w, root, aliases, new, new, static, set(), {})
            for u in list(w.users):
                u.replace_input_with(w, new)
            if not w.users:
                graph.erase_node(w)
            note = ""
            if f.kind == "leaf" and root.op in ("placeholder", "get_attr"):
                note = f"{_leaf_text(root)} itself is no longer changed (eager refused the write)"
            elif f.kind == "data":
                note = "gradients now see the write"
            return Rewrite(_plain_after(w, new), note)
    # A clone of the base, the same write on the clone's view, readers moved to the clone.
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


def _savers_read_slices(f: Finding, aliases: dict[fx.Node, Alias], root: fx.Node) -> bool:
    """Whether every op that saved the overwritten memory saved a view of it it was given.

    Then handing each such op a copy of its slice (`cell(x[t], h[t].clone())`) is enough,
    and far cheaper than a copy of the whole tensor at every write: a recurrence written
    into slots of one preallocated tensor (`h[t + 1] = cell(x[t], h[t])`) keeps its writes
    in place and copies one slot per step.
    """
    if f.kind != "saved" or not f.savers:
        return False
    for _saver, role, arg in f.savers:
        if role != "input" or arg is None:
            return False
        a = aliases.get(arg)
        if a is None or a.root is not root or not a.steps:
            return False
        if any(s.kind in ("opaque", "expand", "data") for s in a.steps):
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
    if m and w.op == "call_method" and new.op == "call_method":
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


# ---------------------------------------------------------------------------------------
# The pass


def run(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    changes: list[Change] = []
    done: set[str] = set()
    exact = ctx.example_inputs is not None
    how = "decided on example inputs" if exact else "decided statically"
    todo: list[Finding] = []
    for _ in range(MAX_ROUNDS):
        if exact:
            obs = ctx.observe(gm)
            findings, aliases = exact_findings(gm, obs)
            values: dict | None = obs.values
        else:
            findings, aliases = static_findings(gm)
            values = None
        todo = [f for f in findings if f.write.name not in done]
        if not todo:
            break
        # Earliest write first, and one per written tensor (alias root) per round: rewriting
        # it may make later writes into the same memory safe (they then target a fresh
        # tensor nobody saved), and the next round re-decides them on the new graph. Writes
        # into different memory do not affect each other's rewrite, so they share a round.
        batch: list[Finding] = []
        roots: set[fx.Node] = set()
        for f in todo:
            root = aliases.get(f.target, Alias(f.target)).root
            if root not in roots:
                roots.add(root)
                batch.append(f)
        saved_graph = copy.deepcopy(gm.graph)
        had_users = {n for n in gm.graph.nodes if n.users}
        round_changes: list[Change] = []
        failed: tuple[Finding, CannotRewrite] | None = None
        for f in batch:
            before, where, name = _write_text(f.write), location(f.write), f.write.name
            if f.kind in ("data-safe", "input-static"):
                note = f"{f.reason} ({how})"
                if f.kind == "input-static":
                    note += "; pass example inputs to decide"
                round_changes.append(Change(CODE, name, before, "", where, note, applied=False))
                continue
            existing = set(gm.graph.nodes)
            meta = {k: f.write.meta[k] for k in _INHERITED_META if k in f.write.meta}
            try:
                r = rewrite(gm, f, aliases, values)
            except CannotRewrite as e:
                failed = (f, e)
                break
            for n in gm.graph.nodes:  # the rewrite's nodes name the user's line and block
                if n not in existing:
                    for k, v in meta.items():
                        n.meta.setdefault(k, v)
            note = f"{f.reason} ({how})"
            if r.note:
                note += f"; {r.note}"
            round_changes.append(Change(CODE, name, before, r.after, where, note))
        if failed is not None:
            # A rewrite may fail half-way: undo the whole round, record the failure, and
            # let the next round redo the others on the restored graph.
            gm.graph = saved_graph
            f, e = failed
            done.add(f.write.name)
            note = f"{f.reason} ({how}); left as is: {e}"
            changes.append(
                Change(
                    CODE,
                    f.write.name,
                    _write_text(f.write),
                    "",
                    location(f.write),
                    note,
                    applied=False,
                )
            )
            continue
        _drop_dead(gm, had_users)
        done.update(c.node for c in round_changes)
        changes.extend(round_changes)
    else:
        if exact:
            findings, _ = exact_findings(gm, ctx.observe(gm))
        else:
            findings, _ = static_findings(gm)
        for f in [f for f in findings if f.write.name not in done]:
            # never silently: say which writes were not reached
            changes.append(
                Change(
                    CODE,
                    f.write.name,
                    _write_text(f.write),
                    "",
                    location(f.write),
                    f"{f.reason} ({how}); left as is: fxgrad stopped after {MAX_ROUNDS} rounds "
                    "of rewrites",
                    applied=False,
                )
            )
    return changes


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


PASS = Pass(
    code="FXG101",
    name="inplace-op",
    run=run,
    doc=__doc__,
    applies=applies,
    repairs_errors=(refused_write,),
)
