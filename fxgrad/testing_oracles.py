"""The runs `fxgrad.testing` judges a model by: where gradients stop, eager runs, gradcheck.

Each helper in `fxgrad.testing` asks questions of a real run of the model and turns the
answers into sentences. The runs that answer them live here, apart from the sentences, so
that each side reads alone: a walk of the captured graph for where a gradient stops, an
eager forward and backward (under anomaly mode where it names a line), and a float64
gradcheck of each custom autograd.Function on the inputs it actually receives.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

import fxgrad
from fxgrad.autograd_run import differentiable_outputs, seeded_gradients
from fxgrad.context import Context, clone_inputs
from fxgrad.errors import first_line
from fxgrad.fixed import FixedModule, current_variant
from fxgrad.graph_utils import (
    ancestors,
    descendants,
    is_internal,
    location,
    render_node,
    source_line,
)
from fxgrad.observe import Extension, Observation, Observer, observe
from fxgrad.pipeline import flat_outputs
from fxgrad.report import clean_torch_error
from fxgrad.state import restored

_SEED = 0


# ---------------------------------------------------------------------------------------
# Shared plumbing


def _capture(module: nn.Module, inputs: tuple) -> FixedModule:
    """The graph as captured, before any pass: what the user's code does."""
    if isinstance(module, FixedModule):
        return module
    return fxgrad.fix(module, inputs, select=[])


def _leaves(fixed: FixedModule, inputs: tuple) -> list[Any]:
    """The graph's placeholder values for a call with `inputs`, in placeholder order."""
    return current_variant(fixed).call.flatten(tuple(inputs), {})


def preserved_state(module: nn.Module, extra: Iterable[Any] = ()) -> Any:
    """Undo what a checking run does to the user's model: values, `.grad`, RNG state."""
    return restored([*module.parameters(), *module.buffers(), *extra])


def _first_line(e: BaseException) -> str:
    """The first line of an error, without torch's tails that point at nothing here."""
    return clean_torch_error(first_line(e))


# ---------------------------------------------------------------------------------------
# Where gradients stop: one real run of the captured graph


def _code(node: fx.Node) -> str:
    """The user's source line for a node (comment dropped), else the node as Python."""
    return source_line(node).split("  #")[0].strip() or render_node(node)


def _carries_grad(value: Any) -> bool:
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in pytree.tree_leaves(value))


def _is_float_like(value: Any) -> bool:
    for v in pytree.tree_leaves(value):
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
            return True
        if isinstance(v, float):
            return True
        kind = getattr(getattr(v, "dtype", None), "kind", None)  # NumPy arrays and scalars
        if type(v).__module__ == "numpy" and kind in ("f", "c"):
            return True
    return False


def _is_numpy_node(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target == "numpy"
    if node.op != "call_function":
        return False
    target = node.target
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", "")
    if module.startswith("numpy") or type(target).__name__ == "ufunc":
        return True
    return module.startswith("torch") and name in ("from_numpy", "as_tensor", "tensor", "asarray")


@dataclass
class _Cut:
    """A node whose inputs carry a gradient and whose output no longer does."""

    node: fx.Node
    why: str
    float_valued: bool

    def describe(self) -> str:
        where = location(self.node) or "an unknown line"
        code = _code(self.node)
        return f"{where} `{code}`: {self.why}"


class _GradRecorder(Extension):
    """Note, per node of the observed run, whether its value carries a gradient."""

    key = "carries"

    def __init__(self) -> None:
        self.carries: dict[fx.Node, bool] = {}
        self.float_valued: dict[fx.Node, bool] = {}

    def after(self, _run: Observer, node: fx.Node, value: Any) -> None:
        self.carries[node] = _carries_grad(value)
        self.float_valued[node] = _is_float_like(value)


def _observe(fixed: FixedModule, leaves: list[Any], extension: Extension) -> Observation:
    """One observed run of the fixed graph on the user's own tensors, restored afterwards."""
    gm = fixed.graph_module
    ctx = Context(example_inputs=leaves, private_state=True, module=fixed)
    with preserved_state(fixed, leaves):
        return observe(gm, ctx, [extension])


def _why_cut(node: fx.Node, grad_enabled: bool) -> str:
    target = node.target
    if node.op == "call_method" and target in ("detach", "detach_"):
        return "detach() stops gradients"
    if node.op == "call_method" and target == "numpy":
        return ".numpy() leaves autograd: NumPy values carry no gradient"
    if node.op == "call_method" and target in ("item", "tolist"):
        return f".{target}() turns the tensor into Python numbers, which carry no gradient"
    if node.op == "call_function" and target is getattr and node.args[1:2] == ("data",):
        return ".data reads the values around autograd"
    if not grad_enabled:
        return "it runs inside a torch.no_grad() block"
    cls = getattr(target, "_fxgrad_function", None)
    if node.op == "call_function" and cls is not None:
        return f"the custom autograd.Function {cls.__name__} returns no gradient here"
    if _is_numpy_node(node):
        return "NumPy values carry no gradient"
    return "its result carries no gradient (an integer, boolean or non-differentiable op)"


def _find_cuts(fixed: FixedModule, inputs: tuple) -> tuple[fx.GraphModule, list[_Cut], set]:
    """Run the captured graph; return it, the cut nodes and the nodes that reach the output."""
    gm = fixed.graph_module
    leaves = [
        t.detach().clone().requires_grad_(True)
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
        else t
        for t in clone_inputs(_leaves(fixed, inputs))
    ]
    rec = _GradRecorder()
    grad_enabled = _observe(fixed, leaves, rec).grad_on
    reaches = ancestors([gm.graph.output_node()])
    cuts = []
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr") or n not in rec.carries:
            continue
        if rec.carries[n] or not any(rec.carries.get(a, False) for a in n.all_input_nodes):
            continue
        if n not in reaches:
            continue
        float_valued = rec.float_valued.get(n, False)
        if not float_valued and n.op == "call_function" and n.target is getattr:
            continue  # `.shape`, `.dtype`: reading metadata is no cut
        cuts.append(_Cut(n, _why_cut(n, grad_enabled.get(n, True)), float_valued))
    return gm, cuts, reaches


def _numpy_detours(gm: fx.GraphModule, cuts: list[_Cut]) -> list[tuple[_Cut, fx.Node]]:
    """Cuts that lead into NumPy and back into the graph: (where it leaves, where it returns)."""
    found = []
    for cut in cuts:
        if not cut.float_valued:
            continue
        down = descendants([cut.node])
        numpy_nodes = [n for n in gm.graph.nodes if n in down and _is_numpy_node(n)]
        if numpy_nodes:
            found.append((cut, numpy_nodes[-1]))
    return found


def _uses(gm: fx.GraphModule, name: str) -> list[fx.Node]:
    """Graph nodes that read parameter `name`: its get_attr, or the module call owning it."""
    found = []
    for n in gm.graph.nodes:
        if n.op == "get_attr" and (n.target == name or name.startswith(f"{n.target}.")):
            found.append(n)
        elif n.op == "call_module" and name.startswith(f"{n.target}."):
            found.append(n)
    return found


def _explain_none(uses: list[fx.Node], cuts: list[_Cut], reaches: set[fx.Node], what: str) -> str:
    if not uses:
        return f"the forward does not use {what}"
    down = descendants(uses)
    if not down & reaches:
        return f"{what} is used, but nothing computed from it reaches an output"
    on_path = [c for c in cuts if c.node in down]
    ranked = [c for c in on_path if c.float_valued] or on_path
    if not ranked:
        return "autograd gives it no gradient, and fxgrad found no detach, NumPy call or no_grad block on its path"
    return "the path to the outputs is cut at " + "; ".join(c.describe() for c in ranked[:5])


# ---------------------------------------------------------------------------------------
# Eager runs: forward and backward on the user's inputs, the user's state restored


@contextlib.contextmanager
def _anomaly_warnings() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autograd.detect_anomaly(check_nan=False):
            yield caught


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _user_frame(caught: list[warnings.WarningMessage]) -> str:
    """The user's `file.py:line` in anomaly mode's 'Traceback of forward call'."""
    import os

    for w in caught:
        text = str(w.message)
        if "Traceback of forward call" not in text:
            continue
        frames = [(f, int(n)) for f, n in _FRAME.findall(text) if not is_internal(f)]
        if frames:
            f, n = frames[-1]
            return f"{os.path.basename(f)}:{n}"
    return ""


def _eager_failure(module: nn.Module, inputs: tuple) -> tuple[str, str] | None:
    """Run eager forward and backward; return (error, op whose saved value broke) on failure."""
    params = [p for p in module.parameters() if p.requires_grad]
    args = clone_inputs(list(inputs))
    with preserved_state(module, args), _anomaly_warnings() as caught:
        try:
            torch.manual_seed(_SEED)
            out = module(*args)
            diff = differentiable_outputs(flat_outputs(out))
            wrt = params + [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad]
            if diff and wrt:
                seeded_gradients(diff, wrt, _SEED)
        except RuntimeError as e:
            return _first_line(e), _user_frame(caught)
    return None


def _nonfinite_origin(module: nn.Module, args: list[Any], wrt: list[torch.Tensor]) -> str:
    """Anomaly mode's answer to 'which backward produced the first NaN', with the user line."""
    with preserved_state(module, args), _anomaly_warnings() as caught:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            try:
                torch.manual_seed(_SEED)
                diff = differentiable_outputs(pytree.tree_leaves(module(*args)))
                with torch.autograd.detect_anomaly(check_nan=True):
                    seeded_gradients(diff, wrt, _SEED)
            except RuntimeError as e:
                where = _user_frame(caught)
                return f"{_first_line(e)}" + (f" (forward op at {where})" if where else "")
    return ""


def _run(module: nn.Module, inputs: tuple, wrt_params: Sequence[torch.Tensor]) -> tuple:
    args = clone_inputs(list(inputs))
    with preserved_state(module, args):
        torch.manual_seed(_SEED)
        try:
            out = module(*args)
        except RuntimeError as e:
            return None, None, e, None
        flat = flat_outputs(out)
        wrt = [*wrt_params] + [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad]
        diff = differentiable_outputs(flat)
        if not diff or not wrt:
            return flat, [], None, None
        try:
            grads = seeded_gradients(diff, wrt, _SEED)
        except RuntimeError as e:
            return flat, None, None, e
        return flat, grads, None, None


# ---------------------------------------------------------------------------------------
# Custom autograd.Functions: what each call receives, and its float64 gradcheck


@dataclass
class _FunctionCall:
    node: fx.Node
    cls: type[torch.autograd.Function]
    args: tuple
    kwargs: dict


class _FunctionRecorder(Extension):
    """Keep a detached copy of what each custom Function receives in the observed run."""

    key = "functions"

    def __init__(self) -> None:
        self.calls: list[_FunctionCall] = []

    def before(self, run: Observer, node: fx.Node) -> None:
        cls = getattr(node.target, "_fxgrad_function", None) if node.op == "call_function" else None
        if cls is None:
            return
        args, kwargs = run.fetch_args_kwargs_from_env(node)

        def keep(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x.detach().clone().requires_grad_(x.requires_grad)
            return x

        self.calls.append(
            _FunctionCall(node, cls, pytree.tree_map(keep, args), pytree.tree_map(keep, kwargs))
        )


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def _gradcheck_call(call: _FunctionCall, fast_mode: bool | None) -> str | None:
    """Float64 gradcheck of one recorded call; the reason it fails, or None."""
    flat, spec = pytree.tree_flatten((call.args, call.kwargs))
    positions = [
        i
        for i, x in enumerate(flat)
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.requires_grad
    ]
    if not positions:
        return None  # nothing it receives needs a gradient: its backward never runs
    flat = [
        x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in flat
    ]
    tensors = tuple(flat[i].detach().requires_grad_(True) for i in positions)

    def fn(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = list(flat)
        for i, t in zip(positions, ts):
            values[i] = t
        args, kwargs = pytree.tree_unflatten(values, spec)
        out = call.cls.apply(*args, **kwargs)
        return tuple(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))

    if fast_mode is None:
        fast_mode = sum(t.numel() for t in tensors) > 512
    try:
        with _default_dtype(torch.float64):
            torch.autograd.gradcheck(fn, tensors, fast_mode=fast_mode, raise_exception=True)
    except Exception as e:  # GradcheckError, or a backward that crashes in float64
        first = _first_line(e).rstrip(",")
        if "mismatch" not in first:
            return f"{type(e).__name__}: {first}"
        return f"{first}; {_directional_check(fn, tensors)}"
    return None


def _directional_check(fn: Any, tensors: tuple[torch.Tensor, ...]) -> str:
    """One number each from backward and from finite differences, for a readable message."""
    gen = torch.Generator().manual_seed(_SEED)
    with _default_dtype(torch.float64):
        us = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in tensors]
        outs = fn(*tensors)
        ws = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
        diff = [(o, w) for o, w in zip(outs, ws) if o.requires_grad]
        grads = torch.autograd.grad(
            [o for o, _ in diff], tensors, [w for _, w in diff], allow_unused=True
        )
        analytical = sum(float((g * u).sum()) for g, u in zip(grads, us) if g is not None)
        eps = 1e-6
        with torch.no_grad():
            plus = fn(*(t + eps * u for t, u in zip(tensors, us)))
            minus = fn(*(t - eps * u for t, u in zip(tensors, us)))
        numerical = sum(float(((p - m) / (2 * eps) * w).sum()) for p, m, w in zip(plus, minus, ws))
    return (
        f"along a random direction its backward gives {analytical:.6g}, "
        f"finite differences give {numerical:.6g}"
    )
