"""Helpers that rewritten graphs call at run time.

Generated code and saved fixed modules refer to these by module path, so they stay here,
small and stable: moving one would break fixed modules saved by an earlier release.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx


def writable_piece(
    base: torch.Tensor, op: Any, args: tuple, kwargs: dict, index: int
) -> torch.Tensor:
    """Output `index` of `base.<op>(*args, **kwargs)` (split, chunk, unbind...) as a plain view.

    Autograd refuses in-place writes into outputs of functions that return several views;
    the same memory reached through `narrow`/`select` can be written. The offsets are read
    from this call's piece, so the view is right for inputs of any size.
    """
    if isinstance(base, fx.Proxy):  # a fixed graph being traced again: stay one call
        return base.tracer.create_proxy(
            "call_function", writable_piece, (base, op, args, kwargs, index), {}
        )
    pieces = (
        getattr(base, op)(*args, **kwargs) if isinstance(op, str) else op(base, *args, **kwargs)
    )
    piece = pieces[index]
    if piece.dim() == base.dim():
        dims = [d for d in range(base.dim()) if piece.shape[d] != base.shape[d]]
        d = dims[0] if dims else 0
        stride = base.stride(d)
        offset = (piece.storage_offset() - base.storage_offset()) // stride if stride else 0
        return base.narrow(d, offset, piece.shape[d])
    # unbind: one dimension fewer; find which one is gone
    for d in range(base.dim()):
        if base.shape[:d] + base.shape[d + 1 :] == piece.shape and (
            base.stride(d) == 0
            or (piece.storage_offset() - base.storage_offset()) == index * base.stride(d)
        ):
            return base.select(d, index)
    raise RuntimeError(f"cannot find output {index} of {op} as a view of its input")
