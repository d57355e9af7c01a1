"""How a call's arguments map to graph placeholders and baked constants."""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import inspect
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx

from fxgrad.errors import FxgradError

# ---------------------------------------------------------------------------------------
# Capture entry point


@dataclass
class CallSpec:
    """How one call's arguments map to graph placeholders and baked constants.

    It describes the call as it was made, positional and keyword arguments as the caller
    passed them, with no default filled in: the forward is traced by calling it that way,
    so decorators that merge defaults of their own see what eager PyTorch gives them.
    """

    signature: inspect.Signature | None
    in_spec: pytree.TreeSpec
    leaf_names: list[str]
    constants: dict[int, Any] = field(default_factory=dict)
    # Leaves that are Python numbers passed as graph inputs (see `is_number`), by index.
    numbers: frozenset[int] = frozenset()

    def unflatten(self, leaves: list[Any]) -> tuple[tuple, dict]:
        """Rebuild (args, kwargs) of a call from its non-constant leaves, in order.

        Constant objects are private copies (see `private_object`): fxgrad's own runs of the
        forward (eager's reference, a probe) must not fill the caller's cache object.
        """
        it = iter(leaves)
        memo: dict[int, Any] = {}
        full = [
            private_object(self.constants[i], memo) if i in self.constants else next(it)
            for i in range(self.in_spec.num_leaves)
        ]
        return pytree.tree_unflatten(full, self.in_spec)

    def flatten(self, args: tuple, kwargs: dict) -> list[Any]:
        """The non-constant leaves of a call made with this structure, in placeholder order."""
        leaves = pytree.tree_leaves(box_objects((args, kwargs)))
        return [leaf for i, leaf in enumerate(leaves) if i not in self.constants]


def private_object(x: Any, memo: dict[int, Any]) -> Any:
    """A copy of a stateful object passed to the forward (transformers' `DynamicCache`),
    so a probing run's updates, or a trace's values, never land in the caller's object."""
    if not hasattr(x, "__dict__") or callable(x) or isinstance(x, (type, types.ModuleType)):
        return x
    if id(x) not in memo:
        try:
            memo[id(x)] = copy.deepcopy(x)
        except Exception:
            memo[id(x)] = x  # it refuses to be copied: shared, as before
    return memo[id(x)]


def _same_constant(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return a is b


def _leaf_names(spec: pytree.TreeSpec, signature: inspect.Signature | None) -> list[str]:
    """Name each input leaf after its forward parameter: `x`, `batch_image`, `xs_1`."""
    paths = _spec_paths(spec)
    params = list(signature.parameters.values()) if signature is not None else []
    star = next((i for i, p in enumerate(params) if p.kind == p.VAR_POSITIONAL), None)
    positional_params = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]

    def positional(k: int) -> str:
        if star is not None and k >= star:
            return f"{params[star].name}_{k - star}"
        return positional_params[k].name if k < len(positional_params) else f"arg{k}"

    names = []
    for path in paths:
        parts: list[str] = []
        for i, key in enumerate(path[1:]):
            if i == 0 and path[0] == 0 and isinstance(key, int):
                parts.append(positional(key))
            else:
                parts.append(str(key))
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in "_".join(parts))
        if not name or not (name[0].isalpha() or name[0] == "_"):
            name = f"input_{name}"
        names.append(name)
    return names


def _children(spec: pytree.TreeSpec) -> list[pytree.TreeSpec]:
    children = getattr(spec, "children", None)
    return list(children()) if callable(children) else list(spec.children_specs)


def _spec_paths(spec: pytree.TreeSpec, prefix: tuple = ()) -> list[tuple]:
    """The path of keys to each leaf of a TreeSpec (list index, dict key, attribute name)."""
    if spec.is_leaf():
        return [prefix]
    if spec.type is ObjectBox:  # an object's attributes: named by attribute, not by "state"
        return _spec_paths(_children(spec)[0], prefix)
    keys = spec.context if isinstance(spec.context, (list, tuple)) else None
    if spec.type in (dict, collections.OrderedDict) and keys is not None:
        labels = list(keys)
    elif spec.type is not None and hasattr(spec.type, "_fields"):  # namedtuple
        labels = list(spec.type._fields)
    else:
        labels = list(range(spec.num_children))
    out: list[tuple] = []
    for label, child in zip(labels, _children(spec)):
        out.extend(_spec_paths(child, (*prefix, label)))
    return out


def _signature(model: torch.nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None


def is_number(x: Any) -> bool:
    """A Python int or float (not a bool: flags decide control flow, not arithmetic)."""
    return type(x) is float or type(x) is int


def call_spec(
    model: torch.nn.Module,
    args: tuple | None,
    kwargs: dict | None = None,
    numbers: bool = False,
) -> tuple[CallSpec, list]:
    """Describe a call of the forward: pytree structure, placeholder names, baked constants.

    With `args` None (no example inputs) every parameter of forward without a default gets
    a placeholder, and the others keep their defaults. With `numbers`, Python ints and
    floats among the arguments are placeholders too, not constants: a capture tries that
    first, so a timestep or a scale that changes every call is an input of one graph.
    """
    signature = _signature(model)
    kwargs = dict(kwargs or {})
    if args is None:
        static = []
        for p in signature.parameters.values() if signature is not None else ():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is p.empty:
                static.append(_StaticLeaf(p.name))
        args = tuple(static)
    else:
        _register_dataclasses((args, kwargs))
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as e:
                raise FxgradError(
                    f"The example inputs do not match the model's forward signature: {e}.",
                    hint=f"Pass one entry per argument of forward{plain_signature(signature)}: "
                    f"{fix_call_example(signature)}.",
                ) from None
    leaves, spec = pytree.tree_flatten(box_objects((tuple(args), kwargs)))
    as_inputs = frozenset(i for i, leaf in enumerate(leaves) if numbers and is_number(leaf))
    constants = {
        i: leaf
        for i, leaf in enumerate(leaves)
        if not isinstance(leaf, (torch.Tensor, _StaticLeaf))
        and not is_array(leaf)
        and i not in as_inputs
    }
    names = _dedupe(_leaf_names(spec, signature))
    return CallSpec(signature, spec, names, constants, as_inputs), leaves


def plain_signature(signature: inspect.Signature) -> inspect.Signature:
    """The signature without annotations, as a hint shows it: `(x, mask=None)`."""
    return signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )


def fix_call_example(signature: inspect.Signature) -> str:
    """`fxgrad.fix(model, (x,))` for this forward, with its own argument names only."""
    params = list(signature.parameters.values())
    positional = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    keywords = [
        p.name
        for p in params
        if p.kind is p.KEYWORD_ONLY
        or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
    ]
    required = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    args = f"({positional[0]},)" if len(positional) == 1 else f"({', '.join(positional)})"
    if required:
        return f"fxgrad.fix(model, {args}, {{{', '.join(f'{n!r}: {n}' for n in required)}}})"
    call = f"fxgrad.fix(model, {args})"
    if keywords:
        call += f" or fxgrad.fix(model, {args}, {{{keywords[0]!r}: {keywords[0]}}})"
    return call


def is_array(x: Any) -> bool:
    """Whether `x` is a NumPy array, asked without importing NumPy."""
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray"


class _StaticLeaf:
    def __init__(self, name: str) -> None:
        self.name = name


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}_{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def _register_dataclasses(tree: Any) -> None:
    """Make dataclass outputs and inputs pytree nodes so they are rebuilt exactly."""
    stack = [tree]
    while stack:
        obj = stack.pop()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            if cls not in pytree.SUPPORTED_NODES:
                with contextlib.suppress(ValueError, TypeError):
                    pytree.register_dataclass(cls)
            stack.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())


# ---------------------------------------------------------------------------------------
# Objects that hold tensors (transformers' DynamicCache): flattened through their attributes


class ObjectBox:
    """An object of a class pytree does not know, standing for it while it is flattened.

    Its attributes are flattened in its place, so the tensors an object holds (a key/value
    cache's layers) are graph inputs or outputs like any other, and unflattening makes an
    object of the same class with the same attributes, holding this call's tensors.
    """

    __slots__ = ("cls", "state")

    def __init__(self, cls: type, state: dict) -> None:
        self.cls, self.state = cls, state


def _box_flatten(box: ObjectBox) -> tuple[list[Any], Any]:
    return [box.state], box.cls


def _box_unflatten(children: Iterable[Any], cls: type[object]) -> Any:
    (state,) = children  # the one child _box_flatten gives: the object's __dict__
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


pytree.register_pytree_node(ObjectBox, _box_flatten, _box_unflatten)

_BOX_DEPTH = 6  # how deep objects inside objects are followed


def box_objects(tree: Any) -> Any:
    """`tree` with every object that holds tensors (or traced values) as an ObjectBox.

    Containers pytree knows (lists, dicts, transformers' ModelOutput...) are walked as
    pytree walks them; an object pytree sees as a leaf is boxed when it holds tensors.
    """
    return _box(tree, _BOX_DEPTH)


def _box(tree: Any, depth: int) -> Any:
    if depth == 0:
        return tree

    def leaf(x: Any) -> Any:
        if _boxable(x) and _holds_tensors(x, depth, set()):
            return ObjectBox(type(x), {k: _box(v, depth - 1) for k, v in vars(x).items()})
        return x

    return pytree.tree_map(leaf, tree)


def _boxable(x: Any) -> bool:
    cls = type(x)
    return (
        hasattr(x, "__dict__")
        and cls not in pytree.SUPPORTED_NODES
        and not isinstance(
            x, (torch.Tensor, fx.Proxy, torch.nn.Module, type, types.FunctionType, types.MethodType)
        )
        and not dataclasses.is_dataclass(x)
        and not _slot_attributes(cls)
    )


def _slot_attributes(cls: type) -> list[str]:
    """Attributes a class keeps in slots, outside its instances' __dict__."""
    out = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                out.append(name)
    return out


def _holds_tensors(x: Any, depth: int, seen: set[int]) -> bool:
    """Whether an object holds a tensor or a traced value, directly or inside it."""
    if isinstance(x, (torch.Tensor, fx.Proxy)):
        return True
    if depth == 0 or id(x) in seen:
        return False
    seen.add(id(x))
    if isinstance(x, (list, tuple)):
        return any(_holds_tensors(v, depth, seen) for v in x)
    if isinstance(x, dict):
        return any(_holds_tensors(v, depth, seen) for v in x.values())
    if hasattr(x, "__dict__") and not isinstance(x, (torch.nn.Module, type)):
        return any(_holds_tensors(v, depth - 1, seen) for v in vars(x).values())
    return False
