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
broadcast_to), `np.sort`, basic and advanced indexing, `astype`, linear algebra (dot,
matmul, einsum, outer, tensordot, `linalg.norm`), `zeros_like`/`ones_like`/`full_like`, and
factories (`np.zeros`, `ones`, `empty`, `full`, `eye`, `identity`, `arange`, `linspace`),
made on the device of the tensor the detour starts from with NumPy's dtype (float64 unless
told), their sizes read from the tensor on every call (`np.eye(a.shape[0])`). A constant
array the detour reads (`a @ W`, `W` a module-level array) becomes a tensor constant of its
dtype, moved to that device.

NumPy writes are translated in program order into functional torch code, so that every later
reader of the written array, of its base and of each view of either sees the written values:
`a[mask] = 0` becomes `masked_fill`, `a[idx] = v` with index arrays `index_put`, any other
`a[key] = v` a written clone; `a += b` and `out=a` rebind `a` to the result, cast to `a`'s
dtype and broadcast to its shape as NumPy stores it; `a.sort(axis)` becomes
`torch.sort(...).values`; `a.fill`, `a.put`/`np.put`, `a.flat[k] = v`, `np.copyto`,
`np.putmask`, `np.place` (one value), `np.fill_diagonal` (a matrix), `np.put_along_axis`
(`scatter`) and `np.add.at`/`np.subtract.at` (`index_put` accumulating) have functional
twins too. A write through a
view (`a[:, 0] += 1`, `a.T[0] = 0`, `np.flip(a)[0] = 1`) is written back into `a`, and a
view read later (`v = a[:, 0]`) is taken again from `a`'s new value. Which arrays share
memory follows what NumPy documents for each call, never the example run alone, so the
translation holds for inputs of other sizes too.

`torch.from_numpy(np.flip(a))` raises in eager PyTorch (negative strides); it is translated
to what the code asks for, and the report says eager raised there.

With example inputs every translated op and every translated write is run on the real
values and compared with what NumPy computed (dtype, shape and values); a chain is
rewritten only when all of them match.

## Left alone when
- a NumPy call in the chain has no faithful torch twin (`np.fft`, `np.unique`,
  `np.linalg.eig`, `where=` without `out=`, negative slice steps, ...): the whole chain
  stays and the report names the call where the gradient still stops
- a NumPy write has none: `a.partition()` (NumPy leaves the order on each side of kth
  unspecified), `a.resize()`, `a.shape = ...`, `np.multiply.at`, `np.place` with several
  values, a write through `np.split`'s pieces; or it writes into memory the detour does not own (`a = t.numpy(); a[0] = 0`
  writes into `t`, a constant array, an array passed in); or into an array whose aliasing
  depends on strides (`r = a.reshape(-1); r[0] = 5` while `a` is read later); or into an
  array after `torch.from_numpy` made a tensor sharing its memory
- a NumPy value of the chain is also used outside torch (`.item()`, `.tolist()`, `float()`,
  returned as an array), or the tensor it came from is written in place: the NumPy code
  stays for that use, its writes included
- `torch.tensor(..., requires_grad=True)` or `.requires_grad_()` makes a new leaf of a chain
  whose input does not require grad
- NumPy works on constants or sizes only (no traced tensor flows in)
- no example inputs are given: the dtypes NumPy picks depend on the input dtypes, so the
  chain is only reported
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import enum
import functools
import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from fxgrad.passes import _dynamo_numpy
from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context
from fxgrad.graph_utils import (
    INPLACE_OPERATORS,
    has_side_effect,
    location,
    source_line,
    target_name,
    writes_to,
)
from fxgrad.observe import Extension, Observer
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
    if _dynamo_numpy.has_wrapped_numpy(gm):  # a graph Dynamo captured: its NumPy is torch's
        return _dynamo_numpy.run(gm)
    if not any(_is_numpy_call(n) for n in gm.graph.nodes):
        return []
    seen = _record(gm, ctx) if ctx.example_inputs is not None else None
    if seen is None:
        return _report_static(gm)
    return _translate_all(gm, _find_detours(gm, seen.values), seen)


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


def _copy(v: Any) -> Any:
    """A NumPy value as it is now: arrays are written in place later, their copies are not."""
    np = _np()
    if isinstance(v, np.ndarray):
        return v.copy()
    if isinstance(v, (tuple, list)) and v and all(isinstance(i, np.ndarray) for i in v):
        copies = [i.copy() for i in v]
        return type(v)(*copies) if hasattr(v, "_fields") else type(v)(copies)
    return v


@dataclass
class _Run:
    """What one run of the graph on the example inputs showed, node by node."""

    values: dict[fx.Node, Any] = field(default_factory=dict)  # live: arrays change later
    snap: dict[fx.Node, Any] = field(default_factory=dict)  # NumPy values as computed
    written: dict[fx.Node, Any] = field(default_factory=dict)  # write -> its array after it
    plain: dict[fx.Node, Any] = field(default_factory=dict)  # `a += b`, `out=`: the result
    raised: dict[fx.Node, BaseException] = field(default_factory=dict)  # exits eager refuses


class _Recorder(Extension):
    """What this pass records in the graph's observed run: NumPy values as they were."""

    key = CODE

    def __init__(self) -> None:
        self.seen = _Run()
        self._write: _Write | None = None

    def scope(self) -> contextlib.AbstractContextManager:
        return _np().errstate(all="ignore")

    def before(self, run: Observer, node: fx.Node) -> None:
        self._write = write = _numpy_write(node, run.env)
        if write is not None and write.kind in ("augmented", "out"):
            with contextlib.suppress(Exception):
                self.seen.plain[node] = _copy(_without_write(run, node, write))

    def after(self, run: Observer, node: fx.Node, value: Any) -> None:
        seen = self.seen
        seen.values[node] = value
        seen.snap[node] = _copy(value)
        if self._write is not None:
            seen.written[node] = _copy(run.env.get(self._write.target))

    def failed(self, run: Observer, node: fx.Node, error: Exception) -> Any:
        """`torch.from_numpy(np.flip(a))` raises (negative strides); record what it means."""
        args, kwargs = run.fetch_args_kwargs_from_env(node)
        data = args[0] if args else None
        if not (
            node.op == "call_function"
            and node.target in _EXITS
            and isinstance(data, _np().ndarray)
            and any(s < 0 for s in data.strides)
        ):
            raise error
        self.seen.raised[node] = error
        return node.target(data.copy(), *args[1:], **kwargs)

    def result(self) -> _Run:
        return self.seen


def _without_write(run: Observer, n: fx.Node, write: _Write) -> Any:
    """What `a += b` or `f(..., out=a)` computes, before it is written anywhere."""
    args, kwargs = run.fetch_args_kwargs_from_env(n)
    if write.kind == "augmented":
        return INPLACE_OPERATORS[n.target](*args)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("out", "where")}
    if n.op == "call_method":
        return getattr(args[0], n.target)(*args[1:], **kwargs)
    return n.target(*args, **kwargs)


def _negative_strides(error: BaseException) -> bool:
    """`torch.from_numpy(np.flip(a))` raises; the translation is what the code meant."""
    return isinstance(error, ValueError) and "stride in the given numpy array is negative" in str(
        error
    )


def _recorder(gm: fx.GraphModule) -> _Recorder | None:
    """This pass's part of the observed run, for graphs that call NumPy at all."""
    if not any(_is_numpy_call(n) for n in gm.graph.nodes):
        return None
    return _Recorder()


def _record(gm: fx.GraphModule, ctx: Context) -> _Run | None:
    """What the graph's observed run showed; None when it does not run."""
    obs = ctx.observe(gm, needs=[_recorder])
    seen = obs.extras.get(CODE)
    return seen if obs.complete and seen is not None else None


@dataclass
class _Detours:
    """The NumPy side of a graph that a traced tensor flows into, and the ways back."""

    region: list[fx.Node]  # NumPy values and NumPy writes, in graph order
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
    """Grow each detour from its entries: NumPy values read or written together belong to it.

    Arrays that do not come from a traced tensor join where they meet one: a constant
    (`a @ W`), a factory (`np.eye(n)`, `np.zeros(a.shape)`), an array written with traced
    values (`z[:, 0] = a[:, 1]`). A NumPy scalar made from sizes alone stays a host number.
    """
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
            elif _is_np_value(values.get(u)) or _numpy_write(u, values) is not None:
                stack.append(u)
            elif _flat_base(u) is n:  # `a.flat[k] = v` writes into `a`
                stack.extend(v for v in u.users if _numpy_write(v, values) is not None)
        if n not in entries:
            stack.extend(a for a in n.all_input_nodes if _is_array_value(values.get(a)))
    order = list(gm.graph.nodes)
    return _Detours([n for n in order if n in region], entries, [n for n in order if n in exits])


def _is_array_value(v: Any) -> bool:
    np = _np()
    return isinstance(v, np.ndarray) or (
        isinstance(v, (tuple, list)) and bool(v) and all(isinstance(i, np.ndarray) for i in v)
    )


def _report_static(gm: fx.GraphModule) -> list[Change]:
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
                    before=_source_text(n, chain_nodes | _entry_nodes(chain_nodes)),
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
# NumPy writes, and which NumPy values share memory
#
# A NumPy write (`a.sort()`, `a[m] = 0`, `a += 1`, `np.add(a, b, out=a)`, `np.copyto(a, b)`)
# changes every array that shares the written memory: the array itself, its base, and each
# view of either. The translation is functional: each write gives the written array a new
# torch value, written back through the views that lead to it from the array that owns the
# memory, and an array read later is rebuilt from its owner's latest value. Which arrays
# share memory is decided by what NumPy documents for each operation, never by the example
# run alone: `a.reshape(...)` is a view or a copy depending on strides, which can differ on
# a call with other sizes, so a write that such an uncertain alias could see is refused.


@dataclass(frozen=True)
class _Write:
    """A NumPy call that writes into the array `target`."""

    node: fx.Node
    target: fx.Node
    kind: str  # a key of _WRITES


# ndarray methods NumPy documents as writing into the array itself.
_INPLACE_METHODS = ("sort", "fill", "put", "partition", "resize", "itemset", "setfield")


@functools.cache
def _writing_functions() -> dict[Any, str]:
    np = _np()
    return {
        np.copyto: "copyto",
        np.put: "put",
        np.place: "place",
        np.putmask: "putmask",
        np.fill_diagonal: "fill_diagonal",
        np.put_along_axis: "put_along_axis",
    }


def _numpy_write(n: fx.Node, values: dict[fx.Node, Any]) -> _Write | None:
    """The write `n` makes into a NumPy array, if it makes one."""
    if n.op not in ("call_function", "call_method"):
        return None
    np = _np()

    def array(a: Any) -> bool:
        return isinstance(a, fx.Node) and isinstance(values.get(a), np.ndarray)

    out = n.kwargs.get("out")
    if out is not None and (n.op == "call_method" or _is_numpy_target(n.target)):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if outs and array(outs[0]):
            return _Write(n, outs[0], "out" if len(outs) == 1 else "several outputs")
        return None
    first = n.args[0] if n.args else None
    if n.op == "call_method":
        writes = n.target in _INPLACE_METHODS or (
            n.target == "byteswap" and (n.kwargs.get("inplace") or n.args[1:2] == (True,))
        )
        return _Write(n, first, n.target) if writes and array(first) else None
    if n.target is operator.setitem or n.target in INPLACE_OPERATORS:
        kind = "setitem" if n.target is operator.setitem else "augmented"
        if array(first):
            return _Write(n, first, kind)
        base = _flat_base(first)  # `a.flat[k] = v`
        if kind == "setitem" and array(base):
            return _Write(n, base, "flat")
        return None
    if n.target is builtins.setattr:  # `a.shape = ...`, `a.flat = v`: the array changes
        return _Write(n, first, "setattr") if array(first) else None
    if getattr(n.target, "_fxgrad_ufunc_method", None) == "at":  # `np.add.at(a, i, v)`
        return _Write(n, first, "ufunc.at") if array(first) else None
    kind = _writing_functions().get(n.target)
    if kind is None:
        return None
    target = first if first is not None else next(iter(n.kwargs.values()), None)
    return _Write(n, target, kind) if array(target) else None


def _flat_base(n: Any) -> fx.Node | None:
    """The array `a` of an `a.flat` node."""
    if (
        isinstance(n, fx.Node)
        and n.op == "call_function"
        and n.target is builtins.getattr
        and n.args[1] == "flat"
    ):
        return n.args[0]
    return None


class _Kind(enum.Enum):
    """How a NumPy array's memory relates to the arrays it was made from."""

    FRESH = "fresh"  # new memory
    VIEW = "view"  # always a view of its parent (basic indexing, transpose, `a += 1`'s result)
    MAYBE = "maybe"  # a view or a copy depending on strides (reshape, ravel)
    SHARED = "shared"  # memory the detour does not own: a tensor's, a constant's, an input's


class _View(enum.Enum):
    """How a view is read again from its parent's new value, and written back into it."""

    SAME = "same"  # the array itself (`a += b` gives back `a`)
    GETITEM = "getitem"  # basic indexing: written back into a clone of the parent
    PIECE = "piece"  # one array of np.split's list
    PERMUTE = "permute"  # transpose, swapaxes, moveaxis, `.T`
    RESHAPE = "reshape"  # expand_dims, squeeze
    FLIP = "flip"  # flip, fliplr, flipud
    BROADCAST = "broadcast"  # broadcast_to
    SPLIT = "split"  # split, array_split


_V = _View
_VIEW_FUNCTIONS = {
    "transpose": _V.PERMUTE, "swapaxes": _V.PERMUTE, "moveaxis": _V.PERMUTE,
    "expand_dims": _V.RESHAPE, "squeeze": _V.RESHAPE,
    "flip": _V.FLIP, "fliplr": _V.FLIP, "flipud": _V.FLIP,
    "broadcast_to": _V.BROADCAST, "split": _V.SPLIT, "array_split": _V.SPLIT,
}  # fmt: skip
_VIEW_METHODS = {"transpose": _V.PERMUTE, "swapaxes": _V.PERMUTE, "squeeze": _V.RESHAPE}
# Mapped calls that may return a view, depending on strides, dtype or operands.
_MAYBE_FUNCTIONS = ("reshape", "ravel", "asarray", "ascontiguousarray", "asanyarray", "einsum")
_MAYBE_METHODS = ("reshape", "ravel", "view")
_FRESH_METHODS = ("copy", "flatten", "astype")


def _basic_index(k: Any, values: dict) -> bool:
    """An index item NumPy reads as basic indexing (a view), not advanced (a copy)."""
    np = _np()
    if k is None or k is Ellipsis:
        return True
    if isinstance(k, slice):
        return all(_basic_index(b, values) for b in (k.start, k.stop, k.step) if b is not None)
    v = values.get(k) if isinstance(k, fx.Node) else k
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_basic_key(key: Any, values: dict) -> bool:
    return all(_basic_index(k, values) for k in (key if isinstance(key, tuple) else (key,)))


def _alias(
    n: fx.Node, values: dict, entries: set[fx.Node], writes: dict[fx.Node, _Write]
) -> tuple[_Kind, _View | None, list[fx.Node]]:
    """(kind, view kind, parents) of a NumPy value node of a detour."""
    np = _np()
    parents = [a for a in n.all_input_nodes if _is_array_value(values.get(a))]
    if n in entries:
        copies = n.target is np.array and n.kwargs.get("copy", True) is not False
        return (_Kind.FRESH if copies else _Kind.SHARED), None, []
    if n.op in ("get_attr", "placeholder"):
        return _Kind.SHARED, None, []
    if not _is_array_value(values.get(n)):
        return _Kind.FRESH, None, []  # scalars: immutable, nothing shares them
    w = writes.get(n)
    if w is not None:  # `a += b` and `out=a` give back the array they wrote
        return _Kind.VIEW, _View.SAME, [w.target]
    by_form = _ALIAS_FORMS.get(n.op)
    found = by_form(n, values, parents) if by_form is not None else None
    if found is not None:
        return found
    specs, methods = _tables()
    known = (n.op == "call_method" and n.target in methods) or (
        n.op == "call_function" and (n.target in specs or hasattr(n.target, "_fxgrad_ufunc"))
    )
    # Everything the mapping table knows makes new memory; anything else might not.
    return (_Kind.FRESH if known else _Kind.MAYBE), None, parents


_Aliasing = tuple[_Kind, _View | None, list[fx.Node]]


def _method_alias(n: fx.Node, _values: dict, parents: list[fx.Node]) -> _Aliasing | None:
    """What NumPy documents for `a.transpose()`, `a.copy()`, `a.reshape()`; None if unlisted."""
    target = n.target
    if target in _VIEW_METHODS:
        return _Kind.VIEW, _VIEW_METHODS[target], [n.args[0]]
    if target in _FRESH_METHODS and n.kwargs.get("copy", True) is not False:
        return _Kind.FRESH, None, []
    if target in _MAYBE_METHODS or target in _FRESH_METHODS:
        return _Kind.MAYBE, None, parents
    return None


def _function_alias(n: fx.Node, values: dict, parents: list[fx.Node]) -> _Aliasing | None:
    """What NumPy documents for `a.T`, `a[i]`, `np.flip(a)`, `np.reshape(a)`; None if unlisted."""
    np = _np()
    target, args = n.target, n.args
    if target is builtins.getattr and args[1] == "T":
        return _Kind.VIEW, _View.PERMUTE, parents
    if target is operator.getitem:
        if isinstance(values.get(args[0]), (tuple, list)):
            return _Kind.VIEW, _View.PIECE, [args[0]]  # one array of np.split's list
        if _is_basic_key(args[1], values):
            return _Kind.VIEW, _View.GETITEM, [args[0]]
        return _Kind.FRESH, None, []
    name = getattr(target, "__name__", "")
    numpy_function = (getattr(target, "__module__", "") or "").startswith("numpy")
    if numpy_function and name in _VIEW_FUNCTIONS:
        return _Kind.VIEW, _VIEW_FUNCTIONS[name], parents[:1]
    if numpy_function and name in _MAYBE_FUNCTIONS:
        if name == "einsum" and len(parents) > 1:
            return _Kind.FRESH, None, []
        return _Kind.MAYBE, None, parents
    if target is np.array:
        copies = n.kwargs.get("copy", True) is not False
        return (_Kind.FRESH if copies else _Kind.MAYBE), None, parents
    return None


_ALIAS_FORMS: dict[str, Callable[[fx.Node, dict, list[fx.Node]], _Aliasing | None]] = {
    "call_method": _method_alias,
    "call_function": _function_alias,
}


@dataclass
class _Layout:
    """Static facts about a detour's memory, decided once before anything is translated."""

    pos: dict[fx.Node, int]  # graph order
    writes: dict[fx.Node, _Write]
    root: dict[fx.Node, fx.Node]  # array -> the array that owns its memory
    chain: dict[fx.Node, tuple[fx.Node, ...]]  # views leading from the root to the array
    parent: dict[fx.Node, fx.Node]  # view -> what it is a view of
    view_kind: dict[fx.Node, _View]
    shared: set[fx.Node]  # roots of memory the detour does not own
    links: list[tuple[fx.Node, fx.Node, int]]  # roots that may share memory, from a position
    last_use: dict[fx.Node, int]  # root -> last position any array of it is used at
    deps: dict[fx.Node, set[fx.Node]]  # node -> region nodes (reads and writes) it depends on
    traced: set[fx.Node]  # nodes a traced tensor flows into

    def linked(self, root: fx.Node, before: int) -> set[fx.Node]:
        """Roots that may share memory with `root`, through links made before `before`."""
        out, stack = {root}, [root]
        while stack:
            r = stack.pop()
            for a, b, at in self.links:
                if at < before and r in (a, b):
                    other = b if r is a else a
                    if other not in out:
                        out.add(other)
                        stack.append(other)
        return out

    def uncertain(self, a: fx.Node, b: fx.Node) -> fx.Node:
        """The array whose view-or-copy question ties roots `a` and `b` together."""
        return next((y for x, y, _ in self.links if {x, y} == {a, b}), b)

    def writes_into(self, roots: set[fx.Node], lo: int, hi: int) -> list[fx.Node]:
        """Writes into the memory of `roots` at positions in (lo, hi)."""
        return [
            w.node
            for w in self.writes.values()
            if w.target in self.root and self.root[w.target] in roots and lo < self.pos[w.node] < hi
        ]


def _layout(gm: fx.GraphModule, d: _Detours, seen: _Run) -> _Layout:
    values = seen.values
    pos = {n: i for i, n in enumerate(gm.graph.nodes)}
    region = set(d.region)
    writes = {n: w for n in d.region if (w := _numpy_write(n, values)) is not None}
    lay = _Layout(pos, writes, {}, {}, {}, {}, set(), [], {}, {}, set())
    for n in d.region:
        if not _is_array_value(values.get(n)):
            continue
        kind, view, parents = _alias(n, values, d.entries, writes)
        parents = [p for p in parents if p in lay.root]
        if kind is _Kind.VIEW and len(parents) == 1:
            p = parents[0]
            lay.root[n], lay.chain[n] = lay.root[p], (*lay.chain[p], n)
            lay.parent[n], lay.view_kind[n] = p, view or _View.SAME
            continue
        lay.root[n], lay.chain[n] = n, ()
        if kind is _Kind.SHARED:
            lay.shared.add(n)
        elif kind is not _Kind.FRESH:  # MAYBE, or a view of several arrays
            lay.links.extend((lay.root[p], n, pos[n]) for p in parents)
    for a, r in lay.root.items():
        last = max((pos[u] for u in a.users), default=pos[a])
        lay.last_use[r] = max(lay.last_use.get(r, -1), last)
    order = sorted(region | set(d.exits), key=pos.__getitem__)
    for n in order:
        reads = [a for a in n.all_input_nodes if a in region]
        deps = set(reads)
        for a in reads:
            if a in lay.root:
                roots = lay.linked(lay.root[a], pos[n])
                deps.update(lay.writes_into(roots, -1, pos[n]))
        lay.deps[n] = deps
        if n in d.entries or any(x in lay.traced for x in deps):
            lay.traced.add(n)
    return lay


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

    def __init__(self, gm: fx.GraphModule, env: dict[fx.Node, Any]) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.env = env  # original nodes' example values, then the new nodes'
        self.created: list[fx.Node] = []
        self.tensors: set[fx.Node] = set()  # nodes holding translated NumPy values
        self.arbitrary: set[fx.Node] = set()  # `np.empty` twins: values not to compare
        self.at: fx.Node | None = None
        self.out_dtype: torch.dtype | None = None  # NumPy's result dtype for the current node
        self.anchor: fx.Node | None = None  # a traced tensor whose device the detour runs on
        self._devices: dict[fx.Node, fx.Node] = {}

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
                elif op == "get_attr":
                    value = getattr(self.gm, target)
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
        gone = set(self.created[mark:])
        for node in reversed(self.created[mark:]):
            self.graph.erase_node(node)
            if node.op == "get_attr":
                delattr(self.gm, node.target)
            self.tensors.discard(node)
            self.arbitrary.discard(node)
        del self.created[mark:]
        self._devices = {k: v for k, v in self._devices.items() if v not in gone}

    def device(self) -> fx.Node:
        """`t.device` of the traced tensor the detour starts from: where its twins run."""
        if self.anchor is None:
            raise _Unmapped("no traced tensor tells the device to make it on")
        node = self._devices.get(self.anchor)
        if node is None:
            node = self._devices[self.anchor] = self.f(builtins.getattr, self.anchor, "device")
        return node

    def constant(self, array: Any) -> fx.Node:
        """A tensor constant of the graph holding `array` (its memory, where torch can share it)."""
        _torch_dtype(array.dtype)
        if array.flags.writeable and all(st >= 0 for st in array.strides):
            tensor = torch.from_numpy(array)
        else:  # negative strides or a read-only array: torch cannot share that memory
            tensor = torch.from_numpy(_np().array(array, copy=True))
        i = 0
        while hasattr(self.gm, f"_numpy_constant{i}"):
            i += 1
        name = f"_numpy_constant{i}"
        setattr(self.gm, name, tensor)
        return self._add("get_attr", name, (), {})

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
# After the builder, a result whose dtype still differs from NumPy's is cast to it.


class _Rule(enum.Enum):
    """How a mapped call's array inputs are cast before its builder runs."""

    # To the loop dtypes NumPy itself resolves (`ufunc.resolve_dtypes`, Python scalars weak
    # as in NEP 50), so `int / int` and `sqrt(int)` compute in float64.
    UFUNC = "ufunc"
    # To the dtype NumPy's result has (sum of int32 -> int64, mean of int -> float64,
    # concatenate of float32 and int64 -> float64).
    OUT = "out"
    # Not at all (shape functions, max/min, argmax, all/any, indexing).
    NONE = "none"


@dataclass(frozen=True)
class _Spec:
    build: Callable[[_Emitter, dict[str, Any]], Any]
    rule: _Rule = _Rule.OUT
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
    return lambda _e, p: p[name]


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
    _check_key(e, key)
    return e.f(operator.getitem, p["a"], key)


def _b_sort(e: _Emitter, p: dict) -> fx.Node:
    if p.get("order") is not None:
        raise _Unmapped("sorting by field names")
    t, axis = p["a"], p.get("axis")
    if axis is None:
        t, axis = e.m("reshape", t, -1), 0
    # Stability only orders equal values, which are indistinguishable in the result.
    return e.f(builtins.getattr, e.f(torch.sort, t, dim=axis), "values")


def _size_arg(e: _Emitter, shape: Any) -> Any:
    if isinstance(shape, fx.Node) and shape in e.tensors:
        raise _Unmapped("a shape given as an array")
    return tuple(shape) if isinstance(shape, list) else shape


def _number(e: _Emitter, x: Any, what: str) -> Any:
    if isinstance(x, fx.Node) and x in e.tensors:
        raise _Unmapped(f"{what} given as an array")
    return x


def _b_factory(fn: Callable, arbitrary: bool = False) -> Callable:
    """np.zeros/ones/empty: made on the device the detour runs on, with NumPy's dtype."""

    def build(e: _Emitter, p: dict) -> fx.Node:
        node = e.f(fn, _size_arg(e, p["shape"]), dtype=e.out_dtype, device=e.device())
        if arbitrary:  # np.empty: whatever memory held; only later writes give it values
            e.arbitrary.add(node)
        return node

    return build


def _b_full(e: _Emitter, p: dict) -> fx.Node:
    fill = _number(e, p["fill_value"], "a fill value")
    return e.f(torch.full, _size_arg(e, p["shape"]), fill, dtype=e.out_dtype, device=e.device())


def _b_eye(e: _Emitter, p: dict) -> fx.Node:
    if p.get("k", 0) != 0:
        raise _Unmapped("an eye with its diagonal off the middle (k != 0)")
    sizes = [p["N"] if "N" in p else p["n"]]
    if p.get("M") is not None:
        sizes.append(p["M"])
    sizes = [_number(e, s, "a size") for s in sizes]
    return e.f(torch.eye, *sizes, dtype=e.out_dtype, device=e.device())


def _b_arange(e: _Emitter, p: dict) -> fx.Node:
    bounds = [p["start_or_stop"]]
    if p.get("stop") is not None:
        bounds += [p["stop"], p.get("step", 1)]
    elif p.get("step", 1) != 1:
        raise _Unmapped("a step without a stop")
    bounds = [_number(e, b, "a bound") for b in bounds]
    return e.f(torch.arange, *bounds, dtype=e.out_dtype, device=e.device())


def _b_linspace(e: _Emitter, p: dict) -> fx.Node:
    if not p.get("endpoint", True) or p.get("retstep") or p.get("axis", 0) != 0:
        raise _Unmapped("np.linspace with endpoint, retstep or axis set")
    if not (e.out_dtype or torch.float64).is_floating_point:
        raise _Unmapped("an integer np.linspace (NumPy floors, torch truncates)")
    start, stop = _number(e, p["start"], "a bound"), _number(e, p["stop"], "a bound")
    return e.f(torch.linspace, start, stop, p.get("num", 50), dtype=e.out_dtype, device=e.device())


@functools.cache
def _tables() -> tuple[dict[Any, _Spec], dict[str, Any]]:
    np = _np()
    specs: dict[Any, _Spec] = {}

    def add(targets: Any, spec: _Spec) -> None:
        for t in targets if isinstance(targets, tuple) else (targets,):
            specs[t] = spec

    def uf(build: Callable) -> _Spec:
        return _Spec(build, rule=_Rule.UFUNC)

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
        specs[fn] = _Spec(specs[k].build, rule=_Rule.UFUNC, signature=k)
    specs[operator.abs] = _Spec(specs[np.absolute].build, rule=_Rule.UFUNC, signature=np.absolute)
    # `s += 1` on a NumPy scalar rebinds `s`; on an array it is a write (see _WRITES).
    for iop, op in INPLACE_OPERATORS.items():
        if op in specs:
            specs[iop] = specs[op]

    red = ("axis", "keepdims", "dtype")
    add((np.sum,), _Spec(_reduction(torch.sum), allowed=red))
    add((np.mean,), _Spec(_reduction(torch.mean), allowed=red))
    add((np.prod,), _Spec(_reduction(torch.prod, multi_dim=False), allowed=red))
    add((np.max, np.amax), _Spec(_reduction(torch.amax), rule=_Rule.NONE, allowed=red))
    add((np.min, np.amin), _Spec(_reduction(torch.amin), rule=_Rule.NONE, allowed=red))
    add((np.all,), _Spec(_reduction(torch.all), rule=_Rule.NONE, allowed=red))
    add((np.any,), _Spec(_reduction(torch.any), rule=_Rule.NONE, allowed=red))
    add((np.argmax,), _Spec(_b_arg(torch.argmax), rule=_Rule.NONE, allowed=red))
    add((np.argmin,), _Spec(_b_arg(torch.argmin), rule=_Rule.NONE, allowed=red))
    std = ("axis", "keepdims", "dtype", "ddof", "correction")
    add((np.std,), _Spec(_b_std(torch.std), allowed=std))
    add((np.var,), _Spec(_b_std(torch.var), allowed=std))
    add((np.cumsum,), _Spec(_b_cumulative(torch.cumsum), allowed=("axis", "dtype")))
    add((np.cumprod,), _Spec(_b_cumulative(torch.cumprod), allowed=("axis", "dtype")))

    add((np.round, np.around), _Spec(_b_round, rule=_Rule.NONE, allowed=("decimals",)))
    add((np.clip,), _Spec(_b_clip, allowed=("a_min", "a_max", "min", "max")))
    add((np.where,), _Spec(_b_where, allowed=("x", "y"), nocast=("condition",)))

    add((np.reshape,), _Spec(_b_reshape, rule=_Rule.NONE, allowed=("shape", "newshape", "order")))
    add((np.transpose,), _Spec(_b_transpose, rule=_Rule.NONE, allowed=("axes",)))
    sw = lambda e, p: e.f(torch.swapaxes, p["a"], p["axis1"], p["axis2"])  # noqa: E731
    add((np.swapaxes,), _Spec(sw, rule=_Rule.NONE))
    mv = lambda e, p: e.f(torch.moveaxis, p["a"], p["source"], p["destination"])  # noqa: E731
    add((np.moveaxis,), _Spec(mv, rule=_Rule.NONE))
    add((np.expand_dims,), _Spec(_b_expand_dims, rule=_Rule.NONE))
    add((np.squeeze,), _Spec(_b_squeeze, rule=_Rule.NONE, allowed=("axis",)))
    add((np.ravel,), _Spec(_b_ravel, rule=_Rule.NONE, allowed=("order",)))
    add((np.concatenate,), _Spec(_b_concatenate, allowed=("axis", "dtype")))
    add((np.stack,), _Spec(_b_stack, allowed=("axis", "dtype")))
    add((np.hstack,), _Spec(_seq_fn(torch.hstack), allowed=("dtype",)))
    add((np.vstack,), _Spec(_seq_fn(torch.vstack), allowed=("dtype",)))
    add((np.split, np.array_split), _Spec(_b_split, rule=_Rule.NONE, allowed=("axis",)))
    add((np.flip,), _Spec(_b_flip, rule=_Rule.NONE, allowed=("axis",)))
    add((np.fliplr,), _Spec(lambda e, p: e.f(torch.fliplr, p["m"]), rule=_Rule.NONE))
    add((np.flipud,), _Spec(lambda e, p: e.f(torch.flipud, p["m"]), rule=_Rule.NONE))
    add((np.tile,), _Spec(_b_tile, rule=_Rule.NONE))
    add((np.repeat,), _Spec(_b_repeat, rule=_Rule.NONE, allowed=("axis",)))
    add((np.broadcast_to,), _Spec(_b_broadcast_to, rule=_Rule.NONE))
    add((np.copy,), _Spec(_b_same("a"), rule=_Rule.NONE))
    add((np.asarray, np.ascontiguousarray), _Spec(_b_same("a"), allowed=("dtype",)))
    add((np.array,), _Spec(_b_same("object"), allowed=("dtype", "copy")))
    specs[operator.getitem] = _Spec(_b_getitem, rule=_Rule.NONE, nocast=("key",))
    add((np.sort,), _Spec(_b_sort, rule=_Rule.NONE, allowed=("axis", "kind", "order", "stable")))

    # Factories: new arrays of sizes given (often read from `a.shape`), on the detour's device.
    make = ("dtype", "order")
    add((np.zeros,), _Spec(_b_factory(torch.zeros), rule=_Rule.NONE, allowed=make))
    add((np.ones,), _Spec(_b_factory(torch.ones), rule=_Rule.NONE, allowed=make))
    add((np.empty,), _Spec(_b_factory(torch.empty, arbitrary=True), rule=_Rule.NONE, allowed=make))
    add((np.full,), _Spec(_b_full, rule=_Rule.NONE, allowed=make))
    add((np.eye,), _Spec(_b_eye, rule=_Rule.NONE, allowed=("M", "k", *make)))
    add((np.identity,), _Spec(_b_eye, rule=_Rule.NONE, allowed=make))
    add((np.arange,), _Spec(_b_arange, rule=_Rule.NONE, allowed=("stop", "step", "dtype")))
    lin = ("num", "endpoint", "retstep", "dtype", "axis")
    add((np.linspace,), _Spec(_b_linspace, rule=_Rule.NONE, allowed=lin))

    add((np.dot,), _Spec(_b_dot))
    add((np.einsum,), _Spec(_b_einsum, allowed=("operands",)))
    add((np.outer,), _Spec(_b_outer))
    add((np.tensordot,), _Spec(_b_tensordot, allowed=("axes",)))
    add((np.linalg.norm,), _Spec(_b_norm, allowed=("ord", "axis", "keepdims")))
    like = ("dtype",)
    add((np.zeros_like,), _Spec(_b_like(torch.zeros_like), rule=_Rule.NONE, allowed=like))
    add((np.ones_like,), _Spec(_b_like(torch.ones_like), rule=_Rule.NONE, allowed=like))
    add((np.full_like,), _Spec(_b_like(torch.full_like, fill=True), rule=_Rule.NONE, allowed=like))

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
# The torch twin of each NumPy write: the written array's new value, computed functionally


def _sort_method(axis: Any = -1, kind: Any = None, order: Any = None, *, stable: Any = None):  # noqa: ANN202
    """ndarray.sort's parameters, for binding."""


def _put_method(ind: Any, v: Any, mode: Any = "raise"):  # noqa: ANN202
    """ndarray.put's parameters, for binding."""


def _fill_method(value: Any):  # noqa: ANN202
    """ndarray.fill's parameters, for binding."""


def _params(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    p = _bind(fn, args, kwargs)
    p.pop("__defaults__")
    return p


def _advanced_item(k: Any, values: dict) -> bool:
    """An index item index_put takes: an integer or boolean array, a list, an int."""
    np = _np()
    if isinstance(k, (list, int)) and not isinstance(k, bool):
        return True
    v = values.get(k) if isinstance(k, fx.Node) else None
    return isinstance(v, (np.ndarray, np.integer, int)) and not isinstance(v, (bool, np.bool_))


def _w_setitem(m: _Memory, w: _Write) -> fx.Node:
    """`a[key] = v`: masked_fill, index_put, or a clone written through the key."""
    e, values = m.e, m.values
    _, key, v = w.node.args
    cur = m.read(w.target)
    if _is_own_view(m, w.target, key, v):
        return cur  # `a[i] += 1` ends in `a[i] = <a[i], already written>`: nothing to do
    key_t = m.key(key)
    items = key if isinstance(key, tuple) else (key,)
    if not _is_basic_key(key, values):
        mask = values.get(items[0]) if isinstance(items[0], fx.Node) else None
        if (
            len(items) == 1
            and isinstance(mask, _np().ndarray)
            and mask.dtype == bool
            and mask.ndim == e.ndim(cur)
            and m.is_scalar(v)
        ):
            return e.m("masked_fill", cur, m.tensor(items[0], cur, torch.bool), m.scalar(v, w))
        if all(_advanced_item(k, values) for k in items):
            idx = tuple(_index_tensor(m, k, cur) for k in items)
            dtype = e.env[cur].dtype
            return e.m("index_put", cur, idx, m.tensor(m.stored(v, w), cur, dtype))
    base = e.m("clone", cur)
    e.f(operator.setitem, base, key_t, m.operand(m.stored(v, w)))
    return base


def _is_own_view(m: _Memory, a: fx.Node, key: Any, v: Any) -> bool:
    """Whether `v` is the very view `a[key]`, so that `a[key] = v` changes nothing."""
    lay = m.lay
    if not isinstance(v, fx.Node) or lay.root.get(v) is not lay.root.get(a):
        return False
    chain = list(lay.chain[v])
    while chain and lay.view_kind[chain[-1]] is _View.SAME:
        chain.pop()
    if not chain or tuple(chain[:-1]) != lay.chain[a]:
        return False
    last = chain[-1]
    return lay.view_kind[last] is _View.GETITEM and last.args[0] is a and last.args[1] == key


def _index_tensor(m: _Memory, k: Any, like: fx.Node) -> fx.Node:
    np = _np()
    v = m.values.get(k) if isinstance(k, fx.Node) else np.asarray(k)
    is_bool = getattr(v, "dtype", None) == np.dtype(bool)
    return m.tensor(k, like, torch.bool if is_bool else torch.int64)


def _w_augmented(m: _Memory, w: _Write) -> fx.Node:
    """`a += b`: the result of `a + b` as NumPy computes it, stored into `a`."""
    n = w.node
    result = m.call(n, "call_function", INPLACE_OPERATORS[n.target], n.args, {})
    return m.into(w, result, n.args)


def _w_out(m: _Memory, w: _Write) -> fx.Node:
    """`np.add(a, b, out=a)`, `a.clip(0, 1, out=a)`: the result, stored into `out`."""
    n, e = w.node, m.e
    kwargs = {k: v for k, v in n.kwargs.items() if k not in ("out", "where")}
    result = m.call(n, n.op, n.target, n.args, kwargs)
    new = m.into(w, result, (n.args, kwargs))
    where = n.kwargs.get("where", True)
    if where is not True:
        cur = m.read(w.target)
        new = e.f(torch.where, m.tensor(where, cur, torch.bool), new, cur)
    return new


def _w_sort(m: _Memory, w: _Write) -> fx.Node:
    """`a.sort(axis)`: the sorted values."""
    p = _params(_sort_method, w.node.args[1:], dict(w.node.kwargs))
    return _b_sort(m.e, {"a": m.read(w.target), "axis": p["axis"], "order": p["order"]})


def _filled(m: _Memory, w: _Write, v: Any) -> fx.Node:
    """An array of w.target's shape and dtype holding `v` (broadcast), as NumPy stores it."""
    e = m.e
    cur = m.read(w.target)
    v = m.stored(v, w)
    array = isinstance(v, list) or (
        isinstance(v, fx.Node) and (v in m.tv or isinstance(m.values.get(v), torch.Tensor))
    )
    if not array:
        return e.f(torch.full_like, cur, v)
    return e.m("expand_as", m.tensor(v, cur, e.env[cur].dtype), cur)


def _w_fill(m: _Memory, w: _Write) -> fx.Node:
    """`a.fill(v)`."""
    return _filled(m, w, _params(_fill_method, w.node.args[1:], dict(w.node.kwargs))["value"])


def _w_copyto(m: _Memory, w: _Write) -> fx.Node:
    """`np.copyto(dst, src, where=...)`."""
    p = _params(_np().copyto, w.node.args, dict(w.node.kwargs))
    new = _filled(m, w, p["src"])
    if p["where"] is not True:
        cur = m.read(w.target)
        new = m.e.f(torch.where, m.tensor(p["where"], cur, torch.bool), new, cur)
    return new


def _w_put(m: _Memory, w: _Write) -> fx.Node:
    """`a.put(ind, v)`, `np.put(a, ind, v)`: values at flat indices."""
    n, e = w.node, m.e
    p = _params(_put_method, n.args[1:], {k: v for k, v in n.kwargs.items() if k != "a"})
    if p["mode"] != "raise":
        raise _Unmapped(f"np.put(..., mode={p['mode']!r})", n)
    cur = m.read(w.target)
    flat = e.m("reshape", cur, -1)
    ind = p["ind"] if not isinstance(p["ind"], int) else [p["ind"]]
    idx = e.m("reshape", _index_tensor(m, ind, cur), -1)
    vals = e.m("reshape", m.tensor(m.stored(p["v"], w), cur, e.env[cur].dtype), -1)
    # NumPy repeats `v` when it is shorter than `ind`; index_put broadcasts only a single
    # value and raises otherwise, so a call where the two differ fails loudly.
    put = e.m("index_put", flat, (idx,), vals)
    return e.m("reshape", put, e.f(builtins.getattr, cur, "shape"))


def _w_putmask(m: _Memory, w: _Write) -> fx.Node:
    """`np.putmask(a, mask, values)`: values where mask, matched by flat position."""
    e = m.e
    p = _params(_np().putmask, w.node.args, dict(w.node.kwargs))
    cur = m.read(w.target)
    mask = m.tensor(p["mask"], cur, torch.bool)
    if m.is_scalar(p["values"]):
        return e.m("masked_fill", cur, mask, m.scalar(p["values"], w))
    values = m.tensor(m.stored(p["values"], w), cur, e.env[cur].dtype)
    # putmask pairs a.flat[i] with values.flat[i]: a reshape of equal sizes does exactly
    # that, and raises where NumPy would repeat a shorter `values`.
    values = e.m("reshape", values, e.f(builtins.getattr, cur, "shape"))
    return e.f(torch.where, mask, values, cur)


def _w_place(m: _Memory, w: _Write) -> fx.Node:
    """`np.place(arr, mask, vals)` with one value."""
    p = _params(_np().place, w.node.args, dict(w.node.kwargs))
    vals = p["vals"]
    if isinstance(vals, (list, tuple)) and len(vals) == 1:
        vals = vals[0]
    if not m.is_scalar(vals):
        raise _Unmapped(
            "np.place repeats vals over the masked positions, a count known only at run time",
            w.node,
        )
    cur = m.read(w.target)
    return m.e.m("masked_fill", cur, m.tensor(p["mask"], cur, torch.bool), m.scalar(vals, w))


def _w_fill_diagonal(m: _Memory, w: _Write) -> fx.Node:
    """`np.fill_diagonal(a, v)` on a matrix."""
    e = m.e
    p = _params(_np().fill_diagonal, w.node.args, dict(w.node.kwargs))
    cur = m.read(w.target)
    if e.ndim(cur) != 2 or p["wrap"]:
        raise _Unmapped("np.fill_diagonal of more than two dimensions, or with wrap=True", w.node)
    if not m.is_scalar(p["val"]):
        raise _Unmapped("np.fill_diagonal with several values", w.node)
    diagonal = e.m("diagonal", cur)
    val = m.scalar(p["val"], w)
    if isinstance(val, fx.Node) and val in e.tensors:
        filled = e.m("expand_as", val, diagonal)
    else:
        filled = e.f(torch.full_like, diagonal, val)
    return e.f(torch.diagonal_scatter, cur, filled)


def _w_flat(m: _Memory, w: _Write) -> fx.Node:
    """`a.flat[k] = v`: the write on the flattened array (C order), reshaped back."""
    e = m.e
    _, key, v = w.node.args
    if isinstance(key, tuple):
        raise _Unmapped("a.flat indexed with a tuple", w.node)
    lay = m.lay
    if isinstance(v, fx.Node) and v in lay.root:
        if lay.root[v] in lay.linked(lay.root[w.target], lay.pos[w.node]):
            # a.flat assigns element by element, so a value that is a view of the array
            # reads elements it has just written; no torch op does that.
            raise _Unmapped("a.flat is assigned a view of the array itself", w.node)
    cur = m.read(w.target)
    flat = e.m("clone", e.m("reshape", cur, -1))
    # NumPy repeats a shorter `v` over the positions; torch broadcasts only a single value
    # and raises otherwise, so a call where the sizes differ fails loudly.
    e.f(operator.setitem, flat, m.key(key), m.operand(m.stored(v, w)))
    return e.m("reshape", flat, e.f(builtins.getattr, cur, "shape"))


def _w_put_along_axis(m: _Memory, w: _Write) -> fx.Node:
    """`np.put_along_axis(a, idx, v, axis)`: torch.scatter, negative indices wrapped first."""
    e = m.e
    p = _params(_np().put_along_axis, w.node.args, dict(w.node.kwargs))
    axis = p["axis"]
    if not isinstance(axis, int):
        raise _Unmapped("np.put_along_axis without an integer axis", w.node)
    cur = m.read(w.target)
    idx = _index_tensor(m, p["indices"], cur)
    idx = e.m("remainder", idx, e.m("size", cur, axis))
    if m.is_scalar(p["values"]) and not isinstance(p["values"], fx.Node):
        return e.m("scatter", cur, axis, idx, m.stored(p["values"], w))
    values = m.tensor(m.stored(p["values"], w), cur, e.env[cur].dtype)
    # At a repeated index NumPy does not promise which value stays (advanced assignment),
    # and neither does scatter: where NumPy's own result is unspecified, so is the twin's.
    return e.m("scatter", cur, axis, idx, e.m("expand_as", values, idx))


def _w_ufunc_at(m: _Memory, w: _Write) -> fx.Node:
    """`np.add.at(a, idx, v)`: index_put accumulating, as NumPy adds at repeated indices."""
    e = m.e
    ufunc = w.node.target._fxgrad_ufunc
    np = _np()
    if ufunc not in (np.add, np.subtract) or len(w.node.args) != 3 or w.node.kwargs:
        raise _Unmapped(f"np.{ufunc.__name__}.at has no accumulating torch twin", w.node)
    _, key, v = w.node.args
    items = key if isinstance(key, tuple) else (key,)
    if not all(_advanced_item(k, m.values) for k in items):
        raise _Unmapped(f"np.{ufunc.__name__}.at with slices in its index", w.node)
    cur = m.read(w.target)
    idx = tuple(_index_tensor(m, k, cur) for k in items)
    values = m.tensor(m.stored(v, w), cur, e.env[cur].dtype)
    if ufunc is np.subtract:
        values = e.f(operator.neg, values)
    return e.m("index_put", cur, idx, values, accumulate=True)


# Each NumPy write kind: its handler, or why it has no faithful torch twin.
_WRITES: dict[str, Callable[[_Memory, _Write], fx.Node] | str] = {
    "setitem": _w_setitem,
    "augmented": _w_augmented,
    "out": _w_out,
    "sort": _w_sort,
    "fill": _w_fill,
    "put": _w_put,
    "copyto": _w_copyto,
    "putmask": _w_putmask,
    "place": _w_place,
    "fill_diagonal": _w_fill_diagonal,
    "flat": _w_flat,
    "ufunc.at": _w_ufunc_at,
    "put_along_axis": _w_put_along_axis,
    "setattr": "it sets an attribute of the array (its shape, dtype or data) in place",
    "partition": "NumPy leaves the order on each side of kth unspecified, so no torch op "
    "gives the same array",
    "resize": "it changes the array's size in place",
    "itemset": "it writes one element in place (ndarray.itemset)",
    "setfield": "it writes a field of a structured array",
    "byteswap": "it swaps the bytes of every element in place",
    "several outputs": "it writes several outputs at once",
}


# ---------------------------------------------------------------------------------------
# Translating a detour, in program order


class _Memory:
    """The torch value of each NumPy array of a detour at the point being translated.

    `current[a]` is (version of a's memory, torch node); a write gives the root a new
    version, and an array whose version is old is rebuilt from the root through its views.
    """

    def __init__(self, lay: _Layout, e: _Emitter, seen: _Run, entries: set[fx.Node]) -> None:
        self.lay, self.e, self.seen, self.values = lay, e, seen, seen.values
        self.entries = entries
        self.tv: dict[fx.Node, fx.Node] = {}  # node -> its torch value when it was computed
        self.first: dict[fx.Node, fx.Node] = {}  # node -> its first torch value (sizes read it)
        self.version: dict[fx.Node, int] = {}
        self.current: dict[fx.Node, tuple[int, fx.Node]] = {}
        self.failed: dict[fx.Node, _Unmapped] = {}

    # -- reading ---------------------------------------------------------------------------

    def read(self, a: fx.Node) -> fx.Node:
        """The torch value array `a` has now, every write so far included."""
        r = self.lay.root.get(a)
        if r is None:
            return self.tv[a]
        ver = self.version[r]
        hit = self.current.get(a)
        if hit is not None and hit[0] == ver:
            return hit[1]
        val = self.current[r][1]
        for s in self.lay.chain[a]:
            hit = self.current.get(s)
            if hit is None or hit[0] != ver:
                hit = self.current[s] = (ver, self.replay(s, val))
            val = hit[1]
        return val

    def inputs(self, n: fx.Node, **given: fx.Node) -> dict[fx.Node, fx.Node]:
        out = {a: self.read(a) for a in n.all_input_nodes if a in self.tv}
        return out | {self.lay.parent[n]: given["parent"]} if given else out

    def replay(self, s: fx.Node, parent: fx.Node) -> fx.Node:
        """View `s` taken again from its parent's new value."""
        if self.lay.view_kind[s] is _View.SAME:
            return parent
        return _translate_node(self.e, s, self.inputs(s, parent=parent), self.values)

    def key(self, key: Any) -> Any:
        out = fx.node.map_arg(key, lambda a: self.read(a) if a in self.tv else a)
        _check_key(self.e, out)
        return out

    def operand(self, v: Any) -> Any:
        return self.read(v) if isinstance(v, fx.Node) and v in self.tv else v

    # -- one node ----------------------------------------------------------------------------

    def blocked(self, n: fx.Node) -> _Unmapped | None:
        """The failure of the first node `n` depends on, if any did fail."""
        pos = self.lay.pos
        return next(
            (self.failed[a] for a in sorted(self.lay.deps[n], key=pos.get) if a in self.failed),
            None,
        )

    def step(self, n: fx.Node, at: fx.Node | None = None) -> None:
        """Translate node `n` (a value or a write) before `at`; on failure leave no trace."""
        bad = self.blocked(n)
        if bad is not None:  # downstream of a call without a twin: stays NumPy
            self.failed[n] = bad
            return
        e = self.e
        e.at, mark = at or n, len(e.created)
        saved = self.snapshot()
        try:
            write = self.lay.writes.get(n)
            if write is not None:
                self._write(write)
            else:
                t = _translate_node(e, n, self.inputs(n), self.values)
                # An entry's twin is its tensor, whose example value a NumPy write through
                # the shared memory may have changed since; the write itself is judged.
                if n not in self.entries:
                    _check_same(e.env[t], self.seen.snap[n], n, values=t not in e.arbitrary)
                self._define(n, t)
        except _Unmapped as err:
            err.node = err.node or n
            self.failed[n] = err
            self.undo(mark, saved)

    def snapshot(self) -> tuple:
        return dict(self.version), dict(self.current), self.e.anchor

    def undo(self, mark: int, saved: tuple) -> None:
        """Forget a translation that did not work out: its nodes, and views cached from them."""
        self.e.erase_since(mark)
        self.version, self.current, self.e.anchor = saved

    def _define(self, n: fx.Node, t: fx.Node) -> None:
        e = self.e
        self.tv[n] = self.first[n] = t
        if isinstance(e.env.get(t), torch.Tensor):
            e.tensors.add(t)
        if n in self.entries:
            e.anchor = t  # twins of factories and constants are made on its device
        r = self.lay.root.get(n)
        if r is n:
            self.version[n] = 0
        if r is not None:
            self.current[n] = (self.version[r], t)

    # -- writes ------------------------------------------------------------------------------

    def _write(self, w: _Write) -> None:
        how = _WRITES[w.kind]
        if isinstance(how, str):
            raise _Unmapped(how, w.node)
        self._check_writable(w)
        new = how(self, w)
        _check_same(self.e.env[new], self.seen.written[w.node], w.node)
        if new is not self.read(w.target):
            self._commit(w, new)
        if w.node in self.lay.root:  # `a += b` gives back `a`
            self.tv[w.node] = self.first[w.node] = new
            self.current[w.node] = self.current[w.target]

    def _check_writable(self, w: _Write) -> None:
        """Refuse a write into memory the detour does not own or cannot tell apart."""
        lay, t = self.lay, w.target
        r, at = lay.root[t], lay.pos[w.node]
        if r in lay.shared:
            raise _Unmapped(f"it writes into memory {_owner(r)} owns", w.node)
        for g in lay.linked(r, at) - {r}:
            if g in lay.shared:
                raise _Unmapped(
                    f"it may write into memory {_owner(g)} owns (whether "
                    f"{_render_call_name(lay.uncertain(r, g))} copies depends on strides)",
                    w.node,
                )
            if lay.last_use.get(g, -1) > at:
                raise _Unmapped(
                    f"whether {_render_call_name(lay.uncertain(r, g))} gives a view or a copy "
                    "depends on strides, and both arrays are used after this write",
                    w.node,
                )

    def _commit(self, w: _Write, new: fx.Node) -> None:
        """Make `new` the value of w.target, written back through the views leading to it."""
        lay, t = self.lay, w.target
        r = lay.root[t]
        chain = lay.chain[t]
        parents = [self.read(s) for s in (r, *chain[:-1])]
        root_value = new
        for s, parent in zip(reversed(chain), reversed(parents)):
            root_value = self._scatter(s, parent, root_value)
        self.version[r] += 1
        self.current[r] = (self.version[r], root_value)
        self.current[t] = (self.version[r], new)

    def _scatter(self, s: fx.Node, parent: fx.Node, new: fx.Node) -> fx.Node:
        """The parent's value with view `s` of it replaced by `new`."""
        scatter = _SCATTERS.get(self.lay.view_kind[s])
        if scatter is None:
            raise _Unmapped(
                f"it writes through {_render_call_name(s)}, which torch cannot write back", s
            )
        return scatter(self, s, parent, new)

    def into(self, w: _Write, result: fx.Node, operands: tuple) -> fx.Node:
        """A result stored into w.target as NumPy stores it: cast, broadcast to its shape."""
        e = self.e
        cur = self.read(w.target)
        result = e.cast(result, e.env[cur].dtype)
        if any(
            isinstance(a, fx.Node) and a is not w.target and _is_array_value(self.values.get(a))
            for a in pytree.tree_leaves(operands)
        ):
            # NumPy broadcasts into the array's shape and raises where the result would not
            # fit; without this, torch would hand back a larger array on such a call.
            result = e.m("expand_as", result, cur)
        return result

    def call(self, n: fx.Node, op: str, target: Any, args: tuple, kwargs: dict) -> fx.Node:
        """The torch twin of `target(*args, **kwargs)`, checked against what NumPy computed."""
        if n not in self.seen.plain:
            raise _Unmapped("NumPy raises on it without the write", n)
        want = self.seen.plain[n]
        t = _translate_node(
            self.e, n, self.inputs(n), self.values, call=(op, target, args, kwargs), want=want
        )
        _check_same(self.e.env[t], want, n)
        return t

    def stored(self, v: Any, w: _Write) -> Any:
        """A constant operand as NumPy stores it into w.target (`a[m] = 2.7` stores 2)."""
        if isinstance(v, fx.Node):
            return v
        return _np().array(v).astype(self.values[w.target].dtype).tolist()

    def scalar(self, v: Any, w: _Write) -> Any:
        """A scalar operand for `masked_fill` and friends, of w.target's dtype."""
        if isinstance(v, fx.Node) and v in self.tv:
            return self.e.cast(self.read(v), self.e.env[self.read(w.target)].dtype)
        return self.stored(v, w)

    def is_scalar(self, v: Any) -> bool:
        np = _np()
        x = self.values.get(v) if isinstance(v, fx.Node) else v
        if isinstance(x, (np.ndarray, torch.Tensor)):
            return x.ndim == 0
        return isinstance(x, (bool, int, float, complex, np.generic))

    def tensor(self, v: Any, like: fx.Node, dtype: torch.dtype) -> fx.Node:
        """An operand as a tensor of `dtype` on `like`'s device."""
        e = self.e
        if isinstance(v, fx.Node) and v in self.tv:
            return e.cast(self.read(v), dtype)
        if isinstance(v, fx.Node) and isinstance(self.values.get(v), torch.Tensor):
            return e.m("to", v, device=e.f(builtins.getattr, like, "device"), dtype=dtype)
        return e.m("new_tensor", like, v, dtype=dtype)


def _scatter_item(m: _Memory, s: fx.Node, parent: fx.Node, new: fx.Node) -> fx.Node:
    """A clone of the parent, written through the index (DESIGN: writes into views)."""
    base = m.e.m("clone", parent)
    m.e.f(operator.setitem, base, m.key(s.args[1]), new)
    return base


# How a new value of a view is written back into its parent, by the kind of view.
_SCATTERS: dict[_View, Callable[[_Memory, fx.Node, fx.Node, fx.Node], fx.Node]] = {
    _View.SAME: lambda _m, _s, _parent, new: new,
    _View.GETITEM: _scatter_item,
    _View.PERMUTE: lambda m, s, _parent, new: m.e.m(
        "permute", new, _inverse_permutation(s, m.lay, m.values)
    ),
    _View.RESHAPE: lambda m, _s, parent, new: m.e.m(
        "reshape", new, m.e.f(builtins.getattr, parent, "shape")
    ),
    # Flipping again gives the parent's order back.
    _View.FLIP: lambda m, s, _parent, new: m.replay(s, new),
}


def _owner(r: fx.Node) -> str:
    if r.op == "get_attr":
        return f"the constant {r.target}"
    if r.op == "placeholder":
        return f"input {r.target}"
    return f"tensor {_entry_node_source(r).name}"


def _entry_node_source(n: fx.Node) -> fx.Node:
    return _entry_source(n)[0] if n.op == "call_method" else _entry_source_tensor(n)


def _inverse_permutation(s: fx.Node, lay: _Layout, values: dict) -> tuple[int, ...]:
    """How to undo a transpose-like view: run it on an array whose sizes name its axes."""
    np = _np()
    nd = values[lay.parent[s]].ndim
    probe = np.empty(tuple(range(2, 2 + nd)), dtype=np.int8)
    args = fx.node.map_arg(s.args[1:], lambda a: values[a])
    kwargs = fx.node.map_arg(s.kwargs, lambda a: values[a])
    if s.op == "call_method":
        moved = getattr(probe, s.target)(*args, **kwargs)
    elif s.target is builtins.getattr:
        moved = probe.T
    else:
        moved = s.target(probe, *args, **kwargs)
    return tuple(int(i) for i in np.argsort([d - 2 for d in moved.shape]))


def _check_key(e: _Emitter, key: Any) -> None:
    for k in key if isinstance(key, tuple) else (key,):
        if (
            isinstance(k, slice)
            and k.step is not None
            and not (isinstance(k.step, int) and k.step > 0)
        ):
            raise _Unmapped("a slice with a negative or unknown step")
        if isinstance(k, fx.Node) and k not in e.tensors and not isinstance(e.val(k), int):
            raise _Unmapped("an index that is not a Python int or a translated array")


def _translate_all(gm: fx.GraphModule, d: _Detours, seen: _Run) -> list[Change]:
    """Translate a detour in program order; rewrite each exit whose whole upstream translated."""
    values = seen.values
    lay = _layout(gm, d, seen)
    e = _Emitter(gm, dict(values))
    mem = _Memory(lay, e, seen, d.entries)
    exits = set(d.exits)
    ups = {x: _closure(x, lay.deps) for x in d.exits}
    before = {x: _source_text(x, ups[x] | _entry_nodes(ups[x] & d.entries)) for x in d.exits}
    finals: dict[fx.Node, fx.Node] = {}
    reasons: dict[fx.Node, _Unmapped] = {}
    pending: list[fx.Node] = []  # arrays no traced tensor flows into yet: made where one does
    for n in sorted(set(d.region) | exits, key=lay.pos.__getitem__):
        if n not in lay.traced:
            if n not in exits:  # an exit of constants only is no detour
                pending.append(n)
            continue
        if pending and e.anchor is not None and n not in d.entries:
            for p in pending:
                mem.step(p, at=n)
            pending = []
        if n not in exits:
            mem.step(n)
            continue
        entries = [a for a in d.region if a in ups[n] and a in d.entries]
        reason = mem.blocked(n) or _refusal(gm, n, ups[n], entries, values) or _shared_exit(n, lay)
        if reason is None:
            e.at, mark, saved = n, len(e.created), mem.snapshot()
            try:
                final = _translate_exit(e, n, mem.inputs(n), entries, values)
                _check_same(e.env[final], values[n], n)
                finals[n] = final
            except _Unmapped as err:
                err.node = err.node or n
                reason = err
                mem.undo(mark, saved)
        if reason is not None:
            reasons[n] = reason
    reported = [x for x in d.exits if x in finals or x in reasons]
    changes = [_change(x, before[x], finals, reasons, ups[x], d, seen) for x in reported]
    applied: set[fx.Node] = set()
    for x, final in finals.items():
        x.replace_all_uses_with(final)
        applied |= ups[x]
    _read_sizes_from_tensors(gm, d, mem, applied)
    shown = _with_sizes(set(e.created))
    changes = [
        dataclasses.replace(c, after=_render_after(finals[x], shown)) if c.applied else c
        for c, x in zip(changes, reported)
    ]
    _erase_dead(gm, d, lay, e, set(finals))
    return changes


def _closure(x: fx.Node, deps: dict[fx.Node, set[fx.Node]]) -> set[fx.Node]:
    """Every region node `x` depends on, through reads and the writes before them."""
    seen: set[fx.Node] = set()
    stack = list(deps.get(x, ()))
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(deps.get(n, ()))
    return seen


def _shared_exit(x: fx.Node, lay: _Layout) -> _Unmapped | None:
    """`torch.from_numpy(b)` shares b's memory: a NumPy write into it later reaches the tensor."""
    if x.target is torch.tensor:
        return None  # copies
    data = x.args[0] if x.args else x.kwargs.get("data", x.kwargs.get("obj"))
    if not isinstance(data, fx.Node) or data not in lay.root:
        return None
    at = lay.pos[x]
    later = lay.writes_into(lay.linked(lay.root[data], len(lay.pos)), at, len(lay.pos))
    if later:
        return _Unmapped(
            f"the tensor shares the array's memory, and {_render_call_name(later[0])} "
            "writes into it afterwards",
            later[0],
        )
    return None


def _change(
    x: fx.Node,
    before: str,
    finals: dict,
    reasons: dict,
    up: set[fx.Node],
    d: _Detours,
    seen: _Run,
) -> Change:
    if x not in finals:
        reason = reasons[x]
        at = reason.node if reason.node is not None else x
        return Change(
            code=CODE,
            node=x.name,
            before=before,
            after="",
            where=location(at) or location(x),
            note=f"the gradient still stops at {_render_call_name(at)}: {reason}",
            applied=False,
        )
    entries = [a for a in d.region if a in up and a in d.entries]
    note = "gradients reach " + ", ".join(sorted({_entry_source(n)[0].name for n in entries}))
    note += " again"
    if x in seen.raised:
        err = seen.raised[x]
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        note += (
            f"; eager raises {type(err).__name__} here ({first.split(',')[0]}), "
            "the translation computes the values the code asks for"
        )
    return Change(
        code=CODE,
        node=x.name,
        before=before,
        after="",
        where=location(x) or location(entries[0]),
        note=note,
    )


def _read_sizes_from_tensors(
    gm: fx.GraphModule, d: _Detours, mem: _Memory, applied: set[fx.Node]
) -> None:
    """Sizes read from translated arrays (`a.shape[0]`, len() guards) now read the tensors."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in d.region:
        t = mem.first.get(n)
        if n not in applied or t is None:
            continue
        for u in list(n.users):
            # A source array made where it first met traced data is defined after its own
            # line: a size read before that keeps reading the NumPy array.
            if not _is_meta_use(u, n) or order[t] > order[u]:
                continue
            if u.target is builtins.getattr:
                mem.e.at = u
                u.replace_all_uses_with(_translate_meta(mem.e, u, t))
                gm.graph.erase_node(u)
            else:
                u.replace_input_with(n, t)


def _erase_dead(
    gm: fx.GraphModule, d: _Detours, lay: _Layout, e: _Emitter, applied_exits: set[fx.Node]
) -> None:
    """Erase what the rewrite left unused; NumPy writes go only with the whole detour."""
    graph = gm.graph
    region = set(d.region)
    done = _finished_components(d, lay, applied_exits)
    created = set(e.created)
    removable = region | set(d.exits) | created | _entry_nodes(d.entries)
    for node in reversed(list(graph.nodes)):
        if node.users:
            continue
        if node in lay.writes:
            if node not in done:
                continue  # NumPy still runs here: its writes stay
        elif node in created and node.target is operator.setitem:
            base = node.args[0]
            if any(u is not node and u.target is not operator.setitem for u in base.users):
                continue  # a translated write into a clone that is read
        elif has_side_effect(node, gm):
            continue
        if node in removable or (
            node.op == "call_function"
            and node.target is builtins.getattr
            and node.args[0] in removable
        ):
            graph.erase_node(node)


def _inside(u: fx.Node, members: set[fx.Node]) -> bool:
    """A use within the detour: a member, or an attribute (`a.dtype`) only members read."""
    if u in members:
        return True
    return u.target is builtins.getattr and all(v in members for v in u.users)


def _finished_components(d: _Detours, lay: _Layout, applied_exits: set[fx.Node]) -> set[fx.Node]:
    """Nodes of detours whose every exit was rewritten and whose values nothing else reads."""
    region = set(d.region)
    members = region | set(d.exits)
    left = set(members)
    done: set[fx.Node] = set()
    while left:
        start = left.pop()
        comp, stack = {start}, [start]
        while stack:
            n = stack.pop()
            written = (lay.writes[n].target,) if n in lay.writes else ()  # via `a.flat`
            for a in (*n.all_input_nodes, *n.users, *written):
                if a in left:
                    left.discard(a)
                    comp.add(a)
                    stack.append(a)
        finished = all(x in applied_exits for x in comp if x in d.exits) and all(
            _inside(u, members) for n in comp & region for u in n.users
        )
        if finished:
            done |= comp
    return done


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
        target = writes_to(n, gm)
        # NumPy writes are translated with the detour; a torch write into a tensor the
        # detour reads or hands back changes memory both sides share.
        if target in watched and isinstance(values.get(target), torch.Tensor):
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


def _map_args(a: Any, tv: dict, values: dict) -> Any:
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
    if isinstance(a, np.generic):  # np.float64(0.5) is a float, but it has NumPy's dtype
        return a.dtype
    if isinstance(a, bool):
        return np.dtype(bool)
    if isinstance(a, (int, float, complex)):
        return type(a)
    raise _Unmapped(f"an operand of type {type(a).__name__}")


@dataclass
class _Call:
    """A NumPy call as its mapping spec reads it."""

    spec: _Spec
    target: Any  # the NumPy function whose parameters the call binds to; None for `.astype`
    args: tuple  # as NumPy got them: their dtypes pick a ufunc's loop
    kwargs: dict
    mapped_args: tuple = ()  # with torch nodes for the arrays
    mapped_kwargs: dict = field(default_factory=dict)


def _translate_node(
    e: _Emitter,
    n: fx.Node,
    tv: dict,
    values: dict,
    call: tuple[str, Any, tuple, dict] | None = None,
    want: Any = None,
) -> Any:
    """The torch twin of node `n`, or of `call` (op, target, args, kwargs) made at `n`.

    `want` is what NumPy computed for `call`; for `n` itself it is `n`'s example value.
    """
    out_value = values[n] if want is None else want
    if call is None:
        source = _translate_source(e, n, tv)
        if source is not None:
            return source
        call = (n.op, n.target, n.args, n.kwargs)
    op, target, args, kwargs = call[0], call[1], call[2], dict(call[3])
    c = _CALL_FORMS.get(op, _function_call)(target, args, kwargs)
    c.mapped_args = _map_args(c.args, tv, values)
    c.mapped_kwargs = _map_args(c.kwargs, tv, values)
    e.out_dtype = (  # type: ignore[attr-defined]
        _torch_dtype(out_value.dtype) if hasattr(out_value, "dtype") else None
    )
    result = c.spec.build(e, _PARAMETERS[c.spec.rule](e, c, values))
    if e.out_dtype is not None and isinstance(e.env.get(result), torch.Tensor):
        if e.env[result].dtype != e.out_dtype:
            result = e.m("to", result, e.out_dtype)
    return result


def _table_call(target: Any, args: tuple, kwargs: dict) -> _Call:
    spec = _tables()[0].get(target)
    if spec is None:
        raise _Unmapped("it has no torch twin in the mapping table")
    return _Call(spec, target, args, kwargs)


def _function_call(target: Any, args: tuple, kwargs: dict) -> _Call:
    """`np.sum(a)`, `a + b`, `a.T`, `np.add.reduce(a)`: the spec of the function it calls."""
    if target is builtins.getattr:
        if args[1] != "T":
            raise _Unmapped(f"ndarray attribute .{args[1]}")
        return _table_call(_np().transpose, (args[0],), {})
    if hasattr(target, "_fxgrad_ufunc"):
        ufm = _ufunc_method_spec(target)
        if ufm is None:
            raise _Unmapped("this ufunc method is not mapped")
        spec, target = ufm
        if len(args) < 2 and "axis" not in kwargs:
            kwargs["axis"] = 0  # ufunc.reduce/accumulate default to the first axis
        return _Call(spec, target, args, kwargs)
    return _table_call(target, args, kwargs)


def _method_call(target: Any, args: tuple, kwargs: dict) -> _Call:
    """`a.sum(1)`, `a.reshape(2, 3)`, `a.astype(t)`: the NumPy function of the same meaning."""
    np = _np()
    if target == "astype":
        return _Call(_Spec(_b_astype, rule=_Rule.NONE), None, (args[0],), {})
    methods = _tables()[1]
    if target not in methods:
        raise _Unmapped(f"ndarray method .{target}() is not mapped")
    target = methods[target]
    if target in (np.reshape, np.transpose) and len(args) > 2:
        args = (args[0], tuple(args[1:]))
    if target is np.reshape and "shape" not in kwargs and len(args) == 1:
        raise _Unmapped("a reshape without shape")
    return _table_call(target, args, kwargs)


# How a NumPy call is resolved to its mapping spec, by how the graph calls it.
_CALL_FORMS: dict[str, Callable[[Any, tuple, dict], _Call]] = {
    "call_function": _function_call,
    "call_method": _method_call,
}


def _ufunc_parameters(e: _Emitter, c: _Call, values: dict) -> dict[str, Any]:
    """x0, x1, ... cast to the loop dtypes NumPy resolves for the operands' dtypes."""
    ufunc = c.spec.signature or c.target
    if c.mapped_kwargs:
        raise _Unmapped(f"ufunc keyword arguments {sorted(c.mapped_kwargs)}")
    if not hasattr(ufunc, "resolve_dtypes") or ufunc.nout != 1:
        raise _Unmapped("a ufunc with more than one output")
    try:
        loop = ufunc.resolve_dtypes(tuple(_np_dtype_of(a, values) for a in c.args) + (None,))
    except (TypeError, ValueError) as err:
        raise _Unmapped(f"NumPy resolves no loop for these dtypes ({err})") from None
    p = {}
    for i, (a, dt) in enumerate(zip(c.mapped_args, loop)):
        p[f"x{i}"] = e.cast(a, _torch_dtype(dt))
    return p


def _bound_parameters(_e: _Emitter, c: _Call, _values: dict) -> dict[str, Any]:
    """The call bound to its NumPy function's parameter names, uncast."""
    if c.target is None:
        return {"a": c.mapped_args[0]}
    if c.target is operator.getitem:
        return {"a": c.mapped_args[0], "key": c.mapped_args[1]}
    p = _bind(c.target, c.mapped_args, c.mapped_kwargs)
    _check_allowed(p, c.spec, _render_target(c.target))
    return p


def _out_parameters(e: _Emitter, c: _Call, values: dict) -> dict[str, Any]:
    """The bound parameters, arrays cast to the dtype of NumPy's result."""
    p = _bound_parameters(e, c, values)
    if e.out_dtype is None:
        return p
    dt = e.out_dtype
    for k, v in p.items():
        if k in c.spec.nocast:
            continue
        if isinstance(v, (list, tuple)):
            p[k] = type(v)(e.cast(x, dt) for x in v)
        else:
            p[k] = e.cast(v, dt)
    return p


# The builder's parameters, by the spec's dtype rule.
_PARAMETERS: dict[_Rule, Callable[[_Emitter, _Call, dict], dict[str, Any]]] = {
    _Rule.UFUNC: _ufunc_parameters,
    _Rule.OUT: _out_parameters,
    _Rule.NONE: _bound_parameters,
}


def _translate_source(e: _Emitter, n: fx.Node, tv: dict) -> fx.Node | None:
    """Where NumPy data comes from: a tensor, a constant array, an array input; else None."""
    if n.op == "call_method" and n.target == "numpy":
        return _entry_source(n)[0]
    if n.op == "call_function" and n.target in _array_entries() and n.args[0] not in tv:
        src = _entry_source_tensor(n)  # np.asarray(t, dtype=...): the tensor, cast
        dtype = n.kwargs.get("dtype", n.args[1] if len(n.args) > 1 else None)
        return src if dtype is None else e.m("to", src, _torch_dtype(dtype))
    if n.op == "get_attr":  # a constant array (`W = np.full(...)` at module level)
        return e.m("to", e.constant(e.env[n]), e.device())
    if n.op == "placeholder":  # an array passed to forward
        return e.f(torch.as_tensor, n, device=e.device())
    return None


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


def _check_same(got: Any, want: Any, n: fx.Node, values: bool = True) -> None:
    """The torch twin must reproduce what NumPy computed: dtype, shape and values.

    `values=False` compares dtype and shape only (`np.empty`: whatever memory held).
    """
    np = _np()
    if isinstance(want, (tuple, list)) and not isinstance(want, torch.Size):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            raise _Unmapped("its torch twin gives a different number of pieces", n)
        for g, w in zip(got, want):
            _check_same(g, w, n, values)
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
    if not values:
        return
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


def _source_text(x: fx.Node, nodes: set[fx.Node]) -> str:
    """A detour as the user wrote it: each source line once, in program order."""
    order = {n: i for i, n in enumerate(x.graph.nodes)}
    lines: list[str] = []
    for n in sorted(nodes | {x}, key=order.__getitem__):
        line = source_line(n)
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines) if lines else _render(x, _with_sizes(nodes))


def _render_after(final: fx.Node, shown: set[fx.Node]) -> str:
    """The translation as short statements: a value used twice, or written, gets its name."""
    order = {n: i for i, n in enumerate(final.graph.nodes)}
    written = {n.args[0] for n in shown if n.target is operator.setitem}
    needed: set[fx.Node] = set()
    stack = [final]
    while stack:
        n = stack.pop()
        if n in needed or (n not in shown and n is not final):
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
        if n in written:
            stack.extend(u for u in n.users if u.target is operator.setitem)
    named = written | {
        n
        for n in needed
        if n is not final
        and n.op != "get_attr"
        and not (n.target is builtins.getattr and n.args[1] in ("shape", "device", "T"))
        and sum(u in needed for u in n.users) > 1
    }
    inline = shown - named
    lines = []
    for n in sorted(needed, key=order.__getitem__):
        if n is final and n not in written:
            continue
        if n in named:
            lines.append(f"{n.name} = {_render(n, inline)}")
        elif n.target is operator.setitem:
            lines.append(_render(n, inline))
    last = final.name if final in written else _render(final, inline)
    return "; ".join([*lines, last])


def _render(node: Any, inline: set[fx.Node]) -> str:
    """Render a node as one expression, with the nodes in `inline` written out in place."""
    r = _Renderer(inline)
    return r.expr(node) if isinstance(node, fx.Node) else r.lit(node)


class _Renderer:
    """Python text for nodes and their arguments; nodes in `inline` are written out in place."""

    def __init__(self, inline: set[fx.Node]) -> None:
        self.inline = inline

    def lit(self, a: Any) -> str:
        if isinstance(a, fx.Node):
            return self.expr(a) if a in self.inline else a.name
        if isinstance(a, tuple):
            inner = ", ".join(self.lit(x) for x in a)
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        if isinstance(a, list):
            return "[" + ", ".join(self.lit(x) for x in a) + "]"
        if isinstance(a, slice):
            parts = [
                "" if a.start is None else self.lit(a.start),
                "" if a.stop is None else self.lit(a.stop),
            ]
            if a.step is not None:
                parts.append(self.lit(a.step))
            return ":".join(parts)
        if a is Ellipsis:
            return "..."
        return repr(a)

    def operand(self, a: Any, outer: int = 9, right: bool = False) -> str:
        """`a` as an operand of an operator of precedence `outer`, parenthesized if need be."""
        text = self.lit(a)
        if isinstance(a, fx.Node) and a in self.inline and a.op == "call_function":
            inner = _PRECEDENCE.get(a.target, 9)
            if inner < outer or (inner == outer and (right or outer == 6)):
                return f"({text})"
        return text

    def call(self, args: tuple, kwargs: dict) -> str:
        return ", ".join(
            [self.lit(a) for a in args] + [f"{k}={self.lit(v)}" for k, v in kwargs.items()]
        )

    def index(self, a: Any) -> str:
        if isinstance(a, tuple):
            return ", ".join(self.lit(x) for x in a) if a else "()"
        return self.lit(a)

    def expr(self, n: fx.Node) -> str:
        args, kwargs = n.args, n.kwargs
        if n.op == "call_method":
            return f"{self.operand(args[0])}.{n.target}({self.call(args[1:], kwargs)})"
        if n.op != "call_function":
            return n.name
        special = _SPELLINGS.get(n.target)
        text = special(self, args, kwargs, n.target) if special is not None else None
        if text is not None:
            return text
        return f"{_render_target(n.target)}({self.call(args, kwargs)})"

    def binary(self, args: tuple, kwargs: dict, target: Any) -> str | None:
        if len(args) != 2 or kwargs:
            return None
        prec = _PRECEDENCE[target]
        left, right = self.operand(args[0], prec), self.operand(args[1], prec, right=True)
        return f"{left} {_SYMBOLS[target]} {right}"

    def unary(self, args: tuple, _kwargs: dict, target: Any) -> str | None:
        return f"{_UNARY[target]}{self.operand(args[0], 5)}" if len(args) == 1 else None


# Functions written as Python syntax rather than as calls: (renderer, args, kwargs, target)
# -> the text, or None to write the call.
_SPELLINGS: dict[Any, Callable[[_Renderer, tuple, dict, Any], str | None]] = {
    builtins.getattr: lambda r, args, _kw, _t: f"{r.operand(args[0])}.{args[1]}",
    operator.getitem: lambda r, args, _kw, _t: f"{r.operand(args[0])}[{r.index(args[1])}]",
    operator.setitem: lambda r, args, _kw, _t: (
        f"{r.operand(args[0])}[{r.index(args[1])}] = {r.lit(args[2])}"
    ),
    **dict.fromkeys(_SYMBOLS, _Renderer.binary),
    **dict.fromkeys(_UNARY, _Renderer.unary),
    operator.abs: lambda r, args, _kw, _t: f"abs({r.lit(args[0])})",
}


PASS = Pass(
    code=CODE,
    name="numpy-round-trip",
    run=run,
    doc=__doc__,
    observes=(_recorder,),
    repairs_errors=(_negative_strides,),
    applies=lambda gm: any(
        _is_numpy_call(n) or _dynamo_numpy.is_wrapped_numpy(n) for n in gm.graph.nodes
    ),
)
