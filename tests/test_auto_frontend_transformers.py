"""frontend="auto" on transformers models whose forward fxgrad's tracer cannot take whole.

Tiny random configs, built offline: a state-space model whose eval mode (a cache fx cannot
trace, then a vmap Dynamo captures inline) goes to Dynamo on a later call, and a detection
model whose `torch_compilable_check` on a traced condition fails only while tracing.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.utils._pytree as pytree

import fxgrad

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _build(cls_name, model_type, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = transformers.AutoConfig.for_model(model_type, **config)
        torch.manual_seed(0)
        return getattr(transformers, cls_name)._from_config(cfg)


def _tensors(out):
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _same_as_eager(model, fixed, inputs, modes=("train", "eval")):
    for mode in modes:
        getattr(model, mode)()
        for batch in (2, 3):
            kwargs = inputs(batch)
            torch.manual_seed(1)
            expected = _tensors(model(**kwargs))
            torch.manual_seed(1)
            actual = _tensors(fixed(**kwargs))
            assert len(actual) == len(expected)
            for a, e in zip(actual, expected):
                torch.testing.assert_close(a, e)


def _tokens(batch):
    gen = torch.Generator().manual_seed(batch)
    return {"input_ids": torch.randint(3, 64, (batch, 8), generator=gen)}


@pytest.mark.slow
def test_mamba_goes_to_dynamo_when_eval_mode_cannot_be_traced():
    config = dict(hidden_size=32, num_hidden_layers=2, vocab_size=64, state_size=4, expand=2)
    model = _build("MambaModel", "mamba", **config)
    fixed = fxgrad.fix(model)
    _same_as_eager(model, fixed, _tokens, modes=("train",))
    assert fixed.report.frontend == "fx"
    _same_as_eager(model, fixed, _tokens, modes=("eval", "train"))
    assert fixed.report.frontend == "dynamo"
    assert any("on a later call, in eval mode" in n for n in fixed.report.notes)


@pytest.mark.slow
def test_deformable_detr_check_on_a_traced_condition_goes_to_dynamo():
    backbone = dict(
        model_type="resnet",
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 16],
        depths=[1, 1, 1, 1],
        out_features=["stage2", "stage3", "stage4"],
    )
    model = _build(
        "DeformableDetrModel",
        "deformable_detr",
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=6,
        use_timm_backbone=False,
        backbone_config=backbone,
        use_pretrained_backbone=False,
        encoder_n_points=2,
        decoder_n_points=2,
        num_feature_levels=3,
    )

    def pixels(batch):
        gen = torch.Generator().manual_seed(batch)
        return {"pixel_values": torch.randn(batch, 3, 64, 64, generator=gen)}

    fixed = fxgrad.fix(model)
    _same_as_eager(model, fixed, pixels, modes=("eval",))  # train mode too doubles its time
    report = fixed.report
    assert report.frontend == "dynamo"
    assert not any("The model raises" in n for n in report.notes)
