"""FixedModel: Model with fxgrad's rewrites applied.

Written by `fxgrad fix`. forward takes the tensors the model was captured with, in
this order: x. Weights are in state_dict.pt next to this file.
"""

import importlib
import importlib.util
import os
import sys

import torch
import torch.utils._pytree as _fxgrad_pytree


def _install(root, target, value):
    """Set root.<target> (a dotted path), creating plain modules on the way."""
    *path, leaf = target.split(".")
    for atom in path:
        if not hasattr(root, atom):
            root.add_module(atom, torch.nn.Module())
        root = getattr(root, atom)
    if isinstance(value, torch.nn.Parameter):
        root.register_parameter(leaf, value)
    elif isinstance(value, torch.Tensor):
        root.register_buffer(leaf, value)
    else:
        root.add_module(leaf, value)


def _source(name, relpath, root=None):
    """Import the model file the graph refers to, found relative to this folder.

    A file inside a package (`root` holds its top package) is imported as its package's
    module, so that its relative imports work.
    """
    if name in sys.modules:
        return sys.modules[name]
    here = os.path.dirname(os.path.abspath(__file__))
    if root is not None:
        root = os.path.normpath(os.path.join(here, root))
        if root not in sys.path:
            sys.path.insert(0, root)
        return importlib.import_module(name)
    path = os.path.join(here, relpath)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

_HERE = os.path.dirname(os.path.abspath(__file__))
from math import inf
from math import nan
NoneType = type(None)
import torch
from torch import device
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree
import fxgrad.runtime
fxgrad_runtime_writable_piece = fxgrad.runtime.writable_piece
from fxgrad.runtime import function_apply
_src_0 = _source('fxgrad_target_fxgrad_artifact_model', '../fxgrad_artifact_model.py')
fxgrad_runtime_Straight_apply = function_apply(_src_0.Straight)
import builtins
getattr = builtins.getattr
fxgrad_runtime_fxgrad_guard = fxgrad.runtime.fxgrad_guard
_tuple_Any_ = 'tuple[Any, ...]'
_OUT_SPEC = _fxgrad_pytree.treespec_loads('[1, {"type": null, "context": null, "children_spec": []}]')

class FixedModel(torch.nn.Module):
    def __init__(self, map_location=None):
        super().__init__()
        _install(self, 'lin', torch.nn.Linear(in_features=4, out_features=4, bias=True))
        _install(self, 'calls', torch.empty([], dtype=torch.float32))
        setattr(self, '_buffers', torch.load(os.path.join(_HERE, '_buffers.pt'), weights_only=False))
        state = torch.load(os.path.join(_HERE, 'state_dict.pt'), map_location=map_location)
        self.load_state_dict(state)
        self.train(True)

    def forward(self, x):
        out = self.graph_forward(x)
        return _fxgrad_pytree.tree_unflatten(list(out), _OUT_SPEC)

    def graph_forward(self, x) -> _tuple_Any_:
        calls = self.calls
        calls += 1;  iadd = calls;  calls = None
        _buffers = self._buffers
        _buffers['calls'] = iadd;  setitem = _buffers;  _buffers = iadd = setitem = None
        lin = self.lin(x)
        sigmoid = lin.sigmoid();  lin = None
        mul_5 = sigmoid.mul(2);  sigmoid = None
        mul = mul_5 * 1
        clone = mul.clone();  mul = None
        writable_piece = fxgrad_runtime_writable_piece(clone, 'chunk', (2,), {'dim': 1}, 0)
        zero_ = writable_piece.zero_();  writable_piece = zero_ = None
        chunk_1 = clone.chunk(2, dim = 1);  clone = None
        getitem_3 = chunk_1[1];  chunk_1 = None
        mul_1 = x * 1
        mul_1[0] = 0;  setitem_1 = mul_1;  setitem_1 = None
        is_grad_enabled = torch.is_grad_enabled()
        _set_grad_enabled = torch._C._set_grad_enabled(False);  _set_grad_enabled = None
        mean = mul_5.mean()
        _set_grad_enabled_1 = torch._C._set_grad_enabled(is_grad_enabled);  is_grad_enabled = _set_grad_enabled_1 = None
        mul_2 = mul_5 * 3;  mul_5 = None
        straight_apply = fxgrad_runtime_Straight_apply(mul_2);  mul_2 = None
        sum_1 = getitem_3.sum();  getitem_3 = None
        add = straight_apply + sum_1;  straight_apply = sum_1 = None
        dropout = torch.nn.functional.dropout(add, p = 0.5, training = True, inplace = False);  add = None
        getattr_1 = x.shape;  x = None
        getitem_2 = getattr_1[0];  getattr_1 = None
        mod = getitem_2 % 2;  getitem_2 = None
        eq = mod == 0;  mod = None
        fxgrad_guard = fxgrad_runtime_fxgrad_guard(eq, True, 'bool', 'fxgrad_artifact_model.py:43');  eq = fxgrad_guard = None
        mul_3 = dropout * 2;  dropout = None
        mul_4 = mul_3 * mean;  mul_3 = mean = None
        add_1 = mul_4 + mul_1;  mul_4 = mul_1 = None
        return (add_1,)
