"""Print the entries of each hand-kept op table that fxgrad.ops classifies otherwise.

The passes and the tracer answer questions about torch ops from name tables of their own;
fxgrad.ops answers them from ATen's schemas and tags. Before a table is replaced by the
fxgrad.ops call that asks the same question, this shows which of its entries would change
classification (and, for tables meant to be complete, which ops it misses), so a change of
behaviour is a reviewed decision rather than a side effect.

    python scripts/op_facts_diff.py

The call sites now ask fxgrad.ops, and the tables are gone from the code; a frozen copy
of each, as it stood before the switch, is kept below (`FROZEN`), so this report (the list
of classification changes the switch made) can still be regenerated against any torch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fxgrad import ops
from fxgrad.ops import Output, Strides

# ---------------------------------------------------------------------------------------
# The old tables, frozen as they stood before the call sites switched to fxgrad.ops


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _torch_or_f(path: str) -> Any:
    ns, _, name = path.partition(".")
    return getattr({"torch": torch, "F": F, "operator": operator}[ns], name)


_OLD_POINTWISE = _names(
    "add sub mul div true_divide neg abs exp log sqrt rsqrt pow clamp clip where "
    "relu sigmoid tanh gelu silu softmax log_softmax dropout sum mean amax amin "
    "masked_fill float half bfloat16 double to type_as clone detach cat concat "
    "concatenate stack"
)
_OLD_ALIASING = _names(
    "permute transpose t unsqueeze squeeze narrow select split chunk unbind expand "
    "expand_as movedim moveaxis swapaxes swapdims unflatten"
)
_OLD_METHOD_FLOW: dict[str, str] = {
    **dict.fromkeys(_OLD_POINTWISE, "carry"),
    **dict.fromkeys(_OLD_ALIASING, "alias"),
    "view": "view",
    "view_as": "view",
    **dict.fromkeys(_names("reshape reshape_as flatten contiguous"), "view or copy"),
    **dict.fromkeys(_names("matmul mm bmm"), "fresh"),
    **dict.fromkeys(_names("size dim numel"), "scalar"),
}
_OLD_FUNCTION_FLOW: dict[str, str] = {
    **{f"torch.{n}": f for n, f in _OLD_METHOD_FLOW.items() if callable(getattr(torch, n, None))},
    **dict.fromkeys(
        (
            f"F.{n}"
            for n in _names(
                "relu gelu silu sigmoid tanh softmax log_softmax dropout leaky_relu hardswish "
                "hardsigmoid elu mish conv1d conv2d conv3d batch_norm group_norm avg_pool2d "
                "max_pool2d adaptive_avg_pool2d pad"
            )
        ),
        "carry",
    ),
    **dict.fromkeys(_names("operator.add operator.sub operator.mul operator.truediv"), "carry"),
    **dict.fromkeys(_names("operator.neg operator.pow"), "carry"),
    "operator.getitem": "alias",
    "operator.matmul": "fresh",
    "F.linear": "fresh",
    "F.layer_norm": "fresh",
}
_OLD_FACTORIES = _names(
    "zeros ones empty full rand randn randint randperm arange linspace logspace eye "
    "tril_indices triu_indices tensor as_tensor scalar_tensor empty_strided zeros_like "
    "ones_like empty_like full_like rand_like randn_like randint_like normal"
)
_OLD_RANDOM = _names("rand randn randint randperm rand_like randn_like randint_like normal")

FROZEN: dict[tuple[str, str], Any] = {
    ("fxgrad.graph_utils", "_NOT_VALUE_WRITES"): {
        "requires_grad_", "retain_grad", "share_memory_", "record_stream", "detach_"
    },
    ("fxgrad.passes.inplace_op", "_VIEW_METHODS"): set(_names(
        "view view_as transpose t permute unsqueeze squeeze select narrow diagonal expand "
        "expand_as broadcast_to unflatten movedim moveaxis swapaxes swapdims unfold "
        "as_strided detach alias view_as_real view_as_complex"
    )),
    ("fxgrad.passes.inplace_op", "_MAYBE_VIEW_METHODS"): set(_names(
        "reshape reshape_as contiguous flatten to type type_as float double half bfloat16 "
        "cpu cuda ravel"
    )),
    ("fxgrad.passes.inplace_op", "_MULTI_VIEW"): set(_names(
        "unbind split chunk tensor_split split_with_sizes hsplit vsplit dsplit"
    )),
    ("fxgrad.passes.inplace_op", "_VIEW_ATTRS"): set(_names("T mT H mH real imag")),
    ("fxgrad.passes.inplace_op", "_EXPANDING"): set(_names("expand expand_as broadcast_to")),
    ("fxgrad.passes.inplace_op", "_NO_TWIN"): set(_names(
        "copy_ uniform_ normal_ bernoulli_ random_ exponential_ geometric_ log_normal_ "
        "cauchy_ set_ resize_ resize_as_ put_ index_put_"
    )),
    ("fxgrad.passes.noncontiguous_cat_input", "_POINTWISE"): list(_OLD_POINTWISE),
    ("fxgrad.passes.noncontiguous_cat_input", "METHOD_FLOW"): _OLD_METHOD_FLOW,
    ("fxgrad.passes.noncontiguous_cat_input", "FUNCTION_FLOW"): {
        _torch_or_f(path): flow for path, flow in _OLD_FUNCTION_FLOW.items()
    },
    ("fxgrad.passes.numpy_round_trip", "_HOST_METHODS"): set(_names(
        "detach cpu clone contiguous resolve_conj resolve_neg"
    )),
    ("fxgrad.tracing.proxy", "_META_METHODS"): set(_names(
        "size dim numel ndimension nelement stride get_device is_floating_point is_complex "
        "is_signed is_contiguous element_size"
    )),
    ("fxgrad.tracing.patches", "_FACTORY_FUNCTIONS"): _OLD_FACTORIES,
    ("fxgrad.tracing.patches", "_RANDOM_FACTORIES"): {getattr(torch, n) for n in _OLD_RANDOM},
    ("fxgrad.tracing.tracer", "_SPLITS_INTO_N"): set(_names(
        "tensor_split split array_split hsplit vsplit dsplit"
    )),
}  # fmt: skip


def find_table(module: str, name: str) -> Any:
    """The old table `module.name`, from the frozen copy."""
    return FROZEN.get((module, name))


def say(op: Any) -> str:
    """What fxgrad.ops says about op, in a few words."""
    f = ops.facts(op)
    words = [f.output.value]
    if f.writes:
        words.append(f"writes arg {','.join(map(str, f.writes))}")
    flags = ("metadata_only", "pointwise", "random", "factory", "sections", "overlapping")
    words += [flag for flag in flags if getattr(f, flag)]
    if f.functional:
        words.append(f"twin {f.functional}")
    if f.strides is not Strides.IGNORED:
        words.append(f"strides {f.strides.value}")
    return ", ".join(words)


@dataclass(frozen=True)
class Table:
    """One old table: where it is, what it claims of each entry, and the ops.py question."""

    module: str
    name: str
    claim: str
    agrees: Callable[[Any], bool]  # does fxgrad.ops say what the table claims of an entry
    entries: Callable[[Any], Iterable[Any]] = lambda table: table
    everything: Callable[[], Iterable[str]] | None = None  # names the table should hold
    inline: bool = False  # a rule or a literal inside a function: `entries` lists it


def _method_names() -> list[str]:
    return sorted(m for m in dir(torch.Tensor) if not m.startswith("_"))


def _torch_functions() -> list[str]:
    return sorted(
        f
        for f in dir(torch)
        if not f.startswith("_")
        and callable(getattr(torch, f, None))
        and not isinstance(getattr(torch, f), type)
    )


def _flow_agrees(entry: tuple[Any, Any]) -> bool:
    """A METHOD_FLOW / FUNCTION_FLOW entry: does fxgrad.ops give the same layout flow?"""
    op, flow = entry
    f = ops.facts(op)
    wanted = {
        "carry": f.output is Output.NEW and f.strides is Strides.IGNORED,
        "alias": f.output in (Output.VIEW, Output.VIEWS) and f.strides is Strides.IGNORED,
        "view": f.strides is Strides.RAISE,
        "view or copy": f.output is Output.MAYBE_VIEW,
        "fresh": f.output is Output.NEW,
        "scalar": f.output is Output.NOT_TENSOR and f.strides is Strides.IGNORED,
    }
    return wanted[flow]


def _torch_ops_only(items: Iterable[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Drop entries that are Python operators (`operator.add`), no torch op at all."""
    return [(op, flow) for op, flow in items if getattr(op, "__module__", "") != "_operator"]


def _is(kind: Output) -> Callable[[Any], bool]:
    return lambda op: ops.view_kind(op) is kind


def _methods_where(test: Callable[[str], bool]) -> Callable[[], list[str]]:
    """Tensor methods (attributes such as `.T` excluded: _VIEW_ATTRS holds those)."""
    return lambda: [m for m in _method_names() if callable(getattr(torch.Tensor, m)) and test(m)]


def _functions_where(test: Callable[[Any], bool]) -> Callable[[], list[str]]:
    return lambda: [f for f in _torch_functions() if test(getattr(torch, f))]


def _old_underscore_rule(name: str) -> bool:
    """graph_utils.writes_to for a call_method: a trailing `_` writes, bar a few names."""
    kept = find_table("fxgrad.graph_utils", "_NOT_VALUE_WRITES") or set()
    return name.endswith("_") and not name.startswith("_") and name not in kept


def _no_twin(op: str) -> bool:
    """FXG101 fills a clone instead of calling a twin: none with the same arguments, or random."""
    return ops.functional_counterpart(op) is None or ops.is_random(op)


def _wrong_twin(name: str) -> bool:
    """In place, no schema twin, yet `Tensor.<name without _>` exists: a name-based rewrite
    would call an op with other arguments or meaning."""
    return ops.is_inplace(name) and _no_twin(name) and hasattr(torch.Tensor, name[:-1])


def _of_torch(name: str) -> Any:
    return getattr(torch, name, name)


GRAPH_UTILS = "fxgrad.graph_utils"
INPLACE = "fxgrad.passes.inplace_op"
CAT = "fxgrad.passes.noncontiguous_cat_input"
NUMPY = "fxgrad.passes.numpy_round_trip"
TABLES = (
    Table(
        GRAPH_UTILS,
        "_NOT_VALUE_WRITES",
        "writes `self`, but not its values",
        lambda n: bool(ops.writes_args(n)) and not ops.is_inplace(n),
    ),
    Table(
        GRAPH_UTILS,
        "writes_to's trailing-underscore rule (call_method)",
        "writes `self`'s values",
        ops.is_inplace,
        lambda _: [m for m in _method_names() if _old_underscore_rule(m)],
        _methods_where(ops.is_inplace),
        inline=True,
    ),
    Table(
        GRAPH_UTILS,
        "writes_to's trailing-underscore rule (call_function)",
        "writes its first argument's values",
        ops.is_inplace,
        lambda _: [
            getattr(ns, f)
            for ns in (torch, torch.nn.functional, torch.nn.init)
            for f in dir(ns)
            if f.endswith("_") and not f.startswith("_") and callable(getattr(ns, f))
        ],
        inline=True,
    ),
    Table(
        INPLACE,
        "_VIEW_METHODS",
        "a view of its first argument on every input",
        _is(Output.VIEW),
        everything=_methods_where(_is(Output.VIEW)),
    ),
    Table(
        INPLACE,
        "_MAYBE_VIEW_METHODS",
        "a view or a copy, by input",
        _is(Output.MAYBE_VIEW),
        everything=_methods_where(_is(Output.MAYBE_VIEW)),
    ),
    Table(
        INPLACE,
        "_MULTI_VIEW",
        "several views of its first argument",
        _is(Output.VIEWS),
        everything=_methods_where(_is(Output.VIEWS)),
    ),
    Table(INPLACE, "_VIEW_ATTRS", "an attribute that is a view", _is(Output.VIEW)),
    Table(
        INPLACE,
        "_EXPANDING",
        "a view whose elements may overlap",
        ops.may_overlap,
        everything=_methods_where(ops.may_overlap),
    ),
    Table(
        INPLACE,
        "_NO_TWIN",
        "no out-of-place twin: FXG101 fills a clone",
        _no_twin,
        everything=_methods_where(_wrong_twin),
    ),
    Table(
        INPLACE,
        "_maybe_tensor's literal",
        "returns no tensor",
        lambda n: not ops.returns_tensor(n),
        lambda _: ("size", "dim", "numel", "item", "tolist"),
        inline=True,
    ),
    Table(CAT, "_POINTWISE", "pointwise (its name)", ops.is_pointwise),
    Table(CAT, "METHOD_FLOW", "this layout flow", _flow_agrees, lambda t: t.items()),
    Table(
        CAT, "FUNCTION_FLOW", "this layout flow", _flow_agrees, lambda t: _torch_ops_only(t.items())
    ),
    Table(
        NUMPY,
        "_HOST_METHODS",
        "hands back its input's values",
        ops.keeps_values,
        everything=_methods_where(ops.keeps_values),
    ),
    Table(
        "fxgrad.tracing.proxy",
        "_META_METHODS",
        "a Python value from shapes, not data",
        lambda n: not ops.returns_tensor(n) and not ops.is_data_dependent(n),
        everything=_methods_where(
            lambda n: (
                ops.facts(n).output is Output.NOT_TENSOR
                and not ops.is_data_dependent(n)
                and not ops.writes_args(n)
            )
        ),
    ),
    Table(
        "fxgrad.tracing.patches",
        "_FACTORY_FUNCTIONS",
        "a factory",
        lambda n: ops.is_factory(_of_torch(n)),
        everything=_functions_where(ops.is_factory),
    ),
    Table(
        "fxgrad.tracing.patches",
        "_RANDOM_FACTORIES",
        "a random factory",
        lambda f: ops.is_factory(f) and ops.is_random(f),
        everything=_functions_where(lambda f: ops.is_factory(f) and ops.is_random(f)),
    ),
    Table(
        "fxgrad.tracing.tracer",
        "_SPLITS_INTO_N",
        "an int count gives that many views",
        lambda n: ops.splits_into_sections(_of_torch(n)),
        everything=_functions_where(ops.splits_into_sections),
    ),
)


def label(entry: Any) -> str:
    if isinstance(entry, tuple):
        return f"{label(entry[0])} -> {entry[1]}"
    if isinstance(entry, str):
        return entry
    return f"{getattr(entry, '__module__', '') or ''}.{getattr(entry, '__name__', entry)}"


def _op(entry: Any) -> Any:
    return entry[0] if isinstance(entry, tuple) else entry


def report(table: Table) -> list[str]:
    """The lines for one table: its differing entries, then what it misses."""
    found = None if table.inline else find_table(table.module, table.name)
    head = f"{table.module}.{table.name}: {table.claim}"
    if found is None and not table.inline:
        return [head, "  the table is gone (moved or replaced)"]
    entries = sorted(table.entries(found), key=label)
    differ = [e for e in entries if not table.agrees(e)]
    lines = [head, f"  {len(entries)} entries, {len(differ)} classified otherwise by fxgrad.ops"]
    lines += [f"    {label(e)}: fxgrad.ops says {say(_op(e))}" for e in differ]
    if table.everything is not None:
        held = {label(_op(e)) if not isinstance(_op(e), str) else _op(e) for e in entries}
        held |= {getattr(_op(e), "__name__", "") for e in entries}
        missing = sorted(set(table.everything()) - held)
        if missing:
            lines.append(f"  not in the table, though fxgrad.ops says so ({len(missing)}):")
            lines += [
                f"    {m}: {say(m if hasattr(torch.Tensor, m) else _of_torch(m))}" for m in missing
            ]
    return lines


def main() -> None:
    for table in TABLES:
        print("\n".join(report(table)))
        print()


if __name__ == "__main__":
    main()
