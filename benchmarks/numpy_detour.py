"""Time a NumPy detour against its FXG301 fix: forward, and forward+backward, side by side.

    python benchmarks/numpy_detour.py [--repeats 7] [--sizes 1e3,1e4,1e5,1e6,1e7]

The detour is a layer-normalising chain written in NumPy (sin, mean/std with keepdims,
division, a reduction) between a torch op and the loss. Each cell is the median of
`--repeats` timed calls after one warm-up call. The detour's backward only reaches the torch
ops outside NumPy; the fixed module's backward also runs through the translated chain, so
its forward+backward does strictly more work and is still compared as is.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from tabulate import tabulate

import fxgrad


class Detour(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        h = x * self.scale
        a = h.detach().cpu().numpy()
        z = (np.sin(a) - a.mean(axis=1, keepdims=True)) / np.std(a, axis=1, keepdims=True)
        s = np.sum(z * z, axis=1, keepdims=True)
        return torch.from_numpy(s).to(h.device) * h


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", default="1e3,1e4,1e5,1e6,1e7")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # NumPy runs these ops on one thread
    torch.manual_seed(0)
    rows = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        cols = 100 if size >= 100 else size
        x = torch.randn(size // cols, cols)
        model = Detour()
        fixed = fxgrad.fix(model, (x,), select=["FXG301"])
        assert fixed.report.applied, fixed.report.table()

        def fwd(m, x=x):
            with torch.no_grad():
                m(x)

        def fwd_bwd(m, x=x):
            m(x).sum().backward()

        row = [f"{size:.0e}"]
        for kind in (fwd, fwd_bwd):
            t_orig = _median_ms(lambda k=kind, m=model: k(m), args.repeats)
            t_fixed = _median_ms(lambda k=kind, m=fixed: k(m), args.repeats)
            row += [f"{t_orig:.3f}", f"{t_fixed:.3f}", f"{t_orig / t_fixed:.2f}x"]
        rows.append(row)
    headers = [
        "elements",
        "fwd detour ms",
        "fwd fixed ms",
        "fwd speedup",
        "fwd+bwd detour ms",
        "fwd+bwd fixed ms",
        "fwd+bwd speedup",
    ]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    print(
        f"median of {args.repeats} repeats; torch {torch.__version__}, numpy {np.__version__}, "
        f"{torch.get_num_threads()} torch threads, CPU"
    )


if __name__ == "__main__":
    main()
