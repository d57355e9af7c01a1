"""What a fixed module costs over its life: changing numbers, modules built elsewhere,
deciding memory, and what a fix leaves behind.

    python benchmarks/lifecycle.py [--repeats 7] [--quick] [--markdown]

Four tables, each measured side by side in one run (medians of `--repeats` rounds):

1. A Python number that changes on every call (a diffusion timestep, an annealed scale):
   per-call time of eager, of the fixed module, and how many decisions the fixed module
   made over the calls. A number that only feeds tensor arithmetic is an input of the
   graph, so one decision serves all values.
2. A module built elsewhere in the process between calls (a metrics object, an
   `nn.Sequential` made in a training step): the eager model's and the fixed module's
   per-call time with and without it (less the construction itself, timed alone: what
   is left is the cost of a busier allocator, the same for both), and under
   `torch.compile(fixed, backend="eager")` how many times Dynamo recompiled.
3. Peak memory of `fxgrad.fix(model, (x,))` on a 96 MB-parameter MLP against one eager
   forward and backward, each in a fresh process (peak RSS over the process's RSS before
   the step).
4. What fixing leaves behind once the fixed module is gone: Python objects and fx code
   cache entries per `fix()`, over 100 fixes of a small model.
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from tabulate import tabulate
from torch import nn

import fxgrad


class Denoiser(nn.Module):
    """A toy denoiser step: the timestep and the guidance scale are Python numbers."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.inp = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, t: int, scale: float) -> torch.Tensor:
        h = torch.sigmoid(self.inp(x) + t / 1000.0)
        h.mul_(scale)  # overwrites sigmoid's saved output: rewritten
        return self.out(h)


def _median_time(fn: Callable[[], object], n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def changing_numbers(repeats: int, calls: int) -> list[list[object]]:
    torch.manual_seed(0)
    model = Denoiser()
    x = torch.randn(8, 64)
    fixed = fxgrad.fix(model)
    state = {"t": 0}

    def step(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            state["t"] += 1
            t = state["t"] % 1000
            return m(x, t, 1.0 + t / 1000.0)

        return run

    eager, fixed_step = step(model), step(fixed)
    fixed_step()  # the one decision
    e = _median_time(eager, calls, repeats)
    f = _median_time(fixed_step, calls, repeats)
    seen = calls * repeats + 1
    return [
        [
            "timestep (int) and scale (float) new on every call",
            f"{e * 1e6:.1f}",
            f"{f * 1e6:.1f}",
            f"{f / e:.3f}",
            f"{len(fixed.reports)} for {seen} values",
        ]
    ]


def modules_built_elsewhere(repeats: int, calls: int) -> list[list[object]]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(32, 32), nn.ReLU()) for _ in range(8)])
    x = torch.randn(4, 32)
    fixed = fxgrad.fix(model, (x,))
    sink: list[nn.Module] = []

    def build() -> None:
        sink.append(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
        sink.pop()

    rows = []
    alone = _median_time(build, calls, repeats)
    for label, m in (("eager model (the baseline)", model), ("uncompiled fixed module", fixed)):

        def call(m: nn.Module = m) -> object:
            with torch.no_grad():
                return m(x)

        def call_and_build(call: Callable[[], object] = call) -> object:
            build()
            return call()

        plain = _median_time(call, calls, repeats)
        both = _median_time(call_and_build, calls, repeats)
        rows.append(
            [
                label,
                f"{plain * 1e6:.1f}",
                f"{(both - alone) * 1e6:.1f}",
                f"{(both - alone) / plain:.3f}",
                "",
            ]
        )
    import torch._dynamo as dynamo

    dynamo.reset()
    compiled = torch.compile(fixed, backend="eager")
    with torch.no_grad():
        compiled(x)
        before = dynamo.utils.counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        for _ in range(20):
            build()
            compiled(x)
        per = (time.perf_counter() - start) / 20
        after = dynamo.utils.counters["stats"]["unique_graphs"]
    rows.append(
        [
            'torch.compile(fixed, backend="eager"), 20 steps',
            "",
            f"{per * 1e6:.1f}",
            "",
            f"{after - before} recompiles",
        ]
    )
    return rows


# ---------------------------------------------------------------------------------------
# Memory: each measurement in a fresh process


def _mlp_96mb() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    # 6 Linear(2048, 2048) layers: 6 * 4.2 M parameters * 4 bytes = 100.7 MB (96 MiB)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(2048, 2048), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), torch.randn(64, 2048)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(what: str) -> None:
    model, x = _mlp_96mb()
    params = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    gc.collect()
    before = _rss_mb()
    if what == "eager":
        model(x).sum().backward()
    else:
        fixed = fxgrad.fix(model, (x,))
        del fixed
    print(json.dumps({"params_mb": params, "peak_over_mb": _peak_mb() - before}))


def memory() -> list[list[object]]:
    if not sys.platform.startswith("linux"):
        return [["(peak RSS is measured on Linux only)", "", "", ""]]
    out = {}
    for what in ("eager", "fix"):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", what],
            capture_output=True,
            text=True,
            check=True,
        )
        out[what] = json.loads(proc.stdout.strip().splitlines()[-1])
    eager, fix = out["eager"]["peak_over_mb"], out["fix"]["peak_over_mb"]
    params = out["eager"]["params_mb"]
    return [
        ["one eager forward + backward", f"{params:.0f}", f"{eager:.0f}", "1.00"],
        ["fxgrad.fix(model, (x,))", f"{params:.0f}", f"{fix:.0f}", f"{fix / eager:.2f}"],
    ]


def leftovers(fixes: int) -> list[list[object]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    x = torch.randn(2, 8)

    def once() -> None:
        fixed = fxgrad.fix(model, (x,))
        fixed(x)
        del fixed

    def plain() -> None:
        gm = torch.fx.symbolic_trace(model)
        gm(x)
        del gm

    rows = []
    for label, fn in (("torch.fx.symbolic_trace", plain), ("fxgrad.fix + one call", once)):
        fn()
        gc.collect()
        objects, lines = len(gc.get_objects()), len(linecache.cache)
        for _ in range(fixes):
            fn()
        gc.collect()
        rows.append(
            [
                label,
                f"{(len(gc.get_objects()) - objects) / fixes:.1f}",
                f"{(len(linecache.cache) - lines) / fixes:.2f}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repeats, fewer calls")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", choices=("eager", "fix"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(args.child)
        return
    repeats = 3 if args.quick else args.repeats
    calls = 50 if args.quick else 200
    torch.set_num_threads(1)
    fmt = "github" if args.markdown else "simple"
    print(
        f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}; "
        f"medians of {repeats} rounds of {calls} calls.\n"
    )
    tables = (
        (
            "A Python number that changes on every call",
            lambda: changing_numbers(repeats, calls),
            ["call", "eager (us)", "fixed (us)", "fixed / eager", "decisions"],
        ),
        (
            "A module built elsewhere between calls",
            lambda: modules_built_elsewhere(repeats, calls),
            ["fixed module", "per call (us)", "with a build (us)", "ratio", "Dynamo"],
        ),
        (
            "Peak memory over the process's RSS before the step (MiB), 96 MiB of parameters",
            memory,
            ["step", "parameters (MiB)", "peak over before (MiB)", "vs eager step"],
        ),
        (
            "Left behind per fix once the module is gone (100 fixes of a 3-layer model)",
            lambda: leftovers(100),
            ["what", "objects left per fix", "fx code-cache entries per fix"],
        ),
    )
    for i, (title, rows, headers) in enumerate(tables):
        print(f"{chr(10) if i else ''}{title}\n")
        print(tabulate(rows(), headers=headers, tablefmt=fmt))


if __name__ == "__main__":
    main()
