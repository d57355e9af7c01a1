"""Parameters and buffers reached by any path are graph values, never constants.

fx turns `self.weight` into a graph read, but a forward can reach the same tensor without
an attribute read: `dict(self.named_parameters())["w"]`, `self.parameters()`, `getattr`
through a helper, a list built in `__init__`. fx then runs the op on the real tensor while
tracing and keeps its result as a constant: the weight gets no gradient and later updates
are never seen, silently. While fxgrad traces, a torch function mode watches every torch
call made from model code: a parameter or buffer of the traced tree among its arguments is
replaced by the graph's read of it, so the op is recorded like any other.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from torch import fx
from torch.overrides import TorchFunctionMode

from fxgrad.graph_utils import is_internal

if TYPE_CHECKING:
    from fxgrad.tracing.tracer import FxgradTracer

# What reading it does not compute anything from the values: answered by the real tensor.
_METADATA = frozenset(
    {
        "shape",
        "dtype",
        "device",
        "requires_grad",
        "is_leaf",
        "grad",
        "grad_fn",
        "layout",
        "ndim",
        "is_cuda",
        "is_sparse",
        "is_quantized",
        "is_meta",
        "names",
        "_version",
        "output_nr",
        "_base",
        "is_nested",
        "itemsize",
        "nbytes",
        "size",
        "dim",
        "numel",
        "stride",
        "is_floating_point",
        "is_complex",
        "is_contiguous",
        "element_size",
        "data_ptr",
        "storage_offset",
        "untyped_storage",
        "_typed_storage",
        "get_device",
        "ndimension",
        "nelement",
        "is_signed",
        "type",
        "__len__",
        "__repr__",
        "__format__",
        "__bool__",
        "__hash__",
        "__index__",
        "__int__",
        "__float__",
        "__iter__",
        "__reduce_ex__",
        "__deepcopy__",
        "__array__",
        "numpy",
        "tolist",
        "item",
        "__getstate__",
        "__setstate__",
        "register_hook",
        "requires_grad_",
        "retain_grad",
        "__dlpack__",
        "__dlpack_device__",
        "is_inference",
        "is_shared",
        "is_pinned",
    }
)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_FX_DIR = os.path.join(_TORCH_DIR, "fx") + os.sep


def _name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property's getter: its property's name
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _from_model_code() -> bool:
    """Whether the torch call comes from model code, not from fx or fxgrad themselves."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_internal(filename):
            return True
        if not filename.startswith(_TORCH_DIR) or filename.startswith(_FX_DIR):
            return False  # fxgrad's or fx's own code
        frame = frame.f_back
    return False


class ModuleTensorsAsNodes(TorchFunctionMode):
    """Swaps the traced tree's parameters and buffers for graph reads in model code's calls."""

    def __init__(self, tracer: FxgradTracer, names: dict[int, str]) -> None:
        super().__init__()
        self.tracer = tracer
        self.names = names

    def _swap(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            name = self.names.get(id(x))
            if name is not None:
                return self.tracer.module_tensor(name)
        elif type(x) in (list, tuple):
            return type(x)(self._swap(v) for v in x)
        return x

    def _found(self, values: Any) -> bool:
        for x in values:
            if isinstance(x, torch.Tensor):
                if id(x) in self.names:
                    return True
            elif type(x) in (list, tuple) and self._found(x):
                return True
        return False

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if (
            self.tracer.in_propagation
            or not (self._found(args) or self._found(kwargs.values()))
            or _name(func) in _METADATA
            or not _from_model_code()
        ):
            return func(*args, **kwargs)
        args = tuple(self._swap(a) for a in args)
        kwargs = {k: self._swap(v) for k, v in kwargs.items()}
        if getattr(func, "__name__", "") == "__get__":
            return getattr(args[0], _name(func))
        return fx.Proxy.__torch_function__(func, types, args, kwargs)
