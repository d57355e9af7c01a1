"""Zoo: fxgrad.fix() over torchvision, timm and transformers models, checked against eager.

    python benchmarks/zoo.py [--library torchvision,timm,transformers] [--quick]
                             [--models resnet18,timm:test_vit,gpt2] [--modes train,eval]
                             [--families classification,decoder] [--use-cache false]
                             [--threads 1] [--timeout 900] [--markdown]

The models (zoo_models.py): every torchvision classification, video, optical-flow and
segmentation model; the smallest variant of every timm model module plus timm's test
models; 48 transformers architectures from tiny configs, called with keyword arguments
(`input_ids=..., attention_mask=..., labels=...`, `pixel_values=...`, ...). All are built
with random weights, offline, and run in train and eval mode. For each it prints:

- front-end: the capture front-end that produced the graph (fxgrad's fx tracer),
- captured: whether `fix(model, args, kwargs)` captured the model (or the error it gave),
- rewrites: changes fix() made. These models are autograd-safe, so an FXG101 or FXG301
  rewrite is a problem; FXG201's `.contiguous()` before `cat`, made only where measured to
  be faster, is listed under notes,
- forward: the fixed model's outputs equal eager's (`torch.testing.assert_close`; the
  output's structure too: ModelOutput fields, a DynamicCache's tensors),
- grads: the gradients of every parameter (`torch.autograd.grad`, one random cotangent
  per differentiable output, the same seed for both runs, so dropout draws the same mask)
  equal eager's,
- buffers: the module's buffers after the fixed call equal those after the eager call
  (BatchNorm running statistics in train mode),
- untouched: fix() left the user's module as it was: every submodule's parameters,
  buffers, `.grad`, version counters and plain attributes compared with a deep copy taken
  before, after fix() and again after a second fix(),
- nodes: nodes in the captured graph,
- fix s, symbolic_trace s, vendor fx s: one timing each in seconds (a correctness sweep;
  see capture.py for interleaved, repeated timings), or the error. symbolic_trace is plain
  `torch.fx.symbolic_trace`; vendor fx is the library's own fx tracer where it has one
  (torchvision's and timm's feature-extraction tracer with their leaf modules and
  autowrapped functions; transformers 5 has none), with whether its graph runs and gives
  eager's outputs. Both get the forward's unpassed arguments as `concrete_args` (their
  defaults), as one traces a model called with keywords.

A "problems" section lists every run where fix() changed something, broke equality,
touched the user's module, or failed with anything other than a clear fxgrad error;
fxgrad errors fix() gives on purpose (models a graph cannot capture) are listed under
"not captured", with the error. Each library's summary counts captured runs and, where the
library has an fx tracer, whether fxgrad captures every model that tracer captures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import inspect
import logging
import os
import platform
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tabulate import tabulate
from torch import fx, nn

import fxgrad
from fxgrad.errors import FxgradError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_models  # noqa: E402
from zoo_models import LIBRARIES, QUICK, TORCHVISION_FAMILIES, Spec, vendor_tracer  # noqa: E402

__all__ = ["Spec", "Row", "run", "check_model", "compare", "table", "summary", "main"]

FAMILIES = TORCHVISION_FAMILIES
VENDOR_NAME = {"torchvision": "torchvision fx", "timm": "timm fx"}


@dataclass
class Row:
    """What happened to one model in one mode."""

    family: str
    name: str
    mode: str
    shape: str
    library: str = "torchvision"
    params_m: float = 0.0
    frontend: str = ""
    traced: str = ""
    error: BaseException | None = None
    changes: int | None = None
    forward: str = ""
    grads: str = ""
    buffers: str = ""
    untouched: str = ""
    nodes: int | None = None
    fix_inputs_s: float | None = None
    fx_trace: str = ""
    vendor: str = ""  # the vendor tracer's time, or why it failed; "" : the library has none
    vendor_captured: bool | None = None  # its graph ran and gave eager's outputs
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------------------------------
# Errors and timing


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _describe_error(e: BaseException) -> str:
    """`TraceError: message` for fxgrad errors; the raw type and innermost frame otherwise."""
    if isinstance(e, FxgradError):
        return f"{type(e).__name__}: {_first_line(e)}"
    frames = traceback.extract_tb(e.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"raw {type(e).__name__}{where}: {_first_line(e)}"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, BaseException | None]:
    start = time.perf_counter()
    try:
        value = fn()
    except Exception as e:  # every failure is reported, never raised
        return None, time.perf_counter() - start, e
    return value, time.perf_counter() - start, None


class ZooTimeout(Exception):
    """One model ran past --timeout."""


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise ZooTimeout in the main thread after `seconds` (no-op elsewhere or when None)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise ZooTimeout(f"ran past {seconds:.0f} s")

    try:
        old = signal.signal(signal.SIGALRM, alarm)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------------------
# Outputs: every leaf, ModelOutput fields and cache objects included


def output_leaves(obj: Any) -> list[tuple[str, Any]]:
    """(path, value) for every leaf of a model's output, in a fixed order.

    Tensors, lists, tuples, dicts (a transformers ModelOutput is one) and plain objects
    such as a DynamicCache (walked through their attributes, a few levels deep).
    """
    out: list[tuple[str, Any]] = []

    def walk(o: Any, path: str, depth: int) -> None:
        if isinstance(o, torch.Tensor) or o is None or isinstance(o, (bool, int, float, str)):
            out.append((path, o))
        elif isinstance(o, dict):
            for k in o:
                walk(o[k], f"{path}.{k}", depth)
        elif isinstance(o, (list, tuple)):
            for i, x in enumerate(o):
                walk(x, f"{path}[{i}]", depth)
        elif hasattr(o, "__dict__") and depth < 4 and not isinstance(o, nn.Module):
            for k, v in sorted(vars(o).items()):
                if not callable(v) or isinstance(v, torch.Tensor):
                    walk(v, f"{path}.{k}", depth + 1)
        else:
            out.append((path, f"<{type(o).__name__}>"))

    walk(obj, type(obj).__name__, 0)
    return out


def forward_backward(
    fn: Callable, inputs: tuple, params: list[torch.Tensor], seed: int = 0, kwargs: Any = None
) -> tuple[list[Any], list[torch.Tensor | None]]:
    """Output leaves and parameter gradients of fn(*inputs, **kwargs), for a fixed seed."""
    torch.manual_seed(seed)
    leaves = output_leaves(fn(*inputs, **(kwargs or {})))
    values = [v for _, v in leaves]
    diff, seen = [], set()
    for v in values:
        if (
            isinstance(v, torch.Tensor)
            and v.is_floating_point()
            and v.requires_grad
            and id(v) not in seen
        ):
            seen.add(id(v))
            diff.append(v)
    detached = [(p, v.detach() if isinstance(v, torch.Tensor) else v) for p, v in leaves]
    if not diff or not params:
        return detached, []
    gen = torch.Generator().manual_seed(seed + 1)
    cot = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in diff]
    grads = torch.autograd.grad(diff, params, cot, allow_unused=True)
    return detached, list(grads)


def _close(actual: Any, expected: Any, rtol: float, atol_scale: float) -> str | None:
    """None when equal; otherwise the max abs difference, as text.

    atol is relative to the largest magnitude of the reference, so deep random-weight
    models with large activations or gradients are compared at their own scale.
    """
    if isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor):
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            return (
                f"{actual.dtype} {tuple(actual.shape)} instead of "
                f"{expected.dtype} {tuple(expected.shape)}"
            )
        if not expected.is_floating_point() and not expected.is_complex():
            return None if torch.equal(actual, expected) else "integer values differ"
        finite = expected.detach()[expected.detach().isfinite()]
        scale = finite.abs().max().item() if finite.numel() else 0.0
        try:
            torch.testing.assert_close(
                actual, expected, rtol=rtol, atol=atol_scale * max(scale, 1e-6), equal_nan=True
            )
        except AssertionError:
            diff = (actual.double() - expected.double()).abs().max().item()
            return f"max abs diff {diff:.3g} (scale {scale:.3g})"
        return None
    if actual is None and expected is None:
        return None
    if type(actual) is not type(expected):
        return f"{type(actual).__name__} instead of {type(expected).__name__}"
    return None if actual == expected else f"{actual!r} instead of {expected!r}"


def compare(actual: list, expected: list, rtol: float, atol_scale: float) -> str:
    """ "yes", or "NO: ..." naming the first value (or output field) that differs."""
    pairs = all(isinstance(x, tuple) and len(x) == 2 for x in (*actual, *expected))
    if pairs and (actual or expected):
        paths_a, paths_e = [p for p, _ in actual], [p for p, _ in expected]
        if paths_a != paths_e:
            missing = [p for p in paths_e if p not in paths_a]
            extra = [p for p in paths_a if p not in paths_e]
            what = f"missing {missing[0]}" if missing else f"extra {extra[0]}" if extra else ""
            if not what:
                what = f"{paths_a[0]} instead of {paths_e[0]}"
            return f"NO: output structure differs ({what})"
        for (path, a), (_, e) in zip(actual, expected):
            bad = _close(a, e, rtol, atol_scale)
            if bad is not None:
                return f"NO: {path}: {bad}"
        return "yes"
    if len(actual) != len(expected):
        return f"NO: {len(actual)} values instead of {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        bad = _close(a, e, rtol, atol_scale)
        if bad is not None:
            return f"NO: #{i}: {bad}"
    return "yes"


# ---------------------------------------------------------------------------------------
# The user's module: a deep snapshot, compared after fix()


class _FrozenTensor:
    """A tensor's value, dtype, shape, requires_grad, version and `.grad`, frozen."""

    def __init__(self, t: torch.Tensor, with_grad: bool = True) -> None:
        self.meta = (t.dtype, tuple(t.shape), t.device, t.requires_grad, t._version)
        self.value = t.detach().clone()
        g = t.grad if with_grad and t.is_leaf else None
        self.grad = None if g is None else _FrozenTensor(g, with_grad=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _FrozenTensor) or self.meta != other.meta:
            return False
        if not torch.equal(self.value, other.value):
            nan = self.value.is_floating_point() and bool(
                torch.isnan(self.value).any() or torch.isnan(other.value).any()
            )
            if not nan or not torch.allclose(self.value, other.value, 0, 0, equal_nan=True):
                return False
        return self.grad == other.grad

    def __hash__(self) -> int:
        return hash(self.meta)

    def differs(self, other: _FrozenTensor) -> str:
        names = ("dtype", "shape", "device", "requires_grad", "version counter")
        for name, a, b in zip(names, self.meta, other.meta):
            if a != b:
                return f"{name} {a} -> {b}"
        if (self.grad is None) != (other.grad is None):
            return f".grad {'None' if self.grad is None else 'set'} -> " + (
                "None" if other.grad is None else "set"
            )
        if self.grad is not None and self.grad != other.grad:
            return ".grad changed"
        return "values changed"


_PLAIN = (bool, int, complex, str, bytes, torch.dtype, torch.device, torch.Size, type)
_TABLES = ("_parameters", "_buffers", "_modules")


def _freeze(v: Any, depth: int = 0) -> Any:
    """A comparable deep copy of a plain attribute (objects by identity past 3 levels)."""
    if isinstance(v, torch.Tensor):
        return _FrozenTensor(v)
    if v is None or isinstance(v, _PLAIN):
        return v
    if isinstance(v, float):
        return ("float", repr(v))
    if isinstance(v, nn.Module):
        return ("module", id(v))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(_freeze(x, depth + 1) for x in v))
    if isinstance(v, dict):
        return (type(v).__name__, tuple((_freeze(k), _freeze(x, depth + 1)) for k, x in v.items()))
    if isinstance(v, (set, frozenset)):
        return (type(v).__name__, tuple(sorted(repr(x) for x in v)))
    if type(v).__module__ == "numpy" and hasattr(v, "tobytes"):
        return ("numpy", str(getattr(v, "dtype", "")), getattr(v, "shape", ()), v.tobytes())
    if callable(v) or depth >= 3 or not hasattr(v, "__dict__"):
        return ("object", type(v).__qualname__, id(v))
    return ("object", type(v).__qualname__, id(v), _freeze(vars(v), depth + 1))


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Every submodule's parameters, buffers (with .grad and version), children and attributes."""
    state: dict[str, Any] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        prefix = path or "<root>"
        for name, p in m._parameters.items():
            state[f"{prefix} parameter {name}"] = None if p is None else _FrozenTensor(p)
        for name, b in m._buffers.items():
            state[f"{prefix} buffer {name}"] = None if b is None else _FrozenTensor(b)
        state[f"{prefix} children"] = tuple((k, id(c)) for k, c in m._modules.items())
        for name, v in vars(m).items():
            if name not in _TABLES:
                state[f"{prefix} attribute {name}"] = _freeze(v)
    return state


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any]:
    """The path (`.key`, `[i]`) inside two frozen values to their first difference."""
    if isinstance(a, tuple) and isinstance(b, tuple) and a[:1] == b[:1] and len(a) == len(b):
        if a[0] in ("dict", "OrderedDict") and len(a) == 2:
            da, db = dict(a[1]), dict(b[1])
            for k in list(da) + [k for k in db if k not in da]:
                if k not in db or k not in da or da[k] != db[k]:
                    if k in da and k in db:
                        return _first_difference(da[k], db[k], f"{path}[{k!r}]")
                    return f"{path}[{k!r}]", da.get(k, "<absent>"), db.get(k, "<absent>")
        if a[0] == "object" and len(a) == 4 and a[2] == b[2] and a[3][0] == "dict":
            da, db = dict(a[3][1]), dict(b[3][1])
            for k in list(da) + [k for k in db if k not in da]:
                if k not in db or k not in da or da[k] != db[k]:
                    if k in da and k in db:
                        return _first_difference(da[k], db[k], f"{path}.{k}")
                    return f"{path}.{k}", da.get(k, "<absent>"), db.get(k, "<absent>")
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                if isinstance(x, tuple):
                    return _first_difference(x, y, f"{path}[{i}]" if i else path)
                return path, a, b
    return path, a, b


def _thaw(v: Any) -> Any:
    """A frozen value, readable."""
    if isinstance(v, _FrozenTensor):
        return f"tensor{list(v.meta[1])}"
    if isinstance(v, tuple) and v and v[0] in ("dict", "OrderedDict") and len(v) == 2:
        return {_thaw(k): _thaw(x) for k, x in v[1]}
    if isinstance(v, tuple) and v and v[0] in ("list", "tuple") and len(v) == 2:
        return [_thaw(x) for x in v[1]]
    if isinstance(v, tuple) and v and v[0] == "float":
        return float(v[1])
    if isinstance(v, tuple) and v and v[0] == "object":
        return f"<{v[1]} object>"
    if isinstance(v, tuple) and v and v[0] == "module":
        return "<module>"
    return v


def untouched(before: dict[str, Any], after: dict[str, Any]) -> str:
    """ "yes", or "NO: ..." naming up to three things that changed."""
    diffs = []
    for key in list(before) + [k for k in after if k not in before]:
        if key not in after:
            diffs.append(f"{key} removed")
        elif key not in before:
            diffs.append(f"{key} added ({_short(after[key])})")
        elif before[key] != after[key]:
            a, b = before[key], after[key]
            if isinstance(a, _FrozenTensor) and isinstance(b, _FrozenTensor):
                diffs.append(f"{key}: {a.differs(b)}")
            else:
                where, x, y = _first_difference(a, b)
                diffs.append(f"{key}{where}: {_short(_thaw(x))} -> {_short(_thaw(y))}")
    if not diffs:
        return "yes"
    more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return "NO: " + "; ".join(diffs[:3]) + more


def _buffers(model: nn.Module) -> list[tuple[str, Any]]:
    return [(n, b.detach().clone()) for n, b in model.named_buffers()]


def _restore(model: nn.Module, buffers: list[tuple[str, Any]]) -> None:
    current = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in buffers:
            if name in current and current[name].shape == value.shape:
                current[name].copy_(value)


# ---------------------------------------------------------------------------------------
# Tracers


def _concrete_args(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """The forward's parameters the call does not pass, at their defaults."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    named = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    concrete = {
        p.name: p.default
        for p in named[len(args) :]
        if p.name not in kwargs and p.default is not p.empty
    }
    return concrete or None


def trace_plain(model: nn.Module, args: tuple, kwargs: dict) -> fx.GraphModule:
    return fx.symbolic_trace(model, concrete_args=_concrete_args(model, args, kwargs))


def trace_vendor(vendor: str, model: nn.Module, args: tuple, kwargs: dict) -> fx.GraphModule:
    tracer = vendor_tracer(vendor)
    assert tracer is not None
    graph = tracer.trace(model, concrete_args=_concrete_args(model, args, kwargs))
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


# ---------------------------------------------------------------------------------------
# Checks


def _quiet() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def _twin(spec: Spec, model: nn.Module) -> nn.Module:
    """A copy of the model, same weights and mode (rebuilt where it cannot be deep-copied)."""
    try:
        return copy.deepcopy(model)
    except Exception:
        torch.manual_seed(0)
        return spec.model().train(model.training)


def check_model(spec: Spec, training: bool, timeout: float | None = None) -> Row:
    """Build, fix and compare one model in one mode."""
    mode = "train" if training else "eval"
    row = Row(spec.family, spec.name, mode, spec.input_text, spec.library)
    try:
        with _quiet(), _deadline(timeout):
            _check(spec, training, row)
    except ZooTimeout as e:
        row.problems.append(f"stopped: {e}")
        if not row.traced:
            row.traced = f"timeout ({e})"
    return row


def _check(spec: Spec, training: bool, row: Row) -> None:
    torch.manual_seed(0)
    try:
        model = spec.model()
    except Exception as e:
        row.traced = "build failed"
        row.problems.append(f"cannot build: {_describe_error(e)}")
        return
    model.train(training)
    params = [p for p in model.parameters() if p.requires_grad]
    row.params_m = sum(p.numel() for p in model.parameters()) / 1e6
    args, kwargs = spec.call()

    # Each tracer gets its own copy: tracing runs the forward's Python with proxies, and
    # what it leaves behind (a Proxy in a cache dict the forward fills) must not reach fix().
    plain = _twin(spec, model)
    _, t, err = _timed(lambda: trace_plain(plain, args, kwargs))
    row.fx_trace = f"{t:.2f}" if err is None else f"fails ({type(err).__name__})"
    vendor_gm = None
    if spec.vendor:
        vendor_model = _twin(spec, model)
        vendor_gm, t, err = _timed(lambda: trace_vendor(spec.vendor, vendor_model, args, kwargs))
        row.vendor = f"{t:.2f}" if err is None else f"fails ({type(err).__name__})"
        if err is not None:
            row.vendor_captured = False
            row.notes.append(f"{VENDOR_NAME[spec.vendor]}: {_describe_error(err)}")

    before = snapshot(model)
    start_buffers = _buffers(model)
    fixed, t, err = _timed(lambda: fxgrad.fix(model, args, kwargs))
    row.fix_inputs_s = t
    row.frontend = "fx"
    if err is not None:
        row.error = err
        row.traced = _describe_error(err)
        if not isinstance(err, FxgradError):
            row.problems.append(f"fix(inputs) fails without a clear fxgrad error: {row.traced}")
        elif not isinstance(err, fxgrad.errors.TraceError):
            row.problems.append(f"fix(inputs): {row.traced}")
    else:
        row.traced = "yes"
        report = fixed.report
        row.frontend = getattr(report, "frontend", "") or "fx"
        row.changes = len(report.applied)
        if row.frontend == "fx":  # Dynamo's graphs: counted in the report's code
            row.nodes = len(fixed.graph_module.graph.nodes)
        hazards = [c for c in report.applied if not c.code.startswith("FXG2")]
        layout = [c for c in report.applied if c.code.startswith("FXG2")]
        if hazards:  # these models are autograd-safe: a hazard rewrite is a false positive
            codes = sorted({c.code for c in hazards})
            row.problems.append(f"fix() made {len(hazards)} rewrite(s) ({', '.join(codes)})")
        if layout:  # measured to be faster: a decision, not a finding
            where = sorted({c.where for c in layout if c.where})
            row.notes.append(
                f"FXG201 made {len(layout)} measured cat-layout rewrite(s)"
                + (f" ({', '.join(where[:3])})" if where else "")
            )
    row.untouched = untouched(before, snapshot(model))
    if row.untouched == "yes":  # a second fix() of the same module leaves it alone too
        _, _, err2 = _timed(lambda: fxgrad.fix(model, args, kwargs))
        second = untouched(before, snapshot(model))
        if second != "yes":
            row.untouched = second.replace("NO:", "NO (second fix()):", 1)
        elif err2 is not None and err is None:
            row.problems.append(f"a second fix() fails: {_describe_error(err2)}")
    if row.untouched != "yes":
        row.problems.append(f"fix() changed the user's module: {row.untouched[4:]}")
    del before

    _restore(model, start_buffers)
    try:
        args_e, kwargs_e = spec.call()
        out_e, g_e = forward_backward(model, args_e, params, kwargs=kwargs_e)
    except Exception as e:
        row.forward = "eager fails"
        if row.untouched == "yes":
            row.problems.append(f"eager itself fails: {_describe_error(e)}")
        else:
            row.problems.append(f"eager fails on the module fix() changed: {_describe_error(e)}")
        return
    buffers_e = _buffers(model)

    if fixed is not None:
        _restore(model, start_buffers)
        try:
            args_f, kwargs_f = spec.call()
            out_f, g_f = forward_backward(fixed, args_f, params, kwargs=kwargs_f)
        except Exception as e:
            row.forward = "error"
            row.problems.append(f"running the fixed model: {_describe_error(e)}")
        else:
            row.forward = compare(out_f, out_e, rtol=1e-4, atol_scale=1e-5)
            row.grads = compare(g_f, g_e, rtol=1e-3, atol_scale=1e-4)
            row.buffers = compare(_buffers(model), buffers_e, rtol=1e-4, atol_scale=1e-5)
            for what, value in (
                ("forward", row.forward),
                ("gradients", row.grads),
                ("buffers after the call", row.buffers),
            ):
                if value != "yes":
                    row.problems.append(f"{what} differ from eager: {value}")
        del fixed

    if vendor_gm is not None:
        try:
            torch.manual_seed(0)
            a, k = spec.call()
            with torch.no_grad():
                out_v = output_leaves(vendor_gm(*a, **k))
        except Exception as e:
            row.vendor_captured = False
            row.vendor += " (run fails)"
            row.notes.append(f"{VENDOR_NAME[spec.vendor]} graph: running it: {_describe_error(e)}")
        else:
            # values only: an fx GraphModule returns a plain dict for an OrderedDict, say
            same = compare([v for _, v in out_v], [v for _, v in out_e], 1e-4, 1e-5)
            row.vendor_captured = same == "yes"
            if same != "yes":
                row.vendor += " (differs)"
                row.notes.append(f"{VENDOR_NAME[spec.vendor]} graph: forward differs: {same}")
    _restore(model, start_buffers)


# ---------------------------------------------------------------------------------------
# Running and printing


def _find(name: str, libraries: tuple[str, ...], cache: dict[str, list[Spec]]) -> Spec | None:
    library, _, bare = name.rpartition(":")
    for lib in (library,) if library else libraries:
        if lib not in cache:
            cache[lib] = zoo_models.specs(lib)
        for spec in cache[lib]:
            if spec.name == bare:
                return spec
    return None


def select(
    names: list[str] | None,
    libraries: tuple[str, ...],
    families: tuple[str, ...] | None = None,
) -> list[Spec]:
    """The named models (`library:name` or a name, first library that has it), or all."""
    if names:
        cache: dict[str, list[Spec]] = {}
        chosen, unknown = [], []
        for n in names:
            spec = _find(n, libraries, cache)
            if spec is None:
                unknown.append(n)
            else:
                chosen.append(spec)
        if unknown:
            raise SystemExit(f"unknown model(s): {', '.join(unknown)}")
        return chosen
    out = []
    for lib in libraries:
        tv_families = tuple(f for f in families or () if f in TORCHVISION_FAMILIES)
        for spec in zoo_models.specs(lib, tv_families or None):
            if not families or spec.family in families:
                out.append(spec)
    return out


def run(
    names: list[str] | None = None,
    modes: tuple[bool, ...] = (True, False),
    families: tuple[str, ...] | None = None,
    progress: Callable[[Row], None] | None = None,
    size: int | None = None,
    libraries: tuple[str, ...] = LIBRARIES,
    timeout: float | None = None,
    use_cache: bool | None = None,
) -> list[Row]:
    """Check the named models (all of `libraries` and `families` when None) in each mode.

    `size` overrides the height and width of image inputs (for quick checks); `use_cache`,
    where not None, is passed to every transformers decoder and encoder-decoder.
    """
    rows = []
    for spec in select(names, libraries, families):
        if size is not None:
            spec.resize(size)
        if use_cache is not None and spec.family in ("decoder", "encoder-decoder"):
            spec.with_kwargs(use_cache=use_cache)
        for training in modes:
            row = check_model(spec, training, timeout)
            gc.collect()  # the model and its fixed twins are gone: free them now
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


HEADERS = [
    "family",
    "model",
    "mode",
    "input",
    "params (M)",
    "front-end",
    "captured",
    "rewrites",
    "forward",
    "grads",
    "buffers",
    "untouched",
    "nodes",
    "fix s",
    "symbolic_trace s",
    "vendor fx s",
]


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _cells(r: Row) -> list[Any]:
    vendor = r.vendor or ("none" if r.library == "transformers" else "")
    return [
        r.family,
        r.name,
        r.mode,
        _cut(r.shape, 80),
        f"{r.params_m:.1f}" if r.params_m >= 0.1 else f"{r.params_m:.3f}",
        r.frontend,
        _cut(r.traced, 60),
        "" if r.changes is None else r.changes,
        _cut(r.forward, 40),
        _cut(r.grads, 40),
        _cut(r.buffers, 40),
        _cut(r.untouched, 40),
        "" if r.nodes is None else r.nodes,
        "" if r.fix_inputs_s is None else f"{r.fix_inputs_s:.2f}",
        r.fx_trace,
        vendor,
    ]


def table(rows: list[Row], markdown: bool = False) -> str:
    return tabulate(
        [_cells(r) for r in rows],
        headers=HEADERS,
        tablefmt="github" if markdown else "simple",
        disable_numparse=True,
    )


def _counts(rows: list[Row]) -> list[str]:
    """Captured runs and models; the vendor tracer's, and what it captures that fxgrad does not."""
    models = sorted({r.name for r in rows}, key=[r.name for r in rows].index)
    by_model = {m: [r for r in rows if r.name == m] for m in models}
    captured = sum(r.traced == "yes" for r in rows)
    both = sum(all(r.traced == "yes" for r in rs) for rs in by_model.values())
    clean = sum(r.traced == "yes" and r.ok for r in rows)
    lines = [
        f"fxgrad captured {captured}/{len(rows)} runs ({both}/{len(models)} models in every mode "
        f"run); {clean} runs captured with every check passing; "
        f"{sum(1 for r in rows if r.problems)} runs with problems."
    ]
    vendor_rows = [r for r in rows if r.vendor_captured is not None]
    if vendor_rows:
        lib = vendor_rows[0].library
        v_runs = sum(bool(r.vendor_captured) for r in vendor_rows)
        v_models = sum(
            all(r.vendor_captured for r in rs if r.vendor_captured is not None)
            for rs in by_model.values()
            if any(r.vendor_captured is not None for r in rs)
        )
        missed = [r for r in vendor_rows if r.vendor_captured and r.traced != "yes"]
        lines.append(
            f"{lib}'s own fx tracer captured {v_runs}/{len(vendor_rows)} runs "
            f"({v_models}/{len(models)} models in every mode run; captured = traced, and its "
            f"graph gives eager's outputs)."
        )
        if missed:
            lines.append(
                f"Runs {lib}'s tracer captures and fxgrad does not: "
                + ", ".join(f"{r.name} ({r.mode})" for r in missed)
                + "."
            )
        else:
            lines.append(f"fxgrad captures every run {lib}'s own fx tracer captures.")
    return lines


def summary(rows: list[Row], markdown: bool = False) -> str:
    """Counts, then the problems and the models a graph cannot capture, with reasons."""
    bullet = "- " if markdown else "  "
    lines = [
        f"{len(rows)} runs ({len({(r.library, r.name) for r in rows})} models): "
        f"{sum(1 for r in rows if r.traced == 'yes' and r.ok)} captured with no hazard rewrite, "
        f"forward, gradients and buffers equal to eager and the user's module untouched; "
        f"{sum(1 for r in rows if r.problems)} with problems."
    ]
    lines += _counts(rows)
    problems = [r for r in rows if r.problems]
    lines += ["", "Problems:" if problems else "Problems: none."]
    for r in problems:
        lines.extend(f"{bullet}{r.name} ({r.mode}): {p}" for p in r.problems)
    uncaptured = [r for r in rows if r.traced != "yes" and not r.problems]
    if uncaptured:
        lines += ["", "Not captured (a clear fxgrad error, as designed):"]
        lines.extend(f"{bullet}{r.name} ({r.mode}): {r.traced}" for r in uncaptured)
    also = [r for r in rows if r.traced not in ("yes", "") and r.problems and r.error is not None]
    also = [r for r in also if not any(r.traced in p for p in r.problems)]
    if also:
        lines += ["", "Not captured, with other problems above (the fxgrad error):"]
        lines.extend(f"{bullet}{r.name} ({r.mode}): {r.traced}" for r in also)
    notes = [r for r in rows if r.notes]
    if notes:
        lines += ["", "Notes:"]
        lines.extend(f"{bullet}{r.name} ({r.mode}): {n}" for r in notes for n in r.notes)
    return "\n".join(lines)


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "not installed"


def header(libraries: tuple[str, ...] = LIBRARIES) -> str:
    versions = ", ".join(f"{lib} {_version(lib)}" for lib in libraries)
    return (
        f"torch {torch.__version__}, {versions}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads; one timing per cell (a correctness sweep)"
    )


# What each library's part of the zoo holds, printed above its table.
ABOUT = {
    "torchvision": "torchvision: every model of its classification, video, optical-flow and "
    'segmentation builders, random weights. "vendor fx" is torchvision\'s feature-extraction '
    "tracer.",
    "timm": "timm: the smallest variant of each of timm's model modules, plus its test models "
    'and a few common variants, random weights. "vendor fx" is timm\'s feature-extraction '
    "tracer (torchvision's NodePathTracer with timm's leaf modules and autowrapped functions).",
    "transformers": "transformers: architectures from tiny configs, called with keyword "
    "arguments and the model's own default `use_cache` (decoders then return a "
    '`DynamicCache`). transformers 5 ships no fx tracer. "front-end" says whether fxgrad\'s '
    "tracer captured the forward (fx) or handed it to Dynamo (a data-dependent branch).",
}


def report(rows: list[Row], libraries: tuple[str, ...], markdown: bool = False) -> str:
    """One table and summary per library."""
    parts = [header(libraries)]
    for lib in libraries:
        lib_rows = [r for r in rows if r.library == lib]
        if not lib_rows:
            continue
        if len(libraries) > 1:
            parts.append(f"### {lib}" if markdown else f"== {lib} ==")
        parts += [ABOUT[lib], table(lib_rows, markdown), summary(lib_rows, markdown)]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--library",
        default=",".join(LIBRARIES),
        help=f"comma-separated subset of {','.join(LIBRARIES)} (default: all)",
    )
    parser.add_argument(
        "--models", help="comma-separated model names, or library:name (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="about 10 small models per library")
    parser.add_argument("--modes", default=None, help="train,eval (default both; --quick: train)")
    parser.add_argument(
        "--families",
        default=None,
        help="only these families: torchvision's (classification, video, ...), timm model "
        "modules (vision_transformer, ...), transformers' (encoder, decoder, "
        "encoder-decoder, vision, audio, vision-text)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--size", type=int, help="image height and width for every model")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds per model and mode (default 900)"
    )
    parser.add_argument(
        "--use-cache",
        choices=("default", "true", "false"),
        default="default",
        help="use_cache= for transformers decoders and encoder-decoders (default: not passed, "
        "the model's own default)",
    )
    parser.add_argument("--markdown", action="store_true", help="print GitHub tables")
    parser.add_argument("--quiet", action="store_true", help="no per-model progress lines")
    args = parser.parse_args(argv)
    libraries = tuple(lib.strip() for lib in args.library.split(",") if lib.strip())
    bad = [lib for lib in libraries if lib not in LIBRARIES]
    if bad:
        parser.error(f"unknown library {', '.join(bad)}: choose from {', '.join(LIBRARIES)}")
    if args.models:
        names = args.models.split(",")
    elif args.quick:
        names = [f"{lib}:{n}" for lib in libraries for n in QUICK[lib]]
    else:
        names = None
    modes_text = args.modes or ("train" if args.quick else "train,eval")
    modes = tuple(m.strip() == "train" for m in modes_text.split(","))
    families = tuple(f for f in (args.families or "").split(",") if f) or None
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("timm").setLevel(logging.ERROR)

    def progress(r: Row) -> None:
        if not args.quiet:
            state = "ok" if r.ok else "PROBLEM"
            print(
                f"[{state}] {r.library} {r.name} {r.mode}: {r.traced} "
                f"({r.fix_inputs_s or 0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    use_cache = None if args.use_cache == "default" else args.use_cache == "true"
    rows = run(names, modes, families, progress, args.size, libraries, args.timeout, use_cache)
    shown = tuple(lib for lib in libraries if any(r.library == lib for r in rows))
    print(report(rows, shown or libraries, args.markdown))
    return 1 if any(r.problems for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
