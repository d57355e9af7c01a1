"""A fixed module among the rest of PyTorch: the calls it must meet as eager does.

- `torch.inference_mode()` (Lightning validates under it): a call made in it is decided
  with inference mode off and grad disabled, which is what it implies for autograd, because
  deciding copies tensors and reads their version counters, which inference tensors lack.
  The decided graph then runs in the caller's inference mode.
- `torch.func` transforms (`grad`, `vmap`, `jacrev`) around a call that needs a decision:
  deciding runs outside them, on plain stand-ins of the transformed tensors (their values,
  and for `vmap` one sample), since the probing runs (private copies, `requires_grad_`, a
  backward) are what transforms forbid. The decided graph runs inside the transforms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fxgrad.errors import FxgradError


@contextlib.contextmanager
def outside_transforms() -> Iterator[None]:
    """Run a decision outside inference mode and torch.func transforms (see module doc)."""
    with contextlib.ExitStack() as stack:
        if torch.is_inference_mode_enabled():
            grad = torch.is_grad_enabled()
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.set_grad_enabled(grad))
        if in_transform():
            from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack

            stack.enter_context(temporarily_clear_interpreter_stack())
            stack.enter_context(_saved_tensors_hooks_allowed())
        yield


@contextlib.contextmanager
def _saved_tensors_hooks_allowed() -> Iterator[None]:
    """Allow saved-tensor hooks (fxgrad's observation of a probing run), which
    `torch.func.grad` and its kin disable while they run, and disable them again after."""
    autograd = torch._C._autograd
    message = autograd._saved_tensors_hooks_get_disabled_error_message()
    if message is None:
        yield
        return
    autograd._saved_tensors_hooks_enable()
    try:
        yield
    finally:
        autograd._saved_tensors_hooks_disable(message)


def in_transform() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...) is running."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def transform_refusal(model: str) -> FxgradError:
    """Dynamo does not compile a frame called inside torch.func transforms: it would run
    the unfixed forward, silently, there and on later calls."""
    return FxgradError(
        f"{model} is fixed through the Dynamo front-end, which cannot run inside torch.func "
        "transforms (grad, vmap, jacrev, ...): Dynamo would run the unfixed forward.",
        hint="Call the fixed module outside the transform, or make the forward traceable "
        "by fxgrad's tracer (fxgrad explain capture) and fix it with frontend='fx', whose "
        "fixed module runs inside torch.func transforms.",
    )
