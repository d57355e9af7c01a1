"""How the command line shows a failure: an `error: ...` line, a `hint: ...` line, an exit code.

The commands, the loading of TARGET and click's own usage errors all end this way, so the
errors they raise and the click classes that turn them into those lines sit below every
other part of the command line, which each import them from here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from fxgrad.errors import FxgradError, SelectionError


class UsageFailure(FxgradError):
    """A mistake in how the command was called (exit code 2)."""


class LoadFailure(FxgradError):
    """The target could not be imported, found or built (exit code 3)."""


def _exit_code(error: FxgradError) -> int:
    return 2 if isinstance(error, (UsageFailure, SelectionError)) else 3


def _fail(error: FxgradError) -> None:
    click.echo(f"error: {error.message}", err=True)
    if error.hint:
        click.echo(f"hint: {error.hint}", err=True)
    click.get_current_context().exit(_exit_code(error))


class _Command(click.Command):
    """A command that turns FxgradError into `error: ...` plus the hint and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FxgradError as e:
            _fail(e)


def _usage_lines(error: click.UsageError) -> tuple[str, str]:
    """click's usage error as fxgrad's `error: ...` and `hint: ...` lines."""
    message = error.format_message().strip()
    suggestion = ""
    m = re.match(r"(?s)^(.*?[.!?])\s*\(?(Did you mean .*?)\)?$", message)
    if m is not None:
        message, suggestion = m.group(1), m.group(2)
    ctx = error.ctx
    path = ctx.command_path if ctx is not None else "fxgrad"
    if isinstance(error, click.MissingParameter) and "TARGET" in message:
        hint = (
            "Write path/to/model.py:NAME or package.module:NAME, e.g. "
            f"`{path} examples/unsafe_inplace.py:Model`."
        )
    elif ctx is not None and isinstance(ctx.command, click.Group) and "command" in message:
        commands = ", ".join(ctx.command.list_commands(ctx))
        hint = f"The commands are: {commands}. Run `{path} --help` for what each does."
    else:
        hint = f"Run `{path} --help` for the options."
    if suggestion:
        hint = f"{suggestion} {hint}"
    return message, hint


class _UsageFailure(click.ClickException):
    """A click usage error shown as `error: ...` and `hint: ...` (exit code 2)."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        self.message_text, self.hint = _usage_lines(error)
        super().__init__(self.message_text)

    def show(self, _file: Any = None) -> None:
        click.echo(f"error: {self.message_text}", err=True)
        click.echo(f"hint: {self.hint}", err=True)


class _Group(click.Group):
    command_class = _Command

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        return _usage_errors(super().make_context, *args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        return _usage_errors(super().invoke, ctx)


def _usage_errors(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except click.exceptions.NoArgsIsHelpError:
        raise  # `fxgrad` alone prints the help
    except click.UsageError as e:
        raise _UsageFailure(e) from None
