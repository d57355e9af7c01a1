"""FXG301 and NumPy writes: each translated, in program order, or the detour left whole.

Each write case is a detour `torch.as_tensor(fn(x.detach().numpy()))` whose NumPy code
writes into an array. The fixed module is decided on one input size and called on others
(a batch of one, where `sort(axis=0)` changes nothing, included): it must give NumPy's
dtype and values on every call, so no example size is baked into the translation, and for
float64 inputs pass `torch.autograd.gradcheck`, so the gradient is no longer cut. Refused
writes keep the whole detour, write included. The FXG301 cases taking `inputs(batch=...)`
are run the same way against eager PyTorch and their hand-written Reference.
"""

from __future__ import annotations

import importlib.util
import operator
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import fx

import fxgrad
from fxgrad.context import Context
from fxgrad.passes import numpy_round_trip as fxg301
from fxgrad.passes.numpy_round_trip.aliasing import _numpy_write
from fxgrad.runtime import ufunc_method

CASES = Path(__file__).parent / "cases" / "FXG301"
F = ("float32", "float64")
FI = ("float32", "float64", "int64")


class W:
    def __init__(self, name, fn, dtypes=F, nd=2, grad=True):
        self.name, self.fn, self.dtypes, self.nd, self.grad = name, fn, dtypes, nd, grad

    def __repr__(self) -> str:
        return self.name


def _sort0(a):
    b = a * 2
    b.sort(axis=0)
    return b


def _sort_last(a):
    b = a + 1
    b.sort()
    return b * b


def _fill(a):
    b = a * 1
    b.fill(3)
    return b + a


def _setitem_int(a):
    b = a * 1
    b[0] = 7
    return b


def _setitem_slice(a):
    b = a * 1
    b[:, 1:] = -1
    return b


def _setitem_mask(a):
    b = a * 1
    b[b < 0] = 0
    return b


def _setitem_mask_values(a):
    b = a * 1
    b[a > 0] = a[a > 0] * 2
    return b


def _setitem_row_mask(a):
    b = a * 1
    b[a[:, 0] > 0] = 0.5
    return b


def _setitem_fancy(a):
    b = a * 1
    b[[0, -1]] = 1.5
    return b


def _setitem_arrays(a):
    b = a * 1
    b[np.arange(a.shape[0]), np.argmax(a, 1)] = 0
    return b


def _setitem_copy_column(a):
    b = a * 1
    b[..., 0] = b[..., -1]
    return b


def _iadd(a):
    b = a * 1
    b += a
    return b


def _imul_scalar(a):
    b = a + 0
    b *= 3
    return b


def _iadd_row(a):
    b = a * 1
    b[0] += 1
    return b


def _view_sees_write(a):
    b = a * 1
    v = b[:, 0]
    b += 1
    b[1:] *= 2
    return v * 3


def _write_through_view(a):
    b = a * 1
    v = b[:, 0]
    v -= 5
    return b


def _write_through_transpose(a):
    b = a * 1
    t = b.T
    t[0] = 0
    return b


def _write_through_flip(a):
    b = a * 1
    f = np.flip(b, axis=0)
    f[0] = 9
    return b


def _write_through_swapaxes(a):
    b = a * 1
    s = np.swapaxes(b, 0, 1)
    s[-1] += 1
    return b


def _out_add(a):
    b = a * 1
    np.add(b, a, out=b)
    return b


def _out_clip(a):
    b = a * 2
    np.clip(b, -1, 1, out=b)
    return b


def _out_where(a):
    b = a * 1
    np.multiply(b, 3, out=b, where=b > 0)
    return b


def _out_method(a):
    b = a * 1
    b.clip(0, None, out=b)
    return b


def _copyto(a):
    b = a * 1
    np.copyto(b, a[0] * 2)
    return b


def _copyto_where(a):
    b = a * 1
    np.copyto(b, 0, where=a > 0)
    return b


def _put(a):
    b = a * 1
    b.put([0, -1], [1.5, 2.5])
    return b


def _np_put(a):
    b = a * 1
    np.put(b, 1, 4)
    return b


def _putmask(a):
    b = a * 1
    np.putmask(b, b > 0, 1)
    return b


def _putmask_values(a):
    b = a * 1
    np.putmask(b, b > 0, a * 3)
    return b


def _place(a):
    b = a * 1
    np.place(b, b < 0, [0])
    return b


def _fill_diagonal(a):
    b = a * 1
    np.fill_diagonal(b, 5)
    return b


def _flat(a):
    b = a * 1
    b.flat[0] = 5
    b.flat[[1, -1]] = a[0, :2] * 2
    return b


def _add_at(a):
    b = a * 1
    np.add.at(b, ([0, 0, -1],), a[0] * 2)
    np.subtract.at(b, (0, [1, 1]), 2)
    return b


def _put_along_axis(a):
    b = a * 1
    idx = np.argmax(b, axis=1)[:, None]
    np.put_along_axis(b, idx, a[:, :1] * 3, axis=1)
    np.put_along_axis(b, idx - 1, 0, axis=1)
    return b


def _zeros_written(a):
    z = np.zeros(a.shape)
    z[:, 0] = a[:, -1]
    return z


def _empty_written(a):
    e = np.empty(a.shape, dtype=a.dtype)
    e[...] = a * 2
    return e


def _two_writes_two_arrays(a):
    b = a * 1
    c = b.copy()
    b.sort(axis=0)
    c[0] = b[-1]
    return b - c


WRITES = [
    W("sort_axis0", _sort0, FI),
    W("sort_last", _sort_last, FI, nd=3),
    W("fill", _fill, FI),
    W("setitem_int", _setitem_int, FI, nd=1),
    W("setitem_slice", _setitem_slice, FI),
    W("setitem_mask", _setitem_mask, FI),
    W("setitem_mask_values", _setitem_mask_values, FI),
    W("setitem_row_mask", _setitem_row_mask, F),
    W("setitem_fancy", _setitem_fancy, FI),
    W("setitem_arrays", _setitem_arrays, FI),
    W("setitem_copy_column", _setitem_copy_column, FI, nd=3),
    W("iadd", _iadd, FI),
    W("imul_scalar", _imul_scalar, FI),
    W("iadd_row", _iadd_row, FI),
    W("view_sees_write", _view_sees_write, FI),
    W("write_through_view", _write_through_view, FI),
    W("write_through_transpose", _write_through_transpose, FI),
    W("write_through_flip", _write_through_flip, FI),
    W("write_through_swapaxes", _write_through_swapaxes, FI, nd=3),
    W("out_add", _out_add, FI),
    W("out_clip", _out_clip, FI),
    W("out_where", _out_where, FI),
    W("out_method", _out_method, FI),
    W("copyto", _copyto, FI),
    W("copyto_where", _copyto_where, FI),
    W("put", _put, F),
    W("np_put", _np_put, FI),
    W("putmask", _putmask, FI),
    W("putmask_values", _putmask_values, FI),
    W("place", _place, FI),
    W("fill_diagonal", _fill_diagonal, FI),
    W("flat", _flat, FI),
    W("add_at", _add_at, FI),
    W("put_along_axis", _put_along_axis, FI),
    W("zeros_written", _zeros_written, F),
    W("empty_written", _empty_written, FI),
    W("two_writes_two_arrays", _two_writes_two_arrays, FI),
]
assert len({w.name for w in WRITES}) == len(WRITES)


class Detour(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return torch.as_tensor(self.fn(x.detach().numpy()))


def _input(case: W, lead: int, dtype: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (lead, 4, 3)[: case.nd]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    return x.round() if dtype.startswith("int") else x


def _as(x: torch.Tensor, dtype: str) -> torch.Tensor:
    return x.to(getattr(torch, dtype))


def _fix(model: torch.nn.Module, xs: tuple) -> fxgrad.FixedModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fxgrad.fix(model, xs, select=["FXG301"])


# Each write with each dtype NumPy accepts for it.
_WRITE_DTYPES = [(c, d) for c in WRITES for d in FI if d in c.dtypes]


@pytest.mark.parametrize("case, dtype", _WRITE_DTYPES, ids=[f"{c!r}-{d}" for c, d in _WRITE_DTYPES])
def test_write_is_translated_for_every_size(case: W, dtype: str) -> None:
    for fix_lead in (1, 3):
        x = _as(_input(case, fix_lead, dtype, 0), dtype)
        fixed = _fix(Detour(case.fn), (x,))
        notes = [c.line() for c in fixed.report.changes]
        assert len(fixed.report.applied) == 1, f"{case.name} was not rewritten: {notes}"
        assert "numpy" not in fixed.code, fixed.code
        for lead in (1, 2, 5):
            a = _as(_input(case, lead, dtype, lead), dtype)
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                want = torch.as_tensor(np.asarray(case.fn(a.numpy().copy())))
            got = fixed(a.clone())
            assert got.dtype == want.dtype, (case.name, lead, got.dtype, want.dtype)
            torch.testing.assert_close(got, want, msg=f"{case.name}: fixed on {fix_lead}, {lead}")


@pytest.mark.parametrize("case", [c for c in WRITES if c.grad], ids=repr)
def test_write_gradcheck(case: W) -> None:
    x = _input(case, 3, "float64", 0).requires_grad_()
    fixed = _fix(Detour(case.fn), (x,))
    assert len(fixed.report.applied) == 1
    assert torch.autograd.gradcheck(fixed, (x,))


# ---------------------------------------------------------------------------------------
# Writes left alone: the whole detour stays, the write included


def _partition(a):
    b = a * 1
    b.partition(1, axis=-1)
    return b


def _into_the_tensor(a):
    a[0] = 0  # `a` is the tensor's own memory
    return a * 2


def _reshape_alias(a):
    b = a * 1
    r = b.reshape(-1)
    r[0] = 5
    return b + r.sum()


def _place_several(a):
    b = a * 1
    np.place(b, b < 0, [1, 2])
    return b


def _split_piece_written(a):
    b = a * 1
    p, q = np.split(b, 2, axis=1)
    p[0] = 0
    return b


def _set_shape(a):
    b = a * 1
    b.shape = (-1,)
    return b


def _multiply_at(a):
    b = a * 1
    np.multiply.at(b, [0, 0], 2)
    return b


def _flat_from_itself(a):
    b = a * 1
    b.flat[[1, -1]] = b[0, :2]
    return b


REFUSED = [
    W("partition", _partition),
    W("into_the_tensor", _into_the_tensor),
    W("reshape_alias", _reshape_alias),
    W("place_several", _place_several),
    W("split_piece_written", _split_piece_written),
    W("set_shape", _set_shape),
    W("multiply_at", _multiply_at),
    W("flat_from_itself", _flat_from_itself),
]


@pytest.mark.parametrize("case", REFUSED, ids=repr)
def test_refused_write_keeps_the_detour(case: W) -> None:
    x = _input(case, 2, "float64", 0)
    fixed = _fix(Detour(case.fn), (x.clone(),))
    (change,) = fixed.report.changes
    assert not change.applied, change.line()
    assert "numpy" in fixed.code
    for lead in (1, 2, 4):
        a = _input(case, lead, "float64", lead)
        want = Detour(case.fn)(a.clone())
        torch.testing.assert_close(fixed(a.clone()), want)


def test_write_after_from_numpy_is_refused() -> None:
    class Model(torch.nn.Module):
        def forward(self, x):
            b = x.detach().numpy() * 1
            t = torch.from_numpy(b)
            b += 1
            return t * 2

    x = torch.randn(3, 4)
    fixed = _fix(Model(), (x,))
    (change,) = fixed.report.changes
    assert not change.applied and "shares the array's memory" in change.note
    torch.testing.assert_close(fixed(x), (x + 1) * 2)


# ---------------------------------------------------------------------------------------
# Every write NumPy documents is recognised


def _recorded_writes(fn, *examples) -> dict[str, str]:
    graph = fx.Graph()
    names = [graph.placeholder(f"a{i}") for i in range(len(examples))]
    fn(graph, *names)
    graph.output(None)
    values = dict(zip(names, examples))
    found = {}
    for n in graph.nodes:
        w = _numpy_write(n, values)
        if w is not None:
            found[n.name] = w.kind
    return found


def test_numpy_writes_are_recognised() -> None:
    a = np.zeros((3, 3))

    def build(g: fx.Graph, x: fx.Node) -> None:
        g.call_method("sort", (x,), {"axis": 0})
        g.call_method("fill", (x, 0))
        g.call_method("put", (x, [0], 1.0))
        g.call_method("partition", (x, 1))
        g.call_method("resize", (x, (9,)))
        g.call_method("byteswap", (x,), {"inplace": True})
        g.call_method("byteswap", (x,))  # returns a copy: no write
        g.call_method("clip", (x, 0, 1), {"out": x})
        g.call_function(operator.setitem, (x, 0, 1.0))
        g.call_function(operator.iadd, (x, 1))
        g.call_function(operator.ixor, (x, 1))
        g.call_function(np.add, (x, 1), {"out": (x,)})
        g.call_function(np.divmod, (x, 2), {"out": (x, x)})
        g.call_function(np.sum, (x,), {"axis": 0, "out": x})
        g.call_function(np.copyto, (x, 1.0))
        g.call_function(np.put, (x, [0], 1.0))
        g.call_function(np.place, (x, x, 1.0))
        g.call_function(np.putmask, (x, x, 1.0))
        g.call_function(np.fill_diagonal, (x, 1.0))
        g.call_function(np.put_along_axis, (x, x, 1.0, 0))
        g.call_function(ufunc_method(np.add, "at"), (x, [0], 1.0))
        g.call_function(ufunc_method(np.add, "reduce"), (x,))  # no write
        g.call_function(operator.setitem, (g.call_function(getattr, (x, "flat")), 0, 1.0))
        g.call_function(setattr, (x, "shape", (9,)))
        g.call_function(np.sort, (x,))  # returns a sorted copy: no write
        g.call_function(operator.add, (x, 1))

    found = _recorded_writes(build, a)
    assert sorted(found.values()) == sorted(
        [
            "sort", "fill", "put", "partition", "resize", "byteswap", "out", "setitem",
            "augmented", "augmented", "out", "several outputs", "out", "copyto", "put",
            "place", "putmask", "fill_diagonal", "put_along_axis", "ufunc.at", "flat",
            "setattr",
        ]
    )  # fmt: skip


def test_no_write_into_a_scalar() -> None:
    def build(g: fx.Graph, s: fx.Node) -> None:
        g.call_function(operator.iadd, (s, 1))  # rebinds a NumPy scalar

    assert _recorded_writes(build, np.float64(2.0)) == {}


# ---------------------------------------------------------------------------------------
# `torch.from_numpy(np.flip(a))`: eager raises, the translation gives what the code means


def test_from_numpy_of_negative_strides_is_translated() -> None:
    graph = fx.Graph()
    x = graph.placeholder("x")
    a = graph.call_method("numpy", (graph.call_method("detach", (x,)),))
    flipped = graph.call_function(np.flip, (a,), {"axis": 0})
    graph.output(graph.call_function(torch.from_numpy, (flipped,)))
    gm = fx.GraphModule(torch.nn.Module(), graph)
    example = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="negative"):
        gm(example)

    (change,) = fxg301.run(gm, Context(example_inputs=[example]))
    gm.recompile()
    assert change.applied, change.line()
    assert "eager raises ValueError" in change.note
    assert "numpy" not in gm.code
    for lead in (1, 5):
        t = torch.randn(lead, 4, dtype=torch.float64, requires_grad=True)
        torch.testing.assert_close(gm(t), torch.flip(t, (0,)))
        assert torch.autograd.gradcheck(gm, (t,))


# ---------------------------------------------------------------------------------------
# FXG301 cases, at several batch sizes, against eager and their Reference


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"writes_case_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sized_cases() -> list[Path]:
    import inspect

    out = []
    for path in sorted(CASES.glob("*.py")):
        case = _load(path)
        if "batch" in inspect.signature(case.inputs).parameters:
            out.append(path)
    return out


def _grads(model: torch.nn.Module, out) -> list[torch.Tensor]:
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o.double() * (i + 1)).sum() for i, o in enumerate(outs) if o.is_floating_point())
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or not getattr(loss, "requires_grad", False):
        return []
    return list(torch.autograd.grad(loss, params, allow_unused=True))


@pytest.mark.parametrize("path", _sized_cases(), ids=lambda p: p.stem)
def test_case_at_other_batch_sizes(path: Path) -> None:
    case = _load(path)
    for fix_batch in (1, 3):
        torch.manual_seed(0)
        model = case.Model()
        fixed = _fix(model, case.inputs(batch=fix_batch))
        reference = None
        if hasattr(case, "Reference"):
            reference = case.Reference()
            reference.load_state_dict(model.state_dict())
        for batch in (1, 2, 5):
            torch.manual_seed(batch)
            xs = case.inputs(batch=batch)
            got = fixed(*[x.clone() for x in xs])
            try:
                want = model(*[x.clone() for x in xs])
            except ValueError:  # eager refuses (negative strides): the Reference says
                want = reference(*[x.clone() for x in xs])
            torch.testing.assert_close(got, want, msg=f"{path.stem}: fixed on {fix_batch}")
            if reference is None:
                continue
            got_grads = _grads(fixed, fixed(*[x.clone() for x in xs]))
            want_grads = _grads(reference, reference(*[x.clone() for x in xs]))
            for g, w in zip(got_grads, want_grads):
                if w is None:
                    assert g is None or not g.any()
                else:
                    torch.testing.assert_close(g, w, msg=f"{path.stem}: gradients, {batch}")
