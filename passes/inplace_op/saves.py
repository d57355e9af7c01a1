"""Static mode: a table of what ops save for backward, and the grad facts of a graph.

Without example inputs nothing is observed, so what each op keeps for its backward comes
from this table, checked against autograd by tests/test_static_saves.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from fxgrad.graph_utils import ENTER_INFERENCE_MODE, EXIT_INFERENCE_MODE, submodule, writes_to
from fxgrad.passes.inplace_op.views import _view_kind


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
