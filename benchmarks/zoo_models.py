"""The models zoo.py runs: torchvision, timm and transformers, each with its example call.

Every model is built with random weights from its library's own constructor, offline:
nothing is downloaded. Each `Spec` says how to build the model and how to call it (the
positional and keyword arguments people pass), and which vendor fx tracer, if any, the
library ships.

- torchvision: every classification, video, optical-flow and segmentation model.
- timm: the smallest variant (fewest parameters) of every model module under `timm.models`
  (`timm.list_modules()`), plus timm's `test_*` models and a few common variants. Wide
  models with a depth/width knob (beit, deepseek_vit, gemma4_vit, naflexvit, qwen3_vit,
  samvit) are built at depth 2, width 64; inputs are 2x3x64x64 where the model accepts
  them, otherwise the smallest size it does (`TIMM_MODELS` says which). `smallest_timm_models()`
  recomputes the choice for another timm release.
- transformers: 48 architectures (encoders, decoders, encoder-decoders, vision, audio,
  vision-text) from tiny configs (hidden size 32, 2 layers, 2 heads, vocabulary 128),
  called with keyword arguments (`input_ids`, `attention_mask` with padding in the second
  sample, `labels`, `decoder_input_ids`, `pixel_values`, `input_features`, `input_values`),
  with the model's default `use_cache`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

LIBRARIES = ("torchvision", "timm", "transformers")


@dataclass
class Spec:
    """One model to run: how to build it, how to call it, and its vendor's fx tracer."""

    name: str
    family: str
    build: Callable[..., nn.Module]
    shape: tuple[int, ...]
    n_inputs: int = 1  # optical flow takes two images
    library: str = "torchvision"
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    # (args, kwargs) of the example call; None: `n_inputs` random tensors of `shape`
    make_call: Callable[[], tuple[tuple, dict[str, Any]]] | None = None
    describe: str = ""  # the call, for the table ("" : the shape)
    vendor: str = ""  # "torchvision" or "timm": whose feature-extraction fx tracer applies

    def inputs(self) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(1)
        return tuple(torch.randn(self.shape, generator=gen) for _ in range(self.n_inputs))

    def call(self) -> tuple[tuple, dict[str, Any]]:
        """Fresh example arguments (the same values on every call)."""
        if self.make_call is not None:
            return self.make_call()
        return self.inputs(), {}

    def model(self) -> nn.Module:
        return self.build(**self.build_kwargs)

    def resize(self, size: int) -> None:
        """Use size x size images (models with a fixed input size are rebuilt for it)."""
        if self.make_call is not None:
            return
        self.shape = (*self.shape[:-2], size, size)
        if "img_size" in self.build_kwargs:
            self.build_kwargs["img_size"] = size

    def with_kwargs(self, **extra: Any) -> None:
        """Pass these keyword arguments too, on every call."""
        base = self.make_call or (lambda: (self.inputs(), {}))

        def call() -> tuple[tuple, dict[str, Any]]:
            args, kwargs = base()
            return args, {**kwargs, **extra}

        self.make_call = call
        shown = " ".join(f"{k}={v!r}" for k, v in extra.items())
        self.describe = f"{self.input_text} {shown}"

    @property
    def input_text(self) -> str:
        return self.describe or "x".join(map(str, self.shape))


def vendor_tracer(vendor: str) -> fx.Tracer | None:
    """The fx tracer a library's own feature extraction uses, or None.

    torchvision: `torchvision.models.feature_extraction`'s NodePathTracer with its default
    leaf modules (torchvision.ops) and autowrapped modules (math, torchvision.ops). timm:
    the same tracer with timm's registered leaf modules and autowrapped functions
    (`timm.layers.get_notrace_modules()` / `get_notrace_functions()`), as
    `timm.models.create_feature_extractor` builds it. transformers 5 ships no fx tracer.
    """
    if vendor not in ("torchvision", "timm"):
        return None
    from torchvision.models.feature_extraction import NodePathTracer, _set_default_tracer_kwargs

    kwargs = None
    if vendor == "timm":
        from timm.layers import get_notrace_functions, get_notrace_modules

        kwargs = {
            "leaf_modules": list(get_notrace_modules()),
            "autowrap_functions": list(get_notrace_functions()),
        }
    return NodePathTracer(**_set_default_tracer_kwargs(kwargs))


# ---------------------------------------------------------------------------------------
# torchvision

TORCHVISION_FAMILIES = ("classification", "video", "optical_flow", "segmentation")

_VIT_PATCH = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}
_TV_SHAPES: dict[str, tuple[int, ...]] = {
    "inception_v3": (2, 3, 299, 299),  # train mode: its aux head needs the full size
    "maxvit_t": (2, 3, 224, 224),
    "s3d": (1, 3, 16, 224, 224),
    "mvit_v1_b": (1, 3, 16, 224, 224),
    "mvit_v2_s": (1, 3, 16, 224, 224),
}
_TV_DEFAULT_SHAPE = {
    "classification": (2, 3, 64, 64),
    "video": (2, 3, 8, 32, 32),
    "optical_flow": (1, 3, 128, 128),
    "segmentation": (2, 3, 64, 64),
}


def torchvision_specs(families: tuple[str, ...] = TORCHVISION_FAMILIES) -> list[Spec]:
    """Every model of the requested torchvision families, with its build and input shape."""
    import torchvision
    from torchvision import models as M

    out: list[Spec] = []
    modules = {
        "classification": M,
        "video": M.video,
        "optical_flow": M.optical_flow,
        "segmentation": M.segmentation,
    }
    for family in families:
        if family not in modules:
            continue
        for name in M.list_models(module=modules[family]):
            kwargs: dict[str, Any] = {"weights": None}
            shape = _TV_SHAPES.get(name, _TV_DEFAULT_SHAPE[family])
            if family == "segmentation":
                kwargs["weights_backbone"] = None
            if name in _VIT_PATCH:
                kwargs["image_size"] = 4 * _VIT_PATCH[name]
                shape = (2, 3, kwargs["image_size"], kwargs["image_size"])
            if name in ("inception_v3", "googlenet"):
                kwargs["init_weights"] = True  # silences the default-init warning
            n_inputs = 2 if family == "optical_flow" else 1

            def build(name: str = name, kwargs: dict = kwargs) -> nn.Module:
                return torchvision.models.get_model(name, **kwargs)

            out.append(Spec(name, family, build, shape, n_inputs, vendor="torchvision"))
    return out


# ---------------------------------------------------------------------------------------
# timm

# (timm module, model, image size, build kwargs besides num_classes=10), parameters at that
# size. One row per module: its variant with the fewest parameters (timm 1.0.31); then the
# test_* models and common variants.
TIMM_MODELS: tuple[tuple[str, str, int, dict[str, Any]], ...] = (
    ("beit", "beit_base_patch16_224", 64, {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64}),  # 0.2M
    ("byoanet", "halonet_h1", 256, {}),  # 7.6M; halo attention needs 256
    ("byobnet", "test_byobnet", 64, {}),  # 0.2M
    ("cait", "cait_xxs24_224", 64, {"img_size": 64}),  # 11.7M
    ("coat", "coat_tiny", 64, {"img_size": 64}),  # 5.3M
    ("convit", "convit_tiny", 64, {"img_size": 64}),  # 5.5M
    ("convmixer", "convmixer_768_32", 64, {}),  # 20.3M
    ("convnext", "test_convnext", 64, {}),  # 0.2M
    ("cpubone", "cpubone_nano", 64, {}),  # 4.9M
    ("crossvit", "crossvit_tiny_240", 64, {}),  # 6.7M
    ("csatv2", "csatv2", 64, {}),  # 10.7M
    ("cspnet", "cs3darknet_focus_s", 64, {}),  # 2.8M
    ("cspnext", "cspnext_tiny", 64, {}),  # 2.4M
    ("davit", "davit_tiny", 64, {}),  # 27.6M
    ("deepseek_vit", "deepseek_vit_412m", 112, {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 112}),  # 0.1M
    ("deit", "deit_tiny_patch16_224", 64, {"img_size": 64}),  # 5.5M
    ("densenet", "densenet121", 64, {}),  # 7.0M
    ("dla", "dla46x_c", 64, {}),  # 0.8M
    ("dpn", "dpn48b", 64, {}),  # 8.3M
    ("edgenext", "edgenext_xx_small", 64, {}),  # 1.2M
    ("efficientformer", "efficientformer_l1", 224, {"img_size": 224}),  # 11.4M
    ("efficientformer_v2", "efficientformerv2_s0", 64, {"img_size": 64}),  # 3.2M
    ("efficientnet", "test_efficientnet", 64, {}),  # 0.1M
    ("efficientvim", "efficientvim_m1", 64, {}),  # 5.7M
    ("efficientvit_mit", "efficientvit_b0", 64, {}),  # 2.1M
    ("efficientvit_msra", "efficientvit_m0", 64, {"img_size": 64}),  # 2.2M
    ("eva", "vit_tiny_patch16_dinov3_qkvb", 64, {"img_size": 64}),  # 5.5M
    ("fasternet", "fasternet_t0", 64, {}),  # 2.6M
    ("fastvit", "fastvit_t8", 64, {}),  # 3.3M
    ("focalnet", "focalnet_tiny_srf", 64, {}),  # 27.7M
    ("gcvit", "gcvit_xxtiny", 64, {"img_size": 64}),  # 11.4M
    ("gemma4_vit", "gemma4_vit_167m", 64, {"depth": 2, "embed_dim": 64, "num_heads": 2, "head_dim": 32, "intermediate_size": 128, "img_size": 64}),  # 1.4M
    ("ghostnet", "ghostnet_050", 64, {}),  # 1.3M
    ("hardcorenas", "hardcorenas_b", 64, {}),  # 3.9M
    ("hgnet", "hgnetv2_b0", 64, {}),  # 4.0M
    ("hiera", "hiera_tiny_224", 64, {"img_size": 64}),  # 26.9M
    ("hieradet_sam2", "sam2_hiera_tiny", 64, {}),  # 26.9M
    ("hrnet", "hrnet_w18_small", 64, {}),  # 11.2M
    ("iformer", "iformer_t", 64, {}),  # 2.6M
    ("inception_next", "inception_next_atto", 64, {}),  # 3.2M
    ("inception_resnet_v2", "inception_resnet_v2", 96, {}),  # 54.3M
    ("inception_v3", "inception_v3", 96, {}),  # 21.8M
    ("inception_v4", "inception_v4", 96, {}),  # 41.2M
    ("lcnetv2", "lcnetv2_small", 64, {}),  # 2.9M
    ("levit", "levit_128s", 64, {"img_size": 64}),  # 7.0M
    ("lowformer", "lowformer_b0", 64, {}),  # 12.5M
    ("mambaout", "test_mambaout", 64, {}),  # 0.2M
    ("maxxvit", "test_coatnet", 64, {"img_size": 64}),  # 0.4M
    ("metaformer", "poolformerv2_s12", 64, {}),  # 11.4M
    ("mlp_mixer", "gmlp_ti16_224", 64, {"img_size": 64}),  # 4.6M
    ("mobilenetv3", "mobilenetv3_small_050", 64, {}),  # 0.6M
    ("mobilenetv5", "mobilenetv5_base", 64, {}),  # 80.6M
    ("mobilevit", "mobilevit_xxs", 64, {}),  # 1.0M
    ("mvitv2", "mvitv2_tiny", 64, {"img_size": 64}),  # 23.4M
    ("naflexvit", "naflexvit_base_patch16_parfac_gap", 64, {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64}),  # 0.2M
    ("nasnet", "nasnetalarge", 64, {}),  # 84.8M
    ("nest", "nest_tiny", 64, {"img_size": 64}),  # 16.2M
    ("nextvit", "nextvit_small", 64, {}),  # 30.7M
    ("nfnet", "test_nfnet", 64, {}),  # 0.2M
    ("pit", "pit_ti_224", 64, {"img_size": 64}),  # 4.5M
    ("pnasnet", "pnasnet5large", 64, {}),  # 81.8M
    ("pvt_v2", "pvt_v2_b0", 64, {}),  # 3.4M
    ("qwen3_vit", "qwen3_vit_88m", 64, {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64}),  # 0.3M
    ("rdnet", "rdnet_tiny", 64, {}),  # 22.8M
    ("regnet", "regnetx_002", 64, {}),  # 2.3M
    ("repghost", "repghostnet_050", 64, {}),  # 1.0M
    ("repvit", "repvit_m1", 64, {}),  # 4.7M
    ("res2net", "res2next50", 64, {}),  # 22.6M
    ("resnest", "resnest14d", 64, {}),  # 8.6M
    ("resnet", "test_resnet", 64, {}),  # 0.4M
    ("resnetv2", "resnetv2_18", 64, {}),  # 11.2M
    ("rexnet", "rexnet_100", 64, {}),  # 3.5M
    ("selecsls", "selecsls42", 64, {}),  # 29.1M
    ("senet", "legacy_seresnet18", 64, {}),  # 11.3M
    ("sequencer", "sequencer2d_s", 64, {"img_size": 64}),  # 27.3M
    ("shvit", "shvit_s1", 64, {}),  # 6.0M
    ("sknet", "skresnet18", 64, {}),  # 11.5M
    ("starnet", "starnet_s050", 64, {}),  # 0.4M
    ("swiftformer", "swiftformer_xs", 64, {"img_size": 64}),  # 3.0M
    ("swin_transformer", "swin_tiny_patch4_window7_224", 64, {"img_size": 64}),  # 27.5M
    ("swin_transformer_v2", "swinv2_tiny_window8_256", 64, {"img_size": 64}),  # 27.6M
    ("swin_transformer_v2_cr", "swinv2_cr_tiny_224", 64, {"img_size": 64}),  # 27.6M
    ("tiny_vit", "tiny_vit_5m_224", 64, {}),  # 5.1M
    ("tnt", "tnt_s_legacy_patch16_224", 64, {"img_size": 64}),  # 23.3M
    ("tresnet", "tresnet_m", 64, {}),  # 29.4M
    ("twins", "twins_svt_small", 64, {"img_size": 64}),  # 23.6M
    ("vgg", "vgg11", 64, {"mlp_ratio": 0.125}),  # 24.2M (a 512-wide pre-logits MLP)
    ("visformer", "visformer_tiny", 64, {"img_size": 64}),  # 9.8M
    ("vision_transformer", "test_vit", 64, {"img_size": 64}),  # 0.3M
    ("vision_transformer_hybrid", "vit_tiny_r_s16_p8_224", 64, {"img_size": 64}),  # 6.1M
    ("vision_transformer_relpos", "test_vit_relpos", 64, {"img_size": 64}),  # 0.8M
    ("vision_transformer_sam", "samvit_base_patch16_224", 64, {"depth": 2, "embed_dim": 64, "num_heads": 2, "global_attn_indexes": (1,), "img_size": 64}),  # 0.2M
    ("vitamin", "vitamin_small_224", 64, {"img_size": 64}),  # 21.8M
    ("volo", "volo_d1_224", 64, {"img_size": 64}),  # 25.8M
    ("vovnet", "ese_vovnet19b_slim_dw", 64, {}),  # 1.4M
    ("xception", "legacy_xception", 64, {}),  # 20.8M
    ("xception_aligned", "xception41p", 64, {}),  # 24.9M
    ("xcit", "xcit_nano_12_p8_224", 64, {"img_size": 64}),  # 2.9M
    # timm's own test models and common variants
    ("maxxvit", "test_maxvit", 64, {"img_size": 64}),  # 1.0M
    ("vision_transformer", "test_vit2", 64, {"img_size": 64}),  # 0.4M
    ("vision_transformer", "test_vit3", 64, {"img_size": 64}),  # 0.8M
    ("vision_transformer", "test_vit4", 64, {"img_size": 64}),  # 0.9M
    ("convnext", "test_convnext2", 64, {}),  # 0.4M
    ("convnext", "test_convnext3", 64, {}),  # 0.3M
    ("efficientnet", "test_efficientnet_evos", 64, {}),  # 0.1M
    ("efficientnet", "test_efficientnet_gn", 64, {}),  # 0.1M
    ("efficientnet", "test_efficientnet_ln", 64, {}),  # 0.1M
    ("resnet", "resnet18", 64, {}),  # 11.2M
    ("vision_transformer", "vit_tiny_patch16_224", 64, {"img_size": 64}),  # 5.5M
    ("convnext", "convnext_atto", 64, {}),  # 3.4M
    ("efficientnet", "efficientnet_b0", 64, {}),  # 4.0M
    ("mobilenetv3", "mobilenetv3_large_100", 64, {}),  # 4.2M
    ("maxxvit", "maxvit_nano_rw_256", 64, {"img_size": 64}),  # 14.9M
    ("regnet", "regnety_002", 64, {}),  # 2.8M
    ("swin_transformer_v2_cr", "swinv2_cr_tiny_ns_224", 64, {"img_size": 64}),  # 27.6M
)  # fmt: skip

TIMM_QUICK = (
    "test_resnet",
    "test_efficientnet",
    "test_convnext",
    "test_vit",
    "test_byobnet",
    "test_nfnet",
    "test_coatnet",
    "mobilenetv3_small_050",
    "levit_128s",
    "efficientvit_m0",
)


def _build_timm(name: str, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def timm_specs() -> list[Spec]:
    """Every model of TIMM_MODELS; a timm module the table lacks is named on stderr."""
    import timm

    known = {module for module, *_ in TIMM_MODELS}
    missing = [m for m in timm.list_modules() if m not in known]
    if missing:
        print(
            f"zoo: timm modules not in TIMM_MODELS (see smallest_timm_models()): "
            f"{', '.join(missing)}",
            file=sys.stderr,
        )
    out = []
    for module, name, size, kwargs in TIMM_MODELS:
        spec = Spec(
            name,
            module,
            _build_timm,
            (2, 3, size, size),
            library="timm",
            build_kwargs={"name": name, **kwargs},
            vendor="timm",
        )
        out.append(spec)
    return out


def smallest_timm_models() -> dict[str, tuple[str, int]]:
    """For each timm model module: its registered model with the fewest parameters.

    Builds every model on the meta device (minutes); how TIMM_MODELS was chosen.
    """
    import timm

    best: dict[str, tuple[str, int]] = {}
    for module in timm.list_modules():
        for name in timm.list_models(module=module):
            try:
                with warnings.catch_warnings(), torch.device("meta"):
                    warnings.simplefilter("ignore")
                    model = timm.create_model(name, pretrained=False)
            except Exception:
                continue
            n = sum(p.numel() for p in model.parameters())
            if module not in best or n < best[module][1]:
                best[module] = (name, n)
    return best


# ---------------------------------------------------------------------------------------
# transformers

BATCH, SEQ, VOCAB = 2, 16, 128

# Tiny sizes, in each config's own names where it has no alias for them.
_TEXT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": 64,
}
_DECODER = {
    **_TEXT,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
_SEQ2SEQ = {
    "vocab_size": VOCAB,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
}
_VISION = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "num_labels": 3,
}
_AUDIO = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (16, 16),
    "conv_kernel": (10, 3),
    "conv_stride": (5, 2),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "vocab_size": 32,
    "num_labels": 3,
    "mask_time_prob": 0.0,
}

# (name, family, model class, config model_type, config kwargs, call kind)
TRANSFORMERS_MODELS: tuple[tuple[str, str, str, str, dict[str, Any], str], ...] = (
    # encoders
    ("bert", "encoder", "BertForMaskedLM", "bert", _TEXT, "mlm"),
    ("roberta", "encoder", "RobertaForSequenceClassification", "roberta", {**_TEXT, "pad_token_id": 1}, "cls"),
    ("distilbert", "encoder", "DistilBertForSequenceClassification", "distilbert", {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "vocab_size": VOCAB, "max_position_embeddings": 64}, "cls"),
    ("albert", "encoder", "AlbertForMaskedLM", "albert", {**_TEXT, "embedding_size": 16}, "mlm"),
    ("electra", "encoder", "ElectraForPreTraining", "electra", {**_TEXT, "embedding_size": 16}, "rtd"),
    ("deberta-v2", "encoder", "DebertaV2ForSequenceClassification", "deberta-v2", {**_TEXT, "relative_attention": True, "position_buckets": 8, "pos_att_type": ["p2c", "c2p"]}, "cls"),
    ("deberta", "encoder", "DebertaForMaskedLM", "deberta", {**_TEXT, "relative_attention": True, "pos_att_type": ["p2c", "c2p"]}, "mlm"),
    ("mpnet", "encoder", "MPNetForMaskedLM", "mpnet", _TEXT, "mlm"),
    ("xlm-roberta", "encoder", "XLMRobertaForTokenClassification", "xlm-roberta", {**_TEXT, "pad_token_id": 1}, "tok"),
    ("modernbert", "encoder", "ModernBertForMaskedLM", "modernbert", {**_TEXT, "global_attn_every_n_layers": 2, "local_attention": 8, "pad_token_id": 0}, "mlm"),
    # decoders
    ("gpt2", "decoder", "GPT2LMHeadModel", "gpt2", {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 64, "vocab_size": VOCAB, "n_positions": 64, "bos_token_id": 1, "eos_token_id": 2}, "clm"),
    ("gpt_neox", "decoder", "GPTNeoXForCausalLM", "gpt_neox", _DECODER, "clm"),
    ("opt", "decoder", "OPTForCausalLM", "opt", {**_TEXT, "ffn_dim": 64, "word_embed_proj_dim": 32, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}, "clm"),
    ("llama", "decoder", "LlamaForCausalLM", "llama", _DECODER, "clm"),
    ("mistral", "decoder", "MistralForCausalLM", "mistral", {**_DECODER, "sliding_window": 8}, "clm"),
    ("qwen2", "decoder", "Qwen2ForCausalLM", "qwen2", _DECODER, "clm"),
    ("qwen3", "decoder", "Qwen3ForCausalLM", "qwen3", {**_DECODER, "head_dim": 16}, "clm"),
    ("phi", "decoder", "PhiForCausalLM", "phi", _DECODER, "clm"),
    ("gemma", "decoder", "GemmaForCausalLM", "gemma", {**_DECODER, "head_dim": 16}, "clm"),
    ("gemma2", "decoder", "Gemma2ForCausalLM", "gemma2", {**_DECODER, "head_dim": 16, "sliding_window": 8}, "clm"),
    ("gemma3_text", "decoder", "Gemma3ForCausalLM", "gemma3_text", {**_DECODER, "head_dim": 16, "sliding_window": 8}, "clm"),
    ("phi3", "decoder", "Phi3ForCausalLM", "phi3", _DECODER, "clm"),
    ("falcon", "decoder", "FalconForCausalLM", "falcon", {**_DECODER, "new_decoder_architecture": True, "num_kv_heads": 1}, "clm"),
    ("gptj", "decoder", "GPTJForCausalLM", "gptj", {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 64, "rotary_dim": 8, "vocab_size": VOCAB, "n_positions": 64, "bos_token_id": 1, "eos_token_id": 2}, "clm"),
    ("bloom", "decoder", "BloomForCausalLM", "bloom", {"hidden_size": 32, "n_layer": 2, "n_head": 2, "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, "clm"),
    ("gpt_neo", "decoder", "GPTNeoForCausalLM", "gpt_neo", {"hidden_size": 32, "num_layers": 2, "attention_types": [[["global", "local"], 1]], "num_heads": 2, "intermediate_size": 64, "vocab_size": VOCAB, "max_position_embeddings": 64, "window_size": 8, "bos_token_id": 1, "eos_token_id": 2}, "clm"),
    ("codegen", "decoder", "CodeGenForCausalLM", "codegen", {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 64, "rotary_dim": 8, "vocab_size": VOCAB, "n_positions": 64, "n_ctx": 64, "bos_token_id": 1, "eos_token_id": 2}, "clm"),
    ("starcoder2", "decoder", "Starcoder2ForCausalLM", "starcoder2", {**_DECODER, "sliding_window": 8}, "clm"),
    ("olmo", "decoder", "OlmoForCausalLM", "olmo", _DECODER, "clm"),
    ("granite", "decoder", "GraniteForCausalLM", "granite", _DECODER, "clm"),
    ("mixtral", "decoder", "MixtralForCausalLM", "mixtral", {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2}, "clm"),
    ("qwen3_moe", "decoder", "Qwen3MoeForCausalLM", "qwen3_moe", {**_DECODER, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1}, "clm"),
    # encoder-decoders
    ("t5", "encoder-decoder", "T5ForConditionalGeneration", "t5", {"vocab_size": VOCAB, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "relative_attention_num_buckets": 8, "pad_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 0}, "s2s_labels"),
    ("bart", "encoder-decoder", "BartForConditionalGeneration", "bart", _SEQ2SEQ, "s2s"),
    ("mbart", "encoder-decoder", "MBartForConditionalGeneration", "mbart", _SEQ2SEQ, "s2s_labels"),
    ("marian", "encoder-decoder", "MarianMTModel", "marian", {**_SEQ2SEQ, "decoder_vocab_size": VOCAB}, "s2s_labels"),
    ("pegasus", "encoder-decoder", "PegasusForConditionalGeneration", "pegasus", _SEQ2SEQ, "s2s"),
    ("whisper", "encoder-decoder", "WhisperForConditionalGeneration", "whisper", {**_SEQ2SEQ, "num_mel_bins": 16, "max_source_positions": 16, "max_target_positions": 32, "decoder_start_token_id": 1}, "speech2text"),
    # vision
    ("vit", "vision", "ViTForImageClassification", "vit", _VISION, "image"),
    ("deit", "vision", "DeiTForImageClassification", "deit", _VISION, "image"),
    ("dinov2", "vision", "Dinov2Model", "dinov2", {**_VISION, "image_size": 32}, "image_nolabel"),
    ("convnext", "vision", "ConvNextForImageClassification", "convnext", {"num_channels": 3, "hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2, "num_labels": 3}, "image"),
    ("swin", "vision", "SwinForImageClassification", "swin", {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "num_labels": 3}, "image"),
    ("resnet", "vision", "ResNetForImageClassification", "resnet", {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "num_labels": 3}, "image"),
    ("segformer", "vision", "SegformerForSemanticSegmentation", "segformer", {"num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1], "hidden_sizes": [8, 16], "num_attention_heads": [1, 2], "decoder_hidden_size": 16, "num_labels": 3}, "segment"),
    # audio
    ("wav2vec2", "audio", "Wav2Vec2ForCTC", "wav2vec2", _AUDIO, "ctc"),
    ("hubert", "audio", "HubertForSequenceClassification", "hubert", _AUDIO, "audio_cls"),
    # vision-text
    ("clip", "vision-text", "CLIPModel", "clip", {"text_config": {**_TEXT, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, "vision_config": {**_VISION, "num_labels": 2}, "projection_dim": 16}, "clip"),
)  # fmt: skip

TRANSFORMERS_QUICK = (
    "bert",
    "distilbert",
    "deberta-v2",
    "gpt2",
    "llama",
    "qwen3",
    "t5",
    "whisper",
    "vit",
    "wav2vec2",
)


def _build_transformers(cls_name: str, model_type: str, config: dict[str, Any]) -> nn.Module:
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = transformers.AutoConfig.for_model(model_type, **config)
        return getattr(transformers, cls_name)._from_config(cfg)


def _tokens(gen: torch.Generator, length: int = SEQ) -> torch.Tensor:
    return torch.randint(3, VOCAB, (BATCH, length), generator=gen)


def _padding_mask() -> torch.Tensor:
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, -4:] = 0  # the second sequence is padded
    return mask


def _call(kind: str) -> tuple[tuple, dict[str, Any]]:
    """The keyword arguments a user passes for each kind of model (same values every time)."""
    gen = torch.Generator().manual_seed(1)
    ids, mask = _tokens(gen), _padding_mask()
    if kind == "clm":
        labels = ids.masked_fill(mask == 0, -100)
        return (), {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if kind == "mlm":
        labels = torch.full_like(ids, -100)
        labels[:, 2:6] = ids[:, 2:6]
        return (), {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if kind == "cls":
        return (), {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])}
    if kind == "tok":
        labels = torch.randint(0, 2, (BATCH, SEQ), generator=gen)
        return (), {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if kind == "rtd":
        labels = torch.randint(0, 2, (BATCH, SEQ), generator=gen)
        return (), {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if kind == "s2s":
        labels = _tokens(gen, 8)
        dec = torch.cat([torch.full((BATCH, 1), 2), labels[:, :-1]], dim=1)
        return (), {
            "input_ids": ids,
            "attention_mask": mask,
            "decoder_input_ids": dec,
            "labels": labels,
        }
    if kind == "s2s_labels":
        return (), {"input_ids": ids, "attention_mask": mask, "labels": _tokens(gen, 8)}
    if kind == "speech2text":
        feats = torch.randn(BATCH, 16, 32, generator=gen)  # mel bins x 2 * max_source_positions
        labels = _tokens(gen, 8)
        dec = torch.cat([torch.full((BATCH, 1), 1), labels[:, :-1]], dim=1)
        return (), {"input_features": feats, "decoder_input_ids": dec, "labels": labels}
    if kind in ("image", "image_nolabel", "segment"):
        pixels = torch.randn(BATCH, 3, 32, 32, generator=gen)
        if kind == "image_nolabel":
            return (), {"pixel_values": pixels}
        if kind == "segment":
            return (), {
                "pixel_values": pixels,
                "labels": torch.randint(0, 3, (BATCH, 32, 32), generator=gen),
            }
        return (), {"pixel_values": pixels, "labels": torch.tensor([0, 2])}
    if kind == "ctc":
        audio = torch.randn(BATCH, 800, generator=gen)
        labels = torch.randint(1, 32, (BATCH, 6), generator=gen)
        return (), {"input_values": audio, "labels": labels}
    if kind == "audio_cls":
        audio = torch.randn(BATCH, 800, generator=gen)
        return (), {"input_values": audio, "labels": torch.tensor([0, 2])}
    if kind == "clip":
        pixels = torch.randn(BATCH, 3, 32, 32, generator=gen)
        return (), {
            "input_ids": ids,
            "attention_mask": mask,
            "pixel_values": pixels,
            "return_loss": True,
        }
    raise ValueError(kind)


def _describe(kind: str) -> str:
    args, kwargs = _call(kind)
    parts = []
    for k, v in kwargs.items():
        shown = "x".join(map(str, v.shape)) if isinstance(v, torch.Tensor) else repr(v)
        parts.append(f"{k}={shown}")
    return " ".join(parts)


def transformers_specs() -> list[Spec]:
    out = []
    for name, family, cls_name, model_type, config, kind in TRANSFORMERS_MODELS:
        out.append(
            Spec(
                name,
                family,
                _build_transformers,
                (BATCH, SEQ),
                library="transformers",
                build_kwargs={"cls_name": cls_name, "model_type": model_type, "config": config},
                make_call=lambda kind=kind: _call(kind),
                describe=_describe(kind),
            )
        )
    return out


QUICK = {
    "torchvision": (
        "resnet18",
        "mobilenet_v3_small",
        "squeezenet1_0",
        "shufflenet_v2_x0_5",
        "regnet_x_400mf",
        "efficientnet_b0",
        "googlenet",
        "vit_b_32",
        "swin_t",
        "r3d_18",
        "swin3d_t",
        "raft_small",
        "lraspp_mobilenet_v3_large",
    ),
    "timm": TIMM_QUICK,
    "transformers": TRANSFORMERS_QUICK,
}


def specs(library: str, families: tuple[str, ...] | None = None) -> list[Spec]:
    """Every model of one library (torchvision: of `families`, default all four)."""
    if library == "torchvision":
        return torchvision_specs(families or TORCHVISION_FAMILIES)
    if library == "timm":
        return timm_specs()
    if library == "transformers":
        return transformers_specs()
    raise ValueError(f"unknown library {library!r}: one of {', '.join(LIBRARIES)}")
