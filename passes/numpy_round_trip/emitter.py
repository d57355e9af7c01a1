"""Emitting torch nodes, each run at once on the example values, so that every twin is
compared with what NumPy computed before anything is built on it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from fxgrad.passes.numpy_round_trip.helpers import _np, _Unmapped

_TORCH_DTYPES = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}


def _torch_dtype(np_dtype: Any) -> torch.dtype:
    name = _np().dtype(np_dtype).name
    if name not in _TORCH_DTYPES:
        raise _Unmapped(f"NumPy dtype {name} has no torch twin")
    return _TORCH_DTYPES[name]


class _Emitter:
    """Creates torch nodes before `at` and evaluates each on the example values."""

    def __init__(self, gm: fx.GraphModule, env: dict[fx.Node, Any]) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.env = env  # original nodes' example values, then the new nodes'
        self.created: list[fx.Node] = []
        self.tensors: set[fx.Node] = set()  # nodes holding translated NumPy values
        self.arbitrary: set[fx.Node] = set()  # `np.empty` twins: values not to compare
        self.at: fx.Node | None = None
        self.out_dtype: torch.dtype | None = None  # NumPy's result dtype for the current node
        self.anchor: fx.Node | None = None  # a traced tensor whose device the detour runs on
        self._devices: dict[fx.Node, fx.Node] = {}

    def _value(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: self.env[n])

    def _add(self, op: str, target: Any, args: tuple, kwargs: dict) -> fx.Node:
        with self.graph.inserting_before(self.at):
            node = self.graph.create_node(op, target, args, kwargs)
        if self.at is not None and "fxgrad_loc" in self.at.meta:
            node.meta["fxgrad_loc"] = self.at.meta["fxgrad_loc"]
        self.created.append(node)
        a, k = self._value(args), self._value(kwargs)
        try:
            with torch.no_grad():
                if op == "call_method":
                    value = getattr(a[0], target)(*a[1:], **k)
                elif op == "get_attr":
                    value = getattr(self.gm, target)
                else:
                    value = target(*a, **k)
        except Exception as e:
            raise _Unmapped(f"its torch twin raises {type(e).__name__} here") from e
        self.env[node] = value
        if isinstance(value, torch.Tensor) or (
            isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor)
        ):
            self.tensors.add(node)
        return node

    def erase_since(self, mark: int) -> None:
        """Remove the nodes created after `mark` (a translation that did not work out)."""
        gone = set(self.created[mark:])
        for node in reversed(self.created[mark:]):
            self.graph.erase_node(node)
            if node.op == "get_attr":
                assert isinstance(node.target, str)  # a get_attr's target names the attribute
                delattr(self.gm, node.target)
            self.tensors.discard(node)
            self.arbitrary.discard(node)
        del self.created[mark:]
        self._devices = {k: v for k, v in self._devices.items() if v not in gone}

    def device(self) -> fx.Node:
        """`t.device` of the traced tensor the detour starts from: where its twins run."""
        if self.anchor is None:
            raise _Unmapped("no traced tensor tells the device to make it on")
        node = self._devices.get(self.anchor)
        if node is None:
            node = self._devices[self.anchor] = self.f(builtins.getattr, self.anchor, "device")
        return node

    def constant(self, array: Any) -> fx.Node:
        """A tensor constant of the graph holding `array` (its memory, where torch can share it)."""
        _torch_dtype(array.dtype)
        if array.flags.writeable and all(st >= 0 for st in array.strides):
            tensor = torch.from_numpy(array)
        else:  # negative strides or a read-only array: torch cannot share that memory
            tensor = torch.from_numpy(_np().array(array, copy=True))
        i = 0
        while hasattr(self.gm, f"_numpy_constant{i}"):
            i += 1
        name = f"_numpy_constant{i}"
        setattr(self.gm, name, tensor)
        return self._add("get_attr", name, (), {})

    def f(self, target: Callable, *args: Any, **kwargs: Any) -> fx.Node:
        return self._add("call_function", target, args, kwargs)

    def m(self, name: str, obj: fx.Node, *args: Any, **kwargs: Any) -> fx.Node:
        return self._add("call_method", name, (obj, *args), kwargs)

    def val(self, node: Any) -> Any:
        return self.env[node] if isinstance(node, fx.Node) else node

    def ndim(self, node: fx.Node) -> int:
        return self.env[node].dim()

    def cast(self, node: Any, dtype: torch.dtype) -> Any:
        if node in self.tensors and isinstance(self.env[node], torch.Tensor):
            if self.env[node].dtype != dtype:
                return self.m("to", node, dtype)
        return node
