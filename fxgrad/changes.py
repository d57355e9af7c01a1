"""Change records: one per rewrite (or per decision a pass reports), driving every output."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
        return asdict(self)


# Layout passes (FXG2xx) only make code faster: leaving code as is there is a measured
# decision (or an unmeasured one: no inputs, no budget), never a hazard.
_SPEED_ONLY = ("FXG2",)


def is_finding(change: Change) -> bool:
    """True for a rewrite, or a hazard left as is; False for a speed decision to keep code.

    A layout pass that measured `.contiguous()` and found it not worth it leaves nothing to
    do. A rewrite that was rolled back is a finding whatever its pass: fxgrad failed there.
    """
    if change.applied:
        return True
    return not change.code.startswith(_SPEED_ONLY) or "rolled back" in change.note
