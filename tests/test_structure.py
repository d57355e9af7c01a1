"""Every function in fxgrad/ and passes/ fits on a screen: MAX_LINES lines at most.

A function that grows past a screen is usually two ideas (STYLE.md), so the limit holds
for every function, method and nested function, counted from its `def` line to its last
line. A builder that only lists the entries of a data table is the exception; each one
allowed is named in ALLOWED with the reason it may be longer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("fxgrad", "passes")
MAX_LINES = 60

# (file, qualified name) -> why it may be longer than MAX_LINES.
ALLOWED = {
    ("passes/numpy_round_trip/mappings.py", "_tables"): (
        "FXG301's mapping table: one entry per NumPy callable and ndarray method"
    ),
}


def _defs(node: ast.AST, file: str, prefix: str) -> Iterator[tuple[str, str, int, int]]:
    """(file, qualified name, first line, length) of each function below `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{child.name}"
            assert child.end_lineno is not None
            yield file, name, child.lineno, child.end_lineno - child.lineno + 1
            yield from _defs(child, file, f"{name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _defs(child, file, f"{prefix}{child.name}.")
        else:  # functions defined under `if`, `try` or `with`
            yield from _defs(child, file, prefix)


def _functions() -> list[tuple[str, str, int, int]]:
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            found.extend(_defs(tree, path.relative_to(ROOT).as_posix(), ""))
    return found


def test_functions_fit_on_a_screen():
    too_long = [
        f"{file}:{line} {name} has {length} lines"
        for file, name, line, length in _functions()
        if length > MAX_LINES and (file, name) not in ALLOWED
    ]
    assert not too_long, (
        f"functions longer than {MAX_LINES} lines; split each into functions that decide one "
        "thing each (a data table may be allowed in ALLOWED, with its reason):\n"
        + "\n".join(too_long)
    )


def test_allowed_functions_exist_and_need_it():
    lengths = {(file, name): length for file, name, _, length in _functions()}
    stale = [
        f"{file} {name}" for file, name in ALLOWED if lengths.get((file, name), 0) <= MAX_LINES
    ]
    assert not stale, f"ALLOWED entries gone or no longer over {MAX_LINES} lines:\n" + "\n".join(
        stale
    )


def test_every_allowance_says_why():
    assert all(reason.strip() and "\n" not in reason for reason in ALLOWED.values())
