"""fxgrad: capture a PyTorch model with torch.fx and rewrite what breaks or slows autograd."""

from fxgrad.api import FixedModule, check, fix
from fxgrad.changes import Change
from fxgrad.errors import FxgradError
from fxgrad.report import Report

__version__ = "0.1.0"

__all__ = ["Change", "FixedModule", "FxgradError", "Report", "__version__", "check", "fix"]
