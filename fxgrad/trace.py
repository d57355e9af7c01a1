"""Capture's public names, kept importable from here (see fxgrad.tracing).

Saved fixed modules and code written against earlier releases import `fxgrad.trace.X`;
this module keeps those names, and `CAPTURE_DOC`, the page `fxgrad explain capture` prints.
"""

from __future__ import annotations

from fxgrad.runtime import (  # noqa: F401  (kept importable for saved fixed modules)
    GuardError,
    function_apply,
    fxgrad_guard,
    ufunc_method,
)
from fxgrad.tracing import (  # noqa: F401
    ROOT_ATTR,
    STOWED_PREFIX,
    CallSpec,
    Captured,
    FxgradTracer,
    call_spec,
    capture,
    fresh_constant_name,
    has_hooks,
    twin,
)
from fxgrad.tracing.proxy import FxgradAttribute, FxgradProxy  # noqa: F401

CAPTURE_DOC = """\
# What capture records

fxgrad's tracer records what plain torch.fx.symbolic_trace loses or refuses:

- item assignment (`y[0] = 10`, `y[mask] = 0`) and augmented assignment (`z += 1`) as
  writes, so aliases see them;
- buffer reads and writes in forward (`self.calls += 1`, `self.ema = ...`);
- NumPy calls on traced values (`.numpy()`, `np.asarray(t)`, ufuncs, ndarray methods) and
  the way back (`torch.from_numpy`, `torch.tensor`, `torch.as_tensor`);
- custom `autograd.Function.apply` as one opaque call (its backward is kept);
- `torch.no_grad()`, `enable_grad()`, `set_grad_enabled()`, `inference_mode()` and
  `torch.autocast()` regions, as blocks or decorators, restoring the caller's mode;
- namedtuple / dict / list / dataclass inputs and outputs;
- shape idioms: `b, c, h, w = x.shape`, `for t in x.chunk(3)`, `len(x)`, `int(...)` of a
  size, `torch.zeros(b, t)` sized from shapes, `torch.finfo(x.dtype)`: answered from the
  example inputs, sizes kept symbolic, with a guard that raises if a later call differs;
- `self.training` branches: each mode is captured on its own, and `train()`/`eval()` pick
  the graph.

Kept as one call, not looked inside: torch.nn's own modules, a submodule with hooks (so
the hooks still run), and a submodule passed to `torch.utils.checkpoint.checkpoint`.

Cannot be captured: Python control flow on tensor values (`if x.sum() > 0:`), or code
that needs a real tensor where a traced value is (`isinstance(t, torch.Tensor)` asserts).
Remedies: pass example inputs (`fxgrad.fix(model)` decides on the first call), which
answers questions about sizes and hands data-dependent control flow to Dynamo; or move
that code into a function marked with `torch.fx.wrap`; or use `torch.where` or masking
so both branches are computed.
"""
