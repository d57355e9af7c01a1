"""Capture cost: fxgrad.fix() vs the tools a user would otherwise pick, side by side.

    python benchmarks/capture_vs_tools.py [--repeats 5] [--quick] [--models resnet50,mlp]
                                          [--markdown]

For each model, in one process and interleaved round by round, times:
- `torch.fx.symbolic_trace(model)` (the baseline, ratio 1.00),
- fxgrad's static decision without example inputs (`fix()` column: what `fxgrad.check(model)`
  and the CLI without `--input` run; a plain `fxgrad.fix(model)` decides on its first call)
  and `fxgrad.fix(model, inputs)` with them,
- `make_fx(torch.func.functionalize(model))(*inputs)` (proxy-tensor tracing to a
  functional ATen graph),
- `torch.export.export(model, inputs)`,
- the first call of `torch.compile(model, backend="aot_eager")` (`torch._dynamo.reset()`
  before each, so every call compiles afresh),
- three forward+backward runs of the model (fix(inputs) should cost at most tracing plus
  about this much).

Reported figures are medians of the repeats, as milliseconds and as ratios to
`symbolic_trace` measured in the same run; "fails" names the error a tool gives. Models:
torchvision's resnet50 (random weights, 2x3x64x64), six `nn.TransformerEncoderLayer`s in an
`nn.Sequential` (d_model 64, 2x16 tokens), the same layers as one `nn.TransformerEncoder`
(plain fx cannot trace it: it branches on `src.is_nested` and on sizes; fix() captures it
with example inputs, guarding those answers, and without them says it cannot), and
an MLP of 1,000 Linear+ReLU blocks (width 64, batch 8).
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from tabulate import tabulate
from torch import fx, nn

import fxgrad
from fxgrad.api import fix_static

TOOLS = (
    "symbolic_trace",
    "fix()",
    "fix(inputs)",
    "make_fx(functionalize)",
    "torch.export",
    "compile aot_eager",
    "3x fwd+bwd",
)


def models(names: list[str] | None = None) -> list[tuple[str, nn.Module, tuple]]:
    import torchvision

    torch.manual_seed(0)
    layers = [nn.TransformerEncoderLayer(64, 4, 128, batch_first=True) for _ in range(6)]
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(64, 4, 128, batch_first=True),
        num_layers=6,
        enable_nested_tensor=False,
    )
    builders: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
        "resnet50": lambda: (torchvision.models.resnet50(), (torch.randn(2, 3, 64, 64),)),
        "6x TransformerEncoderLayer": lambda: (nn.Sequential(*layers), (torch.randn(2, 16, 64),)),
        "TransformerEncoder(6)": lambda: (encoder, (torch.randn(2, 16, 64),)),
        "mlp": lambda: (
            nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.ReLU()) for _ in range(1000)]),
            (torch.randn(8, 64),),
        ),
    }
    chosen = names or list(builders)
    out = []
    for name in chosen:
        model, inputs = builders[name]()
        out.append((name if name != "mlp" else "MLP, 1000 blocks", model.train(), inputs))
    return out


def _make_fx(model: nn.Module, inputs: tuple) -> fx.GraphModule:
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(torch.func.functionalize(model))(*inputs)


def _compile_first_call(model: nn.Module, inputs: tuple) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    compiled(*inputs)
    torch._dynamo.reset()


def _three_forward_backward(model: nn.Module, inputs: tuple) -> None:
    for _ in range(3):
        model(*inputs).float().sum().backward()
    model.zero_grad(set_to_none=True)


def variants(model: nn.Module, inputs: tuple) -> dict[str, Callable[[], object]]:
    return {
        "symbolic_trace": lambda: fx.symbolic_trace(model),
        "fix()": lambda: fix_static(model),
        "fix(inputs)": lambda: fxgrad.fix(model, inputs),
        "make_fx(functionalize)": lambda: _make_fx(model, inputs),
        "torch.export": lambda: torch.export.export(model, inputs),
        "compile aot_eager": lambda: _compile_first_call(model, inputs),
        "3x fwd+bwd": lambda: _three_forward_backward(model, inputs),
    }


def measure(model: nn.Module, inputs: tuple, repeats: int) -> dict[str, float | str]:
    """Median seconds per tool, interleaved round by round; a failing tool gives its error."""
    fns = variants(model, inputs)
    failed: dict[str, str] = {}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if name in failed:
                continue
            gc.collect()  # no tool pays for collecting the garbage of the one before
            start = time.perf_counter()
            try:
                result = fn()
            except Exception as e:  # a tool that cannot capture this model
                failed[name] = f"fails ({type(e).__name__})"
                continue
            times[name].append(time.perf_counter() - start)
            del result
    return {k: failed.get(k) or statistics.median(v) for k, v in times.items()}


def _warm_up() -> None:
    """Run every tool once on a tiny model, so lazy imports and caches are not timed."""
    tiny = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    for fn in variants(tiny, (torch.randn(2, 4),)).values():
        fn()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument(
        "--models", help="comma-separated: resnet50, 6x TransformerEncoderLayer, ..., mlp"
    )
    parser.add_argument("--markdown", action="store_true", help="print GitHub tables")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    warnings.filterwarnings("ignore")
    _warm_up()
    ms_rows, ratio_rows, target_rows = [], [], []
    for name, model, inputs in models(args.models.split(",") if args.models else None):
        t = measure(model, inputs, repeats)
        print(f"{name} done", file=sys.stderr, flush=True)
        base = t["symbolic_trace"]
        ms_rows.append([name] + [v if isinstance(v, str) else f"{v * 1e3:.1f}" for v in t.values()])
        if isinstance(base, str):  # plain fx cannot trace it: no baseline
            ratio_rows.append([name, base] + ["n/a"] * (len(TOOLS) - 1))
        else:
            ratio_rows.append(
                [name] + [v if isinstance(v, str) else f"{v / base:.2f}x" for v in t.values()]
            )
        fix_s, fix_i = t["fix()"], t["fix(inputs)"]
        row = [name]
        for other in ("make_fx(functionalize)", "torch.export", "compile aot_eager"):
            o = t[other]
            row.append(
                "n/a" if isinstance(o, str) or isinstance(fix_s, str) else f"{o / fix_s:.1f}x"
            )
        fb = t["3x fwd+bwd"]
        row.append(
            "n/a"
            if isinstance(base, str) or isinstance(fix_i, str)
            else f"{fix_i / (base + fb):.2f}"
        )
        target_rows.append(row)
    fmt = "github" if args.markdown else "simple"
    print(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"medians of {repeats}"
    )
    print("\nMilliseconds:\n")
    print(tabulate(ms_rows, headers=["model", *TOOLS], tablefmt=fmt, disable_numparse=True))
    print("\nRatio to symbolic_trace:\n")
    print(tabulate(ratio_rows, headers=["model", *TOOLS], tablefmt=fmt, disable_numparse=True))
    print("\nTargets: fix() at least 10x faster than make_fx/export; fix(inputs) at most")
    print("symbolic_trace + 3 fwd+bwd (ratio <= 1):\n")
    headers = [
        "model",
        "make_fx / fix()",
        "export / fix()",
        "compile / fix()",
        "fix(inputs) / (trace + 3 fwd+bwd)",
    ]
    print(tabulate(target_rows, headers=headers, tablefmt=fmt, disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
