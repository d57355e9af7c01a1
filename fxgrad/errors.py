"""The FxgradError family: every error fxgrad raises on purpose is one of these."""

from __future__ import annotations


class FxgradError(Exception):
    """An error with a plain message and, where there is one, a hint saying what to try next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


API_INPUTS = (
    "`fxgrad.fix(model, example_inputs)`, or `fxgrad.fix(model)` to decide on the first call"
)


class TraceError(FxgradError):
    """The model could not be captured as a graph (the original exception is chained).

    When example inputs would get past it, `with_inputs` says what running on them gives
    and `otherwise` what else helps: the hint says how to pass inputs to `fxgrad.fix`, and
    a front end with its own way to pass them (the command line's --input) words its own.
    """

    def __init__(
        self, message: str, hint: str | None = None, *, with_inputs: str = "", otherwise: str = ""
    ) -> None:
        if with_inputs and hint is None:
            hint = inputs_hint(API_INPUTS, with_inputs, otherwise)
        super().__init__(message, hint)
        self.with_inputs = with_inputs
        self.otherwise = otherwise


def first_line(e: BaseException, *, named: bool = False) -> str:
    """An error's first line (its type's name when it says nothing), for one-line notes.

    `named` puts the type's name in front (`ValueError: ...`), for notes that do not say
    themselves what was raised.
    """
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    return f"{type(e).__name__}: {line}" if named else line


def inputs_hint(how: str, with_inputs: str, otherwise: str = "") -> str:
    """A hint that passing example inputs (`how`) helps, and what else does."""
    hint = f"Pass example inputs ({how}): {with_inputs}."
    return f"{hint} Or {otherwise}" if otherwise else hint


class ModelError(FxgradError):
    """The model's own forward raised on the example inputs: `exception` is what it raised
    and `where` the user's `file.py:line` it raised at, when known."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        exception: BaseException | None = None,
        where: str = "",
    ) -> None:
        super().__init__(message, hint)
        self.exception = exception
        self.where = where


class PassError(FxgradError):
    """A pass crashed on a node; this is a bug in fxgrad, reported with the node."""

    def __init__(self, message: str, hint: str | None = None, *, code: str = "", node: str = ""):
        super().__init__(message, hint)
        self.code = code
        self.node = node


class EquivalenceError(FxgradError):
    """The captured or rewritten graph computes something other than eager PyTorch."""

    def __init__(self, message: str, hint: str | None = None, *, max_abs_diff: float | None = None):
        super().__init__(message, hint)
        self.max_abs_diff = max_abs_diff


class SelectionError(FxgradError):
    """A pass code given to select or ignore matches no pass."""
