"""Capture cost: fxgrad.fix() vs plain torch.fx tracing, measured side by side.

    python benchmarks/capture.py [--repeats 7] [--markdown]

For each model, in one process and interleaved round by round, times:
- `torch.fx.symbolic_trace(model)` (the baseline, ratio 1.00),
- `torch.fx` tracing with `record_stack_traces=True` (what finding the user's line would
  cost the fx way),
- the static decision, without example inputs (`fxgrad.check(model)` and the CLI without
  `--input` decide this way: capture, static passes, fixed module; a plain
  `fxgrad.fix(model)` decides on its first call instead, as `fix(inputs)` does),
- `fxgrad.fix(model, inputs)` with example inputs (adds value propagation, the capture
  check, probing and verification), next to the cost of three forward+backward runs.

Reported figures are medians of the repeats. The models: torchvision's resnet50 (built
without weights), six `nn.TransformerEncoderLayer`s in an `nn.Sequential` (plain fx
cannot trace `nn.TransformerEncoder` itself: it branches on `src.dim()`), and a
hand-written 6-layer transformer whose attention code is traced through.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import time

import torch
from tabulate import tabulate
from torch import fx, nn

import fxgrad
from fxgrad.api import fix_static


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        k = k.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        v = v.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        y = att.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def models() -> list[tuple[str, nn.Module, tuple]]:
    import torchvision

    torch.manual_seed(0)
    return [
        ("resnet50", torchvision.models.resnet50(), (torch.randn(2, 3, 64, 64),)),
        (
            "6x TransformerEncoderLayer",
            nn.Sequential(
                *[nn.TransformerEncoderLayer(64, 4, 128, batch_first=True) for _ in range(6)]
            ),
            (torch.randn(2, 16, 64),),
        ),
        (
            "6-layer transformer (traced through)",
            nn.Sequential(*[Block(64, 4) for _ in range(6)]),
            (torch.randn(2, 16, 64),),
        ),
    ]


def _stack_trace_tracer(model: nn.Module) -> fx.Graph:
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    return tracer.trace(model)


def _three_forward_backward(model: nn.Module, inputs: tuple) -> None:
    for _ in range(3):
        model(*inputs).float().sum().backward()
    model.zero_grad(set_to_none=True)


def measure(model: nn.Module, inputs: tuple, repeats: int) -> dict[str, float]:
    variants = {
        "symbolic_trace": lambda: fx.symbolic_trace(model),
        "fx + stack traces": lambda: _stack_trace_tracer(model),
        "fix()": lambda: fix_static(model),
        "fix(inputs)": lambda: fxgrad.fix(model, inputs),
        "3x fwd+bwd": lambda: _three_forward_backward(model, inputs),
    }
    for fn in variants.values():  # warm up caches and lazy imports
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        for name, fn in variants.items():
            gc.collect()  # no variant pays for collecting the garbage of the one before
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            del result
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--markdown", action="store_true", help="print a GitHub table")
    args = parser.parse_args()
    rows = []
    for name, model, inputs in models():
        model.train()
        t = measure(model, inputs, args.repeats)
        base = t["symbolic_trace"]
        rows.append(
            [
                name,
                f"{base * 1e3:.1f}",
                f"{t['fx + stack traces'] / base:.2f}x",
                f"{t['fix()'] * 1e3:.1f} ({t['fix()'] / base:.2f}x)",
                f"{t['fix(inputs)'] * 1e3:.0f}",
                f"{(t['fix(inputs)']) / (base + t['3x fwd+bwd']):.2f}",
            ]
        )
    headers = [
        "model",
        "symbolic_trace ms",
        "fx stack traces",
        "static fix ms (vs trace)",
        "fix(inputs) ms",
        "fix(inputs) / (trace + 3 fwd+bwd)",
    ]
    print(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"medians of {args.repeats}"
    )
    print(tabulate(rows, headers=headers, tablefmt="github" if args.markdown else "simple"))


if __name__ == "__main__":
    main()
