"""Pass specs and selection of passes by code or code prefix."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fxgrad.errors import SelectionError

if TYPE_CHECKING:
    from torch import fx

    from fxgrad.changes import Change
    from fxgrad.context import Context, FirstRun


@dataclass(frozen=True)
class Pass:
    """A rewrite pass: `run` edits `gm.graph` in place and returns one Change per decision."""

    code: str
    name: str
    run: Callable[[fx.GraphModule, Context], list[Change]]
    doc: str
    default: bool = True  # 9xx passes are off unless selected
    # A quick scan: False when the graph holds nothing the pass looks at, so the pipeline
    # skips it without snapshotting the graph or running the model for it.
    applies: Callable[[fx.GraphModule], bool] | None = None
    # With example inputs: the instrumented forward and backward the pass starts with.
    # When the pass is the first to run, the pipeline makes this run its capture check
    # (fxgrad.pipeline.check_capture) instead of running the graph once more.
    probe: Callable[[fx.GraphModule, Context], FirstRun] | None = None

    @property
    def summary(self) -> str:
        """Return the first line of the docstring after the code/name heading."""
        lines = [ln.strip() for ln in self.doc.strip().splitlines()]
        for i, ln in enumerate(lines):
            if ln.startswith("## What it does") and i + 1 < len(lines):
                return lines[i + 1]
        return lines[0] if lines else ""


def _matches(code: str, patterns: Iterable[str]) -> bool:
    return any(code.startswith(p) for p in patterns)


def _normalize(codes: str | Iterable[str] | None) -> list[str] | None:
    if codes is None:
        return None
    if isinstance(codes, str):
        codes = codes.split(",")
    return [c.strip().upper() for c in codes if c and c.strip()]


def select_passes(
    passes: Sequence[Pass],
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
) -> list[Pass]:
    """Return the passes to run, in pipeline order, for the given select/ignore codes.

    A code selects every pass whose code starts with it (`FXG1` selects the 1xx family).
    Passes that are off by default run only when selected explicitly.
    """
    sel, ign = _normalize(select), _normalize(ignore)
    valid = ", ".join(f"{p.code} ({p.name})" for p in passes)
    for pattern in (sel or []) + (ign or []):
        if not any(p.code.startswith(pattern) for p in passes):
            raise SelectionError(
                f"No pass has a code starting with {pattern!r}.",
                hint=f"Valid codes are: {valid}. Prefixes such as FXG1 select a family.",
            )
    chosen = []
    for p in passes:
        if sel is not None and not _matches(p.code, sel):
            continue
        if sel is None and not p.default:
            continue
        if ign and _matches(p.code, ign):
            continue
        chosen.append(p)
    return chosen
