"""Twins of a module tree: new module objects, the same tensors, their own containers."""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import types

import torch


def twin(
    module: torch.nn.Module, memo: dict[int, torch.nn.Module] | None = None
) -> torch.nn.Module:
    """Shallow-copy a module tree: new module objects, the same parameter and buffer tensors.

    The copy's `train()`/`eval()` and attribute changes never reach the user's module, while
    parameters and buffers stay shared, so an optimizer over either updates both.
    """
    memo = {} if memo is None else memo
    if id(module) in memo:
        return memo[id(module)]
    cls = type(module)
    new = None
    if not _plain_copy(cls):
        with contextlib.suppress(Exception):  # parametrized modules refuse to be copied
            new = copy.copy(module)  # the class copies itself its own way
    if new is None:  # what copy.copy does for a module, without the generic protocol
        new = cls.__new__(cls)
        new.__dict__.update(module.__dict__)
    else:  # its own copy may keep less (a GraphModule moves tensor attributes to buffers)
        for k, v in module.__dict__.items():
            new.__dict__.setdefault(k, v)
    memo[id(module)] = new
    for k, v in module.__dict__.items():
        # `self.forward = self.forward_fast` in __init__: bound to the twin, not the user's
        if isinstance(v, types.MethodType) and v.__self__ is module:
            new.__dict__[k] = types.MethodType(v.__func__, new)
    # Python containers the forward may fill (a cache dict, a list of past states) are the
    # twin's own: capturing and probing write proxies and probe tensors into them, which
    # must never reach the user's module. nn.Module's own tables (hooks above all) stay
    # shared, so hooks registered later still run.
    for k, v in module.__dict__.items():
        if type(v) in _CONTAINERS and k not in _MODULE_INTERNALS:
            new.__dict__[k] = copy.copy(v)
    new.__dict__["_parameters"] = module._parameters.copy()
    new.__dict__["_buffers"] = module._buffers.copy()
    new.__dict__["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    new.__dict__["_modules"] = {
        k: (twin(v, memo) if v is not None else None) for k, v in module._modules.items()
    }
    return new


_CONTAINERS = (dict, list, set, collections.OrderedDict, collections.defaultdict)
_MODULE_INTERNALS = frozenset(torch.nn.Module().__dict__)


@functools.cache
def _plain_copy(cls: type) -> bool:
    """Whether copy.copy of this module class just copies its __dict__ (nn.Module's way)."""
    return (
        cls.__reduce_ex__ is object.__reduce_ex__
        and cls.__reduce__ is object.__reduce__
        and cls.__getstate__ is torch.nn.Module.__getstate__
        and getattr(cls, "__copy__", None) is None
    )
