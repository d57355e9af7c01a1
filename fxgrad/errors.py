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


class TraceError(FxgradError):
    """The model could not be captured as a graph (the original exception is chained)."""


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
