"""Pass specs, and selection of passes by code, code prefix or name.

Every pass module imports `Pass` from here, so this module imports none of them; the
passes' documentation for the CLI, read without importing them, is in `fxgrad.catalog`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fxgrad.changes import PassKind
from fxgrad.errors import SelectionError

if TYPE_CHECKING:
    from torch import fx

    from fxgrad.changes import Change, HandedOut
    from fxgrad.context import Context
    from fxgrad.observe import Extension


@dataclass(frozen=True)
class Pass:
    """A rewrite pass: `run` edits `gm.graph` in place and returns one Change per decision."""

    code: str
    name: str
    run: Callable[[fx.GraphModule, Context], list[Change]]
    doc: str
    default: bool = True  # 9xx passes are off unless selected
    # Hazard passes report code that is wrong under autograd (what assert_autograd_safe and
    # the CLI's exit code answer to); speed passes only make code faster.
    kind: PassKind = PassKind.HAZARD
    # A quick scan: False when the graph holds nothing the pass looks at, so the pipeline
    # skips it without snapshotting the graph or running the model for it.
    applies: Callable[[fx.GraphModule], bool] | None = None
    # What the pass records beyond the core facts of an observed run (fxgrad.observe),
    # node by node; the pipeline adds these to the one run all passes read.
    observes: tuple[Callable[[fx.GraphModule], Extension | None], ...] = ()
    # Errors eager PyTorch raises in forward that this pass repairs (autograd refusing a
    # write): fix() goes on past them instead of reporting the model's own error.
    repairs_errors: tuple[Callable[[BaseException], bool], ...] = ()
    # Run on each graph Dynamo captured, after every pass, while the graph's observed run is
    # kept (and whether or not `applies`): what a pass must do about code after a graph
    # break, out of the graph's reach. It may hand outputs out as copies (edits `gm`) and
    # returns a record of each, which the Dynamo front-end watches on later calls. Only
    # selected passes run it, so `select=[]` leaves Dynamo's graphs as captured.
    on_dynamo_graph: Callable[[fx.GraphModule, Context], Sequence[HandedOut]] | None = None

    def repairs(self, error: BaseException) -> bool:
        """Whether this pass repairs an error eager raised in forward."""
        return any(check(error) for check in self.repairs_errors)

    @property
    def summary(self) -> str:
        """Return the first paragraph of the docstring after the code/name heading."""
        return summary(self.doc)


def summary(doc: str) -> str:
    """The first sentence under `## What it does`, else the docstring's first line."""
    lines = [ln.strip() for ln in doc.strip().splitlines()]
    for i, ln in enumerate(lines):
        if ln.startswith("## What it does"):
            paragraph = []
            for text in lines[i + 1 :]:
                if not text or text.startswith("#"):
                    break
                paragraph.append(text)
            if paragraph:
                return _SENTENCE_END.split(" ".join(paragraph), maxsplit=1)[0]
    return lines[0] if lines else ""


_SENTENCE_END = re.compile(r"(?<=[a-z0-9`)][.!?])\s+(?=[A-Z`])")


def _matches(code: str, patterns: Iterable[str]) -> bool:
    return any(code.startswith(p) for p in patterns)


def _normalize(codes: str | Iterable[str] | None, passes: Sequence[Pass] = ()) -> list[str] | None:
    """Upper-cased codes; a pass name (`inplace-op`) stands for its code."""
    if codes is None:
        return None
    if isinstance(codes, str):
        codes = codes.split(",")
    by_name = {p.name.lower(): p.code for p in passes}
    out = []
    for c in codes:
        if not c or not c.strip():
            continue
        c = c.strip()
        out.append(by_name.get(c.lower().replace("_", "-"), c.upper()))
    return out


def select_passes(
    passes: Sequence[Pass],
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
) -> list[Pass]:
    """Return the passes to run, in pipeline order, for the given select/ignore codes.

    A code selects every pass whose code starts with it (`FXG1` selects the 1xx family);
    a pass's name (`inplace-op`) selects that pass. Passes that are off by default run
    only when selected explicitly.
    """
    sel, ign = _normalize(select, passes), _normalize(ignore, passes)
    valid = ", ".join(f"{p.code} ({p.name})" for p in passes)
    for pattern in (sel or []) + (ign or []):
        if not any(p.code.startswith(pattern) for p in passes):
            raise SelectionError(
                f"No pass has a code starting with {pattern!r}, nor that name.",
                hint=f"Valid codes are: {valid}. Prefixes such as FXG1 select a family; "
                "a pass's name selects that pass.",
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
