"""Capture cost on timm models: fxgrad against plain torch.fx and timm's own fx tracer.

    python benchmarks/capture_timm.py [--repeats 5] [--markdown] [--quick]

For each model, in one process and interleaved round by round (training mode, 1x3x224x224,
random-init weights), times:
- `torch.fx.symbolic_trace(model)`, the baseline (ratio 1.00),
- timm's fx tracer (`timm.models._features_fx`'s leaf modules and functions), the vendor's
  own route to a graph,
- fxgrad's static capture (`fxgrad.check(model)` without inputs decides this way: capture and
  the static passes, nothing runs),
- `fxgrad.fix(model, inputs)` (capture, the capture check, the passes' observed run,
  verification; FXG201 with an empty decision cache),
- the first call of `fxgrad.fix(model)` (the same decisions, made lazily, plus the call),
- three forward+backward runs of the model: the goal is fix(inputs) within plain trace plus
  three of them.

Reported figures are medians of the repeats.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from tabulate import tabulate
from torch import fx, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fxgrad  # noqa: E402
from fxgrad.api import fix_static  # noqa: E402

MODELS = (
    "resnet18",
    "convnext_atto",
    "vit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "efficientnet_b0",
    "regnetx_002",
    "cait_xxs24_224",
    "hrnet_w18_small",
)
QUICK = ("resnet18", "convnext_atto", "vit_tiny_patch16_224")


def _timm_trace(model: nn.Module) -> fx.GraphModule:
    from zoo_models import vendor_tracer

    tracer = vendor_tracer("timm")
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _three_forward_backward(model: nn.Module, x: torch.Tensor) -> None:
    for _ in range(3):
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)


def _first_call(model: nn.Module, x: torch.Tensor) -> None:
    fxgrad.fix(model)(x)


def measure(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float | None]:
    variants: dict[str, Callable[[], object]] = {
        "symbolic_trace": lambda: fx.symbolic_trace(model),
        "timm fx": lambda: _timm_trace(model),
        "static capture": lambda: fix_static(model),
        "fix(inputs)": lambda: fxgrad.fix(model, (x,)),
        "first call": lambda: _first_call(model, x),
        "3x fwd+bwd": lambda: _three_forward_backward(model, x),
    }
    failed: set[str] = set()
    for name, fn in variants.items():  # warm up caches and lazy imports
        try:
            fn()
        except Exception:
            failed.add(name)
    times: dict[str, list[float]] = {k: [] for k in variants if k not in failed}
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        for name in times:
            gc.collect()
            start = time.perf_counter()
            result = variants[name]()
            times[name].append(time.perf_counter() - start)
            del result
    out: dict[str, float | None] = {k: None for k in variants}
    out.update({k: statistics.median(v) for k, v in times.items()})
    return out


def _ms(t: float | None, base: float | None = None) -> str:
    if t is None:
        return "fails"
    text = f"{t * 1e3:.0f}"
    return f"{text} ({t / base:.2f}x)" if base else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print GitHub tables")
    parser.add_argument("--quick", action="store_true", help="three models")
    args = parser.parse_args()
    import timm

    # FXG201 decides from an empty cache in every fix(), as on a first use.
    os.environ["FXGRAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="fxgrad-bench-")
    rows, static_ratios, budget = [], [], []
    for name in QUICK if args.quick else MODELS:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).train()
        x = torch.randn(1, 3, 224, 224)
        t = measure(model, x, args.repeats)
        base = t["symbolic_trace"]
        within = None
        if t["fix(inputs)"] is not None and base is not None and t["3x fwd+bwd"]:
            within = t["fix(inputs)"] / (base + t["3x fwd+bwd"])
            budget.append(within)
        if t["static capture"] is not None and base:
            static_ratios.append(t["static capture"] / base)
        rows.append(
            [
                name,
                _ms(base),
                _ms(t["timm fx"], base),
                _ms(t["static capture"], base),
                _ms(t["fix(inputs)"]),
                _ms(t["first call"]),
                _ms(t["3x fwd+bwd"]),
                f"{within:.2f}" if within is not None else "n/a",
            ]
        )
    headers = [
        "model",
        "symbolic_trace ms",
        "timm fx ms",
        "static capture ms",
        "fix(inputs) ms",
        "first call of fix(model) ms",
        "3x fwd+bwd ms",
        "fix(inputs) / (trace + 3 fwd+bwd)",
    ]
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, training mode, 1x3x224x224, "
        f"medians of {args.repeats}"
    )
    print()
    print(tabulate(rows, headers=headers, tablefmt="github" if args.markdown else "simple"))
    print()
    if static_ratios:
        print(
            f"Static capture vs symbolic_trace: median {statistics.median(static_ratios):.2f}x, "
            f"worst {max(static_ratios):.2f}x (goal: median <= 1.3x, worst <= 1.5x)."
        )
    if budget:
        print(
            f"fix(inputs) / (trace + 3 fwd+bwd): median {statistics.median(budget):.2f}, "
            f"worst {max(budget):.2f} (goal: <= 1)."
        )


if __name__ == "__main__":
    main()
