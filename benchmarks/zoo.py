"""Zoo: fxgrad.fix() over every torchvision model, checked against eager PyTorch.

    python benchmarks/zoo.py [--quick] [--models resnet18,raft_small] [--modes train,eval]
                             [--families classification,video] [--markdown]

For every classification model (`torchvision.models.list_models(module=torchvision.models)`)
and every video, optical-flow and segmentation model, built with random weights and small
inputs, in train and eval mode, it prints:

- traced: whether `fix(model, inputs)` captured the model (or the fxgrad error it gave),
- changes: rewrites fix() made (these models are safe: it must be 0),
- forward: the fixed model's outputs equal eager's (`torch.testing.assert_close`),
- grads: the gradients of every parameter (`torch.autograd.grad`, one random cotangent
  per output, the same seed for both runs, so dropout draws the same mask) equal eager's,
- nodes: nodes in the captured graph,
- fix(inputs), fix() and symbolic_trace: one timing each in seconds (this is a
  correctness sweep; see capture.py for interleaved, repeated timings), or the error.

Inputs are 2x3x64x64 where the model allows it. Models with a fixed input size get their
smallest one: ViTs are built for 4x4 patches (image_size 56, 64 or 128), maxvit_t and s3d
need 224x224, mvit 16x224x224, inception_v3 299x299 (its train-mode aux head), RAFT
128x128. Batch 2 everywhere except the 224x224
video models (batch 1: their BatchNorm still sees many values per channel).

A "problems" section lists every model where fix() changed something, broke equality, or
failed with anything other than a clear fxgrad error; fxgrad errors fix() gives on purpose
(models a graph cannot capture) are listed under "not captured", with the error.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
import torchvision
from tabulate import tabulate
from torch import fx, nn

import fxgrad
from fxgrad.errors import FxgradError

FAMILIES = ("classification", "video", "optical_flow", "segmentation")

# A representative subset for --quick: one or two of each family, all small.
QUICK = (
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
    "raft_small",
    "lraspp_mobilenet_v3_large",
)

# Build arguments and input shapes for models that cannot take the defaults.
_VIT_PATCH = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}
_SHAPES: dict[str, tuple[int, ...]] = {
    "inception_v3": (2, 3, 299, 299),  # train mode: its aux head needs the full size
    "maxvit_t": (2, 3, 224, 224),
    "s3d": (1, 3, 16, 224, 224),
    "mvit_v1_b": (1, 3, 16, 224, 224),
    "mvit_v2_s": (1, 3, 16, 224, 224),
}
_DEFAULT_SHAPE = {
    "classification": (2, 3, 64, 64),
    "video": (2, 3, 8, 32, 32),
    "optical_flow": (1, 3, 128, 128),
    "segmentation": (2, 3, 64, 64),
}


@dataclass
class Spec:
    """One model to run: how to build it and its example inputs."""

    name: str
    family: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    n_inputs: int = 1  # optical flow takes two images

    def inputs(self) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(1)
        return tuple(torch.randn(self.shape, generator=gen) for _ in range(self.n_inputs))


@dataclass
class Row:
    """What happened to one model in one mode."""

    family: str
    name: str
    mode: str
    shape: str
    params_m: float = 0.0
    traced: str = ""
    error: BaseException | None = None
    changes: int | None = None
    forward: str = ""
    grads: str = ""
    nodes: int | None = None
    fix_inputs_s: float | None = None
    fix_static: str = ""
    fx_trace: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def specs(families: tuple[str, ...] = FAMILIES) -> list[Spec]:
    """Every model of the requested torchvision families, with its build and input shape."""
    from torchvision import models as M

    out: list[Spec] = []
    modules = {
        "classification": M,
        "video": M.video,
        "optical_flow": M.optical_flow,
        "segmentation": M.segmentation,
    }
    for family in families:
        for name in M.list_models(module=modules[family]):
            kwargs: dict[str, Any] = {"weights": None}
            shape = _SHAPES.get(name, _DEFAULT_SHAPE[family])
            if family == "segmentation":
                kwargs["weights_backbone"] = None
            if name in _VIT_PATCH:
                kwargs["image_size"] = 4 * _VIT_PATCH[name]
                shape = (2, 3, kwargs["image_size"], kwargs["image_size"])
            if name == "inception_v3":
                kwargs["init_weights"] = True  # silences the default-init warning
            if name == "googlenet":
                kwargs["init_weights"] = True
            n_inputs = 2 if family == "optical_flow" else 1

            def build(name: str = name, kwargs: dict = kwargs) -> nn.Module:
                return torchvision.models.get_model(name, **kwargs)

            out.append(Spec(name, family, build, shape, n_inputs))
    return out


# ---------------------------------------------------------------------------------------
# Checks


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _describe_error(e: BaseException) -> str:
    """`TraceError: message` for fxgrad errors; the raw type and innermost frame otherwise."""
    if isinstance(e, FxgradError):
        return f"{type(e).__name__}: {_first_line(e)}"
    frames = traceback.extract_tb(e.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"raw {type(e).__name__}{where}: {_first_line(e)}"


def forward_backward(
    fn: Callable, inputs: tuple, params: list[torch.Tensor], seed: int = 0
) -> tuple[list[Any], list[torch.Tensor | None]]:
    """Outputs and parameter gradients of fn(*inputs) for a fixed seed and random cotangents."""
    torch.manual_seed(seed)
    out = pytree.tree_leaves(fn(*inputs))
    diff = [
        o for o in out if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad
    ]
    if not diff:
        return out, []
    gen = torch.Generator().manual_seed(seed + 1)
    cot = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in diff]
    grads = torch.autograd.grad(diff, params, cot, allow_unused=True)
    return [o.detach() if isinstance(o, torch.Tensor) else o for o in out], list(grads)


def _close(actual: Any, expected: Any, rtol: float, atol_scale: float) -> str | None:
    """None when equal; otherwise the max abs difference, as text.

    atol is relative to the largest magnitude of the reference, so deep random-weight
    models with large activations or gradients are compared at their own scale.
    """
    if isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor):
        scale = expected.detach().abs().max().item() if expected.numel() else 0.0
        try:
            torch.testing.assert_close(
                actual, expected, rtol=rtol, atol=atol_scale * max(scale, 1e-6), equal_nan=True
            )
        except AssertionError:
            diff = (actual.double() - expected.double()).abs().max().item()
            return f"max abs diff {diff:.3g} (scale {scale:.3g})"
        return None
    if actual is None and expected is None:
        return None
    if type(actual) is not type(expected):
        return f"{type(actual).__name__} instead of {type(expected).__name__}"
    return None if actual == expected else f"{actual!r} instead of {expected!r}"


def compare(actual: list, expected: list, rtol: float, atol_scale: float) -> str:
    if len(actual) != len(expected):
        return f"NO: {len(actual)} values instead of {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        bad = _close(a, e, rtol, atol_scale)
        if bad is not None:
            return f"NO: #{i}: {bad}"
    return "yes"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, BaseException | None]:
    start = time.perf_counter()
    try:
        value = fn()
    except Exception as e:  # every failure is reported, never raised
        return None, time.perf_counter() - start, e
    return value, time.perf_counter() - start, None


def check_model(spec: Spec, training: bool) -> Row:
    """Build, fix and compare one model in one mode."""
    mode = "train" if training else "eval"
    row = Row(spec.family, spec.name, mode, "x".join(map(str, spec.shape)))
    torch.manual_seed(0)
    try:
        model = spec.build()
    except Exception as e:
        row.traced = "build failed"
        row.problems.append(f"cannot build: {_describe_error(e)}")
        return row
    model.train(training)
    inputs = spec.inputs()
    params = [p for p in model.parameters() if p.requires_grad]
    row.params_m = sum(p.numel() for p in params) / 1e6

    _, t, err = _timed(lambda: fx.symbolic_trace(model))
    row.fx_trace = f"{t:.2f}" if err is None else f"fails ({type(err).__name__})"

    fixed, t, err = _timed(lambda: fxgrad.fix(model, inputs))
    row.fix_inputs_s = t
    if err is not None:
        row.error = err
        row.traced = _describe_error(err)
        if not isinstance(err, FxgradError):
            row.problems.append(f"fix(inputs) fails without a clear fxgrad error: {row.traced}")
        elif not isinstance(err, fxgrad.errors.TraceError):
            row.problems.append(f"fix(inputs): {row.traced}")
    else:
        row.traced = "yes"
        row.changes = len(fixed.report.applied)
        row.nodes = len(fixed.graph_module.graph.nodes)
        if row.changes:
            codes = sorted({c.code for c in fixed.report.applied})
            row.problems.append(f"fix() made {row.changes} change(s) ({', '.join(codes)})")
        try:
            out_e, g_e = forward_backward(model, inputs, params)
            out_f, g_f = forward_backward(fixed, inputs, params)
        except Exception as e:
            row.forward = "error"
            row.problems.append(f"running the fixed model: {_describe_error(e)}")
        else:
            row.forward = compare(out_f, out_e, rtol=1e-4, atol_scale=1e-5)
            row.grads = compare(g_f, g_e, rtol=1e-3, atol_scale=1e-4)
            if row.forward != "yes":
                row.problems.append(f"forward differs from eager: {row.forward}")
            if row.grads != "yes":
                row.problems.append(f"gradients differ from eager: {row.grads}")
        del fixed

    static, t, err = _timed(lambda: fxgrad.fix(model))
    if err is None:
        row.fix_static = f"{t:.2f}"
    else:
        row.fix_static = f"fails ({type(err).__name__})"
        if isinstance(err, FxgradError):
            row.notes.append(f"fix() without inputs: {_describe_error(err)}")
        else:
            row.problems.append(f"fix() without inputs: {_describe_error(err)}")
    return row


# ---------------------------------------------------------------------------------------
# Running and printing


def run(
    names: list[str] | None = None,
    modes: tuple[bool, ...] = (True, False),
    families: tuple[str, ...] = FAMILIES,
    progress: Callable[[Row], None] | None = None,
    size: int | None = None,
) -> list[Row]:
    """Check the named models (all of `families` when None) in each mode; return the rows.

    `size` overrides the height and width of every input (for quick checks).
    """
    everything = specs(FAMILIES if names else families)
    if names:
        known = {s.name: s for s in everything}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"unknown model(s): {', '.join(unknown)}")
        chosen = [known[n] for n in names]
    else:
        chosen = everything
    rows = []
    for spec in chosen:
        if size is not None:
            spec.shape = (*spec.shape[:-2], size, size)
        for training in modes:
            row = check_model(spec, training)
            gc.collect()  # the model and its fixed twins are gone: free them now
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


HEADERS = [
    "family",
    "model",
    "mode",
    "input",
    "params (M)",
    "traced",
    "changes",
    "forward",
    "grads",
    "nodes",
    "fix(inputs) s",
    "fix() s",
    "symbolic_trace s",
]


def _cells(r: Row) -> list[Any]:
    traced = r.traced if len(r.traced) <= 60 else r.traced[:57] + "..."
    return [
        r.family,
        r.name,
        r.mode,
        r.shape,
        f"{r.params_m:.1f}",
        traced,
        "" if r.changes is None else r.changes,
        r.forward if len(r.forward) <= 40 else r.forward[:37] + "...",
        r.grads if len(r.grads) <= 40 else r.grads[:37] + "...",
        "" if r.nodes is None else r.nodes,
        "" if r.fix_inputs_s is None else f"{r.fix_inputs_s:.2f}",
        r.fix_static,
        r.fx_trace,
    ]


def table(rows: list[Row], markdown: bool = False) -> str:
    return tabulate(
        [_cells(r) for r in rows],
        headers=HEADERS,
        tablefmt="github" if markdown else "simple",
        disable_numparse=True,
    )


def summary(rows: list[Row], markdown: bool = False) -> str:
    """Counts, then the problems and the models a graph cannot capture, with reasons."""
    bullet = "- " if markdown else "  "
    good = [r for r in rows if r.traced == "yes" and r.ok]
    lines = [
        f"{len(rows)} runs ({len({r.name for r in rows})} models): {len(good)} captured with "
        f"0 changes and forward and gradients equal to eager; "
        f"{sum(1 for r in rows if r.problems)} with problems."
    ]
    problems = [r for r in rows if r.problems]
    lines += ["", "Problems:" if problems else "Problems: none."]
    for r in problems:
        lines.extend(f"{bullet}{r.name} ({r.mode}): {p}" for p in r.problems)
    uncaptured = [r for r in rows if r.traced != "yes" and not r.problems]
    if uncaptured:
        lines += ["", "Not captured (a clear fxgrad error, as designed):"]
        lines.extend(f"{bullet}{r.name} ({r.mode}): {r.traced}" for r in uncaptured)
    notes = [r for r in rows if r.notes]
    if notes:
        lines += ["", "Notes:"]
        lines.extend(f"{bullet}{r.name} ({r.mode}): {n}" for r in notes for n in r.notes)
    return "\n".join(lines)


def header() -> str:
    return (
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{platform.machine()}, {torch.get_num_threads()} threads; "
        "one timing per cell (a correctness sweep)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated model names (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK)} small models, train")
    parser.add_argument("--modes", default=None, help="train,eval (default both; --quick: train)")
    parser.add_argument(
        "--families", default=",".join(FAMILIES), help=f"subset of {','.join(FAMILIES)}"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--size", type=int, help="input height and width for every model")
    parser.add_argument("--markdown", action="store_true", help="print GitHub tables")
    parser.add_argument("--quiet", action="store_true", help="no per-model progress lines")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else (list(QUICK) if args.quick else None)
    modes_text = args.modes or ("train" if args.quick else "train,eval")
    modes = tuple(m.strip() == "train" for m in modes_text.split(","))
    families = tuple(f for f in args.families.split(",") if f)
    if args.threads:
        torch.set_num_threads(args.threads)

    def progress(r: Row) -> None:
        if not args.quiet:
            state = "ok" if r.ok else "PROBLEM"
            print(f"[{state}] {r.name} {r.mode}: {r.traced}", file=sys.stderr, flush=True)

    rows = run(names, modes, families, progress, args.size)
    print(header())
    print()
    print(table(rows, args.markdown))
    print()
    print(summary(rows, args.markdown))
    return 1 if any(r.problems for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
