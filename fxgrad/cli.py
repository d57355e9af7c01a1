"""The `fxgrad` command line: check, diff, fix, explain, passes.

A thin click layer over `fxgrad.check` and `fxgrad.fix`. It loads a TARGET
(`path/to/model.py:NAME` or `package.module:NAME`), builds example inputs, and prints
the Report's renderers. It catches `FxgradError` (and the loading errors it raises
itself), and what the model's own code raises (told apart by its traceback); anything
else keeps its traceback, because it is a bug.

torch is imported only by the commands that load a model: `fxgrad --help`, `fxgrad passes`
and `fxgrad explain CODE` answer at once.

This module holds the commands. Its parts live beside it, each readable alone:
`fxgrad.cli_load` loads TARGET and its example inputs, `fxgrad.cli_model_errors` says what
the model's own code raised in the command line's words, and `fxgrad.cli_errors` shows a
failure as `error:`, `hint:` and an exit code.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import fxgrad
from fxgrad.catalog import pass_docs
from fxgrad.cli_errors import LoadFailure, UsageFailure, _Group
from fxgrad.cli_load import Target, load_target, parse_input
from fxgrad.cli_model_errors import _check_signature, _in_cli_words
from fxgrad.errors import FxgradError

# The command line's names that code and tests import from here, wherever they live.
__all__ = [
    "EXIT_CODES",
    "TARGET_HELP",
    "LoadFailure",
    "Target",
    "UsageFailure",
    "load_target",
    "main",
    "parse_input",
    "split_codes",
]


EXIT_CODES = """\b
Exit codes:
  0  nothing to do
  1  findings: rewrites proposed (check, diff) or made (fix), hazards left as
     is, or eager backward fails
  2  usage error (bad option, --input syntax or pass code)
  3  the model cannot be loaded, built or traced, or its forward raises on
     the example inputs"""


TARGET_HELP = """\b
TARGET is path/to/model.py:NAME or package.module:NAME, where NAME is an
nn.Module subclass (built with no arguments), a module instance, or a function
returning a module or (module, example_inputs).
Example inputs come from, in this order: --input, --inputs-from, the inputs
NAME returned, or an inputs() function next to NAME. Without any, fxgrad
decides statically."""


# ---------------------------------------------------------------------------------------
# Commands


def split_codes(value: str | None) -> list[str] | None:
    """Turn 'FXG1, FXG201' into ['FXG1', 'FXG201']; None when nothing was given."""
    if not value:
        return None
    return [c.strip() for c in value.split(",") if c.strip()]


def _target_options(fn: Callable) -> Callable:
    decorators = [
        click.argument("target"),
        click.option(
            "--input",
            "input_specs",
            multiple=True,
            metavar="DTYPE[SHAPE]",
            help="An example input, e.g. 'float32[8,3,224,224]' or 'int64[4,16]'; repeat "
            "for each positional argument. The dtype defaults to float32; integer dtypes "
            "get 0s and 1s.",
        ),
        click.option(
            "--inputs-from",
            metavar="NAME",
            help="A function (or tuple) in TARGET's file or module giving the example inputs.",
        ),
        click.option(
            "--train/--eval",
            "training",
            default=None,
            help="Put the model in training or eval mode first (default: as built).",
        ),
        click.option(
            "--select",
            metavar="CODES",
            help="Only these codes, prefixes or pass names, e.g. FXG1,FXG201 or inplace-op.",
        ),
        click.option("--ignore", metavar="CODES", help="Skip these codes, prefixes or pass names."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "json"]),
            default="table",
            show_default=True,
            help="json prints the report as JSON on stdout.",
        ),
        click.option(
            "--dot",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help="Write the fixed graph as Graphviz DOT, changed nodes highlighted "
            "(and an SVG when `dot` is installed).",
        ),
        click.option(
            "-v",
            "--verbose",
            is_flag=True,
            help="Also show the layout decisions to keep code as is (FXG201's measurements).",
        ),
        click.option(
            "--no-measure",
            "no_measure",
            is_flag=True,
            help="Time nothing: measured passes (FXG201) apply only decisions cached earlier.",
        ),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def _run(
    target: str,
    input_specs: tuple[str, ...],
    inputs_from: str | None,
    training: bool | None,
    select: str | None,
    ignore: str | None,
    no_measure: bool = False,
) -> fxgrad.FixedModule:
    """Load TARGET and fix it; the report will say where the example inputs came from."""
    loaded = load_target(target, input_specs, inputs_from, training)
    click.get_current_context().meta[_INPUTS_FROM] = loaded.source
    try:
        fixed = _fix(loaded, select, ignore, no_measure)
    except Exception as e:
        error = _in_cli_words(e, loaded)
        if error is None:
            raise  # a bug in fxgrad: keep its traceback
        if error is e:
            raise
        raise error from e
    return fixed


def _fix(
    loaded: Target, select: str | None, ignore: str | None, no_measure: bool
) -> fxgrad.FixedModule:
    if loaded.inputs is None:  # nothing to run the model on: decide statically
        from fxgrad.api import fix_static

        return fix_static(loaded.model, select=split_codes(select), ignore=split_codes(ignore))
    _check_signature(loaded)
    return fxgrad.fix(
        loaded.model,
        loaded.inputs,
        select=split_codes(select),
        ignore=split_codes(ignore),
        measure=False if no_measure else None,
    )


_INPUTS_FROM = "fxgrad.inputs_from"  # click's context meta: where _run's inputs came from


def _report(fixed: fxgrad.FixedModule) -> fxgrad.Report:
    """The report, each change naming the block it is in (for one row per repeated block),
    and where the example inputs came from."""
    from fxgrad.export import with_module_paths
    from fxgrad.fixed import captured_by_dynamo

    if captured_by_dynamo(fixed):  # captured by Dynamo: one graph per piece
        report = fixed.report
    else:
        report = with_module_paths(fixed.report, fixed.graph_module)
    inputs_from = click.get_current_context().meta.get(_INPUTS_FROM, "")
    return dataclasses.replace(report, inputs_from=inputs_from)


def _write_dot(dot: str | None, fixed: fxgrad.FixedModule, report: fxgrad.Report) -> None:
    if dot:
        from fxgrad.export_dot import write_dot

        write_dot(dot, fixed.graph_module, report)


@click.group(
    cls=_Group, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(fxgrad.__version__, prog_name="fxgrad")
def main() -> None:
    """Find and rewrite what breaks or slows autograd in a PyTorch model."""


@main.command(epilog=TARGET_HELP + "\n\n" + EXIT_CODES)
@_target_options
def check(
    target, input_specs, inputs_from, training, select, ignore, fmt, dot, verbose, no_measure
):
    """Show the hazards fxgrad finds in TARGET and what it would change.

    Exits 1 when there is anything to act on, as a linter does.
    """
    fixed = _run(target, input_specs, inputs_from, training, select, ignore, no_measure)
    report = _report(fixed)
    click.echo(report.to_json() if fmt == "json" else report.table(verbose=verbose))
    _write_dot(dot, fixed, report)
    click.get_current_context().exit(report.exit_code)


@main.command(epilog=TARGET_HELP + "\n\n" + EXIT_CODES)
@_target_options
@click.option(
    "--color/--no-color",
    default=None,
    help="Colour the diff (default: when stdout is a terminal).",
)
def diff(
    target, input_specs, inputs_from, training, select, ignore, fmt, dot, verbose, no_measure, color
):
    """Show a unified diff of TARGET's generated code before and after; writes nothing.

    The diff goes to stdout, the table of changes to stderr.
    """
    fixed = _run(target, input_specs, inputs_from, training, select, ignore, no_measure)
    report = _report(fixed)
    if fmt == "json":
        click.echo(report.to_json())
    else:
        if color is None:
            color = sys.stdout.isatty()
        text = report.diff(color=color)
        if text:
            click.echo(text, nl=False, color=color)
        click.echo(report.table(verbose=verbose), err=True)
    _write_dot(dot, fixed, report)
    click.get_current_context().exit(report.exit_code)


@main.command(epilog=TARGET_HELP + "\n\n" + EXIT_CODES)
@_target_options
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write module.py and state_dict.pt into.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite files in the output folder that fxgrad did not write.",
)
def fix(
    target,
    input_specs,
    inputs_from,
    training,
    select,
    ignore,
    fmt,
    dot,
    verbose,
    no_measure,
    output,
    force,
):
    """Write TARGET's fixed graph to a folder as importable code and weights.

    The folder holds module.py (the code, its imports and a class that loads the
    weights) and state_dict.pt. The report goes to stderr (stdout with --format json).
    """
    from fxgrad.export import _load_instructions, check_overwrite, write_folder

    folder = Path(output)
    try:
        check_overwrite(folder, force)  # before the capture, which can take a while
    except FxgradError as e:
        raise UsageFailure(e.message, e.hint) from e
    fixed = _run(target, input_specs, inputs_from, training, select, ignore, no_measure)
    report = _report(fixed)
    class_name = write_folder(fixed, folder, force=force)
    if fmt == "json":
        click.echo(report.to_json())
    else:
        click.echo(report.table(verbose=verbose), err=True)
    mode = "training" if fixed.training else "eval"
    click.echo(
        f"wrote {folder / 'module.py'} and {folder / 'state_dict.pt'} ({mode} mode)", err=True
    )
    click.echo(_load_instructions(folder, class_name), err=fmt == "json")
    _write_dot(dot, fixed, report)
    click.get_current_context().exit(report.exit_code)


def _find_pass(code: str) -> Any:
    docs = pass_docs()
    wanted = code.strip()
    for p in docs:
        if p.code.upper() == wanted.upper() or p.name == wanted.lower():
            return p
    valid = ", ".join(f"{p.code} ({p.name})" for p in docs)
    raise UsageFailure(f"No pass has the code {code!r}.", hint=f"Valid codes are: {valid}.")


def _capture_doc() -> str:
    """fxgrad.trace.CAPTURE_DOC, read from the source so that torch need not load."""
    import ast

    loaded = sys.modules.get("fxgrad.trace")
    if loaded is None:
        try:
            tree = ast.parse(Path(__file__).with_name("trace.py").read_text(encoding="utf-8"))
            for stmt in tree.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "CAPTURE_DOC" for t in stmt.targets)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                ):
                    return stmt.value.value
        except (OSError, SyntaxError):
            pass
    from fxgrad.trace import CAPTURE_DOC

    return CAPTURE_DOC


@main.command(epilog=EXIT_CODES)
@click.argument("code")
def explain(code):
    """Print the documentation of a pass; CODE is its code (FXG101) or name, or `capture`."""
    if code.strip().lower() == "capture":
        click.echo(_capture_doc().strip())
        return
    p = _find_pass(code)
    click.echo(textwrap.dedent(p.doc).strip())


@main.command(epilog=EXIT_CODES)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def passes(fmt):
    """List the passes in the order they run, with their codes."""
    from tabulate import tabulate

    rows = [
        {
            "code": p.code,
            "name": p.name,
            "default": p.default,
            "kind": p.kind.value,
            "summary": p.summary,
        }
        for p in pass_docs()
    ]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = [[r["code"], r["name"], "on" if r["default"] else "off", r["summary"]] for r in rows]
    fixed = sum(max(len(str(r[i])) for r in table) + 2 for i in range(3)) + 8
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120) - fixed)
    click.echo(
        tabulate(
            table,
            headers=["code", "name", "default", "what it does"],
            maxcolwidths=[None, None, None, width],
        )
    )
    click.echo(
        "\nRun `fxgrad explain CODE` for the full documentation of a pass, and "
        "`fxgrad explain capture` for what capture supports."
    )
