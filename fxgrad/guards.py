"""What a fixed module's decisions assumed about a call, checked on every call.

fxgrad decides on one call: it captures the forward on that call's inputs and the passes
observe one run. What they learned is either generalized in the emitted code (sizes stay
symbolic, casts follow the input's dtype, views are rebuilt with the same `chunk` call) or
becomes part of the key below, a tuple of plain Python values read from tensor metadata
and module flags, never from tensor data. A call whose key differs gets a variant decided
exactly on it, as `torch.compile` recompiles on a failed guard.

The key holds, per input: the call's structure and non-tensor values, each tensor's dtype,
device, `requires_grad` and leaf-ness, which sizes are 0 or 1 (they change broadcasting
and whether a view is contiguous), whether it is contiguous (so whether `reshape` or
`.contiguous()` copies), and which inputs share memory; then grad mode, the `training` flag
of every module, the dtype and device of every parameter and buffer (`.double()`,
`.to()`), the default dtype and the autocast state. Sizes other than 0 and 1 are not in
the key: where capture answered a Python question about a size (`if h.shape[-1] % 2`),
the graph holds a guard, and a call with new sizes is checked against those guards once
(on meta tensors: nothing real runs) before the variant serves it.
"""

from __future__ import annotations

import collections
import functools
import itertools
import operator
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from fxgrad.dict_versions import dict_version
from fxgrad.graph_utils import ancestors, empty_graph_module, fresh_containers
from fxgrad.runtime import GuardError, fxgrad_guard
from fxgrad.state import storage_of
from fxgrad.tracing.callspec import box_objects, is_array, is_number
from fxgrad.tracing.module_copy import twin
from fxgrad.tracing.names import NUMBER_META

if TYPE_CHECKING:
    from torch._C._dynamo.guards import TensorGuards

# Positions in a key, and what each means to a person reading an error.
STRUCTURE, TENSORS, ALIASING, GRAD, MODES, STATE, DEFAULT_DTYPE, AUTOCAST = range(8)
_FACT_NAMES = {
    STRUCTURE: "the arguments' structure or non-tensor values",
    TENSORS: "the input tensors' dtype, device, requires_grad, layout or 0/1 sizes",
    ALIASING: "which input tensors share memory",
    GRAD: "grad mode",
    MODES: "the train()/eval() mode of the modules",
    STATE: "the dtype, device or requires_grad of the parameters and buffers",
    DEFAULT_DTYPE: "torch's default dtype",
    AUTOCAST: "the autocast state",
}


class Identity:
    """Equal only to a snapshot of the very same object (which it keeps alive): a
    non-tensor argument that cannot be hashed, a function or module a guard compares."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __repr__(self) -> str:
        return repr(self.obj)


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return Identity(value)
    return (type(value), value)


_FACTS = operator.attrgetter("dtype", "device", "requires_grad", "is_leaf")


def tensor_facts(t: Any) -> tuple:
    """The facts about one input tensor that decisions may depend on."""
    if not isinstance(t, torch.Tensor):
        dtype = getattr(t, "dtype", None)  # a NumPy array
        return ("array", str(dtype), getattr(t, "ndim", None))
    shape = t.shape
    small = tuple(d if d < 2 else 2 for d in shape) if (1 in shape or 0 in shape) else len(shape)
    if t.is_contiguous():
        layout: Any = True
    elif t.layout != torch.strided:
        layout = str(t.layout)
    else:  # which dims are innermost, and whether there are gaps: what view/copy depends on
        layout = tuple(sorted(range(t.dim()), key=lambda d: (t.stride(d), d)))
    kind = type(t) if type(t) is not torch.Tensor else None
    return (_FACTS(t), small, layout, kind)


def aliasing(tensors: Sequence[Any]) -> tuple | None:
    """Which input tensors share memory: for each, the first earlier one that does."""
    if len(tensors) < 2:
        return None
    first: dict[int, int] = {}
    out: list[int | tuple[int, bool]] = []  # -1, or (that tensor's index, the same tensor)
    shared = False
    for i, t in enumerate(tensors):
        sid = storage_of(t)
        if sid is None or sid not in first:
            if sid is not None:
                first[sid] = i
            out.append(-1)
        else:
            j = first[sid]
            out.append((j, tensors[j] is t))
            shared = True
    return tuple(out) if shared else None


_TENSOR = torch.Tensor


def _is_tensor(x: Any) -> bool:
    return isinstance(x, _TENSOR)


def structure(args: tuple, kwargs: dict) -> tuple[Any, list[Any] | None]:
    """The call's structure key, and its leaves when they were flattened to get it."""
    if not kwargs and all(map(_is_tensor, args)):
        return len(args), None  # the common case: tensors, positionally
    values = kwargs.values()
    if all(map(_is_flat, args)) and all(map(_is_flat, values)):
        # Tensors, numbers, flags and strings, positionally or by keyword: their leaves are
        # what pytree would give (arguments in order, then keyword values in order), at a
        # tenth of the cost, which a step that passes a timestep pays on every call.
        leaves = [*args, *values]
        consts = tuple(
            (i, (_NUMBER, type(v)) if is_number(v) else (type(v), v))
            for i, v in enumerate(leaves)
            if not isinstance(v, torch.Tensor)
        )
        return ((_FLAT, len(args), tuple(kwargs)), consts), leaves
    leaves, spec = pytree.tree_flatten(box_objects((args, kwargs)))
    consts = tuple(
        (i, (_NUMBER, type(v)) if is_number(v) else _hashable(v))
        for i, v in enumerate(leaves)
        if not isinstance(v, torch.Tensor) and not is_array(v)
    )
    return (spec, consts), leaves


# A Python number argument is in the key by its type only: a variant that takes it as a
# graph input serves every value, one that baked it in checks its value (`number_value`).
_NUMBER = "number"


def number_value(x: Any) -> Any:
    """A number as a variant that baked it in compares it: NaN equal to NaN."""
    return (type(x), "nan") if x != x else (type(x), x)


_FLAT = "flat"  # a structure key made without pytree (see `structure`)
_FLAT_TYPES = frozenset((int, float, bool, str))


def _is_flat(x: Any) -> bool:
    return isinstance(x, _TENSOR) or type(x) in _FLAT_TYPES


_TRAINING = operator.attrgetter("training")


@functools.cache
def mode_matters(cls: type) -> bool:
    """Whether a module's own `training` flag can change what it computes.

    Every module's flag is in the key except that of torch.nn classes whose code never
    names `training` (Linear, Conv2d, ReLU, ...): a model of 1,000 Linear+ReLU blocks
    reads 1 flag per call instead of 2,001. Model code (traced through, or kept as a call
    because of a hook) always counts: its forward may branch on it anywhere.
    """
    if not (cls.__module__ or "").startswith("torch.nn."):
        return True
    for klass in cls.__mro__:
        if klass is nn.Module or klass is object:
            break
        for value in vars(klass).values():
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None and "training" in code.co_names:
                return True
    return False


def tensor_tables(modules: Sequence[nn.Module]) -> list[dict]:
    """The parameter and buffer tables of the modules that have any."""
    return [t for m in modules for t in (m._parameters, m._buffers) if t]


# requires_grad too: whether a write into a parameter's saved activation is unsafe depends on
# it (fine-tuning unfreezes layers between stages).
_DTYPE_DEVICE = operator.attrgetter("dtype", "device", "requires_grad")
_NOT_NONE = functools.partial(operator.is_not, None)

_TensorGuards: type[TensorGuards] | None
try:  # Dynamo's per-tensor check, in C++: dtype, device, requires_grad, dispatch keys
    from torch._C._dynamo.guards import TensorGuards as _TensorGuards
except ImportError:  # pragma: no cover - every torch fxgrad supports has it
    _TensorGuards = None


def _tensors(tables: Sequence[dict]) -> Iterator[torch.Tensor]:
    # Iterated in C, skipping slots that hold None (`Linear(bias=False)`).
    return filter(_NOT_NONE, itertools.chain.from_iterable(map(dict.values, tables)))


class TensorState:
    """The dtype, device and requires_grad of a module tree's parameters and buffers, per
    call, at C++ speed.

    PyTorch says nothing when a parameter's `requires_grad` is flipped or its `.data`
    replaced, so every tensor is looked at on every call. Reading three properties of each
    from Python costs ~180 ns a tensor (0.5 ms for a 1,000-block MLP); Dynamo's
    `TensorGuards` checks the same facts (and the dispatch keys) of all of them in one C++
    call. Only when it fails are the facts read in Python; equal facts give the very same
    tuple, so two keys compare by identity, not item by item.
    """

    def __init__(self) -> None:
        self._known: dict[tuple, tuple] = {}
        self._checks: dict[tuple[bool, bool], tuple[Any, tuple, Sequence[dict]]] = {}
        self._flat: tuple[Sequence[dict], tuple, list[torch.Tensor]] | None = None

    def facts(self, tables: Sequence[dict]) -> tuple:
        tensors = self._flatten(tables)
        where = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        hit = self._checks.get(where)
        if hit is not None and hit[2] is tables:
            try:
                if hit[0].check(*tensors):
                    return hit[1]
            except TypeError:  # a tensor added or removed
                pass
        facts = tuple(map(_DTYPE_DEVICE, tensors))
        facts = self._known.setdefault(facts, facts)
        if len(self._known) > 64:  # a tree flipping flags all the time: keep the latest
            self._known = {facts: facts}
        check = _check_for(tensors)
        if check is not None:
            self._checks[where] = (check, facts, tables)
        else:
            self._checks.pop(where, None)
        return facts

    def _flatten(self, tables: Sequence[dict]) -> list[torch.Tensor]:
        """The tables' tensors, listed again only when a table changed (a parameter set,
        registered or deleted: each changes its dict's version tag)."""
        versions = tuple(map(dict_version, tables))
        flat = self._flat
        if flat is None or flat[0] is not tables or flat[1] != versions:
            flat = self._flat = (tables, versions, list(_tensors(tables)))
        return flat[2]


def _check_for(tensors: list[torch.Tensor]) -> Any:
    """A C++ check of these tensors' facts, for plain dense tensors only (the C++ side is
    not built for the others; those are read in Python on every call instead)."""
    if _TensorGuards is None:
        return None
    for t in tensors:
        if (
            type(t) not in _PLAIN
            or t.layout != torch.strided
            or t.is_nested
            # a lazy module's, not initialized yet (the class is missing from torch's stubs)
            or isinstance(t, nn.parameter.UninitializedTensorMixin)  # type: ignore[attr-defined]
        ):
            return None
    dims = [[None] * t.dim() for t in tensors]  # sizes and strides: not facts of the key
    try:
        # torch's stub types each as one list; TensorGuards takes one list per tensor.
        return _TensorGuards(
            *tensors,
            dynamic_dims_sizes=dims,  # type: ignore[arg-type]
            dynamic_dims_strides=dims,  # type: ignore[arg-type]
        )
    except Exception:
        return None


_PLAIN = (torch.Tensor, nn.Parameter, getattr(nn, "Buffer", nn.Parameter))


def module_state(
    modules: Sequence[nn.Module], tables: Sequence[dict], state: TensorState | None = None
) -> tuple[tuple, tuple]:
    """The `training` flags of the given modules, and the facts of their tensors."""
    modes = tuple(map(_TRAINING, modules))
    return modes, (state or TensorState()).facts(tables)


def _autocast() -> Any:
    if not torch._C._is_any_autocast_enabled():
        return None
    out = []
    for device in ("cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(device):
                out.append((device, torch.get_autocast_dtype(device)))
        except (RuntimeError, TypeError):
            pass
    return tuple(out)


def call_key(
    structure_key: Any,
    tensors: Sequence[Any],
    modules: Sequence[nn.Module],
    tables: Sequence[dict] | None = None,
    tensor_state: TensorState | None = None,
) -> tuple:
    """The key of one call: everything a decision may depend on, in plain Python values."""
    tables = tensor_tables(modules) if tables is None else tables
    modes, state = module_state(modules, tables, tensor_state)
    return (
        structure_key,
        tuple(map(tensor_facts, tensors)),
        aliasing(tensors),
        torch.is_grad_enabled(),
        modes,
        state,
        torch.get_default_dtype(),
        _autocast(),
    )


def describe_change(old: tuple, new: tuple, names: Sequence[str] = ()) -> str:
    """Name, in words, the facts that differ between two keys."""
    parts = []
    for i, (a, b) in enumerate(zip(old, new)):
        if a == b:
            continue
        what = _FACT_NAMES[i]
        if i == TENSORS and isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
            diffs = [
                _tensor_diff(names[k] if k < len(names) else f"input {k}", x, y)
                for k, (x, y) in enumerate(zip(a, b))
                if x != y
            ]
            what = "; ".join(diffs)
        elif i == GRAD:
            what = (
                f"grad mode ({'enabled' if a else 'disabled'} -> {'enabled' if b else 'disabled'})"
            )
        parts.append(what)
    return "; ".join(parts) or "nothing (the size guards failed)"


def _tensor_diff(name: str, a: tuple, b: tuple) -> str:
    labels = ("dtype", "device", "requires_grad", "leaf", "sizes", "layout", "type")
    if a[0] == "array" or b[0] == "array":
        return f"{name}: {a} -> {b}"
    a, b = (*a[0], *a[1:]), (*b[0], *b[1:])
    changed = [_fact_diff(label, x, y) for label, x, y in zip(labels, a, b) if x != y]
    return f"{name}: " + ", ".join(changed)


def _fact_diff(label: str, a: Any, b: Any) -> str:
    """One fact of `tensor_facts` that changed, in words."""
    if label == "sizes":
        # a rank when no size is 0 or 1, else each size as 0, 1 or 2 (for 2 or more)
        if isinstance(a, int) and isinstance(b, int):
            return f"rank {a} -> {b}"
        return f"shape {_size_pattern(a)} -> {_size_pattern(b)} (N: a size of 2 or more)"
    if label == "layout":
        return f"layout {_layout_words(a)} -> {_layout_words(b)}"
    return f"{label} {a} -> {b}"


def _size_pattern(small: int | tuple) -> str:
    dims = ("N",) * small if isinstance(small, int) else ("N" if d > 1 else str(d) for d in small)
    return f"[{', '.join(dims)}]"


def _layout_words(layout: Any) -> str:
    if layout is True:
        return "contiguous"
    if isinstance(layout, tuple):
        return f"non-contiguous (dims by stride, innermost first: {layout})"
    return str(layout)


# ---------------------------------------------------------------------------------------
# Size guards, checked once per new combination of input sizes

# Guards whose answer other key facts already fix: the number of dimensions of a shape
# (`b, c, h, w = x.shape`) follows from the inputs' ranks and 0/1 sizes, a dtype or device
# from the inputs' and parameters'. They stay in the graph as a last line of defence.
_IMPLIED_KINDS = ("value",)


def _implied(guard: fx.Node) -> bool:
    kind = guard.args[2]
    if kind in _IMPLIED_KINDS:
        return True
    value = guard.args[0]
    if kind == "len" and isinstance(value, fx.Node):
        if value.op == "call_function" and value.target is getattr and value.args[1] == "shape":
            return True
        if value.op == "call_method" and value.target == "size" and len(value.args) == 1:
            return True
    return False


def size_guard_program(gm: fx.GraphModule) -> fx.GraphModule | None:
    """A graph that evaluates the size guards only, or None when there are none to check."""
    guards = [
        n
        for n in gm.graph.nodes
        if n.op == "call_function" and n.target is fxgrad_guard and not _implied(n)
    ]
    if not guards:
        return None
    needed = ancestors(guards)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if (n.op == "placeholder" and not n.meta.get(NUMBER_META)) or n in needed:
            env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(None)
    program = empty_graph_module("SizeGuards")  # run by an Interpreter, never called
    program.__dict__["_owner"] = gm
    program.graph = graph
    return program


def _plain_value(obj: Any) -> Any:
    return obj if isinstance(obj, (int, float, bool, str, type(None))) else None


def _meta(x: Any) -> Any:
    return x.to("meta") if isinstance(x, torch.Tensor) else x


class _GuardRun(fx.Interpreter):
    """Runs a size-guard program on meta tensors: shapes only, nothing real is touched.

    Module calls run on a copy of the module whose tensors are meta tensors and without
    hooks, so a BatchNorm's running statistics, a counter or a hook's side effects never
    see this run.
    """

    def __init__(self, program: fx.GraphModule, owner: nn.Module) -> None:
        super().__init__(program, garbage_collect_values=True)
        self.owner = owner

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple, dict]:
        return fresh_containers(*super().fetch_args_kwargs_from_env(n))

    def fetch_attr(self, target: str) -> Any:
        obj: Any = self.owner
        for atom in target.split("."):
            obj = getattr(obj, atom)
        return _meta(obj)

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        obj: Any = self.owner
        for atom in str(target).split("."):
            obj = getattr(obj, atom)
        shadow = twin(obj)
        for m in shadow.modules():
            for table in (m._parameters, m._buffers):
                for k, v in table.items():
                    if v is not None:
                        table[k] = _meta(v)
            for k, v in list(m.__dict__.items()):
                if isinstance(v, torch.Tensor):
                    m.__dict__[k] = _meta(v)
        return shadow.forward(*args, **kwargs)


class _ShapeRun(_GuardRun):
    """Runs a whole captured graph on meta tensors, noting each node's output shapes.

    Writes of module state recorded in the graph are skipped: the run must not touch the
    module it reads.
    """

    def __init__(self, program: fx.GraphModule, owner: nn.Module) -> None:
        super().__init__(program, owner)
        self.garbage_collect_values = False
        self.shapes: dict[fx.Node, tuple] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_function" and (
            n.target is setattr
            or (
                n.target is operator.setitem
                and str(getattr(n.args[0], "target", "")).endswith("_buffers")
            )
        ):
            return None
        out = super().run_node(n)
        self.shapes[n] = tuple(
            tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in pytree.tree_leaves(out)
        )
        return out


def numbers_only_feed_values(gm: fx.GraphModule, example: Sequence[Any]) -> str | None:
    """None when the graph's number placeholders (see `NUMBER_META`) feed only values;
    else why one of them must stay a constant, checked on every call.

    A number taken as an input must not decide anything a decision assumed: a size the
    graph checks (its guards), or any tensor's shape, which passes read. The graph is run
    twice on meta tensors, with the example's numbers and with other ones: every tensor
    must have the same shape in both runs.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    numbers = {n for n in placeholders if n.meta.get(NUMBER_META)}
    if not numbers:
        return None
    checks = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is fxgrad_guard]
    if numbers & ancestors(checks):
        return "a size depends on it"

    def run(values: Sequence[Any]) -> dict[fx.Node, tuple]:
        interp = _ShapeRun(gm, gm)
        with torch.no_grad(), torch.device("meta"):  # factories (`torch.zeros(1, 4)`) too
            interp.run(*map(_meta, values))
        return interp.shapes

    other = [
        (v * 1.5 + 0.25 if type(v) is float else v + 1) if n in numbers else v
        for n, v in zip(placeholders, example)
    ]
    try:
        same = run(example) == run(other)
    except Exception:
        return "its effect on shapes could not be checked"
    return None if same else "a tensor's shape depends on it"


class ShapeCheck:
    """Which combinations of input sizes a variant's size guards hold for."""

    LIMIT = 512  # combinations remembered per variant

    def __init__(self, program: fx.GraphModule | None) -> None:
        self.program = program
        self.seen: collections.OrderedDict[tuple, bool] = collections.OrderedDict()
        self.unverifiable = False  # data-dependent sizes: only the graph's own guards check
        # Module tensors the guards read (a buffer the forward re-makes at another size,
        # as timm's ConViT does): their sizes are part of what a check holds for.
        self.attrs = (
            [str(n.target) for n in program.graph.nodes if n.op == "get_attr"]
            if program is not None
            else []
        )

    def _sizes(self, owner: nn.Module, tensors: Sequence[Any]) -> tuple:
        sizes = tuple(t.shape if isinstance(t, torch.Tensor) else None for t in tensors)
        if not self.attrs:
            return sizes
        state = []
        for target in self.attrs:
            obj: Any = owner
            for atom in target.split("."):
                obj = getattr(obj, atom, None)
            # A tensor's shape; a number kept on a module (`self.step`), its value.
            state.append(obj.shape if isinstance(obj, torch.Tensor) else _plain_value(obj))
        return sizes, tuple(state)

    def holds(self, owner: nn.Module, tensors: Sequence[Any]) -> bool:
        """True when the guards hold for these inputs' sizes (checked once per sizes)."""
        if self.program is None or self.unverifiable:
            return True
        sizes = self._sizes(owner, tensors)
        hit = self.seen.get(sizes)
        if hit is None:
            hit = self._check(owner, tensors)
            self.seen[sizes] = hit
            if len(self.seen) > self.LIMIT:
                self.seen.popitem(last=False)
        return hit

    def remember(self, owner: nn.Module, tensors: Sequence[Any]) -> None:
        """The call a variant was decided on holds its guards by construction."""
        if self.program is not None:
            self.seen[self._sizes(owner, tensors)] = True

    def _check(self, owner: nn.Module, tensors: Sequence[Any]) -> bool:
        assert self.program is not None
        try:
            with torch.no_grad():
                _GuardRun(self.program, owner).run(*map(_meta, tensors))
        except GuardError:
            return False
        except Exception:
            # A size that depends on data (nonzero, boolean masks): meta tensors cannot
            # tell it, so the guards in the graph check it on every call instead.
            self.unverifiable = True
        return True
