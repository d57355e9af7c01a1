"""A fixed module among the rest of PyTorch: the calls and wrappers it must meet as eager does.

- `torch.inference_mode()` (Lightning validates under it): a call made in it is decided
  with inference mode off and grad disabled, which is what it implies for autograd, because
  deciding copies tensors and reads their version counters, which inference tensors lack.
  The decided graph then runs in the caller's inference mode.
- `torch.func` transforms (`grad`, `vmap`, `jacrev`) around a call that needs a decision:
  deciding runs outside them, on plain stand-ins of the transformed tensors (their values,
  and for `vmap` one sample), since the probing runs (private copies, `requires_grad_`, a
  backward) are what transforms forbid. The decided graph runs inside the transforms.
- Lazy modules (`nn.LazyLinear`): eager initializes their parameters on the first call, so
  the first call that is decided does the same to the user's module, with the same random
  draws, before capturing. `fix(model, example_inputs)` never changes the model, so a model
  with uninitialized lazy modules is decided on its first call instead.
- DistributedDataParallel and FSDP must wrap the fixed module, not the other way round:
  fixing the module inside would drop the wrapper (DDP's all-reduce) or fail on sharded
  parameters, so fix() refuses them and says which order works.
- `inspect.signature(fixed.forward)` is the model's own forward signature (HF Trainer drops
  dataset columns the forward does not name).
- Tracers. `torch.compile(fixed)`: Dynamo runs the fixed module's forward and dispatch as
  plain Python (they read dict versions, copy modules and may decide) and compiles the
  chosen variant's generated code, one frame per variant, so `fullgraph=True` holds.
  `torch.export.export(fixed, ...)` and `make_fx` trace with tensors that hold no values:
  a call no variant serves runs a variant decided earlier for the same facts (the tensors'
  fake type aside), and is refused where none was. `torch.jit.trace(fixed, ...)` records
  one variant: its check, which runs again under no_grad, gets the variant decided with
  grad enabled, and a first call under the trace decides with tracing paused.
- TorchScript modules are refused: their forward is TorchScript, not Python.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from fxgrad.context import clone_inputs
from fxgrad.errors import FxgradError
from fxgrad.guards import GRAD, TENSORS
from fxgrad.state import PrivateState
from fxgrad.tracing.module_copy import quiet_user_hooks, twin


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


# ---------------------------------------------------------------------------------------
# Lazy modules


def uninitialized(root: nn.Module) -> bool:
    """Whether a module of the tree holds a parameter or buffer a lazy module has not
    initialized yet."""
    return any(_lazy_tensors(m) for m in root.modules())


def _lazy_tensors(m: nn.Module) -> bool:
    # The class of a lazy module's tensors; torch's nn/parameter.pyi omits it.
    lazy = nn.parameter.UninitializedTensorMixin  # type: ignore[attr-defined]
    return any(isinstance(t, lazy) for t in (*m._parameters.values(), *m._buffers.values()))


class _Initialized(BaseException):  # not caught by a forward's `except Exception:`
    """Every lazy module the call reached is initialized: the rest of the forward is moot."""


def initialize_lazy(root: nn.Module, args: tuple, kwargs: dict) -> None:
    """Initialize the user's lazy modules on this call, as eager's first call would.

    The forward runs on a twin (the user's module objects untouched, user hooks quiet,
    everything else on private copies) up to the pre-hook of the last lazy module it
    reaches; the twin shares the uninitialized parameters, which `materialize` fills in
    place, so they become the user's initialized parameters, drawn from torch's RNG in
    eager's order. Then the user's lazy modules become their plain class, as eager leaves
    them. Random draws of the forward before the last lazy module advance the RNG too.
    """
    probe = twin(root)
    quiet_user_hooks(probe)
    lazies = [m for m in probe.modules() if _lazy_tensors(m)]

    def stop(*_: Any) -> None:
        if not any(_lazy_tensors(m) for m in lazies):
            raise _Initialized

    handles = [m.register_forward_pre_hook(stop) for m in lazies]
    state = PrivateState(probe)  # its uninitialized tensors stay the user's, shared
    state.reset()
    call_args = clone_inputs(list(args))
    call_kwargs = dict(zip(kwargs, clone_inputs(list(kwargs.values()))))
    try:
        with torch.no_grad():
            probe(*call_args, **call_kwargs)
    except _Initialized:
        pass
    finally:  # also when the forward raised (as eager's first call would) after some
        for h in handles:
            h.remove()
        state.restore()
        twins = dict(probe.named_modules(remove_duplicate=False))
        for name, m in root.named_modules(remove_duplicate=False):
            if "_initialize_hook" in m.__dict__ and not _lazy_tensors(m):
                _finish_lazy(m, twins.get(name))


# Python values a lazy module's `initialize_parameters` sets (`in_features`).
_SIZES = (int, float, bool, str, tuple, type(None))


def _finish_lazy(m: nn.Module, initialized: nn.Module | None) -> None:
    """What LazyModuleMixin's pre-hook does to a module whose tensors are initialized,
    with the sizes its twin inferred while initializing them (`in_features`)."""
    if initialized is not None:
        for k, v in initialized.__dict__.items():
            if type(v) in _SIZES and k in m.__dict__ and m.__dict__[k] != v:
                m.__dict__[k] = v
    for name in ("_initialize_hook", "_load_hook"):
        handle = m.__dict__.pop(name, None)
        if handle is not None:
            handle.remove()
    become = getattr(m, "cls_to_become", None)
    if become is not None:
        m.__class__ = become


def lazy_refusal(what: str) -> FxgradError:
    return FxgradError(
        f"{what} needs the model's parameters, and some lazy modules (nn.LazyLinear, ...) "
        "have not initialized theirs yet.",
        hint="Run one forward of the model first (model(x)), or use "
        "fxgrad.fix(model), which initializes them on its first call as eager does.",
    )


# ---------------------------------------------------------------------------------------
# Distributed wrappers


def inner_module(model: nn.Module, *, through_ddp: bool = True) -> nn.Module:
    """The module a wrapper runs, which is what fxgrad captures or checks: seen through
    torch.compile's OptimizedModule, DataParallel and (`through_ddp`) DistributedDataParallel."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, nn.DataParallel) or (
            through_ddp and isinstance(model, nn.parallel.DistributedDataParallel)
        ):
            model = model.module
        else:
            return model


def refuse_distributed(model: nn.Module, *, ddp: bool = True) -> None:
    """Raise when `model` is wrapped in DistributedDataParallel (`ddp`) or holds modules
    FSDP shards: the fixed module must be what they wrap."""
    if not isinstance(model, nn.Module):
        return  # not a module at all: the caller says so
    m = inner_module(model, through_ddp=False)
    if ddp and isinstance(m, nn.parallel.DistributedDataParallel):
        raise FxgradError(
            "fxgrad.fix() was given a model wrapped in DistributedDataParallel. The fixed "
            "module would run the module inside without DDP, so its gradients would no "
            "longer be all-reduced across processes.",
            hint="Fix the model first, then wrap the fixed module: "
            "model = DistributedDataParallel(fxgrad.fix(model, (x,))).",
        )
    refuse_sharded(m)


def refuse_sharded(model: nn.Module) -> None:
    """Raise when a module of the tree is sharded by FSDP (fully_shard, or FSDP1's
    wrapper): its parameters are shards FSDP gathers in its own hooks, which fxgrad
    cannot copy or capture."""
    for name, m in model.named_modules():
        if _is_fsdp(m):
            where = f" at `{name}`" if name else ""
            raise FxgradError(
                f"fxgrad was given a model with a module sharded by FSDP "
                f"({type(m).__name__}{where}); fxgrad cannot copy or capture modules whose "
                "parameters FSDP shards and gathers in its own hooks.",
                hint="Fix the model first, then shard the fixed module as a whole: "
                "fixed = fxgrad.fix(model); fully_shard(fixed) (or "
                "FullyShardedDataParallel(fixed) without an auto-wrap policy), with no "
                "fully_shard on the model's own submodules.",
            )


def _is_fsdp(m: nn.Module) -> bool:
    cls = type(m)
    if cls.__module__.startswith("torch.distributed.fsdp") and (
        cls.__name__.startswith("FSDP") or cls.__name__ == "FullyShardedDataParallel"
    ):
        return True
    fsdp = sys.modules.get("torch.distributed.fsdp")  # loaded where FSDP was used
    if fsdp is None:
        return False
    kinds = tuple(
        k
        for k in (
            getattr(fsdp, "FSDPModule", None),
            getattr(fsdp, "FullyShardedDataParallel", None),
        )
        if isinstance(k, type)
    )
    return bool(kinds) and isinstance(m, kinds)


# ---------------------------------------------------------------------------------------
# The forward's signature


def forward_with_signature(fixed: nn.Module, root: nn.Module) -> Callable[..., Any] | None:
    """`fixed.forward` bound to `fixed` with `root.forward`'s signature, or None where that
    has none. The function is a copy of the class's (the same code, nothing added to a
    call), so `inspect.signature` reads the model's parameters, not `(*args, **kwargs)`."""
    try:
        sig = inspect.signature(root.forward)
        sig = sig.replace(
            parameters=[
                inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                *sig.parameters.values(),
            ]
        )
    except (TypeError, ValueError):
        return None
    base = type(fixed).forward
    fn = types.FunctionType(
        base.__code__, base.__globals__, base.__name__, base.__defaults__, base.__closure__
    )
    fn.__kwdefaults__ = base.__kwdefaults__
    fn.__qualname__ = base.__qualname__
    fn.__module__ = base.__module__
    fn.__doc__ = getattr(root.forward, "__doc__", None) or base.__doc__
    fn.__signature__ = sig  # type: ignore[attr-defined]
    return types.MethodType(fn, fixed)


# ---------------------------------------------------------------------------------------
# Tracers: torch.compile, torch.export, make_fx, torch.jit.trace


def run_eagerly_under_dynamo(*, frame: Iterable[Callable], tree: Iterable[Callable]) -> None:
    """Have Dynamo run these functions as plain Python wherever it meets their frames.

    `frame`: the frame runs eagerly and the frames it calls are Dynamo's to compile (a fixed
    module's forward, which calls the chosen variant's generated code). `tree`: neither the
    frame nor anything it calls is compiled (dispatch and deciding, which read dict
    versions, copy modules and run the model). The strategy is set once per code object,
    in C: nothing runs per call, and only Dynamo's frame hook ever reads it. Where this
    torch lacks the hook, Dynamo traces forward as before.
    """
    try:
        from torch._C._dynamo.eval_frame import (
            _FrameAction,
            _FrameExecStrategy,
            set_code_exec_strategy,
        )
    except (ImportError, AttributeError):
        return
    skip, default = _FrameAction.SKIP, _FrameAction.DEFAULT
    for fns, strategy in (
        (frame, _FrameExecStrategy(skip, default)),
        (tree, _FrameExecStrategy(skip, skip)),
    ):
        for fn in fns:
            set_code_exec_strategy(fn.__code__, strategy)


def code_is_recorded() -> bool:
    """Whether the code fxgrad calls next is compiled or recorded: torch.compile's frame
    hook is on (fxgrad's own frames run as Python inside a compiled module's call), or
    torch.jit.trace records. Binding submodules into new code then saves nothing, and
    jit's check must meet the code its trace met."""
    if torch._C._get_tracing_state() is not None:
        return True
    get = getattr(torch._C._dynamo.eval_frame, "get_eval_frame_callback", None)
    return get is not None and callable(get())


def tracer_of(tensors: Sequence[Any]) -> str | None:
    """Which tracer records this call: "jit" (torch.jit.trace: real values), "fake"
    (torch.export, make_fx, a FakeTensorMode: values fxgrad cannot decide on), or None.

    Asked only for a call no variant serves, so plain calls never pay for it."""
    if torch._C._get_tracing_state() is not None or getattr(_JIT, "paused", False):
        return "jit"
    if torch.compiler.is_exporting():
        return "fake"
    modes = torch._C._TorchDispatchModeKey
    if any(
        torch._C._get_dispatch_mode(k) is not None
        for k in (modes.PROXY, modes.FAKE, modes.FUNCTIONAL)
    ):
        return "fake"
    from torch._subclasses.fake_tensor import is_fake

    if any(isinstance(t, torch.Tensor) and is_fake(t) for t in tensors):
        return "fake"
    return None


def fits_traced_call(decided: tuple, call: tuple, tracer: str) -> bool:
    """Whether a variant decided on a call with key `decided` may run a traced call with
    key `call`: the same facts, except that a fake tracer's tensors are of its own types
    (FakeTensor, FunctionalTensor), and that a variant decided with grad enabled also
    serves grad disabled (its rewrites only keep autograd's saved values intact; jit's
    check traces again under no_grad and must record the same graph)."""
    for i, (a, b) in enumerate(zip(decided, call)):
        if a == b:
            continue
        if i == GRAD and a:
            continue
        if tracer == "fake" and i == TENSORS and len(a) == len(b):
            if all(x[:-1] == y[:-1] for x, y in zip(a, b)):
                continue
        return False
    return True


_JIT = threading.local()  # `paused`: a dispatch for torch.jit.trace, outside its recording


@contextlib.contextmanager
def jit_tracing_paused() -> Iterator[None]:
    """Dispatch and decide outside torch.jit.trace's recording (dispatch reads sizes, a
    decision runs the model: none of it is the forward), still known as jit's call."""
    state = torch._C._get_tracing_state()
    paused = getattr(_JIT, "paused", False)
    torch._C._set_tracing_state(None)  # type: ignore[attr-defined]  # missing from torch's stubs
    _JIT.paused = True
    try:
        yield
    finally:
        _JIT.paused = paused
        torch._C._set_tracing_state(state)  # type: ignore[attr-defined]  # as above


def in_jit_scope(module: nn.Module, run: Callable[[], Any]) -> Any:
    """`run()` recorded in `module`'s scope, as nn.Module's `_slow_forward` records forward."""
    state = torch._C._get_tracing_state()
    names = getattr(torch.jit._trace, "_trace_module_map", None)
    name = names.get(module) if state is not None and names is not None else None
    if name:
        state.push_scope(name)
    try:
        return run()
    finally:
        if name:
            state.pop_scope()


def jit_dynamo_refusal() -> FxgradError:
    return FxgradError(
        "torch.jit.trace cannot record this fixed module: fxgrad's tracer could not "
        "capture its forward, so it runs through Dynamo, which jit's tracer does not follow.",
        hint="Use torch.compile(fixed) or torch.export.export on a forward fxgrad captures "
        "(fxgrad explain capture says what stops it).",
    )


def fake_trace_refusal(described: str) -> FxgradError:
    return FxgradError(
        "torch.export (or make_fx) traces this fixed module with tensors that hold no "
        "values, and no variant decided so far serves this call "
        f"({described}): fxgrad decides by running the model on real inputs.",
        hint="Decide first on real inputs like the ones you export with: "
        "fixed = fxgrad.fix(model, (x,)) (or call fixed(x) once, in the same train()/eval() "
        "mode), then torch.export.export(fixed, (x,)); or export fixed.graph_module.",
    )


# ---------------------------------------------------------------------------------------
# TorchScript


def refuse_scripted(model: nn.Module) -> None:
    """Raise for a TorchScript module (torch.jit.script or torch.jit.trace output), the
    model itself or one of its submodules: its forward is no longer Python."""
    for name, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            where = f" at `{name}`" if name else ""
            raise FxgradError(
                f"fxgrad was given a TorchScript module{where} ({type(m).__name__}, from "
                "torch.jit.script or torch.jit.trace): its forward is TorchScript, no "
                "longer Python, so fxgrad cannot capture or rewrite it.",
                hint="Fix the eager model (with eager submodules), then trace, export or "
                "compile the fixed module: fixed = fxgrad.fix(model, (x,)); "
                "torch.jit.trace(fixed, (x,)) or torch.compile(fixed).",
            )
