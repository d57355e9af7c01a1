"""capture(): trace a twin of the user's module into a GraphModule, or fail clearly."""

from __future__ import annotations

import contextlib
import copy
import operator
import threading
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree
from torch import fx

from fxgrad.errors import FxgradError
from fxgrad.graph_utils import empty_graph_module
from fxgrad.state import plain_tensor_attributes, refill, user_attributes
from fxgrad.tracing.callspec import CallSpec
from fxgrad.tracing.errors import _model_error, _trace_error
from fxgrad.tracing.module_copy import traced_hook_test
from fxgrad.tracing.module_tensors import ModuleTensorsAsNodes
from fxgrad.tracing.names import ROOT_ATTR, STOWED_PREFIX, _is_stowed_name, finish
from fxgrad.tracing.patches import _ACTIVE, _patched
from fxgrad.tracing.reads import _LOGS, ReadLog, global_reads, plain_attribute, swap_in, swap_out
from fxgrad.tracing.tracer import FxgradTracer, kept_hook_ids

_CAPTURE_LOCK = threading.RLock()


@dataclass
class Captured:
    """A captured graph with what is needed to call it like the original forward."""

    gm: fx.GraphModule
    call: CallSpec
    out_spec: pytree.TreeSpec
    leaf_index: list[int]
    propagation_error: BaseException | None = None
    notes: list[str] = field(default_factory=list)
    # What the forward read from Python (fxgrad.view turns it into guards): (module path,
    # attribute) reads, (globals, name) pairs and closure cells its code can read, and the
    # paths of the submodules traced through.
    attributes: list[tuple[str, str]] = field(default_factory=list)
    globals: list[tuple[dict, str]] = field(default_factory=list)
    cells: list = field(default_factory=list)
    traced: list[str] = field(default_factory=list)
    # Numbers the forward writes back to a module (`self.step += 1`), by (path, name):
    # captured again with them as graph values (see `live`).
    counters: set[tuple[str, str]] = field(default_factory=set)
    # Whether the traced code read any module's `training` flag (else no mode changes it).
    reads_mode: bool = True


def capture(
    root: torch.nn.Module,
    call: CallSpec,
    leaves: list | None,
    live: set[tuple[str, str]] | frozenset = frozenset(),
) -> Captured:
    """Trace `root` (a twin of the user's module) into a GraphModule.

    `live` names (module path, attribute) numbers the forward writes back: they are read
    as graph values rather than guarded constants. Raises TraceError naming the user's
    line when the forward cannot be captured.
    """
    tracer = FxgradTracer(leaves, call.in_spec, call)
    session = _Session(root, tracer, live)
    try:
        graph, error = session.run()
    finally:
        # A second net: an interrupt can land in run()'s own clean-up before its first
        # step runs; putting back is idempotent, so running it again costs nothing.
        finish(session.clean_up)
    if error is not None:
        raise _capture_error(tracer, error) from error
    # A trace that ended without an error ran the flat forward, which sets the output spec.
    assert graph is not None and tracer.out_spec is not None
    tracer._values.clear()
    paths, log = session.paths, session.log
    traced = set(tracer.traced_paths)
    classes = [type(root)] + [type(m) for m in session.modules if paths.get(id(m)) in traced]
    globals_, cells = global_reads(classes)
    return Captured(
        _graph_module(graph, root),
        call,
        tracer.out_spec,
        tracer.placeholder_leaf_index,
        tracer.propagation_error,
        tracer.notes,
        attributes=[(paths[id(m)], name) for m, name, _ in log.reads.values() if id(m) in paths],
        globals=globals_,
        cells=cells,
        traced=list(dict.fromkeys(tracer.traced_paths)),
        counters=session.counters - set(live),
        reads_mode=session.log.mode_read,
    )


class _Session:
    """One trace of a twin tree: what tracing changes on it, and putting all of it back.

    Tracing holds the process-wide capture lock (fx patches nn.Module itself), swaps the
    twin's modules into recording classes, and patches torch for this thread; `run` puts
    everything back on any exit, an interrupt halfway through setting up included.
    """

    def __init__(
        self, root: torch.nn.Module, tracer: FxgradTracer, live: set[tuple[str, str]] | frozenset
    ) -> None:
        self.root, self.tracer = root, tracer
        named = list(root.named_modules(remove_duplicate=False))
        self.modules = list(dict.fromkeys(m for _, m in named))
        self.paths: dict[int, str] = {}
        for path, m in named:
            self.paths.setdefault(id(m), path)
        tracer.module_paths = self.paths
        tracer.state_tensors = _state_tensors(self.modules)
        self.state = [(m, m._buffers.copy(), m.__dict__.copy()) for m in self.modules]
        # What the twin's containers hold (its own copies): a forward filling a cache
        # (`self.cache[key] = t`) leaves traced values there, which later runs must not read.
        self.contents = [
            (v, copy.copy(v))
            for m in self.modules
            for _, v in user_attributes(m)
            if isinstance(v, (dict, list, set))
        ]
        self.hooks = [(t, t.copy()) for m in self.modules for t in _hook_tables(m)]
        inline = traced_hook_test(root)
        tracer.initial_hooks = {id(m): kept_hook_ids(m, inline) for m in self.modules}
        _plain_attributes_as_buffers(self.modules, tracer)
        self.log = ReadLog()
        self.log.live = {
            (id(m), name) for m in self.modules for p, name in live if self.paths[id(m)] == p
        }
        self.names = {id(t): n for n, t in root.named_parameters(remove_duplicate=False)}
        self.names.update({id(t): n for n, t in root.named_buffers(remove_duplicate=False)})
        self.swapped: list = []
        self.depth = len(_ACTIVE)
        self.locked = False
        self.cleanups: list = []  # what to run again on clean-up (see _patched)
        self.mode_depth: int | None = None  # the torch function mode stack before tracing
        self.counters: set[tuple[str, str]] = set()

    def run(self) -> tuple[fx.Graph | None, Exception | None]:
        tracer = self.tracer
        try:
            self.locked = _CAPTURE_LOCK.acquire()  # one capture at a time in the process
            self.swapped.extend(swap_in(self.modules))
            _ACTIVE.append(tracer)
            _LOGS.append((self.log, tracer))
            self.mode_depth = torch._C._len_torch_function_stack()
            with _patched(self.modules, self.cleanups), ModuleTensorsAsNodes(tracer, self.names):
                return tracer.trace(self.root), None
        except Exception as e:
            return None, e
        finally:
            finish(self.clean_up)
            self.counters = _counters(self.state, self.log, self.paths)

    def clean_up(self) -> None:
        """Put back what tracing changed (safe to run twice: see finish())."""
        for undo in self.cleanups:  # torch's patches, if their own putting back was cut
            undo()
        if self.mode_depth is not None:  # and the torch function mode
            while torch._C._len_torch_function_stack() > self.mode_depth:
                torch._C._pop_torch_function_stack()
        while len(_ACTIVE) > self.depth:  # as deep as before, however far setting up got
            _ACTIVE.pop()
        while len(_LOGS) > self.depth:
            _LOGS.pop()
        if self.locked:
            with contextlib.suppress(RuntimeError):
                _CAPTURE_LOCK.release()
            self.locked = False
        swap_out(self.swapped)
        _restore(self.state)
        for container, before in self.contents:
            refill(container, before)
        for table, before in self.hooks:  # hooks the forward installed while traced
            if table.keys() != before.keys():
                table.clear()
                table.update(before)


def _state_tensors(modules: list[torch.nn.Module]) -> set[int]:
    """Ids of the tensors modules hold in dicts, lists and tuples (a cache of earlier calls)."""
    found: set[int] = set()
    for m in modules:
        for _, v in user_attributes(m):
            items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else ()
            found.update(id(x) for x in items if isinstance(x, torch.Tensor))
    return found


def _counters(
    state: list[tuple[torch.nn.Module, dict, dict]], log: ReadLog, paths: dict[int, str]
) -> set[tuple[str, str]]:
    """Numbers the forward wrote back to a module where one was (`self.step += 1`)."""
    found = set()
    for m, _, attrs in state:
        for key in log.written:
            if key[0] != id(m):
                continue
            name = key[1]
            if plain_attribute(attrs.get(name)) and id(m) in paths:
                found.add((paths[id(m)], name))
    return found


def _hook_tables(m: torch.nn.Module) -> list[dict]:
    return [t for k, t in m.__dict__.items() if "hook" in k and isinstance(t, dict)]


def _plain_attributes_as_buffers(modules: list[torch.nn.Module], tracer: FxgradTracer) -> None:
    """Plain tensor attributes (`self.n = torch.zeros(())` in __init__) are read as traced
    values, like buffers: fx would run `self.n.add_(1)` once at capture time on the real
    tensor and record nothing. They sit in the buffer table while tracing, and the graph
    reads and writes them as the plain attributes they are."""
    for m in modules:
        for name in plain_tensor_attributes(m):
            m._buffers[name] = m.__dict__.pop(name)
            tracer.plain_attributes.add((id(m), name))


def _restore(state: list[tuple[torch.nn.Module, dict, dict]]) -> None:
    """Undo what tracing assigned to the twin's modules (buffers, attributes)."""
    for m, buffers, attrs in state:
        if _same_items(m._buffers, buffers) and _same_items(m.__dict__, attrs):
            continue  # most modules: nothing assigned
        m._buffers.clear()
        m._buffers.update(buffers)
        added = [k for k in m.__dict__ if k not in attrs and not _is_stowed_name(k)]
        for k in added:
            del m.__dict__[k]
        for k, v in attrs.items():
            if m.__dict__.get(k) is not v:
                m.__dict__[k] = v


def _capture_error(tracer: FxgradTracer, error: Exception) -> Exception:
    """The error to raise: the model's own, if it failed on the example values first."""
    # Did the model itself fail on the example values before capture did? Then that is
    # the error to report (the twin is restored, so the ops see the real modules).
    with contextlib.suppress(Exception):
        tracer.run_pending()
    tracer._values.clear()
    if tracer.propagation_error is not None:
        return _model_error(tracer.propagation_error, tracer.propagation_node)
    if isinstance(error, FxgradError):
        return error
    return _trace_error(error)


def _graph_module(graph: fx.Graph, root: torch.nn.Module) -> fx.GraphModule:
    """A GraphModule that runs `graph` on root's own module tree.

    Built empty and given the graph afterwards: fx would copy every module the graph calls
    into a hierarchy of its own (a third of tracing time on a model of many small
    modules), and the graph resolves targets through the shared module tree instead, so
    .to()/.cuda() on the fixed module (which replaces buffer objects) is seen by it.
    """
    gm = empty_graph_module(type(root).__name__)
    gm.training = root.training
    gm.__dict__["_modules"] = root._modules
    gm.__dict__["_parameters"] = root._parameters
    gm.__dict__["_buffers"] = root._buffers
    gm.__dict__[ROOT_ATTR] = root
    _place_attribute_reads(graph, root, gm)
    gm.graph = graph  # code is generated when first called
    if graph._tracer_cls is not None and "<locals>" not in graph._tracer_cls.__qualname__:
        gm._tracer_cls = graph._tracer_cls  # as fx.GraphModule.__init__ records it
    return gm


def _place_attribute_reads(graph: fx.Graph, root: torch.nn.Module, gm: fx.GraphModule) -> None:
    """Point each get_attr node at what the fixed module will read on every call.

    Constants fx stowed on the root (a global tensor, a generator) move to the graph module,
    numbered in graph order (the fixed module renames them once more, to names unique among
    all its variants). A plain attribute of the root (`self.n`) is read through the root itself, so
    the fixed module reads and writes the user's attribute, not a copy from capture time.
    """
    moved: dict[str, str] = {}
    for node in graph.nodes:
        if node.op not in ("get_attr", "call_module"):
            continue
        name = str(node.target)
        first = name.split(".", 1)[0]
        if _is_stowed_name(first) and (first in root.__dict__ or first in moved):
            if first not in moved:  # numbered in graph order: the report reads the same
                moved[first] = f"{STOWED_PREFIX}{len(moved)}"  # on every run
                gm.__dict__[moved[first]] = root.__dict__.pop(first)
            node.target = moved[first] + name[len(first) :]
        elif (
            node.op == "get_attr"
            and first in root.__dict__
            and not (
                first in root._parameters
                or first in root._buffers
                or first in root._modules
                or first in ("_buffers", "_parameters", "_modules", ROOT_ATTR)
            )
        ):
            node.target = f"{ROOT_ATTR}.{name}"


def _same_items(now: dict, before: dict) -> bool:
    """Whether a dict holds the very same keys and objects as its earlier copy (C speed)."""
    return now.keys() == before.keys() and all(map(operator.is_, now.values(), before.values()))
