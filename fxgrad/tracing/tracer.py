"""FxgradTracer: records mutations, NumPy calls and grad modes, and answers size questions."""

from __future__ import annotations

import builtins
import contextlib
import operator
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx

from fxgrad import ops
from fxgrad.dict_versions import dict_version
from fxgrad.errors import TraceError
from fxgrad.graph_utils import (
    find_submodule,
    user_frame_location,
)
from fxgrad.runtime import ANSWERS, fxgrad_guard
from fxgrad.tracing.callspec import _register_dataclasses, box_objects
from fxgrad.tracing.errors import FIXED_UNPACK, LENGTHS, _control_flow_error
from fxgrad.tracing.input_writes import InputWrites
from fxgrad.tracing.names import NUMBER_META, ROOT_ATTR, STOWED_PREFIX
from fxgrad.tracing.numpy_args import (
    _numpy_dtype_names,
    _takes_numpy_dtypes,
    register_numpy_scalar_name,
)
from fxgrad.tracing.patches import (
    _IS_GRAD_ENABLED,
    _MODE_SWITCHES,
    _ORIG_CHECKPOINT,
    _SET_GRAD_ENABLED,
    _has_proxy,
    _is_random_factory,
)
from fxgrad.tracing.proxy import FxgradProxy, _is_meta_expr

# ---------------------------------------------------------------------------------------
# The tracer


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def has_hooks(m: torch.nn.Module) -> bool:
    """Whether a module has forward or backward hooks of its own registered."""
    return any(getattr(m, name, None) for name in _HOOKS)


def hook_ids(m: torch.nn.Module) -> frozenset:
    """The handles of the hooks a module has now, to tell them from ones added later."""
    return frozenset(k for name in _HOOKS for k in (getattr(m, name, None) or ()))


_FORWARD_HOOKS = ("_forward_hooks", "_forward_pre_hooks")


def kept_hook_ids(m: torch.nn.Module, traced: Callable[[Any], bool]) -> frozenset:
    """The hooks that make a module one call in the graph (so they run on every call):
    all but the forward hooks `traced` says the capture runs inline on traced values, as
    it runs those a forward installs (transformers' output capturing, installed by an
    earlier call, stays data flow of the graph)."""
    return frozenset(
        k
        for name in _HOOKS
        for k, hook in (getattr(m, name, None) or {}).items()
        if name not in _FORWARD_HOOKS or not traced(hook)
    )


def _writes_module_state(node: fx.Node, args: Any) -> bool:
    """A recorded write of a module's buffer table or attribute (see record_module_setattr)."""
    if node.op != "call_function" or not args:
        return False
    if node.target is operator.setitem:
        holder = node.args[0]
        return (
            isinstance(holder, fx.Node)
            and holder.op == "get_attr"
            and str(holder.target).rsplit(".", 1)[-1] == "_buffers"
        )
    return node.target is builtins.setattr and isinstance(args[0], torch.nn.Module)


# NumPy's calls whose number of outputs is their count argument, whatever the input's size
# (torch's are read from their schemas: an int `sections`).
_NUMPY_SPLITS_INTO_N = {"split", "array_split", "hsplit", "vsplit", "dsplit"}


def _count_is_fixed(node: fx.Node, value: Any) -> bool:
    """Whether unpacking `node` gives the same number of items on every call: a struct
    (`torch.linalg.eig`, `x.max(dim)`), a shape, or `tensor_split(x, 3)` / `np.split(a, 3)`
    (a torch `split(x, 3)` takes a piece *size*, so its count moves with the input)."""
    if hasattr(type(value), "_fields") or hasattr(type(value), "n_fields"):
        return True
    if isinstance(value, torch.Size):
        return True  # `h, w = x.shape[-2:]`: its length follows from the input's rank
    target = node.target
    if (node.op == "call_function" and target is getattr and node.args[1:] == ("shape",)) or (
        node.op == "call_method" and target == "size" and len(node.args) == 1
    ):
        return True  # `b, c, h, w = x.shape`: the rank is in every call's key
    count = node.args[1] if len(node.args) > 1 else None
    if not isinstance(count, int):
        return False
    module = getattr(target, "__module__", "") or ""
    if module.startswith("numpy"):
        return getattr(target, "__name__", "") in _NUMPY_SPLITS_INTO_N
    return ops.splits_into_sections(target)


register_numpy_scalar_name()


class FxgradTracer(fx.Tracer):
    """A Tracer that records mutations, NumPy calls and grad modes, and propagates values.

    With `values` (example leaves by placeholder), recorded ops are also run on real values
    under `no_grad`, which answers `len()`, iteration and shape branches exactly. They run
    lazily, in recording order, when the forward first asks such a question: a forward
    that never asks one (most models) costs no extra run of the model.
    """

    def __init__(self, leaves: list[Any] | None, in_spec: pytree.TreeSpec, sig_kinds: Any):
        super().__init__()  # autowraps `math` functions, as plain fx does
        self.proxy_buffer_attributes = True  # buffer reads and writes become graph nodes
        self._leaves = leaves
        self._in_spec = in_spec
        self._call = sig_kinds
        self._values: dict[fx.Node, Any] = {}
        self._pending: list[fx.Node] = []  # recorded, not yet run on the example values
        self._propagate = leaves is not None
        self.in_propagation = False
        self.propagation_error: BaseException | None = None
        self.propagation_node: fx.Node | None = None
        self._grad_stack: list[fx.Proxy] = []
        self.thread = threading.get_ident()  # fx patches nn.Module for every thread
        self.notes: list[str] = []
        self._meta_memo: dict[fx.Node, bool] = {}
        self.out_spec: pytree.TreeSpec | None = None
        self.placeholder_leaf_index: list[int] = []
        # (id(module), name) of plain tensor attributes, held in the buffer table while
        # tracing so that reading them gives a traced value (see capture()).
        self.plain_attributes: set[tuple[int, str]] = set()
        # Hook handles each module had when tracing began, by id(module) (see capture()).
        self.initial_hooks: dict[int, frozenset] = {}
        # Paths of the submodules whose forward was traced through, not kept as a call.
        self.traced_paths: list[str] = []
        # Path of each module of the tree, by id (filled by capture()).
        self.module_paths: dict[int, str] = {}
        # Tensors the modules hold in containers before tracing (caches), by id.
        self.state_tensors: set[int] = set()
        # The root's parameters and buffers by id (see getattr), and the tables they came
        # from with their version tags when indexed.
        self._index: tuple[dict, dict] = ({}, {})
        self._index_tables: list[dict] | None = None
        self._index_versions: tuple = ()

    # -- nodes ----------------------------------------------------------------------------

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return FxgradProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, *rest, **kw):  # noqa: ANN001
        if _takes_numpy_dtypes(kind, target):
            args, kwargs = _numpy_dtype_names((args, kwargs))
        return super().create_proxy(kind, target, args, kwargs, *rest, **kw)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):  # noqa: ANN001
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind not in ("placeholder", "output"):
            loc = user_frame_location(2)
            if loc is not None:
                node.meta["fxgrad_loc"] = loc
        if self._propagate and kind not in ("placeholder", "output"):
            if kind == "get_attr":
                self._run_node(node)  # read now: the forward may rebind the attribute later
            else:
                self._pending.append(node)
        return node

    def run_pending(self) -> None:
        """Run the recorded ops not yet run on the example values, in recording order.

        In-place ops and RNG draws happen in the order the forward made them, so every
        value is what eager PyTorch computes at that point of the forward.
        """
        pending, self._pending = self._pending, []
        for node in pending:
            if not self._propagate:
                break
            self._run_node(node)

    def _run_node(self, node: fx.Node) -> None:
        def value_of(a: Any) -> Any:
            if isinstance(a, fx.Node):
                if a not in self._values:
                    raise KeyError(a)
                return self._values[a]
            return a

        try:
            args = fx.node.map_aggregate(node.args, value_of)
            kwargs = fx.node.map_aggregate(node.kwargs, value_of)
        except KeyError:
            return
        self.in_propagation = True
        # Under no_grad, switched by the C functions themselves: torch.no_grad() is patched
        # to record, and entering it once per node was a good part of propagation's cost.
        prev = torch._C.is_grad_enabled()
        _SET_GRAD_ENABLED(False)
        try:
            if node.op == "get_attr":
                obj: Any = self.root
                target = str(node.target)
                atoms = (
                    [] if target == ROOT_ATTR else target.removeprefix(ROOT_ATTR + ".").split(".")
                )
                for atom in atoms:
                    obj = getattr(obj, atom)
                value = obj
            elif node.op == "call_module":
                value = find_submodule(self.root, str(node.target))(*args, **kwargs)
            elif node.op == "call_method":
                value = getattr(args[0], str(node.target))(*args[1:], **kwargs)
            elif node.target in _MODE_SWITCHES:
                value = None  # keep propagation itself under no_grad
            elif _writes_module_state(node, args):
                # `self.buf = t` is recorded, and the module's table already holds t's proxy
                # for later reads; written here, the real tensor would be found again by
                # identity and read back as the buffer's *first* get_attr.
                value = None
            else:
                assert not isinstance(node.target, str)  # call_function: only those are left
                value = node.target(*args, **kwargs)
        except Exception as e:  # the capture check reproduces this against eager
            self._propagate = False
            self.propagation_error = e
            self.propagation_node = node
            return
        finally:
            _SET_GRAD_ENABLED(prev)
            self.in_propagation = False
        self._values[node] = value

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:  # noqa: ARG002
        if self.in_propagation or threading.get_ident() != self.thread:
            # Running real values (modules see their real parameters), or another thread
            # reading a module while fx has nn.Module patched: the real tensor.
            return attr_val
        if not isinstance(attr_val, torch.Tensor):
            return attr_val
        # fx searches `root.named_parameters()` (and named_buffers) for every tensor read,
        # walking the whole tree each time: on a model of 600 tensors read 500 times, most
        # of a capture. The same answer from an index, made again when a table changed.
        name = self._indexed_name(attr_val, fresh=False)
        if name is None or not self._names(attr_val, name):
            name = self._indexed_name(attr_val, fresh=True)  # a table changed meanwhile
        if name is None:
            return attr_val
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def _indexed_name(self, t: torch.Tensor, fresh: bool) -> str | None:
        params, buffers = self._tensor_index(fresh)
        found = None
        if isinstance(t, torch.nn.Parameter):
            found = params.get(id(t))
        if found is None and self.proxy_buffer_attributes:
            found = buffers.get(id(t))
        return found[0] if found is not None and found[1] is t else None

    def _names(self, t: torch.Tensor, name: str) -> bool:
        """Whether `name` still names `t` in the root's tables (an index hit is checked so)."""
        *path, leaf = name.split(".")
        m: Any = self.root
        for atom in path:
            m = m._modules.get(atom)
            if m is None:
                return False
        return m._parameters.get(leaf) is t or m._buffers.get(leaf) is t

    def _tensor_index(
        self, fresh: bool
    ) -> tuple[dict[int, tuple[str, Any]], dict[int, tuple[str, Any]]]:
        """The root's parameters and buffers by identity, with the first name fx would find;
        with `fresh`, indexed again when a table changed since."""
        tables = self._index_tables
        if tables is None or (fresh and tuple(map(dict_version, tables)) != self._index_versions):
            modules = list(self.root.modules())
            tables = [t for m in modules for t in (m._parameters, m._buffers, m._modules)]
            params: dict[int, tuple[str, Any]] = {}
            buffers: dict[int, tuple[str, Any]] = {}
            for n, p in self.root.named_parameters():
                params.setdefault(id(p), (n, p))
            for n, b in self.root.named_buffers():
                buffers.setdefault(id(b), (n, b))
            self._index = (params, buffers)
            self._index_tables = tables
            self._index_versions = tuple(map(dict_version, tables))
        return self._index

    def create_arg(self, a: Any) -> Any:
        if (
            type(a) is torch.Tensor
            and (a.requires_grad or a.grad_fn is not None)
            and not self.in_propagation
            and id(a) not in self.state_tensors
        ):
            # A tensor computed while tracing that autograd tracks would become a constant
            # of the graph: gradients through it would silently stop. Never kept. (One the
            # model keeps in its own state, a cache filled by an earlier call, is the very
            # object eager reads, and is read as such.)
            raise TraceError(
                f"The forward computes a tensor that requires grad at {self._where()} in a "
                "way fxgrad's tracer cannot record (it would be kept as a constant, cutting "
                "its gradient).",
                hint="Read parameters as attributes (self.weight) or through "
                "named_parameters() inside forward; or fix with frontend='dynamo'.",
            )
        try:
            return super().create_arg(a)
        except (NotImplementedError, NameError):  # NameError: a parameter of no submodule
            # An object fx cannot spell in code (a torch.Generator, a NumPy array, a user
            # object passed to a recorded call): kept as a constant the graph reads, the
            # very object eager would use, as fx does for tensors.
            qualname = self.get_fresh_qualname(STOWED_PREFIX)
            object.__setattr__(self.root, qualname, a)
            return self.create_node("get_attr", qualname, (), {})

    def record_factory(self, fn: Callable, args: tuple, kwargs: dict) -> fx.Proxy | None:
        """Record a tensor factory called from model code; None if it cannot be recorded."""
        try:
            proxy = self.create_proxy("call_function", fn, args, kwargs)
        except Exception:
            return None  # an argument fx cannot hold: made once, as before
        if not self._propagate and not _is_random_factory(fn) and not _has_proxy((args, kwargs)):
            # Without example inputs its value is still known (it depends on no input), so
            # `len()` of it or iterating over it is answered as eager would.
            with contextlib.suppress(Exception):
                prev = torch._C.is_grad_enabled()
                _SET_GRAD_ENABLED(False)
                try:
                    self._values[proxy.node] = fn(*args, **kwargs)
                finally:
                    _SET_GRAD_ENABLED(prev)
        return proxy

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if super().is_leaf_module(m, module_qualified_name):
            return True
        if module_qualified_name and self.initial_hooks.get(id(m), frozenset()):
            # Traced through, its hooks would never run in the fixed module (a feature
            # extractor's forward hook, a weight-norm pre-hook): kept as one call instead.
            # (Hooks the forward itself installs are traced with it: see call_module.)
            note = (
                f"self.{module_qualified_name} has hooks, so it is kept as one call and its "
                "hooks still run; fxgrad does not look inside it"
            )
            if note not in self.notes:
                self.notes.append(note)
            return True
        if module_qualified_name:
            self.traced_paths.append(module_qualified_name)
        return False

    def module_tensor(self, name: str) -> fx.Proxy:
        """The graph's read of a parameter or buffer of the traced tree, by its name."""
        return self.create_proxy("get_attr", name, (), {})

    def live_attribute(self, mod: torch.nn.Module, name: str) -> fx.Proxy:
        """A number the forward reads and writes back (`self.step += 1`), read as a graph
        value from the user's module on every call, as eager reads it."""
        path = self.module_paths.get(id(mod), "")
        proxy = self.create_proxy("get_attr", f"{path}.{name}" if path else name, (), {})
        proxy.node.meta["fxgrad_live"] = True  # Python questions about it are guarded
        return proxy

    def call_module(self, m, forward, args, kwargs):  # noqa: ANN001
        if self.in_propagation or threading.get_ident() != self.thread:
            return forward(*args, **kwargs)  # real values, or another thread's eager call
        added = hook_ids(m) - self.initial_hooks.get(id(m), frozenset())
        if added:
            return self._call_with_added_hooks(m, forward, args, kwargs, added)
        try:
            self.path_of_module(m)
        except NameError:
            return self._call_unowned(m, forward, args, kwargs)
        return super().call_module(m, forward, args, kwargs)

    def _call_with_added_hooks(self, m, forward, args, kwargs, added):  # noqa: ANN001
        """Hooks the forward installed while it ran (transformers' output capturing) are
        part of what it computes: they run here, on traced values, and what they pass on
        (a list of layer outputs the forward reads back) becomes graph data flow."""
        for key, hook in list(m._forward_pre_hooks.items()):
            if key in added:
                if key in m._forward_pre_hooks_with_kwargs:
                    res = hook(m, args, kwargs)
                    if res is not None:
                        args, kwargs = res
                else:
                    res = hook(m, args)
                    if res is not None:
                        args = res if isinstance(res, tuple) else (res,)
        out = self.call_module_unhooked(m, forward, args, kwargs)
        for key, hook in list(m._forward_hooks.items()):
            if key in added:
                if key in m._forward_hooks_with_kwargs:
                    res = hook(m, args, kwargs, out)
                else:
                    res = hook(m, args, out)
                if res is not None:
                    out = res
        return out

    def call_module_unhooked(self, m, forward, args, kwargs):  # noqa: ANN001
        saved = {name: getattr(m, name) for name in ("_forward_hooks", "_forward_pre_hooks")}
        kept = self.initial_hooks.get(id(m), frozenset())
        for name, table in saved.items():  # the module call sees only its earlier hooks
            m.__dict__[name] = type(table)((k, v) for k, v in table.items() if k in kept)
        try:
            try:
                self.path_of_module(m)
            except NameError:
                return self._call_unowned(m, forward, args, kwargs)
            return super().call_module(m, forward, args, kwargs)
        finally:
            m.__dict__.update(saved)

    def _call_unowned(self, m, forward, args, kwargs):  # noqa: ANN001
        """A module that is no submodule of the model: held in a global, built inline.

        torch.nn's own modules (`nn.ReLU()(x)` in a forward) and modules with hooks become
        one call of that very module object, kept as a constant of the graph; any other
        module's forward is traced through, as the model's own code is.
        """
        if super().is_leaf_module(m, "") or has_hooks(m):
            name = self.get_fresh_qualname(STOWED_PREFIX)
            object.__setattr__(self.root, name, m)
            return self.create_proxy("call_module", name, args, kwargs)
        return forward(*args, **kwargs)

    def create_args_for_root(self, root_fn, _is_module, _concrete_args=None):  # noqa: ANN001
        in_spec, call = self._in_spec, self._call
        n_leaves = in_spec.num_leaves
        consts = call.constants
        placeholders: list[Any] = []
        for i in range(n_leaves):
            if i in consts:
                placeholders.append(consts[i])
                continue
            name = call.leaf_names[i]
            proxy = self.create_proxy("placeholder", name, (), {})
            if i in call.numbers:
                proxy.node.meta[NUMBER_META] = True
            self.placeholder_leaf_index.append(i)
            if self._leaves is not None:
                self._values[proxy.node] = self._leaves[i]
            placeholders.append(proxy)

        own = self.root.__dict__.get("forward") if isinstance(self.root, torch.nn.Module) else None
        if callable(own):  # `self.forward = self.forward_fast` in __init__ wins, as in eager

            def root_fn(root: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
                return root.__dict__["forward"](*args, **kwargs)

        def flat_forward(root: torch.nn.Module, *_: Any) -> tuple[Any, ...]:
            args, kwargs = pytree.tree_unflatten(placeholders, in_spec)
            watch = InputWrites(args, kwargs, call.signature)
            try:
                out = root_fn(root, *args, **kwargs)
                written = watch.changed()
            finally:
                watch.restore()  # no traced value stays in an object the caller keeps
            if written:
                raise _input_write_error(written)
            _register_dataclasses(out)
            leaves, self.out_spec = pytree.tree_flatten(box_objects(out))
            return tuple(leaves)

        return flat_forward, [self.root]

    # -- Python-level questions ------------------------------------------------------------

    def _where(self) -> str:
        loc = user_frame_location(3)
        if loc is None:
            return "an unknown line"
        import os

        return f"{os.path.basename(loc[0])}:{loc[1]}"

    def concretize(self, proxy: fx.Proxy, kind: str) -> Any:
        """Answer bool()/index() of a size-like proxy from the example values, guarded."""
        node = proxy.node
        if not _is_meta_expr(node, self._meta_memo):
            raise _control_flow_error(self._where(), kind)
        if _asks_grad_of_computed(node):
            # Values are propagated without autograd, so whether a computed value requires
            # grad is unknown here: the capture stops (and Dynamo takes the forward).
            raise TraceError(
                f"The forward asks whether a computed tensor requires grad at {self._where()}, "
                "which fxgrad's tracer cannot answer.",
                hint="Ask it of an input or a parameter, or fix with frontend='dynamo'.",
            )
        self.run_pending()
        if node not in self._values:
            raise TraceError(
                f"The forward needs a concrete {kind} of a shape, dtype or device at "
                f"{self._where()}, "
                "and without example inputs fxgrad cannot know it.",
                with_inputs="the graph then checks on every call that the answer still holds",
            )
        value = self._values[node]
        answer = ANSWERS[kind](value)
        self.create_proxy("call_function", fxgrad_guard, (proxy, answer, kind, self._where()), {})
        return answer

    def known_value(self, proxy: fx.Proxy) -> Any:
        """The example value of a traced value, when there is one (None otherwise)."""
        self.run_pending()
        return self._values.get(proxy.node)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return self.concretize(obj, "bool")

    def _length(self, proxy: fx.Proxy) -> int:
        node = proxy.node
        self.run_pending()
        if node in self._values:
            try:
                n = len(self._values[node])
            except TypeError:
                n = None
            if n is not None:
                self.create_proxy(
                    "call_function", fxgrad_guard, (proxy, n, "len", self._where()), {}
                )
                return n
        static = _static_length(node)
        if static is not None:
            return static
        raise TraceError(
            f"The forward takes len() of, or iterates over, a traced value at {self._where()} "
            "and fxgrad cannot tell its length without example inputs.",
            with_inputs=LENGTHS,
            otherwise=FIXED_UNPACK,
        )

    def unpacked(self, proxy: fx.Proxy, n: int) -> None:
        """`a, b = proxy`: note that the call fails, as Python would, when its value has
        another length, and guard the length, so a call of another size is decided anew."""
        self.run_pending()
        value = self._values.get(proxy.node)
        if value is not None:
            try:
                actual = len(value)
            except TypeError:
                return
            if actual != n:  # eager raises ValueError here: the capture check reproduces it
                self._propagate = False
                self.propagation_error = ValueError(f"cannot unpack {actual} values into {n}")
                self.propagation_node = proxy.node
                return
        if not _count_is_fixed(proxy.node, value):
            self.create_proxy("call_function", fxgrad_guard, (proxy, n, "len", self._where()), {})

    def proxy_len(self, proxy: fx.Proxy) -> int:
        return self._length(proxy)

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        n = self._length(obj)
        # fx.Proxy's operators are set on it at import, unseen by its stubs
        return iter([obj[i] for i in range(n)])  # type: ignore[index]

    # -- module state written in forward -------------------------------------------------

    def record_module_setattr(self, mod: torch.nn.Module, name: str, value: Any) -> bool:
        """Record `mod.name = value` as a graph node so the fixed module keeps the write.

        `value` is a traced value, or a plain Python value (`self.initialized = True`): the
        fixed module writes it on the user's module on every call, as eager does."""
        try:
            path = self.path_of_module(mod)
        except NameError:
            return False
        plain = (id(mod), name) in self.plain_attributes
        if name in mod._buffers and not plain:
            target = f"{path}._buffers" if path else "_buffers"
            holder = self.create_proxy("get_attr", target, (), {})
            self.create_proxy("call_function", operator.setitem, (holder, name, value), {})
            mod._buffers[name] = value  # later reads in this forward see the new value
            return True
        # The module itself, as generated code reads it: a plain attribute the forward
        # rebinds (`self.state = h.detach()`) is rebound on the user's module, as in eager.
        owner = self.create_proxy("get_attr", path or ROOT_ATTR, (), {})
        self.create_proxy("call_function", builtins.setattr, (owner, name, value), {})
        if plain:
            mod._buffers[name] = value  # read back through the buffer table while tracing
        else:
            mod.__dict__[name] = value
        return True

    # -- activation checkpointing -----------------------------------------------------------

    def record_checkpoint(self, function: Any, args: tuple, kwargs: dict) -> Any:
        path = None
        if isinstance(function, torch.nn.Module):
            with contextlib.suppress(NameError):
                path = self.path_of_module(function)
        if path:
            holder = self.create_proxy("get_attr", path, (), {})
            return self.create_proxy("call_function", _ORIG_CHECKPOINT, (holder, *args), kwargs)
        self.notes.append(
            f"torch.utils.checkpoint at {self._where()} was traced through: the fixed module "
            "computes the same values and gradients but keeps the activations checkpointing "
            "would recompute (more memory); pass a submodule to checkpoint() to keep it"
        )
        own = {"use_reentrant", "context_fn", "determinism_check", "debug", "preserve_rng_state"}
        return function(*args, **{k: v for k, v in kwargs.items() if k not in own})

    # -- grad-mode regions ------------------------------------------------------------------

    def enter_grad_mode(self, mode: Any) -> None:
        prev = self.create_proxy("call_function", _IS_GRAD_ENABLED, (), {})
        self._grad_stack.append(prev)
        self.create_proxy("call_function", _SET_GRAD_ENABLED, (mode,), {})

    def exit_grad_mode(self) -> None:
        if self._grad_stack:
            prev = self._grad_stack.pop()
            self.create_proxy("call_function", _SET_GRAD_ENABLED, (prev,), {})


def _asks_grad_of_computed(node: fx.Node) -> bool:
    """`h.requires_grad` (or `h.is_leaf`, `h.grad_fn`) of a value the forward computed."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if (
            n.op == "call_function"
            and n.target is builtins.getattr
            and len(n.args) > 1
            and n.args[1] in ("requires_grad", "is_leaf", "grad_fn")
        ):
            base = n.args[0]
            if isinstance(base, fx.Node) and base.op not in ("placeholder", "get_attr"):
                return True
        stack.extend(a for a in n.all_input_nodes)
    return False


def _static_length(node: fx.Node) -> int | None:
    """Length of a call result that its arguments alone determine (`x.split([2, 3])`)."""
    target = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if node.op not in ("call_method", "call_function"):
        return None
    if target in ("split", "split_with_sizes"):
        sizes = node.kwargs.get("split_size_or_sections", node.kwargs.get("split_sizes"))
        if sizes is None and len(node.args) > 1:
            sizes = node.args[1]
        if isinstance(sizes, (list, tuple)):
            return len(sizes)
    return None


def _input_write_error(written: list[str]) -> TraceError:
    shown = ", ".join(written[:3]) + (f" and {len(written) - 3} more" if len(written) > 3 else "")
    return TraceError(
        f"The forward writes to an object it was called with ({shown}), and a captured "
        "graph cannot replay a write to the caller's object: it would leave it as it was.",
        hint="fix(model) hands such a forward to the Dynamo front-end, which replays the "
        "writes; or return the new values from forward instead of storing them.",
    )
