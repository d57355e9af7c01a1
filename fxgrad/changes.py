"""Change records: one per rewrite (or per decision a pass reports), driving every output."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Change:
    """One rewrite fxgrad made, or one hazard it found and left alone.

    `applied` is False for findings that were reported but not rewritten (for example a
    NumPy call with no faithful torch twin, or a rewrite that failed verification and was
    rolled back): the report still shows them so nothing is silently left as it was.
    """

    code: str  # "FXG101"
    node: str  # node name before the rewrite: "add_"
    before: str  # "h.add_(1.0)"
    after: str  # "h = h.add(1.0)"
    where: str = ""  # "model.py:42", innermost user frame of the node
    note: str = ""  # why: which op saved what, which leaf, what was measured
    applied: bool = True

    def line(self) -> str:
        """Render the change as one line: `model.py:42 FXG101 before -> after (note)`."""
        where = f"{self.where} " if self.where else ""
        arrow = "->" if self.applied else "left as is:"
        text = f"{where}{self.code} {self.before} {arrow} {self.after}".rstrip()
        if not self.applied and not self.after:
            text = f"{where}{self.code} {self.before} (left as is)"
        return f"{text} ({self.note})" if self.note else text

    def to_dict(self) -> dict:
        """Return the record as a JSON-ready dict."""
        return asdict(self)
