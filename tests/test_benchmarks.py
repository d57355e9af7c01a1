"""The benchmark scripts work: the zoo on three small models, the scaling generator small.

No timing is asserted here; these check what the benchmarks report is true.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

import fxgrad
import fxgrad.api

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"fxgrad_bench_{name}", f"{BENCHMARKS}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a busy CI machine, spinning OpenMP threads cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo():
    pytest.importorskip("torchvision")
    return _load("zoo")


@pytest.fixture(scope="module")
def scaling():
    return _load("scaling")


def test_zoo_subset_traces_changes_nothing_and_matches_eager(zoo):
    # swin3d_t: a wrapped function that assigns into a list built in forward
    names = ["resnet18", "mobilenet_v3_small", "squeezenet1_0", "swin3d_t"]
    rows = zoo.run(names, modes=(True,), size=32)
    assert [r.name for r in rows] == names
    for r in rows:
        assert r.traced == "yes", (r.name, r.traced)
        assert r.changes == 0, (r.name, r.problems)
        assert r.forward == "yes", (r.name, r.forward)
        assert r.grads == "yes", (r.name, r.grads)
        assert r.nodes and r.nodes > 10
        assert not r.problems, (r.name, r.problems)
    text = zoo.table(rows, markdown=True) + zoo.summary(rows, markdown=True)
    assert "Problems: none." in text and "| resnet18" in text


def test_zoo_reports_a_raw_error_as_a_problem(zoo):
    spec = zoo.Spec("broken", "classification", lambda: torch.nn.Linear(3, 3), (2, 5))
    row = zoo.check_model(spec, training=True)  # shape mismatch: eager itself fails
    assert row.traced != "yes"
    assert row.problems or row.traced.startswith("TraceError")


def test_zoo_compare_uses_scaled_tolerances(zoo):
    big = torch.full((3,), 1e6)
    assert zoo.compare([big + 1.0], [big], rtol=1e-4, atol_scale=1e-5) == "yes"
    assert zoo.compare([big * 1.01], [big], rtol=1e-4, atol_scale=1e-5).startswith("NO")
    assert zoo.compare([None], [None], rtol=1e-4, atol_scale=1e-5) == "yes"


@pytest.mark.parametrize("static", [False, True])
def test_scaling_chain_fixed_equals_eager(scaling, static):
    model, (x,) = scaling.make_chain(300)
    reference, _ = scaling.make_chain(300, functional=True)
    fixed = fxgrad.api.fix_static(model) if static else fxgrad.fix(model, (x,))
    n = len(fixed.graph_module.graph.nodes)
    assert 250 <= n <= 400
    assert len(fixed.report.applied) == 16  # 8 blocks with 2 unsafe writes each
    out = fixed(x)
    torch.testing.assert_close(out, reference(x))
    torch.testing.assert_close(out, model(x))  # the forward of the original runs
    (g_fixed,) = torch.autograd.grad(out.sum(), model.w)
    (g_ref,) = torch.autograd.grad(reference(x).sum(), reference.w)
    torch.testing.assert_close(g_fixed, g_ref)
    assert g_ref.abs().sum() > 0
    with pytest.raises(RuntimeError, match="inplace operation"):
        torch.autograd.grad(model(x).sum(), model.w)  # why the fix is needed


def test_transformer_encoder_captures_with_example_inputs():
    """nn.TransformerEncoder branches on `src.is_nested`: a size-like fact, guarded."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 16)
    fixed = fxgrad.fix(enc, (x,))
    assert not fixed.report.applied
    torch.testing.assert_close(fixed(x), enc(x))


def test_run_all_keeps_sections_it_did_not_generate(tmp_path):
    run_all = _load("run_all")
    old = (
        "# old\n\n## cat contiguity (CPU)\n\nhand table\n\n"
        f"## scaling with graph size\n\n{run_all.MARKER}\n\nold scaling\n\n"
        "## cat contiguity (GPU)\n\ngpu table\n"
    )
    new = run_all.compose(old, {"torchvision zoo": f"{run_all.MARKER}\n\nzoo table"})
    assert new.startswith(run_all.TITLE)
    for text in ("hand table", "gpu table", "old scaling", "zoo table"):
        assert new.count(text) == 1, text
    assert new.index("zoo table") < new.index("hand table") < new.index("gpu table")
    assert new.index("old scaling") < new.index("zoo table")  # BENCHES order
