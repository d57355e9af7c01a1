"""Layouts: each tensor's as the observed run shows it, and permuting inputs dense again.

A tensor's timing depends on its sizes, strides, dtype and device, so sites are compared,
timed and replayed by `Layout`; `Permuted` is the cat of dense tensors permuted once after.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from fxgrad.context import Context


@dataclass(frozen=True)
class Layout:
    """What a tensor's timing depends on: sizes, strides, offset, dtype, device, grad."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    contiguous: bool

    @classmethod
    def of(cls, t: torch.Tensor) -> Layout:
        return cls(
            tuple(t.shape),
            tuple(t.stride()),
            int(t.storage_offset()),  # an int: observed tensors have no symbolic sizes
            t.dtype,
            t.device,
            t.requires_grad,
            t.is_contiguous(),
        )

    @property
    def key(self) -> tuple:
        return (self.shape, self.stride, str(self.dtype), str(self.device), self.requires_grad)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def dense_in(self, order: Sequence[int]) -> bool:
        """True when `permute(order)` of this tensor is contiguous (size-1 dims aside)."""
        expected = 1
        for d in reversed(order):
            if self.shape[d] == 1:
                continue
            if self.stride[d] != expected:
                return False
            expected *= self.shape[d]
        return True

    def fresh(self) -> torch.Tensor:
        """A new tensor with this layout and random values (no NaNs or denormals).

        Built as a view of a dense buffer rather than with `empty_strided`, because expanded
        inputs have overlapping elements that cannot be filled in place.
        """
        extent = self.offset + 1
        if all(s > 0 for s in self.shape):
            extent += sum((s - 1) * st for s, st in zip(self.shape, self.stride))
        dtype, device = self.dtype, self.device
        if dtype.is_floating_point or dtype.is_complex:
            base = torch.randn(extent, dtype=dtype, device=device)
        elif dtype == torch.bool:
            base = torch.zeros(extent, dtype=dtype, device=device)
        else:
            base = torch.randint(0, 8, (extent,), dtype=dtype, device=device)
        t = base.as_strided(self.shape, self.stride, self.offset).detach()
        return t.requires_grad_(self.requires_grad)


@dataclass
class Observed:
    """What the graph's observed run (fxgrad.observe) showed, as this pass reads it."""

    layouts: dict[fx.Node, Layout]
    values: dict[fx.Node, Any]  # detached values of the nodes the timed consumers read
    step_s: float | None = None  # the observed forward plus its backward
    # Nodes computed inside a torch.func transform the graph runs (Dynamo inlines
    # `torch.func.vmap` as nesting calls): their values are wrappers that outlived it.
    transformed: set[fx.Node] = field(default_factory=set)

    def step_seconds(self) -> float | None:
        """Seconds of the observed forward plus its backward; None if either failed."""
        return self.step_s


def observe(gm: fx.GraphModule, ctx: Context, keep: set[fx.Node]) -> Observed:
    """Every tensor's layout in the graph's observed run, and the values of `keep`.

    The run is made with gradients on, as training does, so `requires_grad` is what
    backward will see; a forward that fails part way still leaves the layouts it reached.
    """
    obs = ctx.observe(gm)
    transformed = {n for n, v in obs.values.items() if _transformed(v)}
    layouts = {
        n: Layout.of(v)
        for n, v in obs.values.items()
        if isinstance(v, torch.Tensor) and n not in transformed
    }
    values = {
        n: v.detach() if isinstance(v, torch.Tensor) else v
        for n, v in obs.values.items()
        if n in keep and n not in transformed
    }
    return Observed(layouts, values, obs.step_seconds(), transformed)


def _transformed(v: Any) -> bool:
    """Whether `v` is a torch.func wrapper (a vmapped or grad-tracked tensor) left over
    from a transform the graph ran: it cannot be read, timed or even detached outside."""
    return isinstance(v, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(v)


def common_order(layouts: Sequence[Layout]) -> tuple[int, ...] | None:
    """The dim order in which every input is dense, if it is not the identity; else None.

    `order` lists the input's dims from outermost to innermost in memory, so for each input
    `t`, `t.permute(order)` is contiguous. Orders are tried from each input's strides
    (largest first); a dim of size 1 has no meaningful stride and fits anywhere.
    """
    rank = len(layouts[0].shape)
    identity = tuple(range(rank))
    tried = set()
    for lay in layouts:
        order = tuple(sorted(identity, key=lambda d: (-lay.stride[d], d)))
        if order in tried or order == identity:
            continue
        tried.add(order)
        if all(other.dense_in(order) for other in layouts):
            return order
    return None


def inverse(order: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(order)
    for j, d in enumerate(order):
        inv[d] = j
    return tuple(inv)


@dataclass(frozen=True)
class Permuted:
    """`cat(ts, dim)` as `cat([t.permute(order) ...], inner_dim).permute(outer)`.

    For any tensors, whatever their strides: `t.permute(order)` puts t's dim `order[j]` at
    j, so t's dim `dim` is at `inverse(order)[dim]`, and `permute(inverse(order))` puts
    every dim back. For `stack` the dense tensors are stacked at dim 0 (each a contiguous
    block of the result) and the new dim is moved to `dim`.
    """

    order: tuple[int, ...]
    inner_dim: int
    outer: tuple[int, ...]

    @classmethod
    def of(cls, order: tuple[int, ...], dim: int, stack: bool) -> Permuted:
        p = inverse(order)
        if not stack:
            return cls(order, p[dim], p)
        outer = tuple(0 if i == dim else p[i if i < dim else i - 1] + 1 for i in range(len(p) + 1))
        return cls(order, 0, outer)

    def apply(self, target: Callable, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return target([t.permute(self.order) for t in tensors], self.inner_dim).permute(self.outer)
