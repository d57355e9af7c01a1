"""The Report: every change, the code before and after, rendered as table, diff or JSON."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from fxgrad.changes import Change

_CLEANUP = re.compile(r";\s*(\w+\s*=\s*)+None\s*$")


def normalize_code(code: str) -> str:
    """Drop fx's cleanup tails (`;  x = None`) and blank lines so diffs show real changes."""
    lines = []
    for line in code.splitlines():
        line = _CLEANUP.sub("", line).rstrip()
        if line.strip():
            lines.append(line)
    return "\n".join(lines) + "\n"


@dataclass
class Report:
    """What fxgrad changed in a model, and what it found and left alone."""

    changes: list[Change] = field(default_factory=list)
    code_before: str = ""
    code_after: str = ""
    mode: str = "static"  # "exact" (decided on a real call), "static", or "pending"
    notes: list[str] = field(default_factory=list)
    model: str = ""
    # For a fixed module's report: the call it was decided on (train/eval, the inputs'
    # dtypes, ...), since each combination that needs its own decisions gets a variant.
    variant: str = ""

    @property
    def applied(self) -> list[Change]:
        """The changes that were made."""
        return [c for c in self.changes if c.applied]

    @property
    def exit_code(self) -> int:
        """0 when nothing would change, else 1 (the CLI's exit code)."""
        return 1 if self.applied else 0

    def summary(self) -> str:
        """One sentence counting rewrites and findings."""
        n, left = len(self.applied), len(self.changes) - len(self.applied)
        if self.mode == "pending":
            return "not decided yet: fxgrad decides on the first call, with its inputs."
        decided = "on example inputs" if self.mode == "exact" else "statically"
        text = f"{n} rewrite{'s' if n != 1 else ''}"
        if left:
            text += f", {left} finding{'s' if left != 1 else ''} left as is"
        return f"{text} ({decided})."

    def table(self) -> str:
        """Render the changes as a table, one row each, plus a count sentence."""
        from tabulate import tabulate  # only reports that are printed need it

        lines = []
        if self.changes:
            rows = [
                [c.where or "?", c.code, c.before, c.after if c.applied else "(left as is)", c.note]
                for c in self.changes
            ]
            lines.append(
                tabulate(
                    rows, headers=["where", "code", "before", "after", "why"], tablefmt="simple"
                )
            )
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append(self.summary())
        return "\n".join(lines)

    def diff(self, *, color: bool = False) -> str:
        """A unified diff of the normalized generated code before and after."""
        diff = difflib.unified_diff(
            normalize_code(self.code_before).splitlines(keepends=True),
            normalize_code(self.code_after).splitlines(keepends=True),
            fromfile=f"{self.model or 'model'} (captured)",
            tofile=f"{self.model or 'model'} (fixed)",
        )
        text = "".join(diff)
        if color:
            text = "".join(_colorize(line) for line in text.splitlines(keepends=True))
        return text

    def to_dict(self) -> dict:
        """A JSON-ready dict of the whole report."""
        return {
            "model": self.model,
            "mode": self.mode,
            "variant": self.variant,
            "exit_code": self.exit_code,
            "changes": [c.to_dict() for c in self.changes],
            "notes": list(self.notes),
            "code_before": self.code_before,
            "code_after": self.code_after,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON for tools."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """Rebuild a report from `to_dict()` output."""
        return cls(
            changes=[Change(**c) for c in data.get("changes", [])],
            code_before=data.get("code_before", ""),
            code_after=data.get("code_after", ""),
            mode=data.get("mode", "static"),
            notes=list(data.get("notes", [])),
            model=data.get("model", ""),
            variant=data.get("variant", ""),
        )

    def extend(self, changes: Iterable[Change]) -> None:
        """Add changes, skipping ones already recorded (same code, place and code)."""
        seen = {(c.code, c.where, c.before) for c in self.changes}
        for c in changes:
            if (c.code, c.where, c.before) not in seen:
                self.changes.append(c)
                seen.add((c.code, c.where, c.before))

    def __str__(self) -> str:
        if not self.changes and not self.notes:
            return f"fxgrad: {self.summary()}"
        lines = [c.line() for c in self.changes] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines + [self.summary()])


def _colorize(line: str) -> str:
    if line.startswith(("+++", "---")):
        return f"\x1b[1m{line.rstrip(chr(10))}\x1b[0m\n"
    if line.startswith("+"):
        return f"\x1b[32m{line.rstrip(chr(10))}\x1b[0m\n"
    if line.startswith("-"):
        return f"\x1b[31m{line.rstrip(chr(10))}\x1b[0m\n"
    if line.startswith("@@"):
        return f"\x1b[36m{line.rstrip(chr(10))}\x1b[0m\n"
    return line
