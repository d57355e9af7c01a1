"""The command line: every command through CliRunner, plus the installed script end to end.

Most tests register a tiny test-only pass (FXG190, `torch.sigmoid` -> `torch.special.expit`,
which computes the same values) in place of the real passes, so they do not depend on
which real pass finds what. Tests on the bundled examples assert only what holds whatever
the passes find, except the one named for FXG101.
"""

from __future__ import annotations

import json
import os
import runpy
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import fx

import fxgrad
import fxgrad.passes
from fxgrad.changes import Change, PassKind
from fxgrad.cli import load_target, main, parse_input
from fxgrad.context import Context
from fxgrad.graph_utils import location
from fxgrad.registry import Pass
from fxgrad.report import Report

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
UNSAFE = f"{EXAMPLES / 'unsafe_inplace.py'}:Model"
SAFE = f"{EXAMPLES / 'safe_resnet_block.py'}:Block"


def _sigmoid_to_expit(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    changes = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch.sigmoid:
            node.target = torch.special.expit
            changes.append(
                Change(
                    code="FXG190",
                    node=node.name,
                    before="torch.sigmoid(...)",
                    after="torch.special.expit(...)",
                    where=location(node),
                    note="test pass",
                )
            )
    return changes


TEST_PASS = Pass(
    code="FXG190",
    name="test-sigmoid",
    run=_sigmoid_to_expit,
    doc="FXG190 test-sigmoid\n\n## What it does\nRewrites sigmoid into expit, for tests.\n",
)


@pytest.fixture
def test_pass(monkeypatch):
    monkeypatch.setattr(fxgrad.passes, "ALL", (TEST_PASS,))


MODELS = """
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return torch.sigmoid(self.fc(x)) * 2


class Clean(nn.Module):
    def forward(self, x):
        return x.relu() + 1


class NeedsArgs(nn.Module):
    def __init__(self, width):
        super().__init__()


class Untraceable(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))
        if h.sum() > 0:
            h.mul_(2)
        return h


class Plain:
    pass


instance = Model()
NUMBER = 3
EXAMPLE = (torch.randn(2, 8),)


def make():
    return Model()


def make_with_inputs():
    return Model(), (torch.randn(3, 8),)


def not_a_model():
    return (torch.randn(2, 8),)


def other_inputs():
    return (torch.randn(5, 8),)


def inputs():
    return (torch.randn(4, 8),)
"""

RICH = """
import torch
from torch import nn


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.LayerNorm(8))
        self.register_buffer("offset", torch.ones(8))
        self.w = nn.Parameter(torch.randn(8))

    def forward(self, x):
        return self.layers(x) + self.offset * self.w


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x, y):
        h = Double.apply(torch.sigmoid(self.block(x)))
        if h.shape[0] == 4:
            h = h + y
        h[:, 0] = 0.0
        return {"out": self.bn(h), "aux": [h.sum(), y]}


def inputs():
    return (torch.randn(4, 8), torch.randn(4, 8))
"""


@pytest.fixture
def models(tmp_path):
    """A model file with one of each kind of NAME; returns its path as a string."""
    path = tmp_path / "cli_models.py"
    path.write_text(MODELS)
    return str(path)


def invoke(*args: str, **kwargs):
    return CliRunner().invoke(main, list(args), **kwargs)


def assert_error(result, exit_code: int, *fragments: str) -> None:
    """A user mistake: the exit code, `error: ...` and a hint on stderr, no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: "), result.stderr
    assert any(line.startswith("hint: ") for line in lines[1:]), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# ---------------------------------------------------------------------------------------
# passes, explain, help


def test_passes_lists_every_registered_pass():
    result = invoke("passes")
    assert result.exit_code == 0
    for p in fxgrad.passes.ALL:
        assert p.code in result.stdout
        assert p.name in result.stdout
    assert result.stderr == ""


def test_passes_json(test_pass):
    result = invoke("passes", "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert rows == [
        {
            "code": "FXG190",
            "name": "test-sigmoid",
            "default": True,
            "kind": "hazard",
            "summary": "Rewrites sigmoid into expit, for tests.",
        }
    ]


@pytest.mark.parametrize("code", ["FXG190", "fxg190", "test-sigmoid"])
def test_explain_prints_the_docstring(test_pass, code):
    result = invoke("explain", code)
    assert result.exit_code == 0
    assert result.stdout.startswith("FXG190 test-sigmoid")
    assert "## What it does" in result.stdout


def test_explain_real_pass():
    first = fxgrad.passes.ALL[0]
    result = invoke("explain", first.code)
    assert result.exit_code == 0
    assert first.code in result.stdout


def test_explain_capture_is_where_trace_errors_point(tmp_path):
    result = invoke("explain", "capture")
    assert result.exit_code == 0
    assert result.stdout.startswith("# What capture records")
    assert "torch.fx.wrap" in result.stdout and "checkpoint" in result.stdout
    model_file = tmp_path / "isinstance_model.py"
    model_file.write_text(
        "import torch\n\n\nclass Model(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        assert isinstance(x * 2, torch.Tensor), 'needs a tensor'\n"
        "        return x\n"
    )
    traced = invoke("check", f"{model_file}:Model")  # static: nothing to hand to Dynamo
    assert_error(traced, 3, "isinstance_model.py:6", "fxgrad explain capture")
    run = invoke("check", f"{model_file}:Model", "--input", "float32[2]")
    assert run.exit_code == 0, run.output  # with inputs, Dynamo captures it
    assert "tracer refused the forward" in run.stdout and "isinstance_model.py:6" in run.stdout


def test_explain_unknown_code():
    result = invoke("explain", "FXG999")
    assert_error(result, 2, "No pass has the code 'FXG999'", "FXG101")


@pytest.mark.parametrize("command", [[], ["check"], ["diff"], ["fix"], ["explain"], ["passes"]])
def test_help_lists_exit_codes(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Exit codes:" in result.stdout
    for line in ("0  nothing to do", "1  findings", "2  usage error", "3  the model"):
        assert line in result.stdout


# ---------------------------------------------------------------------------------------
# check


def test_check_reports_a_change(test_pass, models):
    result = invoke("check", f"{models}:Model")
    assert result.exit_code == 1
    assert "FXG190" in result.stdout
    assert "cli_models.py:" in result.stdout  # the user's line
    assert "1 rewrite (on example inputs from cli_models.py:inputs())." in result.stdout
    assert result.stderr == ""


def test_check_clean_model_exits_0(test_pass, models):
    result = invoke("check", f"{models}:Clean")
    assert result.exit_code == 0
    assert "0 rewrites" in result.stdout


def test_check_json_round_trips(test_pass, models):
    result = invoke("check", f"{models}:Model", "--format", "json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["exit_code"] == 1
    assert [c["code"] for c in data["changes"]] == ["FXG190"]
    report = Report.from_dict(data)
    assert report.to_dict() == data
    assert report.exit_code == result.exit_code
    assert "expit" in report.code_after and "sigmoid" in report.code_before


@pytest.mark.parametrize(
    ("option", "exit_code"),
    [
        (["--select", "FXG190"], 1),
        (["--select", "fxg1"], 1),  # a prefix, any case
        (["--ignore", "FXG190"], 0),
        (["--ignore", "FXG1"], 0),
    ],
)
def test_select_and_ignore(test_pass, models, option, exit_code):
    result = invoke("check", f"{models}:Model", *option)
    assert result.exit_code == exit_code, result.stderr


def test_select_unknown_code_is_a_usage_error(test_pass, models):
    result = invoke("check", f"{models}:Model", "--select", "FXG7")
    assert_error(result, 2, "No pass has a code starting with 'FXG7'", "FXG190")


def test_static_mode_without_inputs(test_pass, tmp_path):
    path = tmp_path / "no_inputs.py"
    path.write_text("import torch\n\ndef make():\n    return torch.nn.Sigmoid()\n")
    result = invoke("check", f"{path}:make", "--format", "json")
    data = json.loads(result.stdout)
    assert data["mode"] == "static"
    assert data["inputs_from"] == ""
    assert result.exit_code == data["exit_code"]


# ---------------------------------------------------------------------------------------
# diff


def test_diff_stdout_is_the_diff_and_stderr_the_table(test_pass, models):
    result = invoke("diff", f"{models}:Model")
    assert result.exit_code == 1
    out = result.stdout
    assert out.startswith("--- Model (captured)\n+++ Model (fixed)\n")
    assert any(ln.startswith("-") and "torch.sigmoid" in ln for ln in out.splitlines())
    assert any(ln.startswith("+") and "expit" in ln for ln in out.splitlines())
    assert "\x1b[" not in out  # not a terminal: plain
    assert "FXG190" in result.stderr and "1 rewrite" in result.stderr


def test_diff_color_when_asked(test_pass, models):
    result = invoke("diff", f"{models}:Model", "--color")
    assert "\x1b[32m+" in result.stdout and "\x1b[31m-" in result.stdout


def test_diff_clean_model_prints_nothing_on_stdout(test_pass, models):
    result = invoke("diff", f"{models}:Clean")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "0 rewrites" in result.stderr


def test_diff_json(test_pass, models):
    result = invoke("diff", f"{models}:Model", "--format", "json")
    assert result.exit_code == 1
    assert Report.from_dict(json.loads(result.stdout)).exit_code == 1


# ---------------------------------------------------------------------------------------
# fix -o DIR


def _load_folder(folder: Path):
    return runpy.run_path(str(folder / "module.py"))


@pytest.mark.parametrize("mode", ["--eval", "--train"])
def test_fix_writes_a_folder_that_loads_back(test_pass, tmp_path, mode):
    model_file = tmp_path / "rich_model.py"
    model_file.write_text(RICH)
    out = tmp_path / "out" / "fixed_rich"
    result = invoke("fix", f"{model_file}:Model", "-o", str(out), mode)
    assert result.exit_code == 1, result.stderr
    assert "from fixed_rich import FixedModel" in result.stdout
    assert "FXG190" in result.stderr
    assert ("training mode" if mode == "--train" else "eval mode") in result.stderr
    assert {p.name for p in out.iterdir()} >= {"module.py", "state_dict.pt", "__init__.py"}

    loaded = _load_folder(out)["FixedModel"]()
    assert loaded.training is (mode == "--train")
    assert "expit" in (out / "module.py").read_text()

    # the original model with the written weights, fixed in process
    namespace = runpy.run_path(str(model_file))
    original = namespace["Model"]()
    original.load_state_dict(torch.load(out / "state_dict.pt"))
    original.train(mode == "--train")
    x, y = namespace["inputs"]()
    fixed = fxgrad.fix(original, (x, y), select="FXG190")
    expected = fixed(x, y)
    actual = loaded(x, y)
    torch.testing.assert_close(actual, expected)
    actual["out"].sum().backward()  # gradients flow through the written module
    assert loaded.block.w.grad is not None


def test_fix_json_keeps_stdout_parseable(test_pass, models, tmp_path):
    out = tmp_path / "written"
    result = invoke("fix", f"{models}:Model", "-o", str(out), "--format", "json")
    assert result.exit_code == 1
    assert Report.from_dict(json.loads(result.stdout)).exit_code == 1
    assert "load it with" in result.stderr


def test_fix_folder_name_that_is_no_identifier(test_pass, models, tmp_path):
    out = tmp_path / "my-model"
    result = invoke("fix", f"{models}:Model", "-o", str(out))
    assert "runpy.run_path" in result.stdout
    model = _load_folder(out)["FixedModel"]()
    assert model(torch.randn(2, 8)).shape == (2, 4)


def test_fix_requires_output(models):
    result = invoke("fix", f"{models}:Model")
    assert result.exit_code == 2
    assert "-o" in result.stderr


CHECKPOINTED = """
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = checkpoint(self.block, x, use_reentrant=False)
        y = torch.sigmoid(self.head(h))
        y.mul_(2)
        return y
"""


def test_fix_folder_keeps_a_module_passed_as_a_value(tmp_path):
    # checkpoint(self.block, x) reads the block as a value (get_attr), not a call: its
    # weights must be written and loaded like a called module's.
    model_file = tmp_path / "ckpt_model.py"
    model_file.write_text(CHECKPOINTED)
    out = tmp_path / "fixed_ckpt"
    result = invoke("fix", f"{model_file}:Model", "-o", str(out), "--input", "float32[4,8]")
    assert result.exit_code == 1, result.stderr
    loaded = _load_folder(out)["FixedModel"]()
    assert "checkpoint" in (out / "module.py").read_text()
    original = runpy.run_path(str(model_file))["Model"]()
    original.load_state_dict(torch.load(out / "state_dict.pt"))
    x = torch.randn(4, 8)
    expected = fxgrad.fix(original, (x,))(x)
    actual = loaded(x)
    torch.testing.assert_close(actual, expected)
    actual.sum().backward()
    assert loaded.block.lin.weight.grad is not None


def test_fix_example_folder_matches_fixed_module(tmp_path):
    """Whatever the passes find in the example, the written folder computes the same."""
    out = tmp_path / "fixed_example"
    result = invoke("fix", UNSAFE, "-o", str(out), "--eval")
    data_exit = result.exit_code
    assert data_exit in (0, 1), result.stderr
    loaded = _load_folder(out)["FixedModel"]()
    namespace = runpy.run_path(str(EXAMPLES / "unsafe_inplace.py"))
    original = namespace["Model"]()
    original.load_state_dict(torch.load(out / "state_dict.pt"))
    original.eval()
    (x,) = namespace["inputs"]()
    fixed = fxgrad.fix(original, (x,))
    assert fixed.report.exit_code == data_exit
    torch.testing.assert_close(loaded(x), fixed(x))


# ---------------------------------------------------------------------------------------
# --dot


def test_dot_highlights_changed_nodes(test_pass, models, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no Graphviz
    dot = tmp_path / "graph.dot"
    result = invoke("check", f"{models}:Model", "--dot", str(dot))
    assert result.exit_code == 1
    text = dot.read_text()
    assert text.startswith('digraph "Model" {')
    assert "fillcolor" in text and "FXG190" in text
    assert '"fc" -> "sigmoid"' in text
    assert not (tmp_path / "graph.svg").exists()
    assert "install Graphviz" in result.stderr


def test_dot_renders_svg_when_dot_is_installed(test_pass, models, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"
    fake.write_text('#!/bin/sh\n# dot -Tsvg IN -o OUT\necho "<svg/>" > "$4"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    result = invoke("diff", f"{models}:Model", "--dot", str(tmp_path / "g.dot"))
    assert result.exit_code == 1
    assert (tmp_path / "g.svg").read_text().strip() == "<svg/>"


# ---------------------------------------------------------------------------------------
# Targets and inputs


def test_parse_input():
    t = parse_input("int64[4, 16]")
    assert t.dtype == torch.int64 and t.shape == (4, 16)
    assert parse_input("[2,3]").dtype == torch.float32
    assert parse_input("bfloat16[1]").dtype == torch.bfloat16
    assert parse_input("bool[3]").dtype == torch.bool
    assert parse_input("float64[]").shape == ()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("float32(4,8)", "is not of the form dtype[shape]"),
        ("4,8", "is not of the form dtype[shape]"),
        ("float33[4]", "'float33' is not a torch dtype"),
        ("float32[4,,8]", "has an empty dimension"),
        ("float32[4,x]", "is not of the form dtype[shape]"),
    ],
)
def test_bad_input_syntax(test_pass, models, spec, message):
    result = invoke("check", f"{models}:Model", "--input", spec)
    assert_error(result, 2, message, "--input 'float32[8,3,224,224]'")


def test_input_and_inputs_from_together(models):
    result = invoke("check", f"{models}:Model", "--input", "[2,8]", "--inputs-from", "EXAMPLE")
    assert_error(result, 2, "--input and --inputs-from")


@pytest.mark.parametrize(
    ("name", "extra", "batch"),
    [
        ("Model", [], 4),  # the file's inputs()
        ("Model", ["--input", "float32[2,8]"], 2),
        ("Model", ["--inputs-from", "other_inputs"], 5),
        ("Model", ["--inputs-from", "EXAMPLE"], 2),  # a tuple
        ("make_with_inputs", [], 3),  # inputs the callable returned beat inputs()
        ("make_with_inputs", ["--input", "[6,8]"], 6),
        ("instance", [], 4),
        ("make", [], 4),
    ],
)
def test_targets_and_inputs(models, name, extra, batch):
    opts = {"--input": "input_specs", "--inputs-from": "inputs_from"}
    kwargs: dict = {}
    for flag, value in zip(extra[::2], extra[1::2]):
        kwargs[opts[flag]] = (value,) if flag == "--input" else value
    loaded = load_target(f"{models}:{name}", **kwargs)
    assert isinstance(loaded.model, torch.nn.Module)
    assert loaded.inputs[0].shape == (batch, 8)


@pytest.mark.parametrize(
    ("name", "extra", "source"),
    [
        ("Model", [], "cli_models.py:inputs()"),  # the file's inputs(), for any model in it
        ("Model", ["--input", "float32[2,8]"], "--input"),
        ("Model", ["--inputs-from", "other_inputs"], "cli_models.py:other_inputs()"),
        ("Model", ["--inputs-from", "EXAMPLE"], "cli_models.py:EXAMPLE"),
        ("make_with_inputs", [], "cli_models.py:make_with_inputs()"),
    ],
)
def test_the_report_says_where_the_example_inputs_came_from(test_pass, models, name, extra, source):
    summary = f"1 rewrite (on example inputs from {source})."
    check = invoke("check", f"{models}:{name}", *extra)
    assert check.exit_code == 1, check.output
    assert summary in check.stdout
    diff = invoke("diff", f"{models}:{name}", *extra)
    assert summary in diff.stderr
    data = json.loads(invoke("check", f"{models}:{name}", *extra, "--format", "json").stdout)
    assert data["inputs_from"] == source
    assert Report.from_dict(data).to_dict() == data


@pytest.mark.parametrize(("flag", "training"), [("--train", True), ("--eval", False)])
def test_train_eval(models, flag, training):
    assert load_target(f"{models}:Model", training=training).model.training is training
    result = invoke("check", f"{models}:Model", flag)
    assert result.exit_code in (0, 1)


def test_package_module_target(test_pass, tmp_path, monkeypatch):
    pkg = tmp_path / "clipkg_models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "zoo.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke("check", "clipkg_models.zoo:make_with_inputs")
    assert result.exit_code == 1, result.stderr
    assert "FXG190" in result.stdout


def test_target_without_name(models):
    result = invoke("check", models)
    assert_error(result, 2, "names no model", "path/to/model.py:NAME")


def test_target_file_missing(tmp_path):
    result = invoke("check", f"{tmp_path / 'nope.py'}:Model")
    assert_error(result, 3, "No such file", "nope.py")


def test_target_module_missing():
    result = invoke("check", "no_such_pkg_for_fxgrad.models:Model")
    assert_error(result, 3, "No module named 'no_such_pkg_for_fxgrad.models'")


def test_target_name_missing(models):
    result = invoke("check", f"{models}:Nope")
    assert_error(result, 3, "NAME 'Nope' is not defined in", "Clean, Model")


def test_inputs_from_that_gives_no_inputs(models):
    result = invoke("check", f"{models}:Model", "--inputs-from", "NUMBER")
    assert_error(result, 3, "--inputs-from NUMBER gave an int, not example inputs")


def test_inputs_from_missing(models):
    result = invoke("check", f"{models}:Model", "--inputs-from", "nope")
    assert_error(result, 3, "--inputs-from 'nope' is not defined")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Plain", "Plain is a class, not an nn.Module"),
        ("NUMBER", "NUMBER is an int, not an nn.Module"),
        ("not_a_model", "not_a_model() returned a tuple, not an nn.Module"),
        ("NeedsArgs", "Building NeedsArgs() failed: TypeError"),
    ],
)
def test_name_that_is_no_module(models, name, message):
    result = invoke("check", f"{models}:{name}")
    assert_error(result, 3, message)


def test_file_that_fails_to_import(tmp_path):
    path = tmp_path / "broken_model.py"
    path.write_text("import torch\nimport not_installed_for_fxgrad\n")
    result = invoke("check", f"{path}:Model")
    assert_error(
        result, 3, "Importing broken_model.py failed at broken_model.py:2", "ModuleNotFoundError"
    )


def test_untraceable_forward(test_pass, models):
    # The file's inputs() runs the forward: Dynamo captures what the tracer refuses.
    result = invoke("check", f"{models}:Untraceable")
    assert result.exit_code == 0, result.output
    assert "control flow at cli_models.py:" in result.stdout


def test_untraceable_forward_with_inputs_goes_to_dynamo(models, tmp_path):
    """With inputs to run, a forward fxgrad's tracer refuses is captured by Dynamo."""
    result = invoke("check", f"{models}:Branchy", "--input", "[3,8]")
    assert result.exit_code == 1, result.output
    assert "FXG101" in result.stdout and "graph break" in result.stdout
    assert "captured by Dynamo because fxgrad's tracer refused" in result.stdout
    diff = invoke("diff", f"{models}:Branchy", "--input", "[3,8]")
    assert "+    clone = h.clone()" in diff.stdout
    out = tmp_path / "out"
    written = invoke("fix", "-o", str(out), f"{models}:Branchy", "--input", "[3,8]")
    assert_error(written, 3, "captured by Dynamo in 2 graph(s)", "frontend='fx'")
    assert not out.exists()


def test_inputs_that_do_not_fit(test_pass, models):
    result = invoke("check", f"{models}:Model", "--input", "[2,3]")
    assert_error(
        result,
        3,
        "error: Model's forward raised RuntimeError: mat1 and mat2 shapes cannot be multiplied",
        "(at cli_models.py:12)",
        "hint: fxgrad ran it on float32[2,3] from --input;",
        "one --input per argument of forward(x), e.g. --input 'float32[2,3]'",
    )


@pytest.mark.parametrize(
    ("name", "extra", "raised", "inputs"),
    [
        (
            "Model",
            [],
            "AssertionError: expected 16 features, got 8 (at raising_models.py:12)",
            "float32[4,8] from raising_models.py:inputs()",
        ),
        (
            "Model",
            ["--input", "float32[2,8]"],
            "AssertionError: expected 16 features, got 8 (at raising_models.py:12)",
            "float32[2,8] from --input",
        ),
        (
            "Refuses",
            ["--input", "float32[2,8]"],
            "ValueError: no batch of 2 (at raising_models.py:18)",
            "float32[2,8] from --input",
        ),
    ],
)
def test_a_forward_that_raises_is_an_error_naming_its_line(tmp_path, name, extra, raised, inputs):
    path = tmp_path / "raising_models.py"
    path.write_text(RAISING)
    for command in ("check", "diff"):
        result = invoke(command, f"{path}:{name}", *extra)
        assert_error(
            result,
            3,
            f"error: {name}'s forward raised {raised}\n",
            f"hint: fxgrad ran it on {inputs};",
        )
        assert len(result.stderr.splitlines()) == 2


def test_a_module_without_forward_is_an_error(tmp_path):
    path = tmp_path / "raising_models.py"
    path.write_text(RAISING)
    for extra in ([], ["--input", "float32[2,8]"]):
        result = invoke("check", f"{path}:NoForward", *extra)
        assert_error(
            result, 3, "error: NoForward has no forward method.\n", "hint: Define forward()"
        )


DEEP = """
import torch
from torch import nn


class Wrap(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 1


def make():
    model = nn.Linear(8, 8)
    for _ in range(130):
        model = Wrap(model)
    return model
"""


@pytest.mark.parametrize("inputs", [["--input", "float32[4,8]"], []])
def test_nesting_past_the_recursion_limit_says_so(tmp_path, inputs):
    path = tmp_path / "deep_model.py"
    path.write_text(DEEP)
    result = invoke("check", f"{path}:make", *inputs)
    assert_error(result, 3, "deep_model.py:12", "recursion limit of", "sys.setrecursionlimit(")
    assert "example inputs" not in result.stderr  # they were given, or would not help


TWO_ARGS = """
import torch
from torch import nn


class Model(nn.Module):
    def forward(self, x, scale=2.0):
        if x.shape[0] > 2:
            return x * scale
        return x


class Pair(nn.Module):
    def forward(self, x, y):
        return x + y


def inputs():
    return (torch.randn(4, 8),)
"""


def test_hints_speak_command_line_and_name_only_the_forwards_arguments(models, tmp_path):
    too_many = invoke("check", f"{models}:Model", "--input", "[2,8]", "--input", "[2,8]")
    assert_error(
        too_many,
        3,
        "error: Model's forward(x) cannot take the 2 inputs from --input: too many "
        "positional arguments.",
        "hint: Give one --input per argument of forward(x), e.g. --input 'float32[2,8]'.",
    )
    path = tmp_path / "two_args.py"
    path.write_text(TWO_ARGS)
    too_few = invoke("check", f"{path}:Pair")
    assert_error(
        too_few,
        3,
        "cannot take the 1 input from two_args.py:inputs(): missing a required argument: 'y'.",
        "hint: Make two_args.py:inputs() give one input per argument of forward(x, y), or give "
        "them with --input, e.g. --input 'float32[4,8]' --input 'float32[4,8]'.",
    )
    path.write_text(TWO_ARGS.replace("def inputs", "def _inputs"))
    static = invoke("check", f"{path}:Model")  # no inputs: a size is needed
    assert_error(
        static,
        3,
        "two_args.py:8",
        "hint: Pass example inputs (one --input per argument of forward(x, scale=2.0), e.g. "
        "--input 'float32[4,8]', or an inputs() function in two_args.py)",
    )
    for result in (too_many, too_few, static):
        assert "fxgrad.fix" not in result.stderr and "mask" not in result.stderr


RAISING = """
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        assert x.shape[-1] == 16, f"expected 16 features, got {x.shape[-1]}"
        return self.fc(x)


class Refuses(nn.Module):
    def forward(self, x):
        raise ValueError(f"no batch of {x.shape[0]}")


class NoForward(nn.Module):
    pass


def inputs():
    return (torch.randn(4, 8),)
"""


def test_a_bug_keeps_its_traceback(models, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in fxgrad")

    monkeypatch.setattr(fxgrad, "fix", broken)
    result = invoke("check", f"{models}:Model")
    assert isinstance(result.exception, RuntimeError)
    assert "error:" not in result.stderr


# ---------------------------------------------------------------------------------------
# The bundled examples (true whatever the passes find)


@pytest.mark.parametrize("target", [UNSAFE, SAFE])
def test_examples_exit_code_matches_report(target):
    result = invoke("check", target, "--format", "json")
    data = json.loads(result.stdout)
    assert result.exit_code == data["exit_code"] == Report.from_dict(data).exit_code
    assert data["mode"] == "exact"  # the files define inputs()
    diff = invoke("diff", target)
    assert diff.exit_code == result.exit_code
    assert (diff.stdout != "") == (result.exit_code == 1)


def test_unsafe_inplace_example_exits_1_once_fxg101_lands():
    """examples/unsafe_inplace.py has one unsafe write; passes once FXG101 rewrites it."""
    result = invoke("check", UNSAFE)
    assert result.exit_code == 1, result.stdout
    assert "FXG101" in result.stdout


# ---------------------------------------------------------------------------------------
# The installed console script and `python -m fxgrad`


def _script() -> str:
    path = Path(sys.executable).parent / "fxgrad"
    if not path.exists():
        pytest.skip("the fxgrad console script is not installed next to this Python")
    return str(path)


def test_console_script_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    check = subprocess.run(
        [_script(), "check", "examples/unsafe_inplace.py:Model", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    data = json.loads(check.stdout)
    assert check.returncode == data["exit_code"]
    assert Report.from_dict(data).to_dict() == data

    diff = subprocess.run(
        [_script(), "diff", "examples/unsafe_inplace.py:Model", "--input", "float32[4,8]"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert diff.returncode == check.returncode
    assert "\x1b[" not in diff.stdout  # piped: plain
    assert "rewrite" in diff.stderr

    bad = subprocess.run(
        [_script(), "diff", "examples/unsafe_inplace.py:Nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 3
    assert bad.stderr.startswith("error: NAME 'Nope' is not defined")
    assert "Traceback" not in bad.stderr

    out = tmp_path / "fixed_example"
    fix = subprocess.run(
        [_script(), "fix", "examples/unsafe_inplace.py:Model", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert fix.returncode == check.returncode, fix.stderr
    code = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        from fixed_example import FixedModel
        print(tuple(FixedModel()(torch.randn(4, 8)).shape))
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.stdout.strip() == "(4, 4)", run.stderr


def test_python_dash_m():
    done = subprocess.run(
        [sys.executable, "-m", "fxgrad", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("Usage: fxgrad")
    assert "Exit codes:" in done.stdout


# ---------------------------------------------------------------------------------------
# click's own usage errors read like fxgrad's


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["check"], ["Missing argument 'TARGET'", "path/to/model.py:NAME"]),
        (["check", "m.py:M", "--format", "yaml"], ["'yaml' is not one of", "fxgrad check --help"]),
        (["chek", "m.py:M"], ["No such command 'chek'", "Did you mean 'check'?"]),
        (["check", "m.py:M", "--selct", "FXG1"], ["No such option '--selct'", "--select"]),
        (["--bogus"], ["No such option '--bogus'", "fxgrad --help"]),
    ],
)
def test_click_usage_errors_are_error_and_hint_lines(args, fragments):
    result = CliRunner().invoke(main, args, prog_name="fxgrad")
    assert_error(result, 2, *fragments)
    assert "Usage:" not in result.stderr and "Try '" not in result.stderr
    assert len(result.stderr.splitlines()) == 2


# ---------------------------------------------------------------------------------------
# Pass names wherever codes are accepted


@pytest.mark.parametrize(
    ("option", "exit_code"),
    [(["--select", "test-sigmoid"], 1), (["--ignore", "test-sigmoid"], 0)],
)
def test_select_and_ignore_by_pass_name(test_pass, models, option, exit_code):
    result = invoke("check", f"{models}:Model", *option)
    assert result.exit_code == exit_code, result.stderr


def test_real_pass_names_select_and_ignore():
    ignored = invoke("check", UNSAFE, "--ignore", "inplace-op", "--format", "json")
    assert not any(c["code"] == "FXG101" for c in json.loads(ignored.stdout)["changes"])
    selected = invoke("check", UNSAFE, "--select", "inplace-op,numpy-round-trip")
    assert selected.exit_code == 1 and "FXG101" in selected.stdout
    report = fxgrad.check(
        runpy.run_path(str(EXAMPLES / "unsafe_inplace.py"))["Model"](),
        (torch.randn(4, 8),),
        select=["inplace-op"],
    )
    assert {c.code for c in report.changes} == {"FXG101"}


# ---------------------------------------------------------------------------------------
# Exit codes a CI job can trust: 1 for anything to act on, 0 only for nothing to do


def test_ignored_hazard_whose_backward_fails_still_exits_1():
    result = invoke("check", UNSAFE, "--ignore", "FXG1")
    assert result.exit_code == 1
    assert "FXG101" not in result.stdout
    assert "note: eager backward fails on the example inputs" in result.stdout
    assert "1 note to act on" in result.stdout
    assert (
        json.loads(invoke("check", UNSAFE, "--ignore", "FXG1", "--format", "json").stdout)[
            "exit_code"
        ]
        == 1
    )


NUMPY_DIAG = """
import numpy as np
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        a = self.fc(x).detach().numpy()
        return torch.tensor(np.diag(a)) * x.sum()


def inputs():
    return (torch.randn(4, 4),)
"""


def test_gradient_cut_left_as_is_exits_1(tmp_path):
    path = tmp_path / "diag_model.py"
    path.write_text(NUMPY_DIAG)
    result = invoke("check", f"{path}:Model")
    assert result.exit_code == 1, result.stdout
    assert "(left as is)" in result.stdout and "np.diag" in result.stdout
    assert "0 rewrites, 1 finding left as is" in result.stdout


BLOCKS = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))
        h.mul_(2)  # unsafe: sigmoid saved h
        return h


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[Block() for _ in range(12)])

    def forward(self, x):
        return self.layers(x)


def inputs():
    return (torch.randn(4, 8),)
"""


def _kept_layout(gm: fx.GraphModule, ctx: Context) -> list[Change]:
    """A layout pass that measured every sigmoid and kept each as it was."""
    sigmoids = [n for n in gm.graph.nodes if n.target is torch.sigmoid]
    return [
        Change(
            code="FXG290",
            node=n.name,
            before=f"torch.sigmoid({n.args[0]})",
            after="",
            where=location(n),
            note=f"1.00x, not above the margin ({'measured' if i == 0 else 'as measured at ' + sigmoids[0].name})",
            applied=False,
        )
        for i, n in enumerate(sigmoids)
    ]


KEPT_LAYOUT = Pass(
    code="FXG290",
    name="test-kept-layout",
    run=_kept_layout,
    doc="FXG290 test-kept-layout\n\n## What it does\nMeasures and keeps, for tests.\n",
    kind=PassKind.SPEED,
)


@pytest.fixture
def blocks(tmp_path):
    path = tmp_path / "block_models.py"
    path.write_text(BLOCKS)
    return f"{path}:Model"


@pytest.fixture
def safe_blocks(tmp_path):
    path = tmp_path / "block_models.py"
    path.write_text(BLOCKS.replace("h.mul_(2)  # unsafe: sigmoid saved h", "h = h * 2"))
    return f"{path}:Model"


def test_layout_decisions_to_keep_code_are_no_findings_and_need_v(monkeypatch, safe_blocks):
    blocks = safe_blocks
    monkeypatch.setattr(fxgrad.passes, "ALL", (KEPT_LAYOUT,))
    result = invoke("check", blocks)
    assert result.exit_code == 0, result.stdout
    assert "FXG290" not in result.stdout
    assert "12 layout decisions to keep the code" in result.stdout
    assert "-v" in result.stdout
    verbose = invoke("check", blocks, "-v")
    assert verbose.exit_code == 0
    rows = [ln for ln in verbose.stdout.splitlines() if "FXG290" in ln]
    assert len(rows) == 1, verbose.stdout  # twelve blocks, one row
    assert rows[0].startswith("block_models.py:12 (12x)")
    assert "[in layers.0-11]" in " ".join(verbose.stdout.split())
    # the user's line, not the name fx made up for the linear layer's output
    assert "h = torch.sigmoid(self.fc(x))" in rows[0] and "layers_0_fc" not in verbose.stdout
    data = json.loads(invoke("check", blocks, "--format", "json").stdout)
    assert len(data["changes"]) == 12 and data["exit_code"] == 0
    assert [c["module"] for c in data["changes"]] == [f"layers.{i}" for i in range(12)]
    assert data["changes"][0]["before"] == "torch.sigmoid(layers_0_fc)"  # as the pass said


def test_a_write_repeated_in_every_block_is_one_row(blocks):
    result = invoke("check", blocks)
    assert result.exit_code == 1
    rows = [ln for ln in result.stdout.splitlines() if "FXG101" in ln]
    assert len(rows) == 1, result.stdout
    assert rows[0].startswith("block_models.py:13 (12x)")
    assert "12 rewrites" in result.stdout
    data = json.loads(invoke("check", blocks, "--format", "json").stdout)
    assert len([c for c in data["changes"] if c["code"] == "FXG101"]) == 12


def test_passes_wraps_long_text_instead_of_cutting_it():
    result = invoke("passes")
    assert result.exit_code == 0
    flat = " ".join(result.stdout.split())
    for p in fxgrad.passes.ALL:
        assert " ".join(p.summary.split()) in flat.replace("  ", " ")
    assert max(len(line) for line in result.stdout.splitlines()) <= 120


# ---------------------------------------------------------------------------------------
# Answers without torch; models laid out as packages


def test_help_and_passes_do_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        from fxgrad.cli import main

        for args in (
            ["--help"],
            ["passes"],
            ["passes", "--format", "json"],
            ["explain", "FXG101"],
            ["explain", "capture"],
        ):
            try:
                main(args, prog_name="fxgrad")
            except SystemExit as e:
                assert e.code in (0, None), (args, e.code)
        print("torch imported:", "torch" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "FXG101" in done.stdout and "Exit codes:" in done.stdout
    assert "# What capture records" in done.stdout
    assert done.stdout.strip().endswith("torch imported: False")


def test_dir_lists_the_lazy_names_without_importing_torch():
    code = textwrap.dedent(
        """
        import sys
        import fxgrad

        print(sorted(set(fxgrad.__all__) - set(dir(fxgrad))), "torch" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] False"  # fix, check and FixedModule listed too


PACKAGE_NET = """
import torch
from torch import nn

from .layers import scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))
        h.mul_(scale())
        return h


def inputs():
    return (torch.randn(4, 8),)
"""


def test_console_script_loads_package_modules_like_python_dash_m(tmp_path):
    package = tmp_path / "mymodels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("def scale():\n    return 2.0\n")
    (package / "net.py").write_text(PACKAGE_NET)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for target in ("mymodels.net:Net", "mymodels/net.py:Net"):
        done = subprocess.run(
            [_script(), "check", target],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 1, (target, done.stderr)
        assert "net.py:15" in done.stdout and "FXG101" in done.stdout


def test_no_measure_reaches_fix(monkeypatch):
    """--no-measure is fix(..., measure=False): FXG201 applies only cached decisions."""
    seen = {}
    real_fix = fxgrad.fix

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_fix(*args, **kwargs)

    monkeypatch.setattr(fxgrad, "fix", spy)
    result = CliRunner().invoke(
        main,
        ["check", "examples/unsafe_inplace.py:Model", "--input", "float32[4,8]", "--no-measure"],
    )
    assert result.exit_code == 1, result.output  # the example has an unsafe write
    assert seen["measure"] is False
