"""Scaling: fxgrad.fix() time per graph node on synthetic chains of 1k, 10k and 50k nodes.

    python benchmarks/scaling.py [--sizes 1000,10000,50000] [--repeats 3] [--quick] [--markdown]

The model is generated Python source (one long forward, compiled with `exec` and
registered with `linecache`, so the tracer sees ordinary user code with a file and line for
every node). Every block of 8 nodes makes a fresh tensor, takes a view of it and writes it
in place (`h = x * 0.5; v = h[1:]; h.add_(1)`: safe, kept). Eight blocks, spread evenly,
also write the output of `sigmoid` in place (`s.mul_(0.5)`) and a view of the output of
`tanh` (`t[0].zero_()`): unsafe, both saved for backward, so FXG101 rewrites them (16
rewrites at every size; `--unsafe-every K` puts them in every K-th block instead, so the
rewrites grow with the graph).

For each size it times, interleaved round by round, `torch.fx.symbolic_trace` (for
reference), capture alone (static, no pass), the static decision (`fix()` column: what
`fxgrad.check(model)` without inputs and the CLI without `--input` run: capture and the
static passes) and `fxgrad.fix(model, (x,))` with a tiny 4x8 input, and
prints microseconds per node (nodes of the captured graph) and the ratio to the smallest
size. Per-node time must stay flat: at 50k nodes at most 1.3x the time per node at 1k.
"""

from __future__ import annotations

import argparse
import gc
import linecache
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from tabulate import tabulate
from torch import fx, nn

import fxgrad
from fxgrad.api import fix_static

LIMIT = 1.3  # largest allowed per-node time ratio to the smallest size
NODES_PER_BLOCK = 8  # nodes of a block without unsafe writes

_counter = [0]


def _block(i: int, unsafe: int, functional: bool = False) -> list[str]:
    """Source lines of block i: a view and a safe in-place write, then `unsafe` (0, 1, 2)
    unsafe writes: one into the output of sigmoid, one into a view of the output of tanh.

    `functional` writes the unsafe writes out of place (the reference eager can backprop).
    """
    lines = [
        f"h{i} = x * 0.5",
        f"v{i} = h{i}[1:]",
        f"h{i}.add_(1)",  # safe: nothing saved h for backward
        f"x = x + (v{i}.mean(0) - 0.5).tanh() * 0.1",
    ]
    if unsafe >= 1:
        lines += [
            f"s{i} = x.sigmoid()",
            f"s{i} = s{i}.mul(0.5)" if functional else f"s{i}.mul_(0.5)",  # unsafe
            f"x = x + s{i} * 0.1",
        ]
    if unsafe >= 2:
        lines += [
            f"t{i} = x.tanh()",
            f"t{i} = t{i}.clone()" if functional else "pass",
            f"t{i}[0].zero_()",  # unsafe without the clone: tanh saved its output
            f"x = x + t{i} * 0.1",
        ]
    return lines


class Chain(nn.Module):
    """A generated forward: `x * self.w`, then `blocks` blocks of views and in-place writes."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, width))


def make_chain(
    nodes: int,
    width: int = 8,
    functional: bool = False,
    unsafe: int = 8,
    unsafe_every: int | None = None,
) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A Chain module whose captured graph has about `nodes` nodes, and a tiny example input.

    `unsafe` blocks, spread evenly, carry two unsafe writes each (a fixed number of
    rewrites at every size); with `unsafe_every`, every unsafe_every-th block does instead
    (rewrites grow with the graph). With `functional`, the same computation with its unsafe
    writes made out of place: eager backward runs on it, so it is the reference for the
    fixed model's gradients.
    """
    blocks = max(1, round((nodes - 3) / NODES_PER_BLOCK))
    if unsafe_every:
        marked = set(range(unsafe_every - 1, blocks, unsafe_every))
    else:
        marked = {(k * blocks) // unsafe + blocks // (2 * unsafe) for k in range(unsafe)}
    body = ["x = x * self.w"]
    for i in range(blocks):
        body.extend(_block(i, 2 if i in marked else 0, functional))
    _counter[0] += 1
    filename = f"generated_chain_{blocks}_{_counter[0]}.py"
    src = "def forward(self, x):\n" + "".join(f"    {ln}\n" for ln in body) + "    return x\n"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    namespace: dict = {"torch": torch}
    exec(compile(src, filename, "exec"), namespace)
    cls = type(f"Chain{blocks}", (Chain,), {"forward": namespace["forward"]})
    model = cls(width)
    gen = torch.Generator().manual_seed(0)
    return model, (torch.randn(4, width, generator=gen),)


def measure(model: nn.Module, inputs: tuple, repeats: int) -> tuple[dict[str, float], int]:
    """Median seconds of each variant, interleaved; and the captured graph's node count."""
    fixed = fxgrad.fix(model, inputs)  # warm-up, and the node count
    nodes = len(fixed.graph_module.graph.nodes)
    del fixed
    variants: dict[str, Callable[[], object]] = {
        "symbolic_trace": lambda: fx.symbolic_trace(model),
        "capture only": lambda: fix_static(model, select=[]),
        "fix()": lambda: fix_static(model),
        "fix(inputs)": lambda: fxgrad.fix(model, inputs),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            gc.collect()  # no variant pays for collecting the garbage of the one before
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            del result
    return {k: statistics.median(v) for k, v in times.items()}, nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="node counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="sizes 1000,5000")
    parser.add_argument("--markdown", action="store_true", help="print a GitHub table")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--unsafe-every", type=int, help="unsafe writes in every K-th block")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [1000, 5000] if args.quick else [int(s) for s in args.sizes.split(",")]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    results = []
    for n in sizes:
        model, inputs = make_chain(n, unsafe_every=args.unsafe_every)
        t, nodes = measure(model, inputs, args.repeats)
        results.append((n, nodes, t))
        print(f"{nodes} nodes done", file=sys.stderr, flush=True)

    base = {k: v / results[0][1] for k, v in results[0][2].items()}
    rows, worst = [], 0.0
    for _, nodes, t in results:
        cells = [nodes]
        for k in ("symbolic_trace", "capture only", "fix()", "fix(inputs)"):
            per = t[k] / nodes
            ratio = per / base[k]
            if k in ("fix()", "fix(inputs)"):
                worst = max(worst, ratio)
            cells += [f"{t[k]:.2f}", f"{per * 1e6:.1f} ({ratio:.2f}x)"]
        rows.append(cells)
    headers = [
        "nodes",
        "symbolic_trace s",
        "µs/node (vs smallest)",
        "capture only s",
        "µs/node (vs smallest)",
        "fix() static s",
        "µs/node (vs smallest)",
        "fix(inputs) s",
        "µs/node (vs smallest)",
    ]
    print(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"medians of {args.repeats}"
    )
    print(tabulate(rows, headers=headers, tablefmt="github" if args.markdown else "simple"))
    ok = worst <= LIMIT
    print(
        f"\nWorst fix() per-node ratio to {results[0][1]} nodes: {worst:.2f}x "
        f"(limit {LIMIT}x): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
