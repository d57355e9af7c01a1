"""The passes' catalog: codes, names, kinds and docstrings, read without importing torch.

`fxgrad passes` and `fxgrad explain` list the passes while staying torch-free, so the pass
modules are read as source when they are not imported yet. This lives above both the
registry (the `Pass` spec every pass module imports) and the passes package: importing
`fxgrad.passes` from the registry would make the two import each other.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from fxgrad.changes import PassKind
from fxgrad.registry import summary


@dataclass(frozen=True)
class PassDoc:
    """What `fxgrad passes` and `fxgrad explain` show of a pass."""

    code: str
    name: str
    doc: str
    default: bool = True
    kind: PassKind = PassKind.HAZARD

    @property
    def summary(self) -> str:
        return summary(self.doc)


def pass_docs() -> list[PassDoc]:
    """The passes' documentation, in pipeline order, without importing torch.

    When `fxgrad.passes` is already imported its `ALL` is the answer; otherwise the pass
    modules are read as source (their docstrings and `PASS = Pass(...)` lines), and imported
    only if that reading fails.
    """
    loaded = sys.modules.get("fxgrad.passes")
    if loaded is None:
        docs = _read_pass_sources()
        if docs is not None:
            return docs
        from fxgrad.passes import ALL
    else:
        ALL = loaded.ALL  # noqa: N806
    return [PassDoc(p.code, p.name, p.doc, p.default, p.kind) for p in ALL]


def _literal(node: ast.expr | None, names: dict[str, object]) -> object:
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id == "PassKind":  # kind=PassKind.SPEED
            return PassKind[node.attr]
    if isinstance(node, ast.Constant):
        return node.value
    raise ValueError("not a literal")


def _read_pass(path: Path) -> PassDoc:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree, clean=False) or ""
    names: dict[str, object] = {"__doc__": doc}
    spec = None
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
            continue
        target = stmt.targets[0]
        if not isinstance(target, ast.Name):
            continue
        if isinstance(stmt.value, ast.Constant):
            names[target.id] = stmt.value.value
        elif target.id == "PASS" and isinstance(stmt.value, ast.Call):
            spec = {k.arg: k.value for k in stmt.value.keywords if k.arg}
    if spec is None:
        raise ValueError(f"no PASS = Pass(...) in {path}")
    default = _literal(spec["default"], names) if "default" in spec else True
    kind = _literal(spec["kind"], names) if "kind" in spec else PassKind.HAZARD
    return PassDoc(
        code=str(_literal(spec["code"], names)),
        name=str(_literal(spec["name"], names)),
        doc=str(_literal(spec["doc"], names)),
        default=bool(default),
        kind=PassKind(kind),
    )


def _pass_source(folder: Path, name: str) -> Path:
    """A pass is a module (`name.py`) or a package (`name/__init__.py` defines PASS)."""
    module = folder / f"{name}.py"
    return module if module.exists() else folder / name / "__init__.py"


def _read_pass_sources() -> list[PassDoc] | None:
    try:
        spec = importlib.util.find_spec("fxgrad.passes")
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations)))
        tree = ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))
        order = next(
            stmt.value
            for stmt in tree.body
            if isinstance(stmt, (ast.Assign, ast.AnnAssign))
            and any(
                isinstance(t, ast.Name) and t.id == "ALL"
                for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
            )
        )
        if not isinstance(order, (ast.Tuple, ast.List)):
            return None
        docs = []
        for item in order.elts:
            if not (isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name)):
                return None
            docs.append(_read_pass(_pass_source(folder, item.value.id)))
        return docs
    except (OSError, SyntaxError, ValueError, KeyError, StopIteration, ImportError):
        return None
