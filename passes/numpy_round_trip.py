"""FXG301 numpy-round-trip

## What it does
Replaces a NumPy detour (`t.detach().cpu().numpy()`, NumPy math, then `torch.from_numpy`,
`torch.tensor` or `torch.as_tensor`) with the torch ops that compute the same values, with
the same dtypes, so gradients reach `t` again.

## Why is this bad?
`.detach()` and `.numpy()` cut the autograd graph: everything computed in NumPy comes back as
a constant, and the parameters that produced `t` silently get no gradient from that path. The
host copy also costs time on every call, and twice on a GPU.

## Example
    a = h.detach().cpu().numpy()
    s = np.sum(np.sin(a) * 2, axis=1, keepdims=True)
    return torch.from_numpy(s).to(h.device) * h

## Use instead
    s = torch.sum(torch.sin(h) * 2, dim=1, keepdim=True)
    return s.to(h.device) * h

The translation follows NumPy, not torch, wherever the two differ: `np.std` and `np.var`
default to `ddof=0`; integer and boolean inputs are cast first wherever NumPy promotes them
(`np.mean`, `np.sqrt` and `/` of integers give float64); Python scalars are weak (NEP 50);
`np.round` rounds half to even; `axis`/`keepdims` become `dim`/`keepdim`; `np.dot`,
`np.outer`, `np.repeat`, `np.cumsum(axis=None)` and `np.linalg.norm` keep their NumPy
meaning. The result has the dtype NumPy would have produced (float64 if NumPy promoted), and
it is moved back to the CPU where the original came back on the CPU, unless the next op moves
it to a device anyway.

Mapped: elementwise ufuncs and ndarray operators (trig, hyperbolic, exp/log family, sqrt,
square, abs, sign, floor/ceil/trunc/rint/round, clip, maximum/minimum, where, power,
arithmetic, comparison and logical operators), reductions (sum, mean, prod, max/min,
argmax/argmin, std/var, all/any, cumsum/cumprod, `np.add.reduce` and friends) with
`axis`/`keepdims`, shape functions (reshape, transpose, `.T`, swapaxes, moveaxis,
expand_dims, squeeze, ravel, concatenate, stack, hstack, vstack, split, flip, tile, repeat,
broadcast_to), basic and advanced indexing, `astype`, linear algebra (dot, matmul, einsum,
outer, tensordot, `linalg.norm`) and `zeros_like`/`ones_like`/`full_like`.

With example inputs every translated op is run on the real values and compared with what
NumPy computed (dtype, shape and values); a chain is rewritten only when all of them match.

## Left alone when
- a NumPy call in the chain has no faithful torch twin (`np.fft`, `np.unique`,
  `np.linalg.eig`, `np.sort`, `out=`, `where=`, negative slice steps, ...): the whole chain
  stays and the report names the call where the gradient still stops
- a NumPy value of the chain is also used outside torch (`.item()`, `.tolist()`, `float()`,
  returned as an array) or written in place, or the tensor it came from is written in place
- `torch.tensor(..., requires_grad=True)` or `.requires_grad_()` makes a new leaf of a chain
  whose input does not require grad
- NumPy works on constants or sizes only (no traced tensor flows in)
- no example inputs are given: the dtypes NumPy picks depend on the input dtypes, so the
  chain is only reported
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context, seeded
from fxgrad.graph_utils import has_side_effect, location, target_name, writes_to
from fxgrad.registry import Pass

CODE = "FXG301"

# Torch functions that bring host data back (the tracer records the unpatched originals).
_EXITS = tuple(getattr(torch, n) for n in ("from_numpy", "tensor", "as_tensor", "asarray"))
# Ops between a tensor and `.numpy()` that only detach or copy to the host.
_HOST_METHODS = {"detach", "cpu", "clone", "contiguous", "resolve_conj", "resolve_neg"}
# ndarray methods whose result leaves NumPy for plain Python: the chain cannot be translated.
_ESCAPE_METHODS = {"item", "tolist", "tobytes", "tofile", "dump", "dumps"}


class _Unmapped(Exception):
    """A NumPy call in the chain has no faithful torch twin here; the message says why."""

    def __init__(self, message: str, node: fx.Node | None = None) -> None:
        super().__init__(message)
        self.node = node


def run(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    try:
        import numpy as np  # noqa: F401
    except ImportError:  # without NumPy no graph can hold a NumPy call
        return []
    if not any(_is_numpy_call(n) for n in gm.graph.nodes):
        return []
    values = _example_values(gm, ctx) if ctx.example_inputs is not None else None
    if values is None:
        return _report_static(gm, ctx)
    return _translate_all(gm, _find_detours(gm, values), values)


# ---------------------------------------------------------------------------------------
# Which nodes hold NumPy values


def _np() -> Any:
    import numpy as np

    return np


def _is_numpy_target(target: Any) -> bool:
    if hasattr(target, "_fxgrad_ufunc"):
        return True
    return type(target).__name__ == "ufunc" or (
        (getattr(target, "__module__", None) or "").startswith("numpy")
    )


def _is_numpy_call(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target == "numpy":
        return True
    return node.op == "call_function" and _is_numpy_target(node.target)


def _is_np_value(v: Any) -> bool:
    np = _np()
    if isinstance(v, (np.ndarray, np.generic)):
        return True
    return isinstance(v, (tuple, list)) and bool(v) and all(isinstance(i, np.ndarray) for i in v)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n] = value
        return value


def _example_values(gm: fx.GraphModule, ctx: Context) -> dict[fx.Node, Any] | None:
    """Every node's value on the example inputs, or None when the graph does not run."""
    rec = _Recorder(gm)
    prev = torch.is_grad_enabled()
    try:
        with seeded(ctx.seed), _np().errstate(all="ignore"):
            rec.run(*ctx.inputs())
    except Exception:  # the pipeline's capture check already ran it; be safe anyway
        return None
    finally:
        torch.set_grad_enabled(prev)
    return rec.values


@dataclass
class _Detours:
    """The NumPy side of a graph: NumPy-valued nodes a traced tensor flows into, and exits."""

    region: list[fx.Node]  # in graph order
    entries: set[fx.Node]  # `.numpy()` (or np.asarray of a tensor) nodes
    exits: list[fx.Node]  # torch.from_numpy / tensor / as_tensor / asarray nodes


def _is_exit(node: fx.Node, src: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in _EXITS:
        return False
    data = node.args[0] if node.args else node.kwargs.get("data", node.kwargs.get("obj"))
    if isinstance(data, (list, tuple)):
        return src in data
    return data is src


def _is_meta_use(user: fx.Node, node: fx.Node) -> bool:
    """`a.shape`, `a.ndim`, `a.size`, and the tracer's `len()` guards: sizes, not data."""
    if user.op == "call_function" and user.target is builtins.getattr:
        return user.args[0] is node and user.args[1] in ("shape", "ndim", "size")
    return user.op == "call_function" and getattr(user.target, "__name__", "") == "fxgrad_guard"


def _entry_source(node: fx.Node) -> tuple[fx.Node, bool]:
    """The tensor a `.numpy()` reads, seen through detach/cpu/.data; and whether it went `.cpu()`."""
    src = node.args[0]
    host = False
    while isinstance(src, fx.Node):
        if src.op == "call_method" and src.target in _HOST_METHODS and len(src.args) == 1:
            host = host or src.target == "cpu"
        elif src.op == "call_method" and src.target == "to" and _is_cpu_move(src):
            host = True
        elif src.op == "call_function" and src.target is builtins.getattr and src.args[1] == "data":
            pass
        else:
            break
        src = src.args[0]
    return src, host


def _is_cpu_move(node: fx.Node) -> bool:
    args = list(node.args[1:]) + list(node.kwargs.values())
    return len(args) == 1 and (args[0] == "cpu" or args[0] == torch.device("cpu"))


def _find_detours(gm: fx.GraphModule, values: dict[fx.Node, Any]) -> _Detours:
    entries = set()
    for n in gm.graph.nodes:
        if n.op == "call_method" and n.target == "numpy":
            if isinstance(values.get(n.args[0]), torch.Tensor):
                entries.add(n)
        elif n.op == "call_function" and n.target in _array_entries():
            if n.args and isinstance(values.get(n.args[0]), torch.Tensor):
                entries.add(n)
    region: set[fx.Node] = set()
    exits: set[fx.Node] = set()
    stack = list(entries)
    while stack:
        n = stack.pop()
        if n in region:
            continue
        region.add(n)
        for u in n.users:
            if _is_exit(u, n):
                exits.add(u)
            elif _is_np_value(values.get(u)):
                stack.append(u)
    order = list(gm.graph.nodes)
    return _Detours([n for n in order if n in region], entries, [n for n in order if n in exits])


def _report_static(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    """Without example inputs, name the detours; dtypes NumPy picks are unknown, so no rewrite."""
    held: set[fx.Node] = set()
    changes = []
    for n in gm.graph.nodes:
        if n.op == "call_method" and n.target == "numpy":
            held.add(n)
            continue
        ins = [a for a in n.all_input_nodes if a in held]
        if not ins:
            continue
        if n.op == "call_function" and n.target in _EXITS:
            chain_nodes = _upstream(n, held)
            changes.append(
                Change(
                    code=CODE,
                    node=n.name,
                    before=_render(n, chain_nodes | _entry_nodes(chain_nodes)),
                    after="",
                    where=location(n),
                    note="the gradient stops here; without example inputs the dtypes NumPy "
                    "picks are unknown, so the detour is only reported (pass example inputs)",
                    applied=False,
                )
            )
        elif n.op == "call_function" and (
            _is_numpy_target(n.target)
            or getattr(n.target, "__module__", None) in ("_operator", "operator")
        ):
            held.add(n)
        elif n.op == "call_function" and n.target is builtins.getattr and n.args[1] == "T":
            held.add(n)
        elif n.op == "call_method" and n.target not in _ESCAPE_METHODS:
            held.add(n)
    return changes


def _upstream(node: fx.Node, held: set[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [a for a in node.all_input_nodes if a in held]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(a for a in n.all_input_nodes if a in held)
    return seen


def _entry_nodes(nodes: set[fx.Node]) -> set[fx.Node]:
    """The detach/cpu/.data nodes between each `.numpy()` in `nodes` and its tensor."""
    out: set[fx.Node] = set()
    for n in nodes:
        if n.op == "call_method" and n.target == "numpy":
            stop = _entry_source(n)[0]
        elif n.op == "call_function" and n.target in _array_entries() and n.args:
            stop = _entry_source_tensor(n)
        else:
            continue
        src = n.args[0]
        while isinstance(src, fx.Node) and src is not stop:
            out.add(src)
            src = src.args[0]
    return out


# ---------------------------------------------------------------------------------------
# Emitting torch nodes, each run at once on the example values


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

    def __init__(self, graph: fx.Graph, env: dict[fx.Node, Any]) -> None:
        self.graph = graph
        self.env = env  # original nodes' example values, then the new nodes'
        self.created: list[fx.Node] = []
        self.tensors: set[fx.Node] = set()  # nodes holding translated NumPy values
        self.at: fx.Node | None = None
        self.out_dtype: torch.dtype | None = None  # NumPy's result dtype for the current node

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
        for node in reversed(self.created[mark:]):
            self.graph.erase_node(node)
            self.tensors.discard(node)
        del self.created[mark:]

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


# ---------------------------------------------------------------------------------------
# The mapping table: NumPy callable -> (torch builder, dtype rule)
#
# dtype rules, applied before the builder runs:
#   "ufunc": cast array inputs to the loop dtypes NumPy itself resolves (`ufunc.resolve_dtypes`,
#            Python scalars weak as in NEP 50), so `int / int` and `sqrt(int)` compute in float64
#   "out":   cast array inputs to the dtype NumPy's result has (sum of int32 -> int64, mean of
#            int -> float64, concatenate of float32 and int64 -> float64)
#   None:    no cast (shape functions, max/min, argmax, all/any, indexing)
# After the builder, a result whose dtype still differs from NumPy's is cast to it.


@dataclass(frozen=True)
class _Spec:
    build: Callable[[_Emitter, dict[str, Any]], Any]
    rule: str | None = "out"
    # Parameters that may take a non-default value; any other non-default one is unmapped.
    allowed: tuple[str, ...] = ()
    nocast: tuple[str, ...] = ()
    signature: Callable | None = None  # where the parameter names come from


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if not axes:
        raise _Unmapped("an empty axis tuple")
    return tuple(a % ndim if ndim else a for a in axes)


def _keep(e: _Emitter, t: fx.Node, p: dict, ndim: int) -> fx.Node:
    """Give an all-axes reduction NumPy's `keepdims=True` shape (1, ..., 1)."""
    if p.get("keepdims") and p.get("axis") is None and ndim:
        return e.m("reshape", t, (1,) * ndim)
    return t


def _reduction(fn: Callable, multi_dim: bool = True) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        t, axis, keep = p["a"], p.get("axis"), bool(p.get("keepdims"))
        nd = e.ndim(t)
        if axis is None:
            return _keep(e, e.f(fn, t), p, nd)
        axes = _axes(axis, nd)
        kw = {"keepdim": True} if keep else {}
        if multi_dim or len(axes) == 1:
            return e.f(fn, t, dim=axes[0] if len(axes) == 1 else axes, **kw)
        for a in sorted(axes, reverse=True):  # one axis at a time, last first
            t = e.f(fn, t, dim=a, **kw)
        return t

    return build


def _b_std(fn: Callable) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        ddof = p.get("correction") if p.get("correction") is not None else p.get("ddof", 0)
        if not isinstance(ddof, int):
            raise _Unmapped("a non-integer ddof")
        t, nd = p["a"], e.ndim(p["a"])
        if p.get("axis") is None:
            if p.get("keepdims") and nd:
                return e.f(fn, t, dim=tuple(range(nd)), correction=ddof, keepdim=True)
            return e.f(fn, t, correction=ddof)
        axes = _axes(p["axis"], nd)
        dim = axes[0] if len(axes) == 1 else axes
        kw = {"keepdim": True} if p.get("keepdims") else {}
        return e.f(fn, t, dim=dim, correction=ddof, **kw)

    return build


def _b_arg(fn: Callable) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        t = p["a"]
        if e.val(t).dtype == torch.bool:  # torch.argmax takes no bool; uint8 keeps the order
            t = e.m("to", t, torch.uint8)
        if p.get("axis") is None:
            return _keep(e, e.f(fn, t), p, e.ndim(t))
        kw = {"keepdim": True} if p.get("keepdims") else {}
        return e.f(fn, t, dim=p["axis"], **kw)

    return build


def _b_cumulative(fn: Callable) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        t = p["a"]
        if p.get("axis") is None:
            return e.f(fn, e.m("reshape", t, -1), dim=0)
        return e.f(fn, t, dim=p["axis"])

    return build


def _unary(fn: Callable) -> Callable:
    return lambda e, p: e.f(fn, p["x0"])


def _op(fn: Callable) -> Callable:
    """A Python operator: works with a scalar on either side, reads as `a + 2`."""
    return lambda e, p: e.f(fn, *[p[f"x{i}"] for i in range(len(p))])


def _tensor_like(e: _Emitter, x: Any, like: fx.Node) -> Any:
    return x if isinstance(x, fx.Node) else e.m("new_tensor", like, x)


def _binary(fn: Callable) -> Callable:
    """A torch function that needs tensors on both sides (`torch.maximum`)."""

    def build(e: _Emitter, p: dict) -> fx.Node:
        x, y = p["x0"], p["x1"]
        like = x if isinstance(x, fx.Node) else y
        return e.f(fn, _tensor_like(e, x, like), _tensor_like(e, y, like))

    return build


def _b_sign(e: _Emitter, p: dict) -> fx.Node:
    t = p["x0"]
    s = e.f(torch.sign, t)
    if e.val(t).is_floating_point():  # np.sign(nan) is nan, torch.sign(nan) is 0
        return e.f(torch.where, e.f(torch.isnan, t), t, s)
    return s


def _float_only(fn: Callable) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        if not e.val(p["x0"]).is_floating_point():
            raise _Unmapped("NumPy computes it in integers here")
        return e.f(fn, p["x0"])

    return build


def _b_round(e: _Emitter, p: dict) -> fx.Node:
    t, d = p["a"], p.get("decimals", 0)
    if not isinstance(d, int):
        raise _Unmapped("non-integer decimals")
    if not e.val(t).is_floating_point():
        if d >= 0:
            return t  # rounding integers to >= 0 decimals changes nothing
        raise _Unmapped("integers rounded to negative decimals")
    return e.f(torch.round, t, decimals=d) if d else e.f(torch.round, t)


def _b_clip(e: _Emitter, p: dict) -> fx.Node:
    lo = p.get("a_min") if p.get("a_min") is not None else p.get("min")
    hi = p.get("a_max") if p.get("a_max") is not None else p.get("max")
    if lo is None and hi is None:
        raise _Unmapped("a clip without bounds")
    kwargs = {}
    if lo is not None:
        kwargs["min"] = lo
    if hi is not None:
        kwargs["max"] = hi
    return e.f(torch.clamp, p["a"], **kwargs)


def _b_where(e: _Emitter, p: dict) -> fx.Node:
    c, x, y = p["condition"], p.get("x"), p.get("y")
    if x is None or y is None:
        raise _Unmapped("one-argument np.where returns indices")
    if isinstance(c, fx.Node) and e.val(c).dtype != torch.bool:
        c = e.m("bool", c)
    return e.f(torch.where, c, x, y)


def _b_reshape(e: _Emitter, p: dict) -> fx.Node:
    shape = p.get("shape") if p.get("shape") is not None else p.get("newshape")
    if p.get("order", "C") != "C":
        raise _Unmapped("a Fortran-order reshape")
    return e.m("reshape", p["a"], tuple(shape) if isinstance(shape, list) else shape)


def _b_transpose(e: _Emitter, p: dict) -> fx.Node:
    t, axes = p["a"], p.get("axes")
    nd = e.ndim(t)
    if axes is None:
        if nd < 2:
            return t
        axes = tuple(reversed(range(nd)))
    if tuple(axes) == (1, 0):
        return e.f(builtins.getattr, t, "T")
    return e.m("permute", t, tuple(axes))


def _b_expand_dims(e: _Emitter, p: dict) -> fx.Node:
    t = p["a"]
    axis = p["axis"]
    n = len(axis) if isinstance(axis, (tuple, list)) else 1
    for a in sorted(_axes(axis, e.ndim(t) + n)):
        t = e.m("unsqueeze", t, a)
    return t


def _b_squeeze(e: _Emitter, p: dict) -> fx.Node:
    if p.get("axis") is None:
        return e.f(torch.squeeze, p["a"])
    axes = _axes(p["axis"], e.ndim(p["a"]))
    return e.f(torch.squeeze, p["a"], axes[0] if len(axes) == 1 else axes)


def _arrays(e: _Emitter, seq: Any) -> list[fx.Node]:
    if not isinstance(seq, (list, tuple)) or not all(a in e.tensors for a in seq):
        raise _Unmapped("an operand that does not come from a traced tensor")
    return list(seq)


def _b_concatenate(e: _Emitter, p: dict) -> fx.Node:
    ts = _arrays(e, p["arrays"])
    if p.get("axis", 0) is None:
        return e.f(torch.cat, [e.m("reshape", t, -1) for t in ts])
    return e.f(torch.cat, ts, dim=p.get("axis", 0))


def _b_stack(e: _Emitter, p: dict) -> fx.Node:
    return e.f(torch.stack, _arrays(e, p["arrays"]), dim=p.get("axis", 0))


def _seq_fn(fn: Callable) -> Callable:
    return lambda e, p: e.f(fn, _arrays(e, p["tup"]))


def _b_split(e: _Emitter, p: dict) -> fx.Node:
    sections = p["indices_or_sections"]
    if isinstance(sections, (tuple, list)):
        sections = list(sections)
    elif not isinstance(sections, int):
        raise _Unmapped("split points that are not Python ints")
    return e.f(torch.tensor_split, p["ary"], sections, dim=p.get("axis", 0))


def _b_flip(e: _Emitter, p: dict) -> fx.Node:
    return e.f(torch.flip, p["m"], _axes(p.get("axis"), e.ndim(p["m"])))


def _b_tile(e: _Emitter, p: dict) -> fx.Node:
    reps = p["reps"]
    return e.f(torch.tile, p["A"], tuple(reps) if isinstance(reps, (tuple, list)) else (reps,))


def _b_repeat(e: _Emitter, p: dict) -> fx.Node:
    if not isinstance(p["repeats"], int):
        raise _Unmapped("repeats that are not one Python int")
    if p.get("axis") is None:
        return e.f(torch.repeat_interleave, p["a"], p["repeats"])
    return e.f(torch.repeat_interleave, p["a"], p["repeats"], dim=p["axis"])


def _b_broadcast_to(e: _Emitter, p: dict) -> fx.Node:
    shape = p["shape"]
    if isinstance(shape, int):
        shape = (shape,)
    return e.f(torch.broadcast_to, p["array"], tuple(shape) if isinstance(shape, list) else shape)


def _b_ravel(e: _Emitter, p: dict) -> fx.Node:
    if p.get("order", "C") != "C":
        raise _Unmapped("a Fortran-order ravel")
    return e.m("reshape", p["a"], -1)


def _b_same(name: str) -> Callable:
    return lambda e, p: p[name]


def _b_dot(e: _Emitter, p: dict) -> fx.Node:
    a, b = p["a"], p["b"]
    na, nb = e.ndim(a), e.ndim(b)
    if na == 0 or nb == 0:
        return e.f(operator.mul, a, b)
    if na <= 2 and nb <= 2:
        return e.f(torch.matmul, a, b)
    return e.f(torch.tensordot, a, b, dims=([na - 1], [max(nb - 2, 0)]))


def _b_einsum(e: _Emitter, p: dict) -> fx.Node:
    ops = p["operands"]
    if not ops or not isinstance(ops[0], str):
        raise _Unmapped("the interleaved einsum form")
    return e.f(torch.einsum, ops[0], *_arrays(e, ops[1:]))


def _b_outer(e: _Emitter, p: dict) -> fx.Node:
    return e.f(torch.outer, e.m("reshape", p["a"], -1), e.m("reshape", p["b"], -1))


def _b_tensordot(e: _Emitter, p: dict) -> fx.Node:
    axes = p.get("axes", 2)
    if isinstance(axes, (tuple, list)):
        x, y = axes
        axes = (
            [x] if isinstance(x, int) else list(x),
            [y] if isinstance(y, int) else list(y),
        )
    return e.f(torch.tensordot, p["a"], p["b"], dims=axes)


def _b_norm(e: _Emitter, p: dict) -> fx.Node:
    t, ord_, axis, keep = p["x"], p.get("ord"), p.get("axis"), bool(p.get("keepdims"))
    nd = e.ndim(t)
    if axis is None and (ord_ is None or nd == 1):
        kwargs = {"keepdim": True} if keep else {}
        return e.f(torch.linalg.vector_norm, t, 2 if ord_ is None else ord_, **kwargs)
    if axis is None:
        if nd != 2:
            raise _Unmapped("np.linalg.norm with ord on a array that is not 1-D or 2-D")
        axis = (0, 1)
    axes = _axes(axis, nd)
    if len(axes) == 1:
        if isinstance(ord_, str):
            raise _Unmapped(f"vector norm ord={ord_!r}")
        return e.f(
            torch.linalg.vector_norm, t, 2 if ord_ is None else ord_, dim=axes[0], keepdim=keep
        )
    return e.f(torch.linalg.matrix_norm, t, "fro" if ord_ is None else ord_, dim=axes, keepdim=keep)


def _b_like(fn: Callable, fill: bool = False) -> Callable:
    def build(e: _Emitter, p: dict) -> fx.Node:
        if p.get("shape") is not None:
            raise _Unmapped("a new shape")
        dtype = e.out_dtype  # type: ignore[attr-defined]
        if fill:
            if isinstance(p["fill_value"], fx.Node):
                raise _Unmapped("an array fill value")
            return e.f(fn, p["a"], p["fill_value"], dtype=dtype)
        return e.f(fn, p["a"], dtype=dtype)

    return build


def _b_astype(e: _Emitter, p: dict) -> fx.Node:
    return e.m("to", p["a"], e.out_dtype)  # type: ignore[attr-defined]


def _b_getitem(e: _Emitter, p: dict) -> fx.Node:
    key = p["key"]
    for k in key if isinstance(key, tuple) else (key,):
        if (
            isinstance(k, slice)
            and k.step is not None
            and not (isinstance(k.step, int) and k.step > 0)
        ):
            raise _Unmapped("a slice with a negative or unknown step")
        if isinstance(k, fx.Node) and k not in e.tensors and not isinstance(e.val(k), int):
            raise _Unmapped("an index that is not a Python int or a translated array")
    return e.f(operator.getitem, p["a"], key)


@functools.cache
def _tables() -> tuple[dict[Any, _Spec], dict[str, Any]]:
    np = _np()
    specs: dict[Any, _Spec] = {}

    def add(targets: Any, spec: _Spec) -> None:
        for t in targets if isinstance(targets, tuple) else (targets,):
            specs[t] = spec

    def uf(build: Callable) -> _Spec:
        return _Spec(build, rule="ufunc")

    unary = {
        np.sin: torch.sin, np.cos: torch.cos, np.tan: torch.tan,
        np.arcsin: torch.asin, np.arccos: torch.acos, np.arctan: torch.atan,
        np.sinh: torch.sinh, np.cosh: torch.cosh, np.tanh: torch.tanh,
        np.arcsinh: torch.asinh, np.arccosh: torch.acosh, np.arctanh: torch.atanh,
        np.exp: torch.exp, np.exp2: torch.exp2, np.expm1: torch.expm1,
        np.log: torch.log, np.log2: torch.log2, np.log10: torch.log10, np.log1p: torch.log1p,
        np.sqrt: torch.sqrt, np.square: torch.square, np.absolute: torch.abs,
        np.floor: torch.floor, np.ceil: torch.ceil, np.trunc: torch.trunc,
        np.rint: torch.round, np.deg2rad: torch.deg2rad, np.rad2deg: torch.rad2deg,
        np.isnan: torch.isnan, np.isinf: torch.isinf, np.isfinite: torch.isfinite,
        np.signbit: torch.signbit, np.logical_not: torch.logical_not,
    }  # fmt: skip
    for k, fn in unary.items():
        add(k, uf(_unary(fn)))
    add((np.radians,), uf(_unary(torch.deg2rad)))
    add((np.degrees,), uf(_unary(torch.rad2deg)))
    add(np.fabs, uf(_unary(torch.abs)))
    add(np.reciprocal, uf(_float_only(torch.reciprocal)))
    add(np.sign, uf(_b_sign))
    ops = {
        np.add: operator.add, np.subtract: operator.sub, np.multiply: operator.mul,
        np.true_divide: operator.truediv, np.floor_divide: operator.floordiv,
        np.remainder: operator.mod, np.power: operator.pow, np.matmul: operator.matmul,
        np.negative: operator.neg, np.positive: operator.pos,
        np.greater: operator.gt, np.greater_equal: operator.ge, np.less: operator.lt,
        np.less_equal: operator.le, np.equal: operator.eq, np.not_equal: operator.ne,
        np.bitwise_and: operator.and_, np.bitwise_or: operator.or_,
        np.bitwise_xor: operator.xor, np.invert: operator.invert,
    }  # fmt: skip
    for k, fn in ops.items():
        add(k, uf(_op(fn)))
    binary = {
        np.maximum: torch.maximum, np.minimum: torch.minimum, np.fmax: torch.fmax,
        np.fmin: torch.fmin, np.arctan2: torch.atan2, np.hypot: torch.hypot,
        np.logaddexp: torch.logaddexp, np.logical_and: torch.logical_and,
        np.logical_or: torch.logical_or, np.logical_xor: torch.logical_xor,
    }  # fmt: skip
    for k, fn in binary.items():
        add(k, uf(_binary(fn)))
    # Python operators on ndarrays resolve to the same ufuncs.
    for k, fn in ops.items():
        specs[fn] = _Spec(specs[k].build, rule="ufunc", signature=k)
    specs[operator.abs] = _Spec(specs[np.absolute].build, rule="ufunc", signature=np.absolute)

    red = ("axis", "keepdims", "dtype")
    add((np.sum,), _Spec(_reduction(torch.sum), allowed=red))
    add((np.mean,), _Spec(_reduction(torch.mean), allowed=red))
    add((np.prod,), _Spec(_reduction(torch.prod, multi_dim=False), allowed=red))
    add((np.max, np.amax), _Spec(_reduction(torch.amax), rule=None, allowed=red))
    add((np.min, np.amin), _Spec(_reduction(torch.amin), rule=None, allowed=red))
    add((np.all,), _Spec(_reduction(torch.all), rule=None, allowed=red))
    add((np.any,), _Spec(_reduction(torch.any), rule=None, allowed=red))
    add((np.argmax,), _Spec(_b_arg(torch.argmax), rule=None, allowed=red))
    add((np.argmin,), _Spec(_b_arg(torch.argmin), rule=None, allowed=red))
    std = ("axis", "keepdims", "dtype", "ddof", "correction")
    add((np.std,), _Spec(_b_std(torch.std), allowed=std))
    add((np.var,), _Spec(_b_std(torch.var), allowed=std))
    add((np.cumsum,), _Spec(_b_cumulative(torch.cumsum), allowed=("axis", "dtype")))
    add((np.cumprod,), _Spec(_b_cumulative(torch.cumprod), allowed=("axis", "dtype")))

    add((np.round, np.around), _Spec(_b_round, rule=None, allowed=("decimals",)))
    add((np.clip,), _Spec(_b_clip, allowed=("a_min", "a_max", "min", "max")))
    add((np.where,), _Spec(_b_where, allowed=("x", "y"), nocast=("condition",)))

    add((np.reshape,), _Spec(_b_reshape, rule=None, allowed=("shape", "newshape", "order")))
    add((np.transpose,), _Spec(_b_transpose, rule=None, allowed=("axes",)))
    sw = lambda e, p: e.f(torch.swapaxes, p["a"], p["axis1"], p["axis2"])  # noqa: E731
    add((np.swapaxes,), _Spec(sw, rule=None))
    mv = lambda e, p: e.f(torch.moveaxis, p["a"], p["source"], p["destination"])  # noqa: E731
    add((np.moveaxis,), _Spec(mv, rule=None))
    add((np.expand_dims,), _Spec(_b_expand_dims, rule=None))
    add((np.squeeze,), _Spec(_b_squeeze, rule=None, allowed=("axis",)))
    add((np.ravel,), _Spec(_b_ravel, rule=None, allowed=("order",)))
    add((np.concatenate,), _Spec(_b_concatenate, allowed=("axis", "dtype")))
    add((np.stack,), _Spec(_b_stack, allowed=("axis", "dtype")))
    add((np.hstack,), _Spec(_seq_fn(torch.hstack), allowed=("dtype",)))
    add((np.vstack,), _Spec(_seq_fn(torch.vstack), allowed=("dtype",)))
    add((np.split, np.array_split), _Spec(_b_split, rule=None, allowed=("axis",)))
    add((np.flip,), _Spec(_b_flip, rule=None, allowed=("axis",)))
    add((np.fliplr,), _Spec(lambda e, p: e.f(torch.fliplr, p["m"]), rule=None))
    add((np.flipud,), _Spec(lambda e, p: e.f(torch.flipud, p["m"]), rule=None))
    add((np.tile,), _Spec(_b_tile, rule=None))
    add((np.repeat,), _Spec(_b_repeat, rule=None, allowed=("axis",)))
    add((np.broadcast_to,), _Spec(_b_broadcast_to, rule=None))
    add((np.copy,), _Spec(_b_same("a"), rule=None))
    add((np.asarray, np.ascontiguousarray), _Spec(_b_same("a"), allowed=("dtype",)))
    add((np.array,), _Spec(_b_same("object"), allowed=("dtype", "copy")))
    specs[operator.getitem] = _Spec(_b_getitem, rule=None, nocast=("key",))

    add((np.dot,), _Spec(_b_dot))
    add((np.einsum,), _Spec(_b_einsum, allowed=("operands",)))
    add((np.outer,), _Spec(_b_outer))
    add((np.tensordot,), _Spec(_b_tensordot, allowed=("axes",)))
    add((np.linalg.norm,), _Spec(_b_norm, allowed=("ord", "axis", "keepdims")))
    like = ("dtype",)
    add((np.zeros_like,), _Spec(_b_like(torch.zeros_like), rule=None, allowed=like))
    add((np.ones_like,), _Spec(_b_like(torch.ones_like), rule=None, allowed=like))
    add((np.full_like,), _Spec(_b_like(torch.full_like, fill=True), rule=None, allowed=like))

    # ndarray methods: the function of the same meaning, with the array as first argument.
    methods = {
        "sum": np.sum, "mean": np.mean, "prod": np.prod, "max": np.max, "min": np.min,
        "all": np.all, "any": np.any, "argmax": np.argmax, "argmin": np.argmin,
        "std": np.std, "var": np.var, "cumsum": np.cumsum, "cumprod": np.cumprod,
        "round": np.round, "clip": np.clip, "reshape": np.reshape, "transpose": np.transpose,
        "swapaxes": np.swapaxes, "squeeze": np.squeeze, "ravel": np.ravel,
        "flatten": np.ravel, "repeat": np.repeat, "copy": np.copy, "dot": np.dot,
    }  # fmt: skip
    return specs, methods


def _ufunc_method_spec(target: Any) -> tuple[_Spec, Callable] | None:
    """`np.add.reduce` -> np.sum with NumPy's default axis=0, and friends."""
    np = _np()
    ufunc, method = target._fxgrad_ufunc, target._fxgrad_ufunc_method
    as_function = {
        (np.add, "reduce"): np.sum, (np.multiply, "reduce"): np.prod,
        (np.maximum, "reduce"): np.max, (np.minimum, "reduce"): np.min,
        (np.logical_and, "reduce"): np.all, (np.logical_or, "reduce"): np.any,
        (np.add, "accumulate"): np.cumsum, (np.multiply, "accumulate"): np.cumprod,
    }.get((ufunc, method))  # fmt: skip
    if as_function is None:
        return None
    return _tables()[0][as_function], as_function


# ---------------------------------------------------------------------------------------
# Binding a call to parameter names


def _bind(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    np = _np()
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise _Unmapped(f"arguments it does not take here ({e})") from None
    out = {}
    for name, param in sig.parameters.items():
        if name in bound.arguments:
            value = bound.arguments[name]
            if param.kind is param.VAR_KEYWORD:
                if value:
                    raise _Unmapped(f"keyword arguments {sorted(value)}")
                continue
        else:
            value = param.default
        if value is np._NoValue or value is inspect.Parameter.empty:
            value = None
        out[name] = value
    out["__defaults__"] = {
        name: (None if p.default is np._NoValue else p.default)
        for name, p in sig.parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return out


def _check_allowed(p: dict, spec: _Spec, what: str) -> None:
    defaults = p.pop("__defaults__")
    for name, default in defaults.items():
        if name in spec.allowed or name not in p:
            continue
        value = p[name]
        if value is not default and not (
            isinstance(value, (bool, int, float, str, type(None))) and value == default
        ):
            raise _Unmapped(f"{what}(..., {name}=...) has no torch twin here")


# ---------------------------------------------------------------------------------------
# Translating one chain


def _translate_all(gm: fx.GraphModule, d: _Detours, values: dict) -> list[Change]:
    """Translate every NumPy node once; rewrite each exit whose whole upstream translated."""
    graph = gm.graph
    region = set(d.region)
    ups = {x: _upstream(x, region) for x in d.exits}
    before = {
        x: _render(x, _with_sizes(ups[x] | _entry_nodes(ups[x] & d.entries))) for x in d.exits
    }
    e = _Emitter(graph, dict(values))
    tv: dict[fx.Node, Any] = {}
    failed: dict[fx.Node, _Unmapped] = {}
    for n in d.region:
        bad = next((failed[a] for a in n.all_input_nodes if a in failed), None)
        if bad is not None:  # downstream of a call without a twin: stays NumPy
            failed[n] = bad
            continue
        e.at, mark = n, len(e.created)
        try:
            t = _translate_node(e, n, tv, values)
            _check_same(e.env[t], values[n], n)
        except _Unmapped as err:
            err.node = err.node or n
            failed[n] = err
            e.erase_since(mark)
            continue
        tv[n] = t
        if isinstance(e.env.get(t), torch.Tensor):
            e.tensors.add(t)
    changes: list[Change] = []
    applied: set[fx.Node] = set()
    finals: dict[fx.Node, fx.Node] = {}
    for x in d.exits:
        up = ups[x]
        entries = [n for n in d.region if n in up and n in d.entries]
        reason = _refusal(gm, x, up, entries, values) or next(
            (failed[n] for n in d.region if n in up and n in failed), None
        )
        final = None
        if reason is None:
            e.at, mark = x, len(e.created)
            try:
                final = _translate_exit(e, x, tv, entries, values)
                _check_same(e.env[final], values[x], x)
            except _Unmapped as err:
                err.node = err.node or x
                reason = err
                e.erase_since(mark)
        if reason is not None or final is None:
            at = reason.node if reason is not None and reason.node is not None else x
            changes.append(
                Change(
                    code=CODE,
                    node=x.name,
                    before=before[x],
                    after="",
                    where=location(at) or location(x),
                    note=f"the gradient still stops at {_render_call_name(at)}: {reason}",
                    applied=False,
                )
            )
            continue
        finals[x] = final
        changes.append(
            Change(
                code=CODE,
                node=x.name,
                before=before[x],
                after="",
                where=location(x) or location(entries[0]),
                note="gradients reach "
                + ", ".join(sorted({_entry_source(n)[0].name for n in entries}))
                + " again",
            )
        )
        x.replace_all_uses_with(final)
        applied.update(up)
    # Sizes read from translated arrays (`a.shape[0]`, len() guards) now read the tensors.
    for n in d.region:
        if n not in applied:
            continue
        for u in list(n.users):
            if not _is_meta_use(u, n):
                continue
            if u.target is builtins.getattr:
                e.at = u
                u.replace_all_uses_with(_translate_meta(e, u, tv[n]))
            else:
                u.replace_input_with(n, tv[n])
    shown = _with_sizes(set(e.created))
    changes = [
        dataclasses.replace(c, after=_render(finals[x], shown)) if c.applied else c
        for c, x in zip(changes, d.exits)
    ]
    removable = set(d.region) | set(d.exits) | set(e.created) | _entry_nodes(d.entries)
    for node in reversed(list(graph.nodes)):
        if node.users or has_side_effect(node, gm):
            continue
        if node in removable or (
            node.op == "call_function"
            and node.target is builtins.getattr
            and node.args[0] in removable
        ):
            graph.erase_node(node)
    return changes


def _with_sizes(nodes: set[fx.Node]) -> set[fx.Node]:
    """Add the size reads of `nodes` (`a.shape`, `a.shape[0]`) so renders spell them out."""
    out = set(nodes)
    stack = list(nodes)
    while stack:  # host scalars computed from sizes: `np.sqrt(a.shape[-1])`
        n = stack.pop()
        for a in n.all_input_nodes:
            if (
                a not in out
                and a.op == "call_function"
                and (_is_numpy_target(a.target) or a.target in (operator.getitem, builtins.getattr))
            ):
                out.add(a)
                stack.append(a)
    for n in nodes:
        for u in n.users:
            if (
                u.op == "call_function"
                and u.target is builtins.getattr
                and u.args[1]
                in (
                    "shape",
                    "ndim",
                )
            ):
                out.add(u)
                out.update(g for g in u.users if g.target is operator.getitem)
    return out


def _refusal(
    gm: fx.GraphModule, x: fx.Node, up: set[fx.Node], entries: list[fx.Node], values: dict
) -> _Unmapped | None:
    """Why this exit's detour must stay as it is, before looking at any single call."""
    sources = {_entry_source(n)[0] for n in entries}
    watched = sources | up | {x} | set(x.users) | _entry_nodes(set(entries))
    for n in gm.graph.nodes:
        if writes_to(n, gm) in watched:
            return _Unmapped(
                f"{_render(n, set())} writes in place into memory the detour shares", n
            )
    needs_grad = any(
        isinstance(values.get(s), torch.Tensor) and values[s].requires_grad for s in sources
    )
    new_leaf = x.kwargs.get("requires_grad") or any(
        u.op == "call_method" and u.target == "requires_grad_" for u in x.users
    )
    if new_leaf and not needs_grad:
        return _Unmapped("it makes a new leaf of values that carry no gradient", x)
    return None


def _map_args(e: _Emitter, a: Any, tv: dict, values: dict) -> Any:
    np = _np()

    def one(n: fx.Node) -> Any:
        if n in tv:
            return tv[n]
        v = values.get(n)
        if isinstance(v, np.ndarray) or (_is_np_value(v) and not isinstance(v, float)):
            raise _Unmapped("a NumPy operand that does not come from a traced tensor", n)
        return n

    return fx.node.map_arg(a, one)


def _np_dtype_of(a: Any, values: dict) -> Any:
    np = _np()
    if isinstance(a, fx.Node):
        v = values.get(a)
        if isinstance(v, (np.ndarray, np.generic)):
            return v.dtype
        if isinstance(v, bool):
            return np.dtype(bool)
        if isinstance(v, (int, float, complex)):
            return type(v)
        raise _Unmapped("an operand whose dtype is unknown", a)
    if isinstance(a, bool):
        return np.dtype(bool)
    if isinstance(a, (int, float, complex)):
        return type(a)
    raise _Unmapped(f"an operand of type {type(a).__name__}")


def _translate_node(e: _Emitter, n: fx.Node, tv: dict, values: dict) -> Any:
    np = _np()
    specs, methods = _tables()
    out_value = values[n]
    if n.op == "call_method" and n.target == "numpy":
        return _entry_source(n)[0]
    if n.op == "call_function" and n.target in _array_entries() and n.args[0] not in tv:
        src = _entry_source_tensor(n)  # np.asarray(t, dtype=...): the tensor, cast
        dtype = n.kwargs.get("dtype", n.args[1] if len(n.args) > 1 else None)
        return src if dtype is None else e.m("to", src, _torch_dtype(dtype))
    target, args, kwargs = n.target, n.args, dict(n.kwargs)
    if n.op == "call_function" and target is builtins.getattr:
        if args[1] != "T":
            raise _Unmapped(f"ndarray attribute .{args[1]}")
        target, args, kwargs = np.transpose, (args[0],), {}
    elif n.op == "call_method":
        if target == "astype":
            spec, target = _Spec(_b_astype, rule=None), None
            args, kwargs = (args[0],), {}
        elif target in methods:
            target = methods[target]
            if target in (np.reshape, np.transpose) and len(args) > 2:
                args = (args[0], tuple(args[1:]))
            if target is np.reshape and "shape" not in kwargs and len(args) == 1:
                raise _Unmapped("a reshape without shape")
        else:
            raise _Unmapped(f"ndarray method .{n.target}() is not mapped")
    ufm = None
    if hasattr(target, "_fxgrad_ufunc"):
        ufm = _ufunc_method_spec(target)
        if ufm is None:
            raise _Unmapped("this ufunc method is not mapped")
        spec, target = ufm
        if len(args) < 2 and "axis" not in kwargs:
            kwargs["axis"] = 0  # ufunc.reduce/accumulate default to the first axis
    elif target is not None:
        spec = specs.get(target)
        if spec is None:
            raise _Unmapped("it has no torch twin in the mapping table")
    mapped_args = _map_args(e, args, tv, values)
    mapped_kwargs = _map_args(e, kwargs, tv, values)
    e.out_dtype = (  # type: ignore[attr-defined]
        _torch_dtype(out_value.dtype) if hasattr(out_value, "dtype") else None
    )
    ufunc = spec.signature or target
    if spec.rule == "ufunc":
        if mapped_kwargs:
            raise _Unmapped(f"ufunc keyword arguments {sorted(mapped_kwargs)}")
        if not hasattr(ufunc, "resolve_dtypes") or ufunc.nout != 1:
            raise _Unmapped("a ufunc with more than one output")
        try:
            loop = ufunc.resolve_dtypes(tuple(_np_dtype_of(a, values) for a in args) + (None,))
        except (TypeError, ValueError) as err:
            raise _Unmapped(f"NumPy resolves no loop for these dtypes ({err})") from None
        p = {}
        for i, (a, dt) in enumerate(zip(mapped_args, loop)):
            p[f"x{i}"] = e.cast(a, _torch_dtype(dt))
    else:
        if target is None:
            p = {"a": mapped_args[0]}
        elif target is operator.getitem:
            p = {"a": mapped_args[0], "key": mapped_args[1]}
        else:
            p = _bind(target, mapped_args, mapped_kwargs)
            _check_allowed(p, spec, _render_target(target))
        if spec.rule == "out" and e.out_dtype is not None:
            dt = e.out_dtype
            for k, v in p.items():
                if k in spec.nocast:
                    continue
                if isinstance(v, (list, tuple)):
                    p[k] = type(v)(e.cast(x, dt) for x in v)
                else:
                    p[k] = e.cast(v, dt)
    result = spec.build(e, p)
    if e.out_dtype is not None and isinstance(e.env.get(result), torch.Tensor):
        if e.env[result].dtype != e.out_dtype:
            result = e.m("to", result, e.out_dtype)
    return result


def _array_entries() -> tuple[Any, ...]:
    """NumPy functions that read a tensor through __array__ (`np.asarray(t.detach())`)."""
    np = _np()
    return (np.asarray, np.array, np.ascontiguousarray)


def _entry_source_tensor(n: fx.Node) -> fx.Node:
    src = n.args[0]
    while (
        isinstance(src, fx.Node)
        and src.op == "call_method"
        and src.target in _HOST_METHODS
        and len(src.args) == 1
    ):
        src = src.args[0]
    return src


def _translate_meta(e: _Emitter, u: fx.Node, t: fx.Node) -> fx.Node:
    attr = u.args[1]
    if attr == "size":
        return e.m("numel", t)
    return e.f(builtins.getattr, t, attr)


def _is_device_move(u: fx.Node) -> bool:
    if u.op != "call_method":
        return False
    if u.target == "cuda":
        return True
    if u.target != "to":
        return False
    if "device" in u.kwargs:
        return True
    first = u.args[1] if len(u.args) > 1 else None
    if isinstance(first, (str, torch.device)):
        return True
    return (
        isinstance(first, fx.Node)
        and first.op == "call_function"
        and first.target is builtins.getattr
        and first.args[1] == "device"
    )


def _translate_exit(
    e: _Emitter, x: fx.Node, tv: dict, entries: list[fx.Node], values: dict
) -> fx.Node:
    data = x.args[0] if x.args else x.kwargs.get("data", x.kwargs.get("obj"))
    extra = dict(x.kwargs)
    extra.pop("data", None)
    extra.pop("obj", None)
    extra.pop("requires_grad", None)  # the result already carries the chain's gradient
    device = extra.pop("device", None)
    extra.pop("dtype", None)  # the recorded result's dtype is applied below
    extra.pop("copy", None)
    if x.target is torch.tensor:
        extra.pop("pin_memory", None)
    if extra or len(x.args) > 1:
        raise _Unmapped(f"{_render_call_name(x)} arguments {sorted(extra)}", x)
    if isinstance(data, (list, tuple)):
        if not all(d in tv for d in data):
            raise _Unmapped("a list mixing NumPy values with other data", x)
        shapes = {tuple(e.env[tv[d]].shape) for d in data}
        if len(shapes) != 1:
            raise _Unmapped("a list of arrays of different shapes", x)
        result = e.f(torch.stack, [tv[d] for d in data])
    else:
        result = tv[data]
    want = values[x]
    if e.env[result].dtype != want.dtype:
        result = e.m("to", result, want.dtype)
    if device is not None:
        result = e.m("to", result, device)
    elif any(_entry_source(n)[1] for n in entries) and not (
        x.users and all(_is_device_move(u) for u in x.users)
    ):
        result = e.m("cpu", result)  # NumPy results live on the CPU
    return result


def _tolerance(dtype: torch.dtype) -> dict:
    if dtype in (torch.float16, torch.bfloat16):
        return {"rtol": 1e-2, "atol": 1e-3}
    if dtype in (torch.float32, torch.complex64):
        return {"rtol": 1e-4, "atol": 1e-5}
    return {"rtol": 1e-7, "atol": 1e-9}


def _check_same(got: Any, want: Any, n: fx.Node) -> None:
    """The torch twin must reproduce what NumPy computed: dtype, shape and values."""
    np = _np()
    if isinstance(want, (tuple, list)) and not isinstance(want, torch.Size):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            raise _Unmapped("its torch twin gives a different number of pieces", n)
        for g, w in zip(got, want):
            _check_same(g, w, n)
        return
    if isinstance(want, (np.ndarray, np.generic)):
        want = torch.from_numpy(np.array(want, copy=True))
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        raise _Unmapped("its torch twin gives a different kind of value", n)
    if got.dtype != want.dtype or got.shape != want.shape:
        raise _Unmapped(
            f"its torch twin gives {str(got.dtype)[6:]}{list(got.shape)} where NumPy gives "
            f"{str(want.dtype)[6:]}{list(want.shape)}",
            n,
        )
    try:
        torch.testing.assert_close(
            got.detach().cpu(), want.detach().cpu(), equal_nan=True, **_tolerance(want.dtype)
        )
    except AssertionError:
        raise _Unmapped("its torch twin gives different values on the example inputs", n) from None


# ---------------------------------------------------------------------------------------
# Rendering chains as short Python for the report

_SYMBOLS = {
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/",
    operator.floordiv: "//", operator.mod: "%", operator.pow: "**", operator.matmul: "@",
    operator.and_: "&", operator.or_: "|", operator.xor: "^", operator.eq: "==",
    operator.ne: "!=", operator.lt: "<", operator.le: "<=", operator.gt: ">", operator.ge: ">=",
}  # fmt: skip
_UNARY = {operator.neg: "-", operator.pos: "+", operator.invert: "~"}
_PRECEDENCE = {
    operator.pow: 6, operator.neg: 5, operator.pos: 5, operator.invert: 5,
    operator.mul: 4, operator.truediv: 4, operator.floordiv: 4, operator.mod: 4,
    operator.matmul: 4, operator.add: 3, operator.sub: 3, operator.and_: 2, operator.xor: 2,
    operator.or_: 2, operator.eq: 1, operator.ne: 1, operator.lt: 1, operator.le: 1,
    operator.gt: 1, operator.ge: 1,
}  # fmt: skip
_TORCH_NAMES = {
    torch.linalg.vector_norm: "torch.linalg.vector_norm",
    torch.linalg.matrix_norm: "torch.linalg.matrix_norm",
}


def _render_target(target: Any) -> str:
    if target in _TORCH_NAMES:
        return _TORCH_NAMES[target]
    if hasattr(target, "_fxgrad_ufunc"):
        return f"np.{target._fxgrad_ufunc.__name__}.{target._fxgrad_ufunc_method}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if type(target).__name__ == "ufunc" or module == "numpy":
        return f"np.{name}"
    if module.startswith("numpy."):
        sub = module.split(".")[1]
        return f"np.{sub}.{name}" if not sub.startswith("_") else f"np.{name}"
    if target in _EXITS:
        return f"torch.{name}"
    return target_name(target)


def _render_call_name(n: fx.Node) -> str:
    if n.op == "call_method":
        return f".{n.target}()"
    if n.op == "call_function" and n.target is builtins.getattr:
        return f".{n.args[1]}"
    if n.op == "call_function" and n.target in _SYMBOLS:
        return f"`{_SYMBOLS[n.target]}`"
    if n.op == "call_function" and n.target is operator.getitem:
        return "indexing"
    return _render_target(n.target) if n.op == "call_function" else n.name


def _render(node: Any, inline: set[fx.Node]) -> str:
    """Render a node as one expression, with the nodes in `inline` written out in place."""

    def lit(a: Any) -> str:
        if isinstance(a, fx.Node):
            return expr(a) if a in inline else a.name
        if isinstance(a, tuple):
            inner = ", ".join(lit(x) for x in a)
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        if isinstance(a, list):
            return "[" + ", ".join(lit(x) for x in a) + "]"
        if isinstance(a, slice):
            parts = ["" if a.start is None else lit(a.start), "" if a.stop is None else lit(a.stop)]
            if a.step is not None:
                parts.append(lit(a.step))
            return ":".join(parts)
        if a is Ellipsis:
            return "..."
        return repr(a)

    def operand(a: Any, outer: int = 9, right: bool = False) -> str:
        text = lit(a)
        if isinstance(a, fx.Node) and a in inline and a.op == "call_function":
            inner = _PRECEDENCE.get(a.target, 9)
            if inner < outer or (inner == outer and (right or outer == 6)):
                return f"({text})"
        return text

    def call(args: tuple, kwargs: dict) -> str:
        return ", ".join([lit(a) for a in args] + [f"{k}={lit(v)}" for k, v in kwargs.items()])

    def index(a: Any) -> str:
        if isinstance(a, tuple):
            return ", ".join(lit(x) for x in a) if a else "()"
        return lit(a)

    def expr(n: fx.Node) -> str:
        args, kwargs = n.args, n.kwargs
        if n.op == "call_method":
            return f"{operand(args[0])}.{n.target}({call(args[1:], kwargs)})"
        if n.op != "call_function":
            return n.name
        t = n.target
        if t is builtins.getattr:
            return f"{operand(args[0])}.{args[1]}"
        if t is operator.getitem:
            return f"{operand(args[0])}[{index(args[1])}]"
        if t in _SYMBOLS and len(args) == 2 and not kwargs:
            prec = _PRECEDENCE[t]
            left, right = operand(args[0], prec), operand(args[1], prec, right=True)
            return f"{left} {_SYMBOLS[t]} {right}"
        if t in _UNARY and len(args) == 1:
            return f"{_UNARY[t]}{operand(args[0], 5)}"
        if t is operator.abs:
            return f"abs({lit(args[0])})"
        return f"{_render_target(t)}({call(args, kwargs)})"

    return expr(node) if isinstance(node, fx.Node) else lit(node)


PASS = Pass(
    code=CODE,
    name="numpy-round-trip",
    run=run,
    doc=__doc__,
    applies=lambda gm: any(_is_numpy_call(n) for n in gm.graph.nodes),
)
