"""Peak memory and forward+backward time of five ways to run a model with one unsafe write.

The model is ResNet-style (conv, batch norm, in-place ReLUs, `out += identity`) with one
unsafe write: `y = torch.sigmoid(h); y.mul_(2)` overwrites the output sigmoid saved.
Side by side:

- hand-corrected: the same model with `y = y.mul(2)`;
- fxgrad.fix(): the rewritten module (fixed on a small example batch);
- naive: every in-place write made out-of-place (`inplace=False`, `out = out + identity`);
- functionalize: `torch.func.functionalize` of the original;
- allow_mutation: the original under `torch.autograd.graph.allow_mutation_on_saved_tensors()`,
  which clones each saved tensor on write.

How memory is measured: each variant runs in its own fresh subprocess. After building the
model and one warm-up step on a one-image batch, the process reads its peak resident set
size (`resource.getrusage(...).ru_maxrss`); it then runs forward and backward once on the
benchmark batch and reads the peak again. The difference is the extra peak memory of one
training step. Large tensor buffers are allocated with mmap and returned to the system on
free, so the resident peak follows the peak of live tensor bytes; Python-level tracers such
as tracemalloc do not see tensor storage. Each figure is the median over `--repeats`
subprocesses; times are medians of `--steps` timed steps inside each subprocess.

Run: python benchmarks/inplace_memory.py [--batch 16] [--size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

VARIANTS = ["hand-corrected", "fxgrad.fix()", "naive", "functionalize", "allow_mutation"]


def build(naive: bool = False, corrected: bool = False):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU(inplace=not naive)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if naive:
                out = out + x
            else:
                out += x
            return self.relu(out)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(32)
            self.relu = nn.ReLU(inplace=not naive)
            self.blocks = nn.Sequential(*[Block(32) for _ in range(4)])
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            h = self.blocks(self.relu(self.bn(self.stem(x))))
            y = torch.sigmoid(h)
            if naive or corrected:
                y = y.mul(2)
            else:
                y.mul_(2)  # unsafe: sigmoid saved y for backward
            return self.head(y.mean((2, 3)))

    torch.manual_seed(0)
    return Net()


def child(variant: str, batch: int, size: int, steps: int) -> None:
    import resource
    import time

    import torch

    torch.set_num_threads(1)
    model = build(naive=variant == "naive", corrected=variant == "hand-corrected")
    small = torch.randn(1, 3, size, size)
    fn = model
    ctx = None
    if variant == "fxgrad.fix()":
        import fxgrad

        fn = fxgrad.fix(model, (small,))
        assert fn.report.applied, "fix() should rewrite the unsafe write"
    elif variant == "functionalize":
        fn = torch.func.functionalize(model)
    elif variant == "allow_mutation":
        ctx = torch.autograd.graph.allow_mutation_on_saved_tensors

    def step(x):
        if ctx is not None:
            with ctx():
                fn(x).sum().backward()
        else:
            fn(x).sum().backward()

    step(small)  # warm-up on one image
    x = torch.randn(batch, 3, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - start)
    print(json.dumps({"peak_mib": (peak - base) / 1024, "ms": 1000 * statistics.median(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch, args.size, args.steps)
        return
    from tabulate import tabulate

    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for v in VARIANTS:  # interleaved, so drift hits every variant alike
            cmd = [sys.executable, __file__, "--child", v, "--batch", str(args.batch),
                   "--size", str(args.size), "--steps", str(args.steps)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[v].append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    ref = None
    for v in VARIANTS:
        mem = statistics.median(r["peak_mib"] for r in results[v])
        ms = statistics.median(r["ms"] for r in results[v])
        if ref is None:
            ref = (mem, ms)
        rows.append([v, f"{mem:.1f}", f"{mem / ref[0]:.2f}x", f"{ms:.1f}", f"{ms / ref[1]:.2f}x"])
    print(f"batch {args.batch}x3x{args.size}x{args.size}, medians of {args.repeats} processes")
    print(tabulate(rows, headers=["variant", "peak MiB", "vs hand", "fwd+bwd ms", "vs hand"]))


if __name__ == "__main__":
    main()
