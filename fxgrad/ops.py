"""Facts about torch ops, read from ATen's schemas and tags instead of kept by hand.

The passes ask the same few questions of every op they meet in a graph: does it return a
view of its input, or several? does it write an argument in place, and has it an
out-of-place twin? is it pointwise, random, a factory? Name lists kept in each pass
answered them differently (`detach` a view in one, a new tensor in another) and went stale
with torch releases. Torch knows: each ATen overload's schema marks the arguments it writes
(`Tensor(a!) self`) and the inputs its outputs alias (`Tensor(a) self -> Tensor(a)`, and
`Tensor(a -> *) self -> Tensor(a)[]` for a list of views), and `torch.Tag` marks pointwise
ops, random ones (`nondeterministic_seeded`) and ops whose output may alias although the
schema says otherwise (`maybe_aliasing_or_mutating`); `torch/fx/passes/reinplace.py` reads
the same fields.

An op is named as a pass meets it in an fx graph: a `torch.Tensor` method or attribute name
(`"add_"`, `"T"`), a `torch` / `torch.nn.functional` function object, or an ATen
`OpOverload` / `OpOverloadPacket`. A name stands for every overload of the ATen op of that
name, so a fact holds when any overload may make it true (`views`, `writes`, `random`) or,
for `pointwise`, when every overload is. Argument positions are the schema's; for a method
or a `torch.*` function they are the call's positional arguments.

Where the schema cannot answer (a Python-level method such as `Tensor.float`, which is no
ATen op) or says too little (`reshape`'s `Tensor(a)` means "may alias": a view or a copy,
by the input's strides), or where fxgrad deliberately differs (`requires_grad_` writes
`self`, but not its values), `OVERRIDES` decides, each entry with its reason.
tests/test_ops.py compares every `torch.Tensor` method and `torch` function that has an
ATen overload with its schema, and the overrides with eager torch.

Facts are computed on first use and cached per op: importing this module reads no schema.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

Op = str | Callable[..., Any]


class Output(enum.Enum):
    """What an op returns, as far as memory goes."""

    NEW = "new"  # tensors in memory of their own (add, sum, cat, clone)
    VIEW = "view"  # a view of an input on every call (transpose, select, detach, expand)
    MAYBE_VIEW = "maybe view"  # the input itself, a view or a copy, by input (reshape, to)
    VIEWS = "views"  # several views of an input (split, chunk, unbind, hsplit)
    WRITTEN = "written"  # the argument it wrote in place (add_, relu_)
    NOT_TENSOR = "not a tensor"  # sizes, flags, Python numbers, or nothing
    UNKNOWN = "unknown"  # no ATen op and no override says


class Strides(enum.Enum):
    """Whether an op's result tells its input's strides, not only its values."""

    IGNORED = "ignored"  # the same result on every layout of the same values
    RAISE = "raise"  # `view`: raises where the strides admit no view
    READ = "read"  # `stride()`, `is_contiguous()`, `as_strided`: the result depends on them


_VIEWING = frozenset({Output.VIEW, Output.MAYBE_VIEW, Output.VIEWS})


@dataclass(frozen=True)
class OpFacts:
    """What torch's schemas (or an override) say about one op."""

    name: str
    schema_op: str = ""  # the op whose overloads answered (`aten::to`); "" when none did
    output: Output = Output.UNKNOWN
    views: tuple[int, ...] = ()  # arguments an output may share memory with
    writes: tuple[int, ...] = ()  # arguments written in place (`Tensor(a!)`)
    metadata_only: bool = False  # its writes leave values and version counters alone
    pointwise: bool = False  # every overload is tagged pointwise
    random: bool = False  # some overload draws from the RNG (nondeterministic_seeded)
    factory: bool = False  # makes a tensor from sizes and options, not from tensor values
    sections: bool = False  # a list of views whose int `sections` argument is their count
    data_dependent: bool = False  # a Python value read from the values (item, equal)
    overlapping: bool = False  # a view whose elements may share memory (stride 0)
    same_values: bool = False  # returns its input's values unchanged (a copy or a view)
    functional: str = ""  # the out-of-place op of the same arguments (`add_` -> `add`)
    strides: Strides = Strides.IGNORED
    why: str = ""  # the override's reason, when one decided


@dataclass(frozen=True)
class Override:
    """Facts an op's schema does not give, and why."""

    why: str
    like: str = ""  # answer first as this ATen op does (a Python method that calls it)
    changes: tuple[tuple[str, Any], ...] = ()  # OpFacts fields to set

    def apply(self, found: OpFacts) -> OpFacts:
        why = f"{found.why}; {self.why}" if found.why else self.why
        return dataclasses.replace(found, why=why, **dict(self.changes))


def _o(why: str, like: str = "", **changes: Any) -> Override:
    return Override(why, like, tuple(changes.items()))


_CONVERSIONS: tuple[str, ...] = ("float", "double", "half", "bfloat16", "bool", "byte", "char")
_CONVERSIONS += (
    "short",
    "int",
    "long",
    "cfloat",
    "cdouble",
    "cpu",
    "cuda",
    "xpu",
    "mtia",
    "ipu",
    "type",
)
_MAYBE: dict[str, Any] = {"output": Output.MAYBE_VIEW, "views": (0,)}
_SELF = "the tensor itself when {}, else a copy"
_SAYS_NEW = "; its schema says a new tensor"
_KEEPS = "writes `self`, but only {}: the values and the version counter stay"
_NO_VALUES: dict[str, Any] = {"metadata_only": True}

# Each row: the names it covers and one reason. A name in several rows gets each row's
# fields (tests/test_ops.py checks that no two rows set the same field of one name).
_ROWS: tuple[tuple[tuple[str, ...], Override], ...] = (
    # Python-level methods and attributes, with no ATen op of their own.
    (_CONVERSIONS, _o("a Python-level conversion that calls aten::to", like="to")),
    (("T",), _o("`x.T` runs aten::numpy_T", like="numpy_T")),
    (("H",), _o("`x.H` runs aten::matrix_H", like="matrix_H")),
    (
        ("data",),
        _o("`x.data` is x's memory outside autograd" + _SAYS_NEW, output=Output.VIEW, views=(0,)),
    ),
    (
        ("tolist", "numpy", "element_size", "ndimension", "nelement", "data_ptr"),
        _o("a Python value or an ndarray, not a tensor (no ATen op)", output=Output.NOT_TENSOR),
    ),
    (
        ("tolist", "numpy", "is_nonzero"),
        _o("reads the tensor's values; no data_dependent_output tag says so", data_dependent=True),
    ),
    # Writes that leave the values alone: what autograd saved stays valid.
    (("share_memory_",), _o(_KEEPS.format("where its storage lives"), **_NO_VALUES)),
    (("requires_grad_",), _o(_KEEPS.format("its requires_grad flag"), **_NO_VALUES)),
    (("retain_grad",), _o(_KEEPS.format("that autograd keeps its .grad"), **_NO_VALUES)),
    (("detach_",), _o(_KEEPS.format("its autograd history (a gradient cut)"), **_NO_VALUES)),
    (("record_stream",), _o(_KEEPS.format("CUDA caching-allocator bookkeeping"), **_NO_VALUES)),
    # In-place ops whose namesake without `_` takes the same arguments but does otherwise.
    (
        ("resize_", "resize_as_"),
        _o(
            "Tensor.resize is a deprecated reshaping autograd Function, not aten::resize",
            functional="",
        ),
    ),
    # "May alias" in a schema: a view on some inputs, a copy on others.
    (
        ("reshape", "reshape_as", "flatten", "ravel"),
        _o("a view where strides allow, else a copy", **_MAYBE),
    ),
    (("contiguous",), _o(_SELF.format("already contiguous"), **_MAYBE)),
    (("to",), _o(_SELF.format("its dtype and device already match"), **_MAYBE)),
    (("coalesce",), _o(_SELF.format("already coalesced"), **_MAYBE)),
    (("pin_memory",), _o(_SELF.format("already pinned"), **_MAYBE)),
    (("resolve_conj",), _o(_SELF.format("its conjugate bit is unset"), **_MAYBE)),
    (("resolve_neg",), _o(_SELF.format("its negative bit is unset"), **_MAYBE)),
    # A new tensor by the schema, the input or a view of it in eager.
    (("type_as",), _o(_SELF.format("the dtypes match") + _SAYS_NEW, **_MAYBE)),
    (("sum_to_size",), _o(_SELF.format("the size already matches") + _SAYS_NEW, **_MAYBE)),
    (("to_dense",), _o(_SELF.format("already strided") + _SAYS_NEW, **_MAYBE)),
    (("einsum",), _o("a view for a pure permutation (`ij->ji`)" + _SAYS_NEW, **_MAYBE)),
    (
        ("broadcast_tensors", "meshgrid"),
        _o("expanded views of its inputs" + _SAYS_NEW, output=Output.VIEWS, views=(0,)),
    ),
    (
        ("histogramdd",),
        _o(
            "given tensor bins, its bin_edges are those tensors" + _SAYS_NEW,
            output=Output.MAYBE_VIEW,
            views=(1,),
        ),
    ),
    (
        ("unsafe_split", "unsafe_split_with_sizes", "unsafe_chunk"),
        _o("views autograd does not track as views" + _SAYS_NEW, output=Output.VIEWS, views=(0,)),
    ),
    (
        ("batch_norm",),
        _o(
            "tagged maybe_aliasing_or_mutating for its running statistics, written in "
            "training; its output is new",
            output=Output.NEW,
            views=(),
        ),
    ),
    # Tags missing on some overloads of elementwise ops (`masked_fill.Tensor` takes a 0-dim
    # value tensor; `true_divide.Scalar`, `rsub.Tensor`, `xlogy_.Scalar_Other`).
    (
        ("masked_fill", "true_divide", "rsub", "xlogy_"),
        _o("elementwise in every overload; torch tags only some of them", pointwise=True),
    ),
    # Views whose elements may overlap.
    (
        ("expand", "expand_as", "broadcast_to", "broadcast_tensors", "meshgrid"),
        _o("broadcast dimensions get stride 0: one element is several", overlapping=True),
    ),
    # Results that depend on the input's layout, which no schema or tag marks.
    (
        ("view", "view_as"),
        _o("raises where the strides admit no view (reshape copies)", strides=Strides.RAISE),
    ),
    (
        ("stride", "is_contiguous", "storage_offset", "as_strided", "data_ptr"),
        _o("reads the input's strides or storage, not only its values", strides=Strides.READ),
    ),
    # Ops that hand back their input's values: what FXG301 sees through before `.numpy()`.
    (
        ("detach", "clone", "contiguous", "resolve_conj", "resolve_neg", "cpu"),
        _o("its input's values unchanged (a copy, a view or the tensor itself)", same_values=True),
    ),
)


def _index(rows: tuple[tuple[tuple[str, ...], Override], ...]) -> dict[str, tuple[Override, ...]]:
    table: dict[str, tuple[Override, ...]] = {}
    for names, override in rows:
        for name in names:
            table[name] = table.get(name, ()) + (override,)
    return table


OVERRIDES: dict[str, tuple[Override, ...]] = _index(_ROWS)

# torch.nn.functional names whose ATen op is named otherwise, where the ATen op of the same
# name is something else: `Tensor.unfold` is a sliding-window view, `F.unfold` is im2col.
FUNCTIONAL_ATEN = {"unfold": "im2col", "fold": "col2im"}

_CONVENTION = "no ATen op: by torch's naming convention a trailing underscore writes in place"
_OPTIONS = frozenset({"dtype", "layout", "device", "pin_memory"})  # a factory's TensorOptions


# ---------------------------------------------------------------------------------------
# Reading the schemas


@dataclass(frozen=True)
class _Overload:
    """What one overload's schema and tags say."""

    output: Output
    views: frozenset[int]
    writes: frozenset[int]
    factory: bool
    sections: bool


@functools.cache
def _aten_overloads(name: str) -> tuple[torch._ops.OpOverload, ...]:
    """The dispatcher's overloads of aten::name, without `out=` variants."""
    if not name.isidentifier():
        return ()
    try:
        packet = getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return ()
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        return ()
    overloads = (getattr(packet, o) for o in packet.overloads())
    return tuple(o for o in overloads if _counts(o))


def _counts(op: torch._ops.OpOverload) -> bool:
    """Whether an overload is a tensor op a graph can call as the name says."""
    schema = op._schema
    if any(a.is_out for a in schema.arguments):
        return False  # `out=`: the call's keyword arguments say what it writes
    try:
        torch._C._dispatch_find_schema_or_throw(schema.name, schema.overload_name)
    except RuntimeError:
        return False  # a TorchScript builtin on lists or strings (`aten::add.t`)
    return True


def _holds_tensor(t: Any) -> bool:
    return "Tensor" in str(t)


def _returned(r: Any, args: list[Any]) -> tuple[Output, set[int]]:
    """What one return of a schema is, and which arguments it may share memory with."""
    info = r.alias_info
    if info is not None and info.before_set:
        shared = {
            i
            for i, a in enumerate(args)
            if a.alias_info is not None and a.alias_info.before_set & info.before_set
        }
        return (Output.WRITTEN if info.is_write else Output.VIEW), shared
    if not _holds_tensor(r.type):
        return Output.NOT_TENSOR, set()
    # `Tensor(a -> *) self -> Tensor(a)[]`: every tensor of the list may alias `self`.
    spread = {i for i, a in enumerate(args) if a.alias_info and "*" in a.alias_info.after_set}
    if isinstance(r.type, torch.ListType) and spread:
        return Output.VIEWS, spread
    return Output.NEW, set()


def _merge(kinds: list[Output]) -> Output:
    """One Output for several returns or overloads: the most aliasing one wins."""
    found = set(kinds)
    if len(found) > 1:
        found.discard(Output.NOT_TENSOR)  # `(Tensor, int)`: a tensor comes back
    if len(found) == 1:
        return found.pop()
    for kind in (Output.WRITTEN, Output.VIEWS):
        if kind in found:
            return kind
    return Output.MAYBE_VIEW  # a view from some overloads, a new tensor from others


def _read(op: torch._ops.OpOverload) -> _Overload:
    schema = op._schema
    args = list(schema.arguments)
    writes = frozenset(i for i, a in enumerate(args) if a.alias_info and a.alias_info.is_write)
    outputs, views = [], set()
    for r in schema.returns:
        kind, shared = _returned(r, args)
        outputs.append(kind)
        views |= shared
    output = _merge(outputs) if outputs else Output.NOT_TENSOR
    if output is Output.NEW and torch.Tag.maybe_aliasing_or_mutating in op.tags:
        # dropout(p=0), atleast_1d of a 1-d tensor: the input itself, by the tag
        output, views = Output.MAYBE_VIEW, {0}
    sections = output is Output.VIEWS and any(
        a.name == "sections" and str(a.type) in ("int", "SymInt") for a in args
    )
    # TensorOptions and no tensor to read values from (`self` of `zeros_like` is a template)
    factory = _OPTIONS <= {a.name for a in args} and not any(
        _holds_tensor(a.type) for a in args if a.name != "self"
    )
    factory = factory and output is Output.NEW
    return _Overload(output, frozenset(views), writes, factory, sections)


def _signature(op: torch._ops.OpOverload) -> tuple:
    """An overload's arguments as a method call passes them, without alias annotations, so
    in-place and out-of-place agree: `polygamma_(self, n)` and `polygamma(n, self)` are
    both `x.polygamma(n)`."""
    args = op._schema.arguments
    rest = tuple((a.name, str(a.type), a.kwarg_only) for a in args if a.name != "self")
    return (any(a.name == "self" for a in args), rest)


@functools.cache
def _counterpart(name: str) -> str:
    """`add_` -> `add`: the op of the same arguments that returns a new tensor, if callable."""
    plain = name[:-1] if name.endswith("_") and not name.startswith("_") else ""
    if not plain or not any(hasattr(ns, plain) for ns in (torch.Tensor, torch, F)):
        return ""  # nothing a graph could call instead
    written = {_signature(o) for o in _aten_overloads(name)}
    return plain if any(_signature(o) in written for o in _aten_overloads(plain)) else ""


def _combine(name: str, schema_op: str, overloads: tuple[torch._ops.OpOverload, ...]) -> OpFacts:
    each = [_read(o) for o in overloads]
    tags = [set(o.tags) for o in overloads]
    return OpFacts(
        name=name,
        schema_op=schema_op,
        output=_merge([e.output for e in each]),
        views=tuple(sorted(set().union(*(e.views for e in each)))),
        writes=tuple(sorted(set().union(*(e.writes for e in each)))),
        pointwise=all(torch.Tag.pointwise in t for t in tags),
        random=any(torch.Tag.nondeterministic_seeded in t for t in tags),
        data_dependent=any(torch.Tag.data_dependent_output in t for t in tags),
        factory=any(e.factory for e in each),
        sections=any(e.sections for e in each),
    )


# ---------------------------------------------------------------------------------------
# Naming an op as a graph does


# Modules whose callables are ATen ops by name (`torch.add`, `F.relu`, `torch.Tensor.split`,
# torch._C._linalg's `linalg_norm`). Elsewhere in torch a name may mean something else
# (`torch.masked.prod` is no aten::prod), so only the trailing-underscore convention holds.
_ATEN_MODULES: tuple[str, ...] = ("torch", "torch.functional", "torch._tensor")
_ATEN_MODULES += ("torch.nn.functional", "torch.nn.init")


def _callable_name(fn: Any) -> tuple[str, bool]:
    """The name a torch callable goes by, and whether it is the ATen op of that name."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        return "", False
    if getattr(fn, "__objclass__", None) is torch._C.TensorBase:
        return name, True  # `torch.Tensor.add`, `torch.Tensor.T`
    module = getattr(fn, "__module__", None) or ""
    if module == "torch.nn.functional":
        return FUNCTIONAL_ATEN.get(name, name), True
    if module in _ATEN_MODULES or module.startswith("torch._C."):
        return name, True
    return (name, False) if module.startswith("torch.") else ("", False)


def _convention(name: str) -> OpFacts:
    """A torch name no ATen op answers for: `map_`, `torch.nn.init.kaiming_uniform_`."""
    if name.endswith("_") and not name.startswith("_") and name.isidentifier():
        return OpFacts(name, output=Output.WRITTEN, writes=(0,), why=_CONVENTION)
    return OpFacts(name)


def _apply(found: OpFacts, name: str) -> OpFacts:
    for override in OVERRIDES.get(name, ()):
        found = override.apply(found)
    return found


def _of_name(name: str) -> OpFacts:
    like = next((o.like for o in OVERRIDES.get(name, ()) if o.like), "")
    overloads = _aten_overloads(name)
    if like:
        found = dataclasses.replace(_of_name(like), name=name, why="")
    elif overloads:
        found = _combine(name, f"aten::{name}", overloads)
        found = dataclasses.replace(found, functional=_counterpart(name))
    else:
        found = _convention(name)
    return _apply(found, name)


def _of_overload(op: torch._ops.OpOverload) -> OpFacts:
    qualified = op._schema.name
    namespace, _, name = qualified.partition("::")
    found = _combine(name, qualified, (op,))
    if namespace != "aten":
        return found
    plain = _counterpart(name)
    if plain:
        written = _signature(op)
        plain = next((plain for o in _aten_overloads(plain) if _signature(o) == written), "")
    return _apply(dataclasses.replace(found, functional=plain), name)


@functools.cache
def _facts(op: Any) -> OpFacts:
    if isinstance(op, torch._ops.OpOverload):
        return _of_overload(op)
    if isinstance(op, torch._ops.OpOverloadPacket):
        namespace, _, name = op._qualified_op_name.partition("::")
        if namespace == "aten":
            return _of_name(name)
        overloads = tuple(getattr(op, o) for o in op.overloads())
        return _combine(name, op._qualified_op_name, overloads)
    if isinstance(op, str):
        return _of_name(op)
    name, aten = _callable_name(op)
    if not name:
        return OpFacts(getattr(op, "__name__", None) or repr(op))
    return _of_name(name) if aten else _convention(name)


# ---------------------------------------------------------------------------------------
# What the passes ask


def facts(op: Op) -> OpFacts:
    """Everything known about `op`: a Tensor method or attribute name, a torch callable, or
    an ATen overload. An op torch does not know answers with `Output.UNKNOWN`."""
    try:
        hash(op)
    except TypeError:
        return OpFacts(repr(op))  # no torch op is unhashable
    return _facts(op)


def view_kind(op: Op) -> Output | None:
    """`Output.VIEW`, `MAYBE_VIEW` or `VIEWS` when the result may share its input's memory."""
    output = facts(op).output
    return output if output in _VIEWING else None


def is_view(op: Op) -> bool:
    """Whether the result may share memory with an input without writing it."""
    return facts(op).output in _VIEWING


def is_multi_output_view(op: Op) -> bool:
    """A list of views of one input (split, chunk, unbind, hsplit/vsplit/dsplit)."""
    return facts(op).output is Output.VIEWS


def views_input(op: Op) -> tuple[int, ...]:
    """Positions of the arguments a view op's result may share memory with."""
    found = facts(op)
    return found.views if found.output in _VIEWING else ()


def writes_args(op: Op) -> tuple[int, ...]:
    """Positions of the arguments the op writes in place, values or metadata."""
    return facts(op).writes


def is_inplace(op: Op) -> bool:
    """Whether the op writes its first argument's values (a write autograd can see)."""
    found = facts(op)
    return 0 in found.writes and not found.metadata_only


def functional_counterpart(op: Op) -> str | None:
    """The out-of-place op taking the same arguments (`"add_"` -> `"add"`), or None where
    torch has none: `normal_` has no `normal(self, mean, std)`."""
    return facts(op).functional or None


def is_pointwise(op: Op) -> bool:
    """Each output element depends only on the same element of each input (tag pointwise)."""
    return facts(op).pointwise


def is_random(op: Op) -> bool:
    """Whether the op may draw from the RNG (tag nondeterministic_seeded): dropout, rand."""
    return facts(op).random


def is_factory(op: Op) -> bool:
    """Makes a new tensor from sizes and TensorOptions, not from tensor values (zeros,
    rand, arange, zeros_like)."""
    return facts(op).factory


def returns_new_tensor(op: Op) -> bool:
    """Whether every tensor it returns is in memory of its own."""
    return facts(op).output is Output.NEW


def returns_tensor(op: Op) -> bool:
    """False only when the op certainly returns no tensor (sizes, flags, Python numbers)."""
    return facts(op).output is not Output.NOT_TENSOR


def is_data_dependent(op: Op) -> bool:
    """Returns a Python value read from the tensor's values (`item`, `tolist`, `equal`), not
    one that only shapes, dtypes and devices decide (`size`, `dim`)."""
    return facts(op).data_dependent


def may_overlap(op: Op) -> bool:
    """A view whose elements may share memory (expand): eager refuses writes into it."""
    return facts(op).overlapping


def splits_into_sections(op: Op) -> bool:
    """A list of views whose int `sections` argument is how many (tensor_split, hsplit)."""
    return facts(op).sections


def keeps_values(op: Op) -> bool:
    """Returns its input's values unchanged: a copy, a view or the tensor itself."""
    return facts(op).same_values


def strides_used(op: Op) -> Strides:
    """Whether the result tells the input's strides (`view` raises, `stride()` reads)."""
    return facts(op).strides
