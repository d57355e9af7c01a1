"""Change records: one per rewrite (or per decision a pass reports), driving every output."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Protocol


class PassKind(str, Enum):
    """What a pass's findings mean, which decides whether a change left as is is a finding.

    A hazard pass (in-place writes, NumPy detours) reports code that is wrong under autograd:
    leaving it is a finding. A speed pass (layout) only makes code faster: leaving code as is
    there is a measured decision, never a finding, unless its rewrite was rolled back.
    """

    HAZARD = "hazard"
    SPEED = "speed"


@dataclass(frozen=True)
class Change:
    """One rewrite fxgrad made, or one hazard it found and left alone.

    `applied` is False for findings that were reported but not rewritten (for example a
    NumPy call with no faithful torch twin, or a rewrite that failed verification and was
    rolled back): the report still shows them so nothing is silently left as it was.
    `module` says which instance of a repeated block the change is in (`layers.3`), so
    that a report can show a change made in every block as one row.
    """

    code: str  # "FXG101"
    node: str  # node name before the rewrite: "add_"
    before: str  # "h.add_(1.0)"
    after: str  # "h = h.add(1.0)"
    where: str = ""  # "model.py:42", innermost user frame of the node
    note: str = ""  # why: which op saved what, which leaf, what was measured
    applied: bool = True
    module: str = ""  # dotted path of the submodule whose forward made the node ("" = root)
    source: str = ""  # the user's source line of the node, where the report could find it
    # Set by the pipeline from the pass that made the change (Pass.kind).
    kind: PassKind = PassKind.HAZARD
    # The rewrite was made, failed verification and was undone (applied is then False).
    rolled_back: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.kind, PassKind):  # read back from JSON
            object.__setattr__(self, "kind", PassKind(self.kind))

    @property
    def left_as_is(self) -> bool:
        """Whether the code the change is about was left as it was (found, not rewritten)."""
        return not self.applied

    def line(self) -> str:
        """Render the change as one line: `model.py:42 FXG101 before -> after (note)`."""
        where = f"{self.where} " if self.where else ""
        arrow = "->" if self.applied else "left as is:"
        text = f"{where}{self.code} {self.before} {arrow} {self.after}".rstrip()
        if not self.applied and not self.after:
            text = f"{where}{self.code} {self.before} (left as is)"
        return f"{text} ({self.note})" if self.note else text

    @property
    def finding(self) -> bool:
        """Whether the user must act on this change (see `is_finding`)."""
        return is_finding(self)

    def to_dict(self) -> dict:
        """Return the record as a JSON-ready dict."""
        return {**asdict(self), "kind": self.kind.value}


def is_finding(change: Change) -> bool:
    """True for a rewrite, or a hazard left as is; False for a speed decision to keep code.

    A layout pass that measured `.contiguous()` and found it not worth it leaves nothing to
    do. A rewrite that was rolled back is a finding whatever its pass: fxgrad failed there.
    """
    if change.applied:
        return True
    return change.kind is PassKind.HAZARD or change.rolled_back


class Note(str):
    """A report note: text, and whether the user must act on it.

    A str, so that notes print, compare and serialize as they always have; `actionable` is
    what the report's exit code reads (eager backward fails, a rewrite was rolled back),
    never the note's wording.
    """

    actionable: bool

    def __new__(cls, text: str, *, actionable: bool = False) -> Note:
        note = super().__new__(cls, text)
        note.actionable = actionable
        return note

    def __reduce__(self) -> tuple:
        return (_note, (str(self), self.actionable))


def _note(text: str, actionable: bool) -> Note:
    return Note(text, actionable=actionable)


def is_actionable(note: str) -> bool:
    """Whether a report note asks the user to act (a plain str never does)."""
    return getattr(note, "actionable", False)


class HandedOut(Protocol):
    """An output a Dynamo graph hands out as a copy, as a pass's `on_dynamo_graph` decided.

    Code after a graph break can write a graph's output in place, out of any one graph's
    reach; a pass that must keep the value safe from such writes hands out a copy instead
    and returns one record per copy. The Dynamo front-end watches each copy on later calls
    and sets `written_at` once a graph decided later writes it; the record says what the
    report shows then (`change()`) and, while no write is seen, names the copy (`label`)
    and why it is made (`why`, shared by the copies one note lists).
    """

    output: int  # index among the graph's flat outputs
    written_at: str  # where later code wrote the copy ("": no write seen)

    @property
    def label(self) -> str: ...

    @property
    def why(self) -> str: ...

    def change(self) -> Change: ...
