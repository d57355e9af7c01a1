"""A fixed module among the rest of PyTorch: inference mode, expanded and channels-last
inputs, DDP and FSDP, signature introspection, lazy modules, torch.func transforms,
torch.export, torch.jit.trace, torch.compile, TorchScript modules, a training loop with a
checkpoint, and HF generate().

One model with an unsafe write (`sigmoid` saved `h`, then `h.mul_(2)`) goes through each:
values are compared with eager PyTorch, gradients with the model corrected by hand.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.testing import assert_close

import fxgrad
from fxgrad.api import fix_static
from fxgrad.context import clone_inputs
from fxgrad.errors import FxgradError


class Gate(nn.Module):
    def __init__(self, lazy: bool = False) -> None:
        super().__init__()
        self.fc = nn.LazyLinear(8) if lazy else nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc(x))
        h.mul_(2)  # sigmoid saved h for its backward
        return self.head(h)


class Corrected(Gate):
    """Gate with the write made out of place by hand: the reference for gradients."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.sigmoid(self.fc(x)) * 2)


def corrected(model: nn.Module) -> Corrected:
    ref = Corrected()
    ref.load_state_dict(model.state_dict())
    return ref


def _x() -> torch.Tensor:
    return torch.randn(4, 6)


def _assert_grads_match(fixed: nn.Module, model: nn.Module, x: torch.Tensor, wrt=()) -> None:
    """Gradients of the fixed module's output equal those of the corrected model."""
    ref = corrected(model)
    got = torch.autograd.grad(fixed(x).square().sum(), [*wrt, *model.parameters()])
    want = torch.autograd.grad(ref(x).square().sum(), [*wrt, *ref.parameters()])
    assert_close(got, want)


# --- expanded and channels-last inputs ------------------------------------------------------


def test_copies_of_expanded_inputs_share_memory_as_the_inputs_do():
    base = torch.randn(4, 1, requires_grad=True)
    for x in (base.detach().expand(4, 6), base.expand(4, 6)):
        (c,) = clone_inputs([x])
        assert c.stride() == x.stride() and torch.equal(c, x)
        assert (c.requires_grad, c.is_leaf) == (x.requires_grad, x.is_leaf)
        assert c.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    leaf = base.detach().expand(4, 6).requires_grad_()
    (c,) = clone_inputs([leaf])
    assert c.requires_grad and c.is_leaf and c.stride() == (1, 0)


@pytest.mark.parametrize("frontend", ["fx", "dynamo"])
@pytest.mark.parametrize("example", [False, True])
def test_expanded_inputs(frontend, example):
    torch._dynamo.reset()
    model = Gate()
    base = torch.randn(4, 1, requires_grad=True)
    x = base.expand(4, 6)  # stride 0: every element of a row is one memory location
    fixed = fxgrad.fix(model, (x,) if example else None, frontend=frontend)
    assert_close(fixed(x), corrected(model)(x))
    _assert_grads_match(fixed, model, x, wrt=[base])
    plain = torch.randn(4, 1).expand(4, 6)
    assert_close(fixed(plain), corrected(model)(plain))


class ConvGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.conv(x))
        h.mul_(2)
        return h.mean((2, 3))


@pytest.mark.parametrize("frontend", ["fx", "dynamo"])
def test_channels_last_inputs(frontend):
    torch._dynamo.reset()
    model = ConvGate()
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
    fixed = fxgrad.fix(model, (x,), frontend=frontend)
    out = fixed(x)
    want = (torch.sigmoid(model.conv(x)) * 2).mean((2, 3))
    assert_close(out, want)
    got = torch.autograd.grad(out.sum(), [x, *model.parameters()])
    assert_close(got, torch.autograd.grad(want.sum(), [x, *model.parameters()]))


# --- torch.inference_mode() ---------------------------------------------------------------


@pytest.mark.parametrize("frontend", ["fx", "dynamo"])
@pytest.mark.parametrize("example", [False, True])
def test_calls_under_inference_mode_give_eager_values(frontend, example):
    torch._dynamo.reset()
    model, x = Gate(), _x()
    fixed = fxgrad.fix(model, (x,) if example else None, frontend=frontend)
    with torch.inference_mode():
        want = model(x)  # eager runs: nothing is saved for backward
        out = fixed(x)  # without example inputs, this first call decides
        fresh = torch.randn(4, 6)  # an inference tensor
        fresh_out, fresh_want = fixed(fresh), model(fresh)
    assert out.is_inference()
    assert_close(out, want)
    assert_close(fresh_out, fresh_want)
    _assert_grads_match(fixed, model, x)  # and training afterwards is fixed as before


def test_fix_with_example_inputs_under_inference_mode():
    model, x = Gate(), _x()
    with torch.inference_mode():
        fixed = fxgrad.fix(model, (x,))  # decides for training, as fix() always does
        assert_close(fixed(x), model(x))
    assert fixed.reports[0].applied
    _assert_grads_match(fixed, model, x)


# --- torch.func transforms ------------------------------------------------------------------


@pytest.mark.parametrize("example", [False, True])
def test_torch_func_grad_over_a_fixed_module(example):
    model, x = Gate(), _x()
    fixed = fxgrad.fix(model, (x,) if example else None)
    ref = corrected(model)
    got = torch.func.grad(lambda t: fixed(t).square().sum())(x)
    want = torch.func.grad(lambda t: ref(t).square().sum())(x)
    assert_close(got, want)
    assert fixed.report.applied


def test_a_first_call_inside_vmap():
    model, x = Gate(), _x()
    fixed = fxgrad.fix(model)
    assert_close(torch.vmap(fixed)(x), corrected(model)(x))
    assert torch.vmap(fixed)(x).shape == (4, 3)


def test_functional_call_per_sample_grads_and_jacrev_keep_working():
    model, x = Gate(), _x()
    ref = corrected(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    for fixed in (fxgrad.fix(model, (x,)), fxgrad.fix(model)):
        assert_close(
            torch.func.functional_call(fixed, params, (x,)),
            torch.func.functional_call(ref, params, (x,)),
        )

        def per_sample(module: nn.Module):
            def loss(p, xi):
                return torch.func.functional_call(module, p, (xi[None],)).square().sum()

            return torch.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)

        assert_close(per_sample(fixed), per_sample(ref))
        assert_close(torch.func.jacrev(fixed)(x), torch.func.jacrev(ref)(x))


class Branchy(Gate):
    """A data-dependent branch: fxgrad's tracer refuses it, Dynamo captures it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc(x))
        if h.sum() > 0:
            h.mul_(2)
        return self.head(h)


def test_dynamo_front_end_refuses_to_run_inside_torch_func_transforms():
    torch._dynamo.reset()
    model, x = Branchy(), _x()
    fixed = fxgrad.fix(model)
    for transform in (torch.vmap, lambda f: torch.func.grad(lambda t: f(t).sum())):
        with pytest.raises(FxgradError, match="frontend='fx'"):
            transform(fixed)(x)
    # Refused before Dynamo ran anything: a later call is still captured and fixed.
    _assert_grads_match(fixed, model, x)


# --- lazy modules ---------------------------------------------------------------------------


def _eager_first_call(x: torch.Tensor) -> tuple[Gate, torch.Tensor, torch.Tensor]:
    """A lazy Gate's first eager call from seed 0: the model, output, and next draws."""
    torch.manual_seed(0)
    model = Gate(lazy=True)
    out = model(x)
    return model, out, torch.rand(3)


@pytest.mark.parametrize(
    "how", ["first call", "example inputs", "dynamo first call", "dynamo example inputs"]
)
def test_lazy_modules_initialize_on_the_first_call_as_eager(how):
    torch._dynamo.reset()
    x = _x()
    eager, want, eager_draws = _eager_first_call(x)
    torch.manual_seed(0)
    model = Gate(lazy=True)
    frontend = "dynamo" if how.startswith("dynamo") else "auto"
    example = (x,) if how.endswith("example inputs") else None
    fixed = fxgrad.fix(model, example, frontend=frontend)
    # fix() changes nothing: the parameters initialize on the first call, as in eager.
    assert isinstance(model.fc.weight, nn.parameter.UninitializedParameter)
    out = fixed(x)
    assert_close(torch.rand(3), eager_draws)  # the same draws, in the same order
    assert_close(out, want)
    assert type(model.fc) is nn.Linear and model.fc.in_features == 6
    assert not model.fc._forward_pre_hooks
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        assert_close(p, q, msg=name)
    assert fixed.report.applied
    _assert_grads_match(fixed, model, x)
    fixed(x)
    assert len(fixed.reports) == 1  # the initialized model's calls share the decision


def test_checking_a_lazy_model_leaves_it_alone():
    torch.manual_seed(0)
    model, x = Gate(lazy=True), _x()
    rng = torch.random.get_rng_state()
    assert fxgrad.check(model, (x,)).applied
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert isinstance(model.fc.weight, nn.parameter.UninitializedParameter)
    with pytest.raises(FxgradError, match=r"Run one forward of the model first"):
        fxgrad.check(model)


# --- DistributedDataParallel and FSDP -----------------------------------------------------


@pytest.fixture
def process_group(tmp_path: Path):
    """A gloo process group of one process, torn down after the test."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not built in")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_must_wrap_the_fixed_module(process_group):
    model, x = Gate(), _x()
    ddp = nn.parallel.DistributedDataParallel(model)
    for wrapped in (ddp, torch.compile(ddp)):
        for args in ((), ((x,),)):
            with pytest.raises(FxgradError, match=r"DistributedDataParallel\(fxgrad\.fix\(model"):
                fxgrad.fix(wrapped, *args)
    with pytest.raises(FxgradError, match="all-reduced"):
        fix_static(ddp)
    assert fxgrad.check(ddp, (x,)).applied  # a report only: it checks the module inside

    right = nn.parallel.DistributedDataParallel(fxgrad.fix(model))
    _assert_grads_match(right, model, x)


def test_fsdp_must_shard_the_fixed_module(process_group):
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    fully_shard = getattr(fsdp, "fully_shard", None)
    if fully_shard is None:
        pytest.skip("no fully_shard in this torch")
    x = _x()
    sharded = Gate()
    fully_shard(sharded.fc)
    fully_shard(sharded)
    for args in ((), ((x,),)):
        with pytest.raises(FxgradError, match=r"fully_shard\(fixed\)"):
            fxgrad.fix(sharded, *args)
    with pytest.raises(FxgradError, match="sharded by FSDP"):
        fxgrad.check(sharded, (x,))

    # A submodule sharded after fixing: refused on the call that decides.
    model = Gate()
    fixed = fxgrad.fix(model)
    fully_shard(model.fc)
    with pytest.raises(FxgradError, match=r"FSDPLinear at `fc`"):
        fixed(x)

    # The fixed module sharded as a whole trains as the corrected model does.
    model = Gate()
    ref = corrected(model)
    fixed = fxgrad.fix(model)
    fully_shard(fixed)
    assert type(model) is Gate  # fully_shard gave the fixed module its class, not the model
    out = fixed(x)
    out.square().sum().backward()
    want = ref(x)
    want.square().sum().backward()
    assert_close(out, want)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert_close(p.grad.full_tensor(), q.grad)


def test_fsdp1_must_wrap_the_fixed_module(process_group):
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    wrapper = fsdp.FullyShardedDataParallel
    cpu = torch.device("cpu")
    x = _x()
    with pytest.raises(FxgradError, match="FullyShardedDataParallel"):
        fxgrad.fix(wrapper(Gate(), device_id=cpu), (x,))
    model = Gate()
    ref = corrected(model)
    right = wrapper(fxgrad.fix(model), device_id=cpu, use_orig_params=True)
    out = right(x)
    out.square().sum().backward()
    want = ref(x)
    want.square().sum().backward()
    assert_close(out, want)
    assert_close([p.grad for p in right.parameters()], [q.grad for q in ref.parameters()])


# --- inspect.signature ----------------------------------------------------------------------


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Tag each token."""
        h = torch.sigmoid(self.emb(input_ids))
        h.mul_(2)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return self.head(h)


def test_forward_signature_is_the_models():
    model = Tagger()
    fixed = fxgrad.fix(model)
    sig = inspect.signature(fixed.forward)
    assert sig == inspect.signature(model.forward)
    assert list(sig.parameters) == ["input_ids", "attention_mask"]
    assert sig.parameters["attention_mask"].default is None
    assert fixed.forward.__doc__ == "Tag each token."
    # What HF Trainer does to drop dataset columns the model does not take.
    columns = {"input_ids", "attention_mask", "text", "label_names"}
    assert columns & set(sig.parameters) == {"input_ids", "attention_mask"}

    ids, mask = torch.randint(0, 10, (2, 5)), torch.ones(2, 5)
    out = fixed(input_ids=ids, attention_mask=mask)
    want = model.head(torch.sigmoid(model.emb(ids)) * 2 * mask[..., None])
    assert_close(out, want)
    assert_close(fixed(ids), model.head(torch.sigmoid(model.emb(ids)) * 2))

    # Copies, pickles and DataParallel replicas keep it, each bound to itself.
    for other in (copy.deepcopy(fixed), pickle.loads(pickle.dumps(fixed))):
        assert inspect.signature(other.forward) == sig
        assert other.forward.__self__ is other
        assert_close(other(ids, mask), out)
    replica = fixed._replicate_for_data_parallel()
    assert replica.forward.__self__ is replica
    assert inspect.signature(replica.forward) == sig


# --- tracers: torch.export, torch.jit.trace, torch.compile ----------------------------------


def _grads_match_reference(module: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    """Gradients through `module` (with its own parameter objects, in `model`'s order)
    equal those of the corrected model."""
    ref = corrected(model)
    got = torch.autograd.grad(module(x).square().sum(), list(module.parameters()))
    want = torch.autograd.grad(ref(x).square().sum(), list(ref.parameters()))
    assert_close(got, want)


def test_torch_export_of_a_fixed_module():
    model, x = Gate(), _x()
    fixed = fxgrad.fix(model, (x,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = torch.export.export(fixed, (x,))
    assert not [w for w in caught if "during export" in str(w.message)]
    assert_close(exported.module()(x), model(x))
    _grads_match_reference(exported.module(), model, x)

    # A mode nothing was decided for: refused, saying how to decide first.
    model.eval()
    with pytest.raises(FxgradError, match=r"eval mode.*\n.*fxgrad\.fix\(model, \(x,\)\)"):
        torch.export.export(fixed, (x,))
    fixed(x)  # decides for eval, on real values
    assert_close(torch.export.export(fixed, (x,)).module()(x), model(x))

    with pytest.raises(FxgradError, match="tensors that hold no values"):
        torch.export.export(fxgrad.fix(Gate()), (x,))  # nothing decided yet


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("example", [False, True])
def test_torch_jit_trace_of_a_fixed_module(example):
    model, x = Gate(), _x()
    fixed = fxgrad.fix(model, (x,) if example else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(fixed, (x,))  # its check traces again, under no_grad
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert_close(traced(x), model(x))
    fresh = torch.randn(4, 6)
    assert_close(traced(fresh), model(fresh))
    _grads_match_reference(traced, model, x)


class _Graphs:
    """A torch.compile backend that runs the graphs Dynamo hands it and counts them."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        self.graphs.append(gm)
        return gm.forward


@pytest.mark.parametrize("fullgraph", [True, False])
@pytest.mark.parametrize("example", [False, True])
def test_torch_compile_of_a_fixed_module(fullgraph, example, capfd):
    torch._dynamo.reset()
    model, x = Gate(), _x()
    fixed = fxgrad.fix(model, (x,) if example else None)
    backend = _Graphs()
    compiled = torch.compile(fixed, backend=backend, fullgraph=fullgraph)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_close(compiled(x), model(x))
        _grads_match_reference(compiled, model, x)
        assert len(backend.graphs) == 1  # the variant's code, in one graph
        model.eval()  # a new variant, decided outside Dynamo, compiled once
        assert_close(compiled(x), model(x))
        fixed.train()
        assert_close(compiled(x), corrected(model)(x))
        assert len(backend.graphs) == 2  # back in train mode: the first graph again
    printed = capfd.readouterr().err + "".join(str(w.message) for w in caught)
    for text in ("dict_version", "lru_cache", "Error detected in", "Traceback"):
        assert text not in printed
    assert "mul_" not in backend.graphs[0].code  # Dynamo compiled the fixed code
    assert fixed.report.applied


def test_torch_compile_with_a_backend_that_trains():
    torch._dynamo.reset()
    model, x = Gate(), _x()
    compiled = torch.compile(fxgrad.fix(model, (x,)), backend="aot_eager", fullgraph=True)
    assert_close(compiled(x), model(x))
    _grads_match_reference(compiled, model, x)


# --- TorchScript modules ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_modules_are_refused():
    model, x = Gate(), _x()
    for scripted in (torch.jit.script(model), torch.jit.trace(model, (x,))):
        with pytest.raises(FxgradError, match=r"TorchScript.*\n.*fxgrad\.fix\(model, \(x,\)\)"):
            fxgrad.fix(scripted, (x,))
        with pytest.raises(FxgradError, match="TorchScript"):
            fxgrad.check(scripted, (x,))
    model.fc = torch.jit.script(model.fc)
    with pytest.raises(FxgradError, match="TorchScript module at `fc`"):
        fxgrad.fix(model)


# --- a training loop, a checkpoint, and HF generate() -----------------------------------------


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def _validate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        out = model(x)
    model.train()
    return out


def test_a_training_loop_with_validation_and_a_checkpoint_matches_the_corrected_model(
    tmp_path,
):
    """A Lightning-style loop without Lightning: batch sizes change, validation runs under
    inference_mode and eval() every few steps, the state is saved, reloaded into a fresh
    model and trained on. Every step matches the hand-corrected model trained alongside."""
    torch.manual_seed(0)
    model = Gate()
    ref = corrected(model)
    fixed = fxgrad.fix(model)
    opt = torch.optim.SGD(fixed.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    val_x = torch.randn(5, 6, generator=gen)

    def train(fixed, opt, steps: int) -> None:
        for step in range(steps):
            n = (3, 4, 7)[step % 3]
            x, y = torch.randn(n, 6, generator=gen), torch.randn(n, 3, generator=gen)
            assert_close(_step(fixed, opt, x, y), _step(ref, ref_opt, x, y))
            assert_close(dict(fixed.named_parameters()), dict(ref.named_parameters()))
            if step % 4 == 3:
                got, want = _validate(fixed, val_x), _validate(ref, val_x)
                assert got.is_inference() and fixed.training
                assert_close(got, want)

    train(fixed, opt, 20)
    assert any(r.applied for r in fixed.reports if "grad disabled" not in r.variant)
    torch.save({"model": fixed.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    assert list(fixed.state_dict()) == list(ref.state_dict())

    state = torch.load(tmp_path / "ckpt.pt")
    fresh = Gate()
    fresh.load_state_dict(state["model"])
    fixed = fxgrad.fix(fresh)
    opt = torch.optim.SGD(fixed.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(state["opt"])
    assert_close(dict(fixed.named_parameters()), dict(ref.named_parameters()))
    train(fixed, opt, 5)


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))


def test_generate_through_the_fixed_forward_gives_the_same_tokens():
    model = _tiny_gpt2()
    fixed = fxgrad.fix(model)
    want = model.generate(_ids(), max_new_tokens=5, do_sample=False, use_cache=False)
    got = fixed.generate(_ids(), max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(got, want)
    variants = len(fixed.reports)
    assert torch.equal(
        fixed.generate(_ids(), max_new_tokens=5, do_sample=False, use_cache=False), want
    )
    assert len(fixed.reports) == variants  # a longer prompt each step decides nothing new
    assert fixed.report.frontend == "fx"


def test_generate_with_the_kv_cache_through_the_fixed_forward():
    model = _tiny_gpt2()
    fixed = fxgrad.fix(model)
    want = model.generate(_ids(), max_new_tokens=5, do_sample=False, use_cache=True)
    got = fixed.generate(_ids(), max_new_tokens=5, do_sample=False, use_cache=True)
    assert torch.equal(got, want)
    variants = len(fixed.reports)
    fixed.generate(_ids(), max_new_tokens=5, do_sample=False, use_cache=True)
    assert len(fixed.reports) == variants  # no new variant per step (the cache is no key)
