"""fxgrad: capture a PyTorch model with torch.fx and rewrite what breaks or slows autograd.

The public names load lazily, so `import fxgrad` (and pytest loading fxgrad's plugin)
does not import torch until something is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fxgrad.changes import Change
from fxgrad.errors import FxgradError
from fxgrad.report import Report

if TYPE_CHECKING:
    from fxgrad.api import FixedModule, check, fix

__version__ = "0.1.0"

__all__ = ["Change", "FixedModule", "FxgradError", "Report", "__version__", "check", "fix"]

_LAZY = {"fix", "check", "FixedModule"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from fxgrad import api

        return getattr(api, name)
    raise AttributeError(f"module 'fxgrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's globals and the names that load lazily, for dir() and completion."""
    return sorted(set(globals()) | set(__all__))
