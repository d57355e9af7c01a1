"""How fxgrad runs a forward and its backward when it probes a graph or checks a model.

Every run that is compared with another (the observed run of a graph, eager's reference,
the testing helpers) uses the same seed and the same output gradients, so two runs of the
same code give the same numbers; deciding runs with the garbage collector paused. This
module sits below fxgrad.observe: the recorder, the decision sequence and fxgrad.testing
all import it, and it imports nothing of fxgrad's above fxgrad.state.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from typing import Any

import torch

from fxgrad.state import forked_rng


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run with a fixed RNG seed (torch's and NumPy's global one), restoring the caller's
    RNG state afterwards."""
    with forked_rng():
        torch.manual_seed(seed)
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed(seed)
        yield


def differentiable_outputs(outputs: list[Any]) -> list[torch.Tensor]:
    """Floating-point tensor outputs that carry a gradient."""
    return [
        o
        for o in outputs
        if isinstance(o, torch.Tensor)
        and (o.is_floating_point() or o.is_complex())
        and o.requires_grad
    ]


def cotangents(outputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Deterministic random output gradients, so reductions cannot hide a wrong gradient."""
    gen = torch.Generator().manual_seed(seed + 1)
    return [
        torch.randn(o.shape, generator=gen, dtype=o.dtype if o.is_complex() else torch.float64).to(
            dtype=o.dtype, device=o.device
        )
        for o in outputs
    ]


def seeded_gradients(
    outputs: list[torch.Tensor], wrt: list[torch.Tensor], seed: int
) -> list[torch.Tensor | None]:
    """The gradients of `wrt` (None where unused) for `outputs` weighted by `cotangents`.

    Gradients come from `torch.autograd.grad`, so no `.grad` is ever left on a parameter.
    Errors of the backward propagate.
    """
    return list(torch.autograd.grad(outputs, wrt, cotangents(outputs, seed), allow_unused=True))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while deciding.

    Capture and the passes allocate many small objects (nodes, proxies, frames); each full
    collection walks every live object, so with the collector on, time per node grew with
    graph size (1.3x from 1k to 50k nodes, plain `symbolic_trace` 1.35x) and is flat with
    it paused. Garbage made meanwhile is collected as usual afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
