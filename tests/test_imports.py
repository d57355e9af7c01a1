"""fxgrad's modules import each other without cycles, and no package imports another's
private names.

Every import statement in fxgrad/ and passes/ (the package `fxgrad.passes`) is read with
`ast`, those inside functions too. An import moved into a function still runs, on the first
call, and the two modules still depend on each other: a cycle closed that way is only
postponed, and a function that happens to be called while some module is being imported
brings it back as a half-initialized module. So the rule is:

- Every import that runs is an edge of the module graph, at the top of a module or inside
  a function. No lazy import is left out on the grounds that it "cannot form a cycle at
  import time": that holds only until someone calls the function at import time, and the
  design would still have the cycle.
- Imports under `if TYPE_CHECKING:` never run; they are left out of the graph (they are
  still checked for private names).
- An import of `a.b.c` is an edge to `a.b.c` and to the packages above it (their
  `__init__` runs first), except the importer's own packages: those are imported before
  the importer runs, so the edge adds nothing.
- A lazy import of an fxgrad module is allowed only when it is listed in LAZY with its
  reason: keeping torch out of a start-up path (the CLI's `fxgrad passes` and `fxgrad
  explain`, `import fxgrad`, pytest loading the plugin), or reading a value tests swap
  (`fxgrad.passes.ALL`). Anything else goes to the top of the module; a cycle it would
  close is broken by moving code to the module it belongs to.

A package, for private names, is the fxgrad core (the modules directly in fxgrad/),
fxgrad.tracing, the passes package's own `__init__`, or one pass (fxgrad.passes.<name>).
A private name (one leading underscore; dunders are public) may be imported only within
its package: another package needs a public name in the module that owns it.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"fxgrad": "fxgrad", "passes": "fxgrad.passes"}  # folder -> package it ships as

_TORCH_FREE_CLI = (
    "the CLI starts without torch (`fxgrad passes` and `fxgrad explain` never load it); "
    "what needs torch loads when a command needs it"
)
_SWAPPED_ALL = "tests swap fxgrad.passes.ALL: it is read when called, not bound at import"

# (importing file, imported module) -> why that import stays inside a function.
LAZY = {
    ("fxgrad/__init__.py", "fxgrad.api"): (
        "`import fxgrad` (and pytest loading the plugin) must not import torch; fix, check "
        "and FixedModule load on first use"
    ),
    ("fxgrad/pytest_plugin.py", "fxgrad.testing"): (
        "pytest loads the plugin in every session; torch loads only for a test using it"
    ),
    ("fxgrad/catalog.py", "fxgrad.passes"): (
        "pass docs are read from the sources without torch; the passes are imported only "
        "when that reading fails"
    ),
    ("fxgrad/api.py", "fxgrad.passes"): _SWAPPED_ALL,
    ("fxgrad/decide.py", "fxgrad.passes"): _SWAPPED_ALL,
    ("fxgrad/fixed.py", "fxgrad.passes"): _SWAPPED_ALL,
    ("fxgrad/cli.py", "fxgrad.api"): _TORCH_FREE_CLI,
    ("fxgrad/cli.py", "fxgrad.export"): _TORCH_FREE_CLI,
    ("fxgrad/cli.py", "fxgrad.export_dot"): _TORCH_FREE_CLI,
    ("fxgrad/cli.py", "fxgrad.fixed"): _TORCH_FREE_CLI,
    ("fxgrad/cli.py", "fxgrad.trace"): _TORCH_FREE_CLI,
    ("fxgrad/cli_model_errors.py", "fxgrad.graph_utils"): _TORCH_FREE_CLI,
    ("fxgrad/cli_model_errors.py", "fxgrad.passes"): _TORCH_FREE_CLI,
    ("fxgrad/cli_model_errors.py", "fxgrad.tracing.callspec"): _TORCH_FREE_CLI,
}


@dataclass(frozen=True)
class Import:
    """One imported name (or module) of one import statement."""

    file: str  # the importing file, relative to the repository
    line: int
    importer: str  # the importing module
    module: str  # the module named: `a.b` for `from a.b import c` unless c is a module
    name: str | None  # the name imported from `module`; None for a module itself
    lazy: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`
    alias: str = ""  # how the code names an imported module (`g` for `import a.b as g`)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every module of fxgrad/ and passes/."""
    found = {}
    for folder, package in FOLDERS.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if folder == "fxgrad" and parts[0] == "passes":
                continue  # a checkout's link to passes/, read as passes/ itself
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(
    node: ast.AST, lazy: bool = False, type_only: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement below `node`, with whether it is lazy or type-checking only."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, lazy, type_only
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _statements(child, True, type_only)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _statements(ast.Module(body=[stmt], type_ignores=[]), lazy, True)
            for stmt in child.orelse:
                yield from _statements(ast.Module(body=[stmt], type_ignores=[]), lazy, type_only)
        else:
            yield from _statements(child, lazy, type_only)


def _imports(module: str, path: Path, known: dict[str, Path], source: str | None = None):
    """The fxgrad imports of one module, `from a import b` resolved to `a.b` when b is a
    module, relative imports to absolute names."""
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    file = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for stmt, lazy, type_only in _statements(tree):
        here = dict(file=file, line=stmt.lineno, importer=module, lazy=lazy, type_only=type_only)
        if isinstance(stmt, ast.Import):
            out += [
                Import(module=a.name, name=None, alias=a.asname or a.name, **here)
                for a in stmt.names
            ]
            continue
        base = stmt.module or ""
        if stmt.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - stmt.level + 1] + ([base] if base else []))
        for alias in stmt.names:
            sub = f"{base}.{alias.name}"
            if sub in known:
                out.append(Import(module=sub, name=None, alias=alias.asname or alias.name, **here))
            else:
                out.append(Import(module=base, name=alias.name, **here))
    return [i for i in out if i.module == "fxgrad" or i.module.startswith("fxgrad.")]


def _all_imports() -> list[Import]:
    known = _modules()
    return [i for m, path in known.items() for i in _imports(m, path, known)]


def _package(module: str) -> str:
    """The package a module belongs to, for private names (see the module docstring)."""
    parts = module.split(".")
    if parts[:2] == ["fxgrad", "tracing"]:
        return "fxgrad.tracing"
    if parts[:2] == ["fxgrad", "passes"]:
        return ".".join(parts[:3])
    return "fxgrad"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _graph(imports: list[Import], known: dict[str, Path]) -> dict[str, dict[str, Import]]:
    """module -> module it imports -> the import statement that makes the edge."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in known}
    for imp in imports:
        if imp.type_only or imp.module not in known:
            continue
        parts = imp.importer.split(".")
        own = {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
        target = imp.module.split(".")
        above = {".".join(target[:k]) for k in range(1, len(target))} - own
        for dst in sorted(above | {imp.module} - {imp.importer}):
            graph[imp.importer].setdefault(dst, imp)
    return graph


def _cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle for each strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while v not in group:
                group.add(stack.pop())
            if len(group) > 1 or v in graph[v]:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, dict[str, Import]], group: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected group."""
    start = min(group)
    came: dict[str, str] = {}
    todo = deque([start])
    while todo:
        v = todo.popleft()
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(came[path[-1]])
                return [*reversed(path), start]
            if w in group and w not in came:
                came[w] = v
                todo.append(w)
    raise AssertionError(f"no cycle through {start}")


def _show(graph: dict[str, dict[str, Import]], cycle: list[str]) -> str:
    steps = [
        f"  {a} -> {b}  ({graph[a][b].where}{', lazy' if graph[a][b].lazy else ''})"
        for a, b in zip(cycle, cycle[1:])
    ]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_no_import_cycles():
    known = _modules()
    graph = _graph(_all_imports(), known)
    cycles = [_show(graph, c) for c in _cycles(graph)]
    assert not cycles, (
        "import cycles (an import inside a function counts too); move the code to the "
        "module it belongs to, or to a lower module both can import:\n" + "\n".join(cycles)
    )


def test_no_private_names_across_packages():
    crossing = [
        f"{i.where} {i.importer} imports {i.module}.{i.name}"
        for i in _all_imports()
        if i.name is not None and _is_private(i.name) and _package(i.importer) != _package(i.module)
    ]
    crossing += [
        f"{where} {importer} reads {attribute}" for where, importer, attribute in _module_attrs()
    ]
    assert not crossing, (
        "private names used across package lines; give the name a public one in the module "
        "that owns it (rename it at its definition and its uses):\n" + "\n".join(crossing)
    )


def _module_attrs() -> Iterator[tuple[str, str, str]]:
    """`g._x` where `g` names an imported fxgrad module of another package."""
    known = _modules()
    for module, path in known.items():
        bound = {i.alias: i.module for i in _imports(module, path, known) if i.name is None}
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            owner = bound.get(ast.unparse(node.value))
            if owner is not None and _package(owner) != _package(module):
                rel = path.relative_to(ROOT).as_posix()
                yield f"{rel}:{node.lineno}", module, f"{owner}.{node.attr}"


def test_lazy_imports_are_allowed_and_say_why():
    lazy = {(i.file, i.module): i for i in _all_imports() if i.lazy and not i.type_only}
    unlisted = [
        f"{i.where} imports {i.module} inside a function" for k, i in lazy.items() if k not in LAZY
    ]
    assert not unlisted, (
        "imports inside functions that LAZY does not list; move them to the top of the module "
        "(if that makes a cycle, move the code the two modules share), or list one kept for "
        "start-up speed or a swapped value in LAZY with its reason:\n" + "\n".join(unlisted)
    )
    stale = [f"{file} {module}" for file, module in LAZY if (file, module) not in lazy]
    assert not stale, "LAZY entries no lazy import needs any more:\n" + "\n".join(stale)
    assert all(reason.strip() and "\n" not in reason for reason in LAZY.values())


def test_no_imports_by_name_at_run_time():
    """`importlib.import_module("fxgrad.x")` would be an edge this test cannot see."""
    hidden = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func).split(".")[-1] in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("fxgrad")
            ):
                hidden.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    assert not hidden, "fxgrad modules imported by name; use an import statement:\n" + "\n".join(
        hidden
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from fxgrad.tracing import tracer", [("fxgrad.tracing.tracer", None)]),
        (
            "from fxgrad.tracing import capture, twin",
            [("fxgrad.tracing.capture", None), ("fxgrad.tracing", "twin")],
        ),
        ("from . import names", [("fxgrad.tracing.names", None)]),
        ("from .names import ROOT_ATTR", [("fxgrad.tracing.names", "ROOT_ATTR")]),
        ("from .. import errors", [("fxgrad.errors", None)]),
        ("import fxgrad.graph_utils as g", [("fxgrad.graph_utils", None)]),
        ("import torch", []),
    ],
)
def test_imports_resolve_submodules_and_relative_names(source, expected):
    known = _modules()
    path = known["fxgrad.tracing.proxy"]
    found = [(i.module, i.name) for i in _imports("fxgrad.tracing.proxy", path, known, source)]
    assert found == expected


def test_lazy_and_type_checking_imports_are_read():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from fxgrad.context import Context\n"
        "def f():\n    from fxgrad.passes import ALL\n"
    )
    known = _modules()
    found = _imports("fxgrad.registry", known["fxgrad.registry"], known, source)
    assert [(i.module, i.lazy, i.type_only) for i in found] == [
        ("fxgrad.context", False, True),
        ("fxgrad.passes", True, False),
    ]
    graph = _graph(found, known)
    assert set(graph["fxgrad.registry"]) == {"fxgrad.passes"}  # type-only imports never run


def test_a_cycle_is_found_and_shown():
    known = {m: ROOT for m in ("fxgrad.a", "fxgrad.b", "fxgrad.c")}
    edge = Import("fxgrad/a.py", 1, "fxgrad.a", "fxgrad.b", None, lazy=True, type_only=False)
    imports = [
        edge,
        Import("fxgrad/b.py", 2, "fxgrad.b", "fxgrad.c", "x", lazy=False, type_only=False),
        Import("fxgrad/c.py", 3, "fxgrad.c", "fxgrad.a", None, lazy=False, type_only=False),
    ]
    graph = _graph(imports, known)
    (cycle,) = _cycles(graph)
    assert cycle == ["fxgrad.a", "fxgrad.b", "fxgrad.c", "fxgrad.a"]
    assert "fxgrad/a.py:1, lazy" in _show(graph, cycle)
