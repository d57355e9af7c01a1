"""The Report: every change, the code before and after, rendered as table, diff or JSON."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from fxgrad.changes import Change, Note, is_actionable, is_finding

_CLEANUP = re.compile(r";\s*(\w+\s*=\s*)+None\s*$")

# The table wraps the reason at this width, so that a long one stays readable (code
# columns are not wrapped: a line break inside code misleads).
_WHY_WIDTH = 72


# Tails torch appends to autograd errors, pointing at a backtrace or a mode the reader of
# fxgrad's message does not have.
_TORCH_TAILS = re.compile(
    r"\s*Hint: enable anomaly detection to find the operation that failed to compute its "
    r"gradient, with torch\.autograd\.set_detect_anomaly\([^)]*\)\."
    r"|\s*Hint: the backtrace further above shows the operation that failed to compute its "
    r"gradient\. The variable in question was changed in there or anywhere later\. Good luck!"
)


def clean_torch_error(text: str) -> str:
    """Drop torch's "Hint: enable anomaly detection" / "Good luck!" tails from an error."""
    return _TORCH_TAILS.sub("", text)


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
    # Which capture the report is of: "fx" (fxgrad's tracer, one graph) or "dynamo"
    # (torch.compile's graphs, for a forward the tracer refused).
    frontend: str = "fx"
    # Where the example inputs came from, when a tool says (the command line's `--input`,
    # `model.py:inputs()`).
    inputs_from: str = ""

    @property
    def applied(self) -> list[Change]:
        """The changes that were made."""
        return [c for c in self.changes if c.applied]

    @property
    def findings(self) -> list[Change]:
        """The changes the user must act on: rewrites and hazards left as is.

        Not: a layout pass's decision to leave code as is (measured and not worth it).
        """
        return [c for c in self.changes if is_finding(c)]

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 1 when there is a finding or an actionable note, else 0.

        Like a linter's: a rewrite fxgrad made or would make, a hazard it left as is (a
        NumPy call with no torch twin, a rolled-back rewrite, a write a `--ignore` skipped
        while eager backward fails) all exit 1; 0 means nothing to do.
        """
        if self.findings or any(is_actionable(n) for n in self.notes):
            return 1
        return 0

    def summary(self) -> str:
        """One sentence counting rewrites, findings and decisions to leave code as is."""
        n = len(self.applied)
        left = sum(1 for c in self.changes if not c.applied and is_finding(c))
        kept = len(self.changes) - n - left
        if self.mode == "pending":
            return "not decided yet: fxgrad decides on the first call, with its inputs."
        decided = "on example inputs" if self.mode == "exact" else "statically"
        if self.mode == "exact" and self.inputs_from:
            decided += f" from {self.inputs_from}"
        text = f"{n} rewrite{'s' if n != 1 else ''}"
        if left:
            text += f", {left} finding{'s' if left != 1 else ''} left as is"
        if kept:
            text += f", {kept} layout decision{'s' if kept != 1 else ''} to keep the code"
        act = sum(1 for n in self.notes if is_actionable(n))
        if act:
            text += f", {act} note{'s' if act != 1 else ''} to act on"
        return f"{text} ({decided})."

    def table(self, *, verbose: bool = False) -> str:
        """Render the changes as a table plus a count sentence.

        Identical changes in repeated blocks (the same pass, line, outcome and reason) are
        one row with their count and the module paths they cover. Layout decisions to keep
        the code as is are shown only when `verbose`.
        """
        from tabulate import tabulate  # only reports that are printed need it

        lines = []
        shown = self.changes if verbose else [c for c in self.changes if is_finding(c)]
        if shown:
            rows = [_row(group) for group in _groups(shown)]
            lines.append(
                tabulate(
                    rows,
                    headers=["where", "code", "before", "after", "why"],
                    tablefmt="simple",
                    maxcolwidths=[None, None, None, None, _WHY_WIDTH],
                )
            )
        lines.extend(f"note: {clean_torch_error(n)}" for n in self.notes)
        lines.append(self.summary())
        if len(shown) < len(self.changes):
            lines.append("(-v or verbose=True shows the layout decisions; JSON has every change.)")
        return "\n".join(lines)

    def with_modules(
        self,
        by_node: dict[str, str],
        by_where: dict[str, list[str]],
        sources: dict[str, str] | None = None,
    ) -> Report:
        """A copy whose changes name their module path (`layers.3`) where it is known.

        `by_node` maps node names to module paths, `by_where` a `file.py:line` to the module
        paths of the nodes made there, in graph order. A change whose node is gone (it was
        rewritten) takes the paths at its line when there are as many as such changes.
        `sources` maps node names to the user's source lines.
        """
        sources = sources or {}
        changes = [
            dataclasses.replace(
                c,
                module=c.module or by_node.get(c.node, ""),
                source=c.source or sources.get(c.node, ""),
            )
            for c in self.changes
        ]
        unresolved: dict[tuple[str, str], list[int]] = {}
        for i, c in enumerate(changes):
            if not c.module and c.node not in by_node and c.where:
                unresolved.setdefault((c.code, c.where), []).append(i)
        for (_, where), indices in unresolved.items():
            paths = by_where.get(where, [])
            if len(indices) > 1 and len(paths) == len(indices):
                for i, path in zip(indices, paths):
                    changes[i] = dataclasses.replace(changes[i], module=path)
        return dataclasses.replace(self, changes=changes)

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
            "inputs_from": self.inputs_from,
            "frontend": self.frontend,
            "exit_code": self.exit_code,
            "changes": [c.to_dict() for c in self.changes],
            "notes": [str(n) for n in self.notes],
            # Which notes ask the user to act (eager backward fails, a rollback), by index.
            "actionable_notes": [i for i, n in enumerate(self.notes) if is_actionable(n)],
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
            notes=_notes(data),
            model=data.get("model", ""),
            variant=data.get("variant", ""),
            inputs_from=data.get("inputs_from", ""),
            frontend=data.get("frontend", "fx"),
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
        lines = [c.line() for c in self.changes]
        lines += [f"note: {clean_torch_error(n)}" for n in self.notes]
        return "\n".join(lines + [self.summary()])


def _group_key(c: Change) -> tuple:
    # Instances of one block differ only in node names; "as measured at cat_3" says the
    # verdict was shared, which the grouped row shows anyway.
    note = re.sub(r"\b(?:as )?measured(?: at \w+)?", "measured", c.note)
    return (c.code, c.where, c.applied, c.after if c.applied else "", note)


def _groups(changes: list[Change]) -> list[list[Change]]:
    groups: dict[tuple, list[Change]] = {}
    for c in changes:
        key = _group_key(c) if c.where else (id(c),)
        groups.setdefault(key, []).append(c)
    return list(groups.values())


# Names fx makes up for values (`getitem_8`, `stage2_1_branch2_7`): a reader cannot find
# them in their code, so the table shows the user's source line instead where it has one.
_FX_NAME = re.compile(r"\b(?:getitem|getattr)(?:_\d+)?\b|\b[A-Za-z]\w*?_\d+(?:_\w+)?\b")


def _before(c: Change) -> str:
    if c.source and _FX_NAME.search(c.before) and not _FX_NAME.search(c.source):
        return c.source
    return c.before


def _row(group: list[Change]) -> list[str]:
    c = group[0]
    where = c.where or "?"
    why = c.note
    if len(group) > 1:
        where += f" ({len(group)}x)"
        modules = [g.module for g in group if g.module]
        if len(modules) == len(group):
            why = f"{why} [in {compress_paths(modules)}]".strip()
    return [where, c.code, _before(c), c.after if c.applied else "(left as is)", why]


def compress_paths(paths: list[str], limit: int = 8) -> str:
    """`layers.0, layers.1, layers.2, head` -> `layers.0-2, head` (at most `limit` items)."""
    runs: list[tuple[str, int, int]] = []  # (prefix, first, last)
    plain: list[str] = []
    order: list[tuple[str, int]] = []
    for path in paths:
        m = re.fullmatch(r"(.*\.)(\d+)", path)
        if m is None:
            order.append(("plain", len(plain)))
            plain.append(path)
            continue
        prefix, index = m.group(1), int(m.group(2))
        if runs and runs[-1][0] == prefix and runs[-1][2] + 1 == index:
            runs[-1] = (prefix, runs[-1][1], index)
            continue
        order.append(("run", len(runs)))
        runs.append((prefix, index, index))
    items = []
    for kind, i in order:
        if kind == "plain":
            items.append(plain[i])
        else:
            prefix, first, last = runs[i]
            items.append(f"{prefix}{first}" if first == last else f"{prefix}{first}-{last}")
    if len(items) > limit:
        items = items[:limit] + [f"... ({len(items) - limit} more)"]
    return ", ".join(items)


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


def _notes(data: dict) -> list[str]:
    act = set(data.get("actionable_notes", []))
    return [Note(n, actionable=i in act) for i, n in enumerate(data.get("notes", []))]
