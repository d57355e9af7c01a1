"""What a pass may know about the model beyond its graph: example inputs and measurement."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from fxgrad.autograd_run import seeded
from fxgrad.graph_utils import run_forward
from fxgrad.observe import ExtensionFactory, Observation, observe
from fxgrad.state import functorch_unwrapped, storage_of
from fxgrad.tracing.callspec import private_object

Measure = Callable[[str, Callable[[], Any]], float]


def clone_inputs(inputs: list[Any]) -> list[Any]:
    """Fresh copies of call inputs that behave as the originals do under autograd.

    Same values, dtype and strides; `requires_grad` kept, and an input that requires grad
    but is no leaf (the output of an earlier layer) is no leaf either, since autograd lets
    a forward write into it. Inputs that share memory share it in the copies too: the same
    tensor passed twice is one copy, and views of one storage are views of one copy.
    """
    memo: dict[int, Any] = {}
    bases: dict[int, torch.Tensor] = {}
    groups: dict[int, list[torch.Tensor]] = {}  # by storage (storage_of)
    for x in inputs:
        if isinstance(x, torch.Tensor):
            sid = storage_of(x)
            if sid is not None:
                groups.setdefault(sid, [])
                if all(y is not x for y in groups[sid]):
                    groups[sid].append(x)
    out = []
    for x in inputs:
        if not isinstance(x, torch.Tensor):
            out.append(private_object(x, memo))
            continue
        if id(x) not in memo:
            sid = storage_of(x)
            shared = groups.get(sid, []) if sid is not None else []
            if (
                sid is not None
                and len(shared) > 1
                and all(y.dtype == x.dtype and y.device == x.device for y in shared)
            ):
                memo[id(x)] = _view_of_shared_copy(x, sid, shared, bases)
            else:
                memo[id(x)] = _copy_like(x)
        out.append(memo[id(x)])
    return out


def _copy_like(x: torch.Tensor) -> torch.Tensor:
    src = functorch_unwrapped(x)  # the values; `requires_grad` and leaf-ness are x's
    if _overlaps(src):
        return _copy_of_overlapping(src, x)
    with torch.no_grad():
        c = torch.empty_strided(src.size(), src.stride(), dtype=src.dtype, device=src.device)
        c.copy_(src)
    if not x.requires_grad:
        return c
    c.requires_grad_(True)
    return c if x.is_leaf else c.clone()  # no leaf, as the original is none


def _overlaps(x: torch.Tensor) -> bool:
    """Whether elements of `x` share memory: `expand` (stride 0), some `as_strided`."""
    if x.layout != torch.strided or x.is_meta or x.numel() < 2:
        return False
    try:
        return torch._debug_has_internal_overlap(x) == 1
    except (AttributeError, RuntimeError):
        return any(st == 0 and n > 1 for n, st in zip(x.size(), x.stride()))


def _copy_of_overlapping(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """A copy of an input whose elements share memory, sharing it the same way, with
    the `requires_grad` and leaf-ness of `flags` (the input, where `x` stands for it).

    No tensor with such strides can be written element by element (`copy_` refuses), so
    the memory span `x` reads is copied and viewed with `x`'s strides: a write into the
    copy fails as one into `x` does, and a size-1 dimension broadcast by `expand` stays
    one read, as in the caller's tensor.
    """
    span = 1 + sum((n - 1) * st for n, st in zip(x.size(), x.stride()))
    with torch.no_grad():
        base = x.detach().as_strided((span,), (1,)).clone()
        if not flags.requires_grad or flags.is_leaf:
            c = base.as_strided(x.size(), x.stride(), 0)
    if not flags.requires_grad:
        return c
    if flags.is_leaf:
        return c.requires_grad_(True)
    base.requires_grad_(True)
    return base.as_strided(x.size(), x.stride(), 0)  # no leaf, as the original is none


def _view_of_shared_copy(
    x: torch.Tensor, sid: int, shared: list[torch.Tensor], bases: dict[int, torch.Tensor]
) -> torch.Tensor:
    """`x` as a view of one copy of the storage it shares with other inputs."""
    base = bases.get(sid)
    if base is None:
        n = x.untyped_storage().nbytes() // x.element_size()
        with torch.no_grad():
            flat = torch.empty(0, dtype=x.dtype, device=x.device)
            flat.set_(x.untyped_storage(), 0, (n,), (1,))
            base = flat.clone()
        if any(y.requires_grad for y in shared):
            base.requires_grad_(True)
            base = base.clone()  # the views are then no leaves, as views of one tensor are
        bases[sid] = base
    view = base.as_strided(x.size(), x.stride(), x.storage_offset())
    if not x.requires_grad:
        view = view.detach()
    return view


def default_measure(_key: str, fn: Callable[[], Any], *, min_run_time: float = 0.05) -> float:
    """Median seconds per call of fn, from torch.utils.benchmark's blocked autorange."""
    from torch.utils import benchmark

    # Time with the threads the model will run with (Timer's default is one thread).
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def fake_measure(timings: dict[str, float]) -> Measure:
    """A measure() that answers from a table, for deterministic tests of measured passes."""

    def measure(key: str, _fn: Callable[[], Any]) -> float:
        if key not in timings:
            raise KeyError(f"no pinned timing for {key!r}; pinned: {sorted(timings)}")
        return timings[key]

    return measure


@dataclass
class Context:
    """Per-graph facts for passes: example inputs (flat, by placeholder) and a measure()."""

    example_inputs: list[Any] | None = None
    measure: Measure = default_measure
    measure_budget_s: float = 20.0
    # False: measured passes time nothing and decide from cached decisions and analysis only.
    measure_enabled: bool = True
    # Seconds of one forward+backward of the graph on the example inputs, when the caller
    # timed one; measured passes scale their budget by it (and time one themselves if None).
    step_s: float | None = None
    seed: int = 0
    # Puts back private copies of parameters and buffers before a run; may return the
    # parameters now in place (what `params()` then answers without a module walk).
    reset_state: Callable[[], list[torch.Tensor] | None] = lambda: None
    # True when parameters and buffers are private copies that `inputs()` resets (as in
    # fix()), so a pass need not snapshot and restore module state around its own runs.
    private_state: bool = False
    module: torch.nn.Module | None = None
    # The grad mode of the call being decided on: decisions hold for calls in that mode.
    grad_enabled: bool = True
    # What the passes to run record beyond the core facts in an observed run (their
    # `Pass.observes`), so one run serves them all.
    extensions: list[ExtensionFactory] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _observed: tuple[fx.GraphModule, str, Observation] | None = None
    _params: list[torch.Tensor] | None = None
    _measure_spent: float = 0.0

    @property
    def mode(self) -> str:
        """ "exact" when example inputs let passes observe a real run, else "static"."""
        return "exact" if self.example_inputs is not None else "static"

    def inputs(self) -> list[Any]:
        """Fresh copies of the example inputs, safe for a graph to write into.

        Module buffers are reset to their original values too, so every probing run
        starts from the state the model had when fix() was called.
        """
        if self.example_inputs is None:
            raise ValueError("no example inputs")
        self._params = self.reset_state()
        return clone_inputs(self.example_inputs)

    def params(self) -> list[torch.Tensor]:
        """The parameters the graph reads right now (private copies while probing)."""
        if self._params is not None:
            return list(self._params)
        return [] if self.module is None else list(self.module.parameters())

    def observe(self, gm: fx.GraphModule, needs: Sequence[ExtensionFactory] = ()) -> Observation:
        """The observed run of gm on the example inputs: made once per version of the graph.

        The capture check, each pass and each verification ask for it; while the graph is
        unchanged they share one run of the model. `needs` are extensions the caller reads
        (a pass run on its own, outside the pipeline): the run is made again if an earlier
        one lacked them.
        """
        missing = [make for make in needs if make not in self.extensions]
        self.extensions.extend(missing)
        key = str(gm.graph)  # any edit of the graph changes it
        hit = self._observed
        if hit is not None and hit[0] is gm and hit[1] == key and not missing:
            return hit[2]
        extensions = [e for make in self.extensions if (e := make(gm)) is not None]
        obs = observe(gm, self, extensions)
        self._observed = (gm, key, obs)
        return obs

    def forget_observation(self) -> None:
        """Drop the kept run (its values hold a forward's activations)."""
        self._observed = None

    def timed(self, key: str, fn: Callable[[], Any]) -> float | None:
        """Measure fn within the measuring budget; None once the budget is spent."""
        if self._measure_spent >= self.measure_budget_s:
            return None
        start = time.perf_counter()
        try:
            return self.measure(key, fn)
        finally:
            self._measure_spent += time.perf_counter() - start

    def run(self, gm: fx.GraphModule) -> Any:
        """Run the graph on fresh example inputs with the context's RNG seed."""
        with seeded(self.seed):
            return run_forward(gm, *self.inputs())


def median(xs: list[float]) -> float:
    """Median of a non-empty list."""
    return statistics.median(xs)
