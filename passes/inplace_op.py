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
import dataclasses
import enum
import operator
import re
from collections.abc import Callable
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
    _inplace_param_index,
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


class ViewOp(enum.Enum):
    """What a node of the shape f(x, ...) makes of x, as far as its op tells."""

    VIEW = "view"  # a view, whatever x is (transpose, select, `.T`)
    MAYBE = "maybe"  # a view or a copy, depending on x (reshape, contiguous, to)
    MULTI = "multi"  # several views (unbind, split, chunk)
    DATA = "data"  # `.data`: the same memory, outside autograd
    GETITEM = "getitem"  # indexing: a view, a copy, or one output of a MULTI call


_VIEW_METHODS = {
    "view", "view_as", "transpose", "t", "permute", "unsqueeze", "squeeze", "select",
    "narrow", "diagonal", "expand", "expand_as", "broadcast_to", "unflatten", "movedim",
    "moveaxis", "swapaxes", "swapdims", "unfold", "as_strided", "detach", "alias",
    "view_as_real", "view_as_complex",
}  # fmt: skip
# Ops that return a view or the tensor itself on some inputs and a copy on others.
_MAYBE_VIEW_METHODS = {
    "reshape", "reshape_as", "contiguous", "flatten", "to", "type", "type_as", "float",
    "double", "half", "bfloat16", "cpu", "cuda", "ravel",
}  # fmt: skip
_MULTI_VIEW = {
    "unbind", "split", "chunk", "tensor_split", "split_with_sizes", "hsplit", "vsplit", "dsplit",
}  # fmt: skip
_VIEW_ATTRS = {"T", "mT", "H", "mH", "real", "imag"}
# Each view op by name (a method, or a torch function of the same name).
_VIEW_OPS: dict[str, ViewOp] = {
    **dict.fromkeys(_VIEW_METHODS, ViewOp.VIEW),
    **dict.fromkeys(_MAYBE_VIEW_METHODS, ViewOp.MAYBE),
    **dict.fromkeys(_MULTI_VIEW, ViewOp.MULTI),
}
# Attributes that are views: `x.T`, `x.real`, and `x.data` outside autograd.
_VIEW_ATTR_OPS: dict[str, ViewOp] = {**dict.fromkeys(_VIEW_ATTRS, ViewOp.VIEW), "data": ViewOp.DATA}
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


def _view_kind(node: fx.Node) -> ViewOp | None:
    """What a node of the shape f(x, ...) makes of x; None when it is no view op."""
    if node.op not in ("call_method", "call_function") or not node.args:
        return None
    if not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_function" and node.target is builtins.getattr:
        return _VIEW_ATTR_OPS.get(node.args[1])
    if node.op == "call_function" and node.target is operator.getitem:
        return ViewOp.GETITEM
    return _VIEW_OPS.get(_fn_name(node))


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


class StepKind(enum.Enum):
    """How one step of an alias chain relates to its base, which decides how it replays."""

    VIEW = "view"  # a view on every input: replayed as written
    MAYBE = "maybe"  # a view or a copy depending on the input: replayed once proven a view
    MULTI = "multi"  # one output of unbind/split/chunk, which autograd refuses to write into
    EXPAND = "expand"  # expand/expand_as/broadcast_to: its elements may overlap
    DATA = "data"  # `.data`: the same memory outside autograd; nothing to replay
    OPAQUE = "opaque"  # memory shared through an op fxgrad cannot replay


@dataclass(frozen=True)
class Step:
    """One view op to replay on a new base: `base.<target>(*args, **kwargs)`."""

    op: str
    target: Any
    args: tuple
    kwargs: tuple = ()
    kind: StepKind = StepKind.VIEW
    index: int | None = None  # which output of a multi-view call (unbind/split/chunk)

    def __post_init__(self) -> None:
        # A plain string here would compare unequal to every StepKind and replay as a view.
        if not isinstance(self.kind, StepKind):
            raise TypeError(f"Step.kind must be a StepKind, not {self.kind!r}")

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

    def has(self, kind: StepKind) -> bool:
        """Whether a step of this chain is of `kind`."""
        return any(s.kind is kind for s in self.steps)


# View ops whose elements may overlap (a stride of 0): eager refuses writes into them.
_EXPANDING = frozenset({"expand", "expand_as", "broadcast_to"})


def _step_of(node: fx.Node, kind: StepKind) -> Step:
    if kind is StepKind.DATA:
        return Step("call_function", builtins.getattr, ("data",), kind=StepKind.DATA)
    if node.target is operator.getitem or node.target is builtins.getattr:
        return Step("call_function", node.target, tuple(node.args[1:]), kind=StepKind.VIEW)
    if _fn_name(node) in _EXPANDING:
        kind = StepKind.EXPAND
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
    return [
        Step(node.op, node.target, rest, kwargs, kind=StepKind.MULTI, index=i) for i in range(n)
    ]


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
    aliases = _Aliases(gm, values)
    for node in gm.graph.nodes:
        aliases.add(node)
    return aliases.of


class _Aliases:
    """alias_map's answer, built in graph order: each node's alias from its inputs' aliases."""

    def __init__(self, gm: fx.GraphModule, values: dict | None) -> None:
        self.gm, self.values = gm, values
        self.of: dict[fx.Node, Alias] = {}
        # The aliases of each output of an unbind/split/chunk call (or a slice of them),
        # by the node holding them; None where one cannot be told.
        self.pieces: dict[fx.Node, list[Alias | None]] = {}

    def get(self, node: fx.Node) -> Alias:
        return self.of.get(node, Alias(node))

    def add(self, node: fx.Node) -> None:
        target = writes_to(node, self.gm)
        if target is not None and not (
            node.op == "call_function" and node.target in (operator.setitem, builtins.setattr)
        ):
            self.of[node] = self.get(target)  # an in-place op returns its target
            return
        op = _view_kind(node)
        if op is not None:
            self.of[node] = _ALIAS_RULES[op](self, node)
        elif self.values is not None:
            self.of[node] = _opaque_alias(node, self.values, self.of)
        else:
            self.of[node] = Alias(node)

    def view(self, node: fx.Node, kind: StepKind) -> Alias:
        """`node` as one more step on its base's chain, unless the observed run shows a copy."""
        base = node.args[0]
        parent = self.get(base)
        if self.values is not None:
            v, b = self.values.get(node), self.values.get(base)
            if not isinstance(v, torch.Tensor) or not isinstance(b, torch.Tensor):
                return Alias(node)
            if v is b:
                return parent  # the op returned its input itself
            if _storage(v) is None or _storage(v) != _storage(b):
                return Alias(node)  # it copied
            if kind is StepKind.MAYBE:
                kind = StepKind.VIEW
        return Alias(parent.root, parent.steps + (_step_of(node, kind),))

    def getitem(self, node: fx.Node) -> Alias:
        """`x[i]`: one output of a multi-view call, a view, or a copy (advanced indexing)."""
        base, index = node.args[0], node.args[1]
        if base in self.pieces:
            return self._piece(node, self.pieces[base], index)
        basic = _basic_index(index)
        if basic is False:
            return Alias(node)
        return self.view(node, StepKind.VIEW if basic else StepKind.MAYBE)

    def _piece(self, node: fx.Node, pieces: list[Alias | None], index: Any) -> Alias:
        if isinstance(index, int) and 0 <= index < len(pieces):
            piece = pieces[index]
            return piece if piece is not None else Alias(node)
        if isinstance(index, int) and -len(pieces) <= index < 0:
            # `pieces[-1]`: the last piece of *this* call, whose position moves with the
            # input's size, so its step keeps the negative index as written.
            piece = pieces[index]
            if piece is None or not piece.steps or piece.steps[-1].index is None:
                return Alias(node)
            last = dataclasses.replace(piece.steps[-1], index=index)
            return Alias(piece.root, piece.steps[:-1] + (last,))
        if isinstance(index, slice):
            self.pieces[node] = pieces[index]
        return Alias(node)

    def multi(self, node: fx.Node) -> Alias:
        """unbind/split/chunk: the node holds several views, aliased one by one at getitem."""
        parent = self.get(node.args[0])
        values = self.values
        steps = _multi_steps(node, values)
        n = len(steps) if steps else (len(values[node]) if values and node in values else 0)
        opaque = Step("call_method", "?", (), kind=StepKind.OPAQUE)
        self.pieces[node] = [
            Alias(parent.root, parent.steps + ((steps[i],) if steps else (opaque,)))
            for i in range(n)
        ]
        return Alias(node)


# How each kind of view op extends its base's alias chain.
_ALIAS_RULES: dict[ViewOp, Callable[[_Aliases, fx.Node], Alias]] = {
    ViewOp.VIEW: lambda aliases, node: aliases.view(node, StepKind.VIEW),
    ViewOp.MAYBE: lambda aliases, node: aliases.view(node, StepKind.MAYBE),
    ViewOp.DATA: lambda aliases, node: aliases.view(node, StepKind.DATA),
    ViewOp.GETITEM: _Aliases.getitem,
    ViewOp.MULTI: _Aliases.multi,
}


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
                parent.root, parent.steps + (Step(node.op, node.target, (), kind=StepKind.OPAQUE),)
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
    if (
        node.op == "call_function"
        and name + "_" in STATIC_SAVES
        and writes_to(node, gm) is not None
    ):
        name += "_"  # `F.elu(x, inplace=True)` runs elu_ (but `x += y` is iadd, not iadd_)
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


class FindingKind(enum.Enum):
    """Why a write is reported."""

    SAVED = "saved"  # it overwrites a value an op saved for backward
    LEAF = "leaf"  # it writes into a leaf that requires grad, or through `out=` into one
    VIEW = "view"  # it writes into a view autograd refuses to write through
    DATA = "data"  # through `.data`, it overwrites a value backward needs
    DATA_SAFE = "data-safe"  # through `.data`, overwriting nothing backward needs
    INPUT_STATIC = "input-static"  # without example inputs: unsafe if an input requires grad


@dataclass
class Finding:
    write: fx.Node
    target: fx.Node
    kind: FindingKind
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
        if a.has(StepKind.MULTI):
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


@dataclass(frozen=True)
class _Site:
    """One in-place write, with what every decision about it reads."""

    write: fx.Node
    target: fx.Node
    alias: Alias  # of the written tensor
    grad_on: bool  # grad mode at the write
    text: str  # "`h.mul_(2)` at model.py:3"

    @classmethod
    def of(cls, w: fx.Node, target: fx.Node, aliases: dict, grad_on: bool, **more: Any) -> Any:
        alias = aliases.get(target, Alias(target))
        return cls(w, target, alias, grad_on, f"{_q(_write_text(w))}{_at(w)}", **more)

    @property
    def root(self) -> fx.Node:
        return self.alias.root

    @property
    def through_data(self) -> bool:
        """Whether it writes through `.data` (a view of it, or `x.data = ...`)."""
        return self.alias.has(StepKind.DATA) or self.write.target is builtins.setattr

    def finding(self, kind: FindingKind, why: str, *args: Any, **kwargs: Any) -> Finding:
        return Finding(self.write, self.target, kind, why, *args, **kwargs)


# ---------------------------------------------------------------------------------------
# Exact mode: what the observed run shows

_VIEW_REFUSED = "is a view|view was created"
_LEAF_WRITE = "a leaf that requires grad, while grad mode is on"
# How autograd's refusal of a write reads as a finding: the patterns that must all occur in
# its message (first match wins) -> the kind, and the reason from the write's text and its
# root. A message none matches is no autograd refusal: eager fails the same way, and the
# write is not reported.
_REFUSED: dict[tuple[str, ...], tuple[FindingKind, Callable[[str, fx.Node], str]]] = {
    ("leaf Variable", "view of a leaf"): (
        FindingKind.LEAF,
        lambda wt, root: f"{wt} writes into a view of {_leaf_text(root)}, {_LEAF_WRITE}",
    ),
    ("leaf Variable",): (
        FindingKind.LEAF,
        lambda wt, root: f"{wt} writes into {_leaf_text(root)}, {_LEAF_WRITE}",
    ),
    ("out=",): (
        FindingKind.LEAF,
        lambda wt, _root: (
            f"{wt} writes through `out=` while an argument requires grad, "
            "which autograd does not support"
        ),
    ),
    ("more than one element",): (
        FindingKind.VIEW,
        lambda wt, _root: f"{wt} writes into an expanded tensor whose elements overlap",
    ),
    (_VIEW_REFUSED, "multiple"): (
        FindingKind.VIEW,
        lambda wt, _root: (
            f"{wt} writes into an output of a function that returns several "
            "views (`unbind`/`split`/`chunk`)"
        ),
    ),
    (_VIEW_REFUSED, "no grad|no_grad"): (
        FindingKind.VIEW,
        lambda wt, _root: f"{wt} writes into a view created in no_grad mode",
    ),
    (_VIEW_REFUSED,): (
        FindingKind.VIEW,
        lambda wt, _root: f"{wt} writes into a view autograd refuses to write through",
    ),
}


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
        site = _Site.of(w, target, aliases, obs.grad_on.get(w, True))
        finding = _exact_finding(site, obs, pieces.get(site.root, []), order)
        if finding is not None:
            out.append(finding)
    return out, aliases


def _exact_finding(
    site: _Site, obs: Observation, pieces: list[fx.Node], order: dict
) -> Finding | None:
    """Why the write makes eager autograd fail or go wrong on the observed run; None if safe."""
    if site.write in obs.refused:
        return _refused(site, obs.refused[site.write])
    rv = obs.values.get(site.root)
    leafish = site.root.op in ("placeholder", "get_attr")
    rg = isinstance(rv, torch.Tensor) and rv.requires_grad
    state = leafish and not (rg and site.grad_on)
    if site.through_data:
        return _exact_data(site, obs, state=state, leafish=leafish)
    stale = _stale_multi_views(site.write, pieces, obs, order)
    if stale is not None and site.grad_on:
        why = (
            f"{site.text} writes into memory that {_q(_fn_name(stale) or stale.name)}"
            f"{_at(stale)} split into several views, and those views are read after the "
            "write, which autograd refuses"
        )
        return site.finding(FindingKind.VIEW, why, state=state)
    return _exact_saved(site, obs, state=state, no_grad_write=not site.grad_on and rg)


def _refused(site: _Site, message: str) -> Finding | None:
    """The finding for a write autograd refused, told apart by the refusal's message."""
    for patterns, (kind, why) in _REFUSED.items():
        if all(re.search(p, message) for p in patterns):
            return site.finding(kind, why(site.text, site.root), state=False)
    return None  # not an autograd refusal; eager fails the same way


def _exact_data(site: _Site, obs: Observation, *, state: bool, leafish: bool) -> Finding:
    """A write through `.data`: wrong gradients if it overwrites what backward unpacks."""
    w = site.write
    first = obs.saved_before.get(w, 0)
    tv = obs.values.get(site.target if w.target is not builtins.setattr else w.args[0])
    clobbered = [
        i for i in range(first) if i in obs.needed and obs.saved[i].storage == _storage(tv)
    ] + [i for i in obs.bumped[w] if i in obs.needed]
    savers = [(obs.saved[i].node, obs.saved[i].role, obs.saved[i].arg) for i in clobbered]
    if not savers:
        why = (
            f"{site.text} writes through `.data`: autograd does not see this write, so "
            "gradients treat the tensor as unchanged; nothing backward needs is overwritten"
        )
        return site.finding(FindingKind.DATA_SAFE, why, state=state)
    why = (
        f"{_saver_text(*savers[0])}; {site.text} overwrites it through `.data`, so its "
        "gradient is silently wrong"
    )
    # Writing a parameter or buffer through `.data` (weight clipping, a manual update) is
    # meant to change it: the write stays, the saver gets a copy.
    return site.finding(FindingKind.DATA, why, savers, state=state or leafish)


def _exact_saved(
    site: _Site, obs: Observation, *, state: bool, no_grad_write: bool
) -> Finding | None:
    """A write that bumps a saved value backward unpacks."""
    hit = [i for i in obs.bumped[site.write] if i in obs.needed]
    if not hit:
        return None  # nothing backward unpacks was changed: eager is right and saves memory
    savers: list[tuple[fx.Node, str, fx.Node | None]] = []
    for i in hit:
        s = obs.saved[i]
        key = (s.node, s.role, s.arg)
        if key not in savers:
            savers.append(key)
    why = f"{_saver_text(*savers[0])}; {site.text} overwrites it"
    if len(savers) > 1:
        why += f" (and {len(savers) - 1} more saved value{'s' if len(savers) > 2 else ''})"
    return site.finding(FindingKind.SAVED, why, savers, state=state, no_grad_write=no_grad_write)


# ---------------------------------------------------------------------------------------
# Static findings: from the graph alone, conservatively


def _made_under_no_grad(target: fx.Node, root: fx.Node, facts: StaticFacts) -> bool:
    """Whether a view between root and target was taken with grad mode off."""
    n: Any = target
    while isinstance(n, fx.Node) and n is not root:
        if not facts.grad_on.get(n, True):
            return True
        n = n.args[0] if n.args else None
    return False


# An op that may have saved a value, before a write: (op, role, arg, root of the value).
_Saved = tuple[fx.Node, str, fx.Node | None, fx.Node]


@dataclass(frozen=True)
class _StaticSite(_Site):
    """A write without example inputs, with the ops before it that may have saved its memory."""

    hit: tuple[_Saved, ...] = ()
    facts: StaticFacts = field(default_factory=StaticFacts)

    @property
    def savers(self) -> list[tuple[fx.Node, str, fx.Node | None]]:
        return [h[:3] for h in self.hit]

    @property
    def saver_text(self) -> str:
        return _saver_text(*self.hit[0][:3])

    @property
    def into_param(self) -> bool:
        return self.root.op == "get_attr" and self.facts.requires_grad.get(self.root, False)


def _static_data(s: _StaticSite) -> Finding:
    if s.hit:
        why = (
            f"{s.saver_text}; {s.text} may overwrite it through `.data`, so its gradient "
            "would be silently wrong"
        )
        state = s.root.op in ("placeholder", "get_attr")
        return s.finding(FindingKind.DATA, why, s.savers, state=state)
    why = (
        f"{s.text} writes through `.data`: autograd does not see this write, so gradients "
        "treat the tensor as unchanged"
    )
    return s.finding(FindingKind.DATA_SAFE, why)


def _static_input(s: _StaticSite) -> Finding:
    why = f"{s.text} writes into {_leaf_text(s.root)}: unsafe if it requires grad"
    if s.hit:
        why = f"{s.saver_text}; {s.text} overwrites it"
    return s.finding(FindingKind.INPUT_STATIC, why)


# Without example inputs, the first rule whose test holds decides a write: (test, finding).
_STATIC_RULES: tuple[
    tuple[Callable[[_StaticSite], bool], Callable[[_StaticSite], Finding]], ...
] = (
    (lambda s: s.through_data, _static_data),
    (
        lambda s: s.into_param and s.grad_on,
        lambda s: s.finding(
            FindingKind.LEAF, f"{s.text} writes into {_leaf_text(s.root)}, {_LEAF_WRITE}"
        ),
    ),
    (lambda s: s.root.op == "placeholder" and (bool(s.hit) or s.grad_on), _static_input),
    (
        lambda s: s.grad_on and _made_under_no_grad(s.target, s.root, s.facts),
        lambda s: s.finding(
            FindingKind.INPUT_STATIC,
            f"{s.text} writes into a view made under no_grad: eager refuses it if "
            f"{_q(s.root.name)} requires grad",
        ),
    ),
    (
        # Eager refuses a write into overlapping elements, in any grad mode; whether this
        # expand overlaps depends on sizes only example inputs show.
        lambda s: s.alias.has(StepKind.EXPAND),
        lambda s: s.finding(
            FindingKind.INPUT_STATIC,
            f"{s.text} writes into an expanded tensor: eager refuses it if elements overlap",
        ),
    ),
    (
        lambda s: (
            s.alias.has(StepKind.MULTI) and s.grad_on and s.facts.requires_grad.get(s.root, True)
        ),
        lambda s: s.finding(
            FindingKind.VIEW,
            f"{s.text} writes into an output of a function that returns several views "
            "(`unbind`/`split`/`chunk`)",
        ),
    ),
    (
        lambda s: bool(s.hit) and s.grad_on,
        lambda s: s.finding(
            FindingKind.SAVED,
            f"{s.saver_text}; {s.text} overwrites it",
            s.savers,
            state=s.root.op == "get_attr",
        ),
    ),
)


def static_findings(gm: fx.GraphModule) -> tuple[list[Finding], dict]:
    aliases = alias_map(gm, None)
    facts = _static_facts(gm)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    out: list[Finding] = []
    saves: dict[fx.Node, list[_Saved]] = {}  # by root
    for w in gm.graph.nodes:
        target = writes_to(w, gm)
        if target is not None and _maybe_tensor(target):
            root = aliases.get(target, Alias(target)).root
            hit = tuple(s for s in saves.get(root, ()) if order[s[0]] < order[w])
            site = _StaticSite.of(w, target, aliases, facts.grad_on[w], hit=hit, facts=facts)
            finding = _static_finding(site)
            if finding is not None:
                out.append(finding)
        if facts.requires_grad.get(w, False):
            _note_static_saves(gm, w, aliases, saves)
    return out, aliases


def _static_finding(s: _StaticSite) -> Finding | None:
    for applies, finding in _STATIC_RULES:
        if applies(s):
            return finding(s)
    return None


def _note_static_saves(
    gm: fx.GraphModule, w: fx.Node, aliases: dict, saves: dict[fx.Node, list[_Saved]]
) -> None:
    """Record, by the root of its memory, each value `w` may save for backward."""
    for role, arg in _static_saves(w, gm):
        node = w if role == "output" else arg
        if node is None or not _maybe_tensor(node):
            continue
        root = aliases.get(node, Alias(node)).root
        saves.setdefault(root, []).append((w, role, arg, root))


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


# The functional op an in-place activation module runs, with its settings, from the module.
_MODULE_FUNCTIONAL: dict[type, Callable[[nn.Module], tuple[Callable, dict]]] = {
    nn.ReLU: lambda _m: (F.relu, {}),
    nn.ReLU6: lambda _m: (F.relu6, {}),
    nn.LeakyReLU: lambda m: (F.leaky_relu, {"negative_slope": m.negative_slope}),
    nn.Hardtanh: lambda m: (F.hardtanh, {"min_val": m.min_val, "max_val": m.max_val}),
    nn.ELU: lambda m: (F.elu, {"alpha": m.alpha}),
    nn.CELU: lambda m: (F.celu, {"alpha": m.alpha}),
    nn.SELU: lambda _m: (F.selu, {}),
    nn.SiLU: lambda _m: (F.silu, {}),
    nn.Hardswish: lambda _m: (F.hardswish, {}),
    nn.Hardsigmoid: lambda _m: (F.hardsigmoid, {}),
    nn.Mish: lambda _m: (F.mish, {}),
    nn.Threshold: lambda m: (F.threshold, {"threshold": m.threshold, "value": m.value}),
}


def _twin(gm: fx.GraphModule, w: fx.Node, base: fx.Node) -> fx.Node | None:
    """Insert (before w) the out-of-place op computing w's result from `base`, or None."""
    kwargs = dict(w.kwargs)
    if "out" in kwargs and isinstance(kwargs["out"], fx.Node):
        del kwargs["out"]
        return gm.graph.create_node(w.op, w.target, tuple(w.args), kwargs)
    twin = _TWINS.get(w.op)
    return twin(gm, w, base) if twin is not None else None


def _method_twin(gm: fx.GraphModule, w: fx.Node, base: fx.Node) -> fx.Node | None:
    """`x.mul_(2)` -> `base.mul(2)`; `zero_`, `fill_(v)` -> `base.masked_fill(True, v)`.

    Filling keeps `base` in the graph (a zero gradient flows to it, and to a tensor `v`),
    as eager's in-place fill does: a fresh `zeros_like` would not require grad, and a
    caller's `loss.backward()` would then fail where eager's runs.
    """
    graph = gm.graph
    name = str(w.target)
    if name in _NO_TWIN:
        return None
    rest = tuple(w.args[1:])
    if name in ("zero_", "fill_"):
        value = 0 if name == "zero_" else (rest[0] if rest else w.kwargs.get("value"))
        if not isinstance(value, (int, float, bool, fx.Node)):
            return None
        every = graph.create_node("call_method", "new_ones", (base, ()), {"dtype": torch.bool})
        return graph.create_node("call_method", "masked_fill", (base, every, value), {})
    plain = name[:-1]
    if not hasattr(torch.Tensor, plain):
        return None
    return graph.create_node("call_method", plain, (base, *rest), dict(w.kwargs))


def _function_twin(gm: fx.GraphModule, w: fx.Node, base: fx.Node) -> fx.Node | None:
    """`x += 1`, `F.relu(x, inplace=True)`, `torch.relu_(x)` -> the out-of-place call."""
    graph = gm.graph
    args, kwargs = list(w.args), dict(w.kwargs)
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
    index = _inplace_param_index(w.target)
    if index is not None and index < len(args):
        args[index] = False
        return graph.create_node("call_function", w.target, (base, *args[1:]), kwargs)
    return None


def _module_twin(gm: fx.GraphModule, w: fx.Node, base: fx.Node) -> fx.Node:
    """`nn.ReLU(inplace=True)` -> `F.relu`; any other module runs on a copy of its input."""
    graph = gm.graph
    mod = submodule(gm, str(w.target))
    make = _MODULE_FUNCTIONAL.get(type(mod))
    if make is not None and not has_hooks(mod):
        fn, kw = make(mod)
        return graph.create_node("call_function", fn, (base,), kw)
    # The module itself, on a copy of its input: its hooks still run and see the
    # module they were registered on, and Dropout follows train()/eval() as before.
    copied = graph.call_method("clone", (base,))
    return graph.create_node("call_module", w.target, (copied, *w.args[1:]), dict(w.kwargs))


# The out-of-place twin of an in-place write, by how the write is called.
_TWINS: dict[str, Callable[[fx.GraphModule, fx.Node, fx.Node], fx.Node | None]] = {
    "call_method": _method_twin,
    "call_function": _function_twin,
    "call_module": _module_twin,
}


def _meta_result(node: fx.Node, values: dict, memo: dict[fx.Node, Any]) -> Any:
    """What `node` computes, on meta tensors: from the observed value of each input, or,
    for a node an earlier rewrite made (`h = h.mul(2)` for `h.mul_(2)`), from its own
    inputs in turn, so a second rewrite sees the dtypes the first one produces."""

    def meta(a: Any) -> Any:
        if not isinstance(a, fx.Node):
            return a
        if a in memo:
            return memo[a]
        v = values.get(a)
        if isinstance(v, torch.Tensor):
            memo[a] = torch.empty_like(v, device="meta")
        elif v is not None or a.op not in ("call_function", "call_method"):
            memo[a] = v
        else:
            memo[a] = _meta_result(a, values, memo)
        return memo[a]

    args = fx.node.map_aggregate(node.args, meta)
    kwargs = fx.node.map_aggregate(node.kwargs, meta)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return None


def _keep_dtype(gm: fx.GraphModule, new: fx.Node, target: fx.Node, values: dict | None) -> fx.Node:
    """In-place ops keep their target's dtype; out-of-place ones promote. Cast back if so."""
    if values is None:
        return new
    tv = values.get(target)
    if not isinstance(tv, torch.Tensor):
        return new

    memo: dict[fx.Node, Any] = {}
    try:
        res = _meta_result(new, values, memo)
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


# ---------------------------------------------------------------------------------------
# The pass


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


PASS = Pass(
    code="FXG101",
    name="inplace-op",
    run=run,
    doc=__doc__,
    applies=applies,
    repairs_errors=(refused_write,),
)
