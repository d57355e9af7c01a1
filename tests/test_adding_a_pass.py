"""Adding a pass is one folder under passes/ and its entry in `passes.ALL`, nothing else.

A copy of fxgrad (core files byte for byte) gets a toy pass, FXG401 sigmoid-call
(`torch.sigmoid(x)` becomes `torch.special.expit(x)`, the same values), as the package
`passes/toy_pass/` and one entry in ALL (with its import) in `passes/__init__.py`. Then
the API, the CLI, `fxgrad.testing` and `fxgrad explain` run from that copy in subprocesses,
and each must see the toy pass as it sees the passes that ship.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import fxgrad
import fxgrad.passes

pytestmark = pytest.mark.slow  # each subprocess imports torch

TOY_PASS = '''\
"""FXG401 sigmoid-call

## What it does
Rewrites `torch.sigmoid(x)` into `torch.special.expit(x)`.

## Why is this bad?
A stand-in hazard: this toy pass treats every `torch.sigmoid` call as one, so that a rewrite
and its report can be followed end to end. Both compute the same values.

## Example
    return torch.sigmoid(self.lin(x))

## Use instead
    return torch.special.expit(self.lin(x))

## Left alone when
- the sigmoid is a method call (`x.sigmoid()`) or a module (`nn.Sigmoid`)
"""

from __future__ import annotations

import torch
from torch import fx

from fxgrad.changes import Change
from fxgrad.context import Context
from fxgrad.graph_utils import location, render_node, source_line
from fxgrad.registry import Pass

CODE = "FXG401"


def _is_sigmoid(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is torch.sigmoid


def run(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    changes = []
    for node in gm.graph.nodes:
        if not _is_sigmoid(node):
            continue
        before = source_line(node) or render_node(node)
        node.target = torch.special.expit
        changes.append(
            Change(CODE, node.name, before, render_node(node), location(node), "same values")
        )
    return changes


PASS = Pass(
    code=CODE,
    name="sigmoid-call",
    run=run,
    doc=__doc__,
    applies=lambda gm: any(_is_sigmoid(n) for n in gm.graph.nodes),
)
'''

MODEL = """\
import torch


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.sigmoid(self.lin(x)) * 2


def inputs():
    torch.manual_seed(0)
    return (torch.randn(3, 8),)
"""


def _with_toy_pass(init: str) -> str:
    """passes/__init__.py with the toy pass imported and last in ALL: two lines edited."""
    tree = ast.parse(init)
    (order,) = [
        s.value
        for s in tree.body
        if isinstance(s, (ast.Assign, ast.AnnAssign))
        and "ALL" in {t.id for t in getattr(s, "targets", [getattr(s, "target", None)])}
    ]
    assert isinstance(order, ast.Tuple) and order.end_lineno is not None
    lines = init.splitlines(keepends=True)
    close = len("".join(lines[: order.end_lineno - 1])) + order.end_col_offset - 1  # its ")"
    init = init[:close].rstrip().rstrip(",") + ", toy_pass.PASS" + init[close:]
    last = [s for s in tree.body if isinstance(s, ast.ImportFrom) and s.module == "fxgrad.passes"]
    after = len("".join(lines[: last[-1].end_lineno]))
    return init[:after] + "from fxgrad.passes import toy_pass\n" + init[after:]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder to put first on PYTHONPATH: fxgrad copied, passes/ with the toy pass added."""
    root = tmp_path_factory.mktemp("site")
    core, passes = Path(fxgrad.__file__).parent, Path(fxgrad.passes.__file__).parent
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(core, root / "fxgrad", ignore=shutil.ignore_patterns("__pycache__", "passes"))
    shutil.copytree(passes, root / "fxgrad" / "passes", ignore=skip)
    copied = root / "fxgrad" / "passes"
    (copied / "toy_pass").mkdir()
    (copied / "toy_pass" / "__init__.py").write_text(TOY_PASS)
    init = copied / "__init__.py"
    init.write_text(_with_toy_pass(init.read_text()))
    (root / "model.py").write_text(MODEL)
    return root


def _untouched(site: Path) -> list[str]:
    """Core files of the copy that differ from fxgrad's own: none may."""
    core = Path(fxgrad.__file__).parent
    return [
        str(p.relative_to(core))
        for p in core.rglob("*.py")
        if "passes" not in p.relative_to(core).parts
        and p.read_bytes() != (site / "fxgrad" / p.relative_to(core)).read_bytes()
    ]


def _python(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, *args], cwd=site, env=env, capture_output=True, text=True, timeout=300
    )


def _script(site: Path, code: str) -> Any:
    """Run `code` against the copy; it prints one JSON value as its last line."""
    done = _python(site, "-c", textwrap.dedent(code))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def api(site) -> dict:
    """What fix, check and fxgrad.testing make of the model, in one subprocess."""
    return _script(
        site,
        """
        import json, pathlib
        import torch
        import fxgrad, fxgrad.passes
        from fxgrad.testing import AutogradCheckError, assert_autograd_safe, assert_fix_equivalent
        from model import Model, inputs

        assert pathlib.Path(fxgrad.passes.__file__).resolve().parents[2] == pathlib.Path.cwd()
        model, (x,) = Model(), inputs()
        fixed = fxgrad.fix(model, (x,))
        torch.testing.assert_close(fixed(x), model(x))
        fixed(x).sum().backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model(x).sum().backward()
        for g, p in zip(got, model.parameters()):
            torch.testing.assert_close(g, p.grad)
        checked = fxgrad.check(Model(), (x,))
        assert_fix_equivalent(Model(), x)
        try:
            safe = [c.code for c in assert_autograd_safe(Model(), x).changes]
            raised = None
        except AutogradCheckError as e:
            safe, raised = [], str(e)
        print(json.dumps({
            "passes": [p.code for p in fxgrad.passes.ALL],
            "fixed": [c.line() for c in fixed.report.changes],
            "code": fixed.code,
            "checked": [c.line() for c in checked.changes],
            "exit": checked.exit_code,
            "safe": safe,
            "raised": raised,
        }))
        """,
    )


def test_the_toy_pass_needs_no_core_file(site):
    assert _untouched(site) == []
    shipped = Path(fxgrad.passes.__file__).read_text().splitlines()
    edited = (site / "fxgrad" / "passes" / "__init__.py").read_text().splitlines()
    added = [line for line in difflib.ndiff(shipped, edited) if line.startswith("+ ")]
    assert len(added) == 2 and all("toy_pass" in line for line in added), added


def test_fix_and_check_apply_and_report_the_toy_pass(api):
    assert api["passes"][-1] == "FXG401"
    (line,) = [c for c in api["fixed"] if " FXG401 " in c]
    assert line == (
        "model.py:10 FXG401 return torch.sigmoid(self.lin(x)) * 2 -> "
        "torch.special.expit(lin) (same values)"
    )
    assert "special_expit(lin)" in api["code"] and "torch.sigmoid" not in api["code"]
    assert any(" FXG401 " in c for c in api["checked"]) and api["exit"] == 1


def test_the_cli_reports_the_toy_pass(site):
    done = _python(site, "-m", "fxgrad", "diff", "model.py:Model")
    assert done.returncode == 1, done.stderr
    assert "FXG401" in done.stderr and "torch.special.expit(lin)" in done.stderr  # the table
    assert "-    sigmoid = torch.sigmoid(lin)" in done.stdout  # the diff


def test_explain_and_passes_read_the_toy_pass_without_torch(site):
    explained = _python(site, "-m", "fxgrad", "explain", "FXG401")
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.startswith("FXG401 sigmoid-call\n\n## What it does")
    listed = _python(site, "-m", "fxgrad", "passes", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout) if r["code"] == "FXG401"]
    assert row["summary"] == "Rewrites `torch.sigmoid(x)` into `torch.special.expit(x)`."
    read = _script(
        site,
        """
        import json, sys
        from fxgrad.catalog import pass_docs
        print(json.dumps([[d.code for d in pass_docs()], "torch" in sys.modules]))
        """,
    )
    assert read == [[*(p.code for p in fxgrad.passes.ALL), "FXG401"], False]


def test_assert_autograd_safe_runs_with_the_toy_pass(api):
    assert api["raised"] is not None or "FXG401" in api["safe"]


def test_assert_autograd_safe_fails_on_the_toy_hazard(api):
    # A new family (FXG4xx) counts: the core reads Pass.kind (hazard by default), no code.
    assert api["raised"] is not None and "FXG401" in api["raised"]
