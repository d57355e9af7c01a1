"""fxgrad.ops, checked three ways: against ATen's schemas, against eager torch, and by hand.

Every public `torch.Tensor` method or attribute and every `torch` function that is an ATen
op is classified twice: by fxgrad.ops, and here by a plain reading of its schema (does an
output alias an input, does it write `self`, is it a list of views) and tags. Where the two
disagree the name must be in `fxgrad.ops.OVERRIDES` with its reason, and an override the
schema no longer needs fails too, so a torch release that changes an op shows up here
instead of silently changing what a pass rewrites.

Schemas can be wrong about aliasing (`type_as` says "new tensor" and returns `self`), so
every op with an OpInfo is also run on torch's own sample inputs and its outputs' memory
compared with its inputs'.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import fx

from fxgrad import ops
from fxgrad.graph_utils import has_side_effect, writes_to
from fxgrad.ops import OVERRIDES, Output, Strides

# ---------------------------------------------------------------------------------------
# A plain reading of the schemas, independent of fxgrad.ops


def _overloads(name: str) -> list[Any]:
    """Schemas of the dispatcher's non-`out=` overloads of aten::name."""
    packet = getattr(torch.ops.aten, name, None) if name.isidentifier() else None
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        return []
    found = []
    for overload in packet.overloads():
        schema = getattr(packet, overload)._schema
        if any(a.is_out for a in schema.arguments):
            continue
        try:
            torch._C._dispatch_find_schema_or_throw(schema.name, schema.overload_name)
        except RuntimeError:
            continue  # TorchScript's list and string builtins
        found.append(getattr(packet, overload))
    return found


def _aliases(schema: Any) -> bool:
    """Some output may alias an input without writing it."""
    for r in schema.returns:
        info = r.alias_info
        if info is not None and info.before_set and not info.is_write:
            return True
        if isinstance(r.type, torch.ListType) and any(
            a.alias_info is not None and "*" in a.alias_info.after_set for a in schema.arguments
        ):
            return True
    return False


def _writes_self(schema: Any) -> bool:
    args = schema.arguments
    return bool(args) and args[0].alias_info is not None and args[0].alias_info.is_write


def _schema_says(name: str) -> dict[str, bool]:
    found = _overloads(name)
    schemas = [o._schema for o in found]
    return {
        "view": any(_aliases(s) for s in schemas)
        or any(torch.Tag.maybe_aliasing_or_mutating in o.tags for o in found),
        "inplace": any(_writes_self(s) for s in schemas),
        "multi": any(
            _aliases(s) and isinstance(s.returns[0].type, torch.ListType) for s in schemas
        ),
        "pointwise": all(torch.Tag.pointwise in o.tags for o in found),
        "random": any(torch.Tag.nondeterministic_seeded in o.tags for o in found),
    }


def _ops_say(op: str | Callable) -> dict[str, bool]:
    return {
        "view": ops.is_view(op),
        "inplace": ops.is_inplace(op),
        "multi": ops.is_multi_output_view(op),
        "pointwise": ops.is_pointwise(op),
        "random": ops.is_random(op),
    }


# The OpFacts fields an override may set to answer each question otherwise than the schema.
_DECIDED_BY = {
    "view": {"output", "views", "like"},
    "multi": {"output", "like"},
    "inplace": {"writes", "metadata_only", "output", "like"},
    "pointwise": {"pointwise", "like"},
    "random": {"random", "like"},
}


def _overridden(name: str) -> set[str]:
    """The fields the overrides of `name` set ("like" for one that borrows another op's)."""
    row = OVERRIDES.get(name, ())
    return {f for o in row for f, _ in o.changes} | {"like" for o in row if o.like}


def _compare(names: list[str], key: Callable[[str], str | Callable]) -> tuple[int, list[str]]:
    """How many names are ATen ops, and a line for each disagreement no override explains."""
    compared, problems = 0, []
    for name in names:
        if not _overloads(name):
            continue
        compared += 1
        want, got = _schema_says(name), _ops_say(key(name))
        set_by_override = _overridden(name)
        differ = sorted(
            k for k in want if want[k] != got[k] and not _DECIDED_BY[k] & set_by_override
        )
        if differ:
            problems.append(
                f"{name}: "
                + ", ".join(f"{k} is {got[k]}, the schema says {want[k]}" for k in differ)
            )
    return compared, problems


def _message(kind: str, problems: list[str]) -> str:
    return (
        f"fxgrad.ops disagrees with ATen's schemas about these {kind}:\n"
        + "\n".join(f"  {p}" for p in problems)
        + "\nFix fxgrad/ops.py, or add an override there that says why."
    )


def test_tensor_methods_match_schemas() -> None:
    names = sorted(m for m in dir(torch.Tensor) if not m.startswith("_"))
    compared, problems = _compare(names, lambda n: n)
    assert compared > 500, f"only {compared} tensor methods found as ATen ops"
    assert not problems, _message("tensor methods", problems)


def test_torch_functions_match_schemas() -> None:
    names = sorted(
        f for f in dir(torch) if not f.startswith("_") and callable(getattr(torch, f, None))
    )
    names = [n for n in names if not isinstance(getattr(torch, n), type)]
    compared, problems = _compare(names, lambda n: getattr(torch, n))
    assert compared > 600, f"only {compared} torch functions found as ATen ops"
    assert not problems, _message("torch functions", problems)


# ---------------------------------------------------------------------------------------
# The override table itself

_PUBLIC = {n for ns in (torch.Tensor, torch, F) for n in dir(ns) if not n.startswith("__")}


def test_every_override_names_a_torch_op_and_says_why() -> None:
    unknown = sorted(n for n in OVERRIDES if n not in _PUBLIC and not _overloads(n))
    assert not unknown, f"overrides for names torch does not have: {unknown}"
    assert all(o.why.strip() for row in OVERRIDES.values() for o in row)


def test_no_two_overrides_set_the_same_fact() -> None:
    clashes = []
    for name, row in OVERRIDES.items():
        fields = [f for o in row for f, _ in o.changes] + [("like",) for o in row if o.like]
        clashes += [f"{name}.{f}" for f in set(fields) if fields.count(f) > 1]
    assert not clashes, f"overrides that set one fact twice: {sorted(clashes)}"


def test_no_override_repeats_the_schema() -> None:
    """An override of what an op returns, for an op whose schema now says the same, is stale."""
    stale = []
    for name, row in OVERRIDES.items():
        for override in row:
            changes = dict(override.changes)
            if "output" not in changes or not _overloads(name):
                continue
            says = _schema_says(name)
            aliasing = changes["output"] in (Output.VIEW, Output.VIEWS, Output.MAYBE_VIEW)
            if changes["output"] is not Output.MAYBE_VIEW and says["view"] == aliasing:
                if says["multi"] == (changes["output"] is Output.VIEWS):
                    stale.append(name)
    assert not stale, f"overrides the schema already agrees with: {stale}"


# ---------------------------------------------------------------------------------------
# Eager torch: OpInfo samples


def _storages(value: Any) -> set[int]:
    return {
        t.untyped_storage().data_ptr()
        for t in pytree.tree_leaves(value)
        if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.numel() > 0
    }


def _outputs(value: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


SAMPLES = 3  # per op variant: enough to see a view or a copy, and the test stays quick


def _runs() -> Iterator[tuple[str, ops.OpFacts, Any, Any]]:
    """(OpInfo name, facts, sample, result) for each op variant fxgrad.ops reads a schema for."""
    pytest.importorskip("expecttest")  # torch's OpInfo database imports it
    from torch.testing._internal.common_methods_invocations import op_db

    for info in op_db:
        if torch.float32 not in info.supported_dtypes("cpu"):
            continue
        for fn in {info.op, info.method_variant} - {None}:
            found = ops.facts(fn)
            if not found.schema_op:
                continue
            # sample_inputs_func, not sample_inputs: the latter walks the caller's stack with
            # inspect on every call, minutes under pytest's deep stack
            samples = info.sample_inputs_func(info, "cpu", torch.float32, False)
            for sample in itertools.islice(samples, SAMPLES):
                try:
                    result = fn(sample.input, *sample.args, **sample.kwargs)
                except Exception:  # a sample meant for another variant or an error test
                    continue
                yield info.name, found, sample, result


def _disagrees(found: ops.OpFacts, sample: Any, result: Any) -> str | None:
    inputs = _storages((sample.input, sample.args, sample.kwargs))
    tensors = [t for t in _outputs(result) if t.layout == torch.strided and t.numel() > 0]
    shared = [t.untyped_storage().data_ptr() in inputs for t in tensors]
    if found.output is Output.NEW and any(shared):
        return "returned its input's memory, but fxgrad.ops says a new tensor"
    if found.output in (Output.VIEW, Output.VIEWS) and not all(shared):
        return "returned new memory, but fxgrad.ops says a view"
    if found.output is Output.NOT_TENSOR and _outputs(result):
        return "returned a tensor, but fxgrad.ops says it returns none"
    return None


def test_eager_aliasing_matches_on_opinfo_samples() -> None:
    problems, runs = set(), 0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations and beta notes of the ops themselves
        for name, found, sample, result in _runs():
            runs += 1
            why = _disagrees(found, sample, result)
            if why is not None:
                problems.add(f"{name} ({found.name}): {why}")
    assert runs > 1500, f"only {runs} OpInfo samples ran"
    assert not problems, "eager torch disagrees with fxgrad.ops:\n" + "\n".join(sorted(problems))


# ---------------------------------------------------------------------------------------
# Known cases


@pytest.mark.parametrize("name", ["dsplit", "hsplit", "vsplit", "split", "chunk", "unbind"])
def test_splits_are_multi_output_views(name: str) -> None:
    assert ops.is_multi_output_view(name)
    assert ops.view_kind(name) is Output.VIEWS
    assert ops.views_input(name) == (0,)
    assert ops.is_multi_output_view(getattr(torch, name))


def test_only_sections_fix_the_count() -> None:
    assert all(ops.splits_into_sections(n) for n in ("tensor_split", "hsplit", "vsplit", "dsplit"))
    assert not any(ops.splits_into_sections(n) for n in ("split", "chunk", "unbind"))


@pytest.mark.parametrize("name", ["expand", "expand_as", "broadcast_to"])
def test_expanding_views_may_overlap(name: str) -> None:
    assert ops.view_kind(name) is Output.VIEW
    assert ops.may_overlap(name)
    assert not ops.may_overlap("transpose")


def test_detach_is_a_view_and_conversions_may_be_the_tensor_itself() -> None:
    assert ops.view_kind("detach") is Output.VIEW
    assert ops.keeps_values("detach")
    x = torch.randn(3, 4)
    for name in ("to", "float", "cpu", "contiguous", "reshape", "type_as"):
        assert ops.view_kind(name) is Output.MAYBE_VIEW, name
        assert not ops.returns_new_tensor(name), name
    assert x.float() is x and x.to(torch.float64) is not x
    assert x.type_as(x) is x
    assert x.reshape(12).data_ptr() == x.data_ptr()
    assert x.t().reshape(12).data_ptr() != x.data_ptr()  # the view impossible: a copy


def test_reductions_and_cat_are_not_pointwise() -> None:
    for name in ("sum", "softmax", "cat", "mean", "matmul"):
        assert not ops.is_pointwise(name), name
        assert ops.returns_new_tensor(name), name
    assert not ops.is_pointwise("where")  # `torch.where(condition)` is nonzero
    for target in ("add", "mul", "relu", torch.sigmoid, F.gelu, F.relu, "masked_fill"):
        assert ops.is_pointwise(target), target


def test_inplace_writes_and_counterparts() -> None:
    assert ops.is_inplace("add_") and ops.writes_args("add_") == (0,)
    assert ops.functional_counterpart("add_") == "add"
    assert ops.functional_counterpart(torch.ops.aten.relu_.default) == "relu"
    assert ops.functional_counterpart(F.elu_) == "elu"
    assert ops.functional_counterpart("normal_") is None  # aten::normal takes a mean tensor
    assert ops.functional_counterpart("resize_") is None
    assert ops.functional_counterpart("polygamma_") == "polygamma"  # aten puts `n` first
    assert ops.is_random("normal_") and ops.is_random("bernoulli_")
    assert not ops.is_inplace("add") and ops.functional_counterpart("add") is None


def test_metadata_writes_are_no_value_writes() -> None:
    for name in ("requires_grad_", "retain_grad", "detach_", "record_stream", "share_memory_"):
        assert ops.writes_args(name) == (0,), name
        assert not ops.is_inplace(name), name
    assert ops.is_inplace("t_")  # a view change of `self`: it bumps the version counter


def _called_on_a_placeholder(op: str, target: Any) -> tuple[fx.Node, fx.Node]:
    graph = fx.Graph()
    x = graph.placeholder("x")
    node = graph.create_node(op, target, (x,), {})
    graph.output(node)
    return node, x


def test_writes_to_and_has_side_effect_answer_as_fxgrad_ops() -> None:
    """FXG101's in-place detection is the schema's: on every tensor method and in-place
    torch function, `writes_to` finds a write exactly where `ops.is_inplace` does, and
    `has_side_effect` keeps every call that writes anything, metadata too (`h.detach_()`,
    `h.requires_grad_()`, whose values stay). A torch release that adds or changes an op
    fails here or in the schema checks above, not silently in what fxgrad rewrites."""
    methods = [("call_method", m) for m in dir(torch.Tensor) if not m.startswith("_")]
    functions = [
        ("call_function", getattr(torch, f))
        for f in dir(torch)
        if f.endswith("_") and not f.startswith("_") and callable(getattr(torch, f))
    ]
    assert len(methods) > 300 and len(functions) > 40
    for op, target in methods + functions:
        node, x = _called_on_a_placeholder(op, target)
        assert (writes_to(node) is x) == ops.is_inplace(target), target
        if ops.writes_args(target):
            assert has_side_effect(node), target
    for name in ("requires_grad_", "retain_grad", "detach_", "record_stream"):
        node, _ = _called_on_a_placeholder("call_method", name)
        assert writes_to(node) is None and has_side_effect(node), name
    node, _ = _called_on_a_placeholder("call_function", torch.detach_)
    assert writes_to(node) is None and has_side_effect(node)


def test_names_without_an_aten_op() -> None:
    assert ops.is_inplace("map_") and ops.facts("map_").why  # by the naming convention
    assert ops.is_inplace(torch.nn.init.kaiming_uniform_)
    assert ops.is_random(torch.nn.init.normal_)
    assert ops.view_kind("T") is Output.VIEW and ops.view_kind("data") is Output.VIEW
    assert not ops.returns_tensor("tolist") and not ops.returns_tensor("size")
    assert ops.returns_tensor("frobnicate")  # unknown: maybe a tensor
    assert ops.facts("frobnicate").output is Output.UNKNOWN
    assert not ops.is_inplace(torch.masked._ops.prod)  # not aten::prod, whatever its name
    assert ops.facts(lambda x: x).output is Output.UNKNOWN
    assert ops.facts([]).output is Output.UNKNOWN  # unhashable: no torch op


def test_functional_names_that_differ_from_aten() -> None:
    assert ops.view_kind("unfold") is Output.VIEW  # Tensor.unfold: a sliding-window view
    assert ops.returns_new_tensor(F.unfold)  # F.unfold: im2col
    assert ops.facts(F.unfold).schema_op == "aten::im2col"


def test_overloads_and_packets() -> None:
    aten = torch.ops.aten
    assert ops.is_inplace(aten.add_.Tensor) and ops.is_pointwise(aten.add.Tensor)
    assert ops.view_kind(aten.view.default) is Output.VIEW
    assert ops.view_kind(aten.reshape.default) is Output.MAYBE_VIEW  # the override holds
    assert ops.is_multi_output_view(aten.split)
    assert ops.strides_used(aten.view.default) is Strides.RAISE
    assert ops.strides_used("stride") is Strides.READ
    assert ops.strides_used("add") is Strides.IGNORED


def test_random_and_factories() -> None:
    assert ops.is_random("dropout") and ops.view_kind(F.dropout) is Output.MAYBE_VIEW
    for name in ("rand", "randn", "randint", "randperm", "rand_like", "randn_like", "normal"):
        assert ops.is_random(name) and ops.is_factory(name), name
    for name in ("zeros", "ones", "empty", "full", "arange", "eye", "zeros_like", "new_zeros"):
        assert ops.is_factory(name) and not ops.is_random(name), name
    assert not ops.is_factory("to") and not ops.is_factory("add")
    assert not ops.is_factory("empty_quantized")  # reads its qtensor argument


def test_import_reads_no_schema_and_fxgrad_does_not_import_it() -> None:
    code = (
        "import sys, fxgrad; assert 'fxgrad.ops' not in sys.modules; "
        "import fxgrad.ops as o; assert o._facts.cache_info().currsize == 0; "
        "assert o._aten_overloads.cache_info().currsize == 0"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_python_values_from_metadata_or_data() -> None:
    for name in ("size", "dim", "numel", "stride", "is_contiguous", "is_floating_point"):
        assert not ops.returns_tensor(name) and not ops.is_data_dependent(name), name
    for name in ("item", "tolist", "equal", "allclose", "is_nonzero"):
        assert not ops.returns_tensor(name) and ops.is_data_dependent(name), name


def test_the_diff_script_reports_every_old_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/op_facts_diff.py runs, and says of each table what it found (or that it is gone)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "op_facts_diff.py"
    spec = importlib.util.spec_from_file_location("op_facts_diff", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # dataclasses look their module up
    spec.loader.exec_module(script)
    for table in script.TABLES:
        lines = script.report(table)
        assert lines[0].startswith(f"{table.module}.{table.name}: "), lines
        assert len(lines) >= 2, lines
