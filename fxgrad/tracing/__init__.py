"""Faithful capture of an nn.Module's forward as a torch.fx graph.

Plain `torch.fx.symbolic_trace` loses or refuses what matters for autograd: item
assignment, augmented assignment (`z += 1` is recorded as `z + 1`), NumPy detours, custom
`autograd.Function`s (inlined, dropping their backward), grad-mode blocks, structured
inputs and outputs, and the shape idioms of real model code. `FxgradTracer` records all of
them, and with example inputs it also runs recorded ops on real values when the forward
asks a Python question about them (`len(x)`, `for t in x.chunk(3)`, `if x.dim() == 4`),
so it gets the answer eager PyTorch would give, with a guard node in the graph.

The package, one job a file: `proxy` (the traced value), `patches` (torch, NumPy and
grad-mode entry points patched while tracing), `tracer` (the tracer and its answers to size
questions), `numpy_args`, `callspec` (how a call maps to placeholders), `module_copy`
(twins of the user's module tree), `names` (attribute names generated code reads),
`errors` (what the user is told), `capture` (the entry point). What generated code calls at
run time is in `fxgrad.runtime`.
"""

from fxgrad.tracing.callspec import CallSpec, call_spec
from fxgrad.tracing.capture import Captured, capture
from fxgrad.tracing.module_copy import twin
from fxgrad.tracing.names import ROOT_ATTR, STOWED_PREFIX, fresh_constant_name
from fxgrad.tracing.tracer import FxgradTracer, has_hooks

__all__ = [
    "ROOT_ATTR",
    "STOWED_PREFIX",
    "CallSpec",
    "Captured",
    "FxgradTracer",
    "call_spec",
    "capture",
    "fresh_constant_name",
    "has_hooks",
    "twin",
]
