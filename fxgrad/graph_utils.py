"""Graph helpers shared by the tracer, the pipeline and the passes.

The central question here is "which nodes write to memory?": stock fx utilities such as
`Graph.eliminate_dead_code()` do not know that `x.mul_(2)` or `relu(x, inplace=True)`
with an unused result still changes what the model computes, so every helper that removes
or reorders nodes asks `writes_to()` first.
"""

from __future__ import annotations

import bisect
import builtins
import functools
import inspect
import linecache
import operator
import os
import weakref
from collections.abc import Callable, Collection, Iterable
from types import FrameType
from typing import Any

import torch
from torch import fx
from torch.fx.immutable_collections import immutable_dict, immutable_list

from fxgrad import ops

# In-place operator module functions (`z += 1` is traced as operator.iadd).
INPLACE_OPERATORS: dict[Callable, Callable] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    operator.ilshift: operator.lshift,
    operator.irshift: operator.rshift,
}


def _fxgrad_side_effect(fn: Callable) -> Callable:
    fn._fxgrad_side_effect = True  # type: ignore[attr-defined]
    return fn


# What a recorded `torch.inference_mode()` or `torch.autocast()` region calls on entry
# and exit.
ENTER_INFERENCE_MODE = torch.autograd.grad_mode._enter_inference_mode
EXIT_INFERENCE_MODE = torch.autograd.grad_mode._exit_inference_mode
ENTER_AUTOCAST = torch.amp.autocast_mode._enter_autocast
EXIT_AUTOCAST = torch.amp.autocast_mode._exit_autocast

SIDE_EFFECT_FUNCTIONS: set[Any] = {
    torch._C._set_grad_enabled,
    ENTER_INFERENCE_MODE,
    EXIT_INFERENCE_MODE,
    ENTER_AUTOCAST,
    EXIT_AUTOCAST,
    torch._assert,
    operator.setitem,
    builtins.setattr,
}


@functools.cache
def inplace_param_index(fn: Callable) -> int | None:
    """Position of an `inplace` parameter in fn's signature, if it has one."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("inplace") if "inplace" in params else None


def _flag(node: fx.Node, name: str, index: int | None) -> bool:
    if name in node.kwargs:
        return bool(node.kwargs[name])
    if index is not None and index < len(node.args):
        value = node.args[index]
        return bool(value) if not isinstance(value, fx.Node) else False
    return False


_SUBMODULES: weakref.WeakKeyDictionary[fx.GraphModule, dict[str, torch.nn.Module]] = (
    weakref.WeakKeyDictionary()
)


try:  # compiles its Python code when first called or read, as Inductor's passes do
    from torch.fx._lazy_graph_module import _LazyGraphModule as _LazyGraphModule
except ImportError:  # a torch without it: code is generated right away
    _LazyGraphModule = fx.GraphModule  # type: ignore[misc,assignment]


def empty_graph_module(class_name: str) -> fx.GraphModule:
    """An empty GraphModule whose code is generated only when it is called or its code is
    read. Deciding runs a captured graph through fx.Interpreter and rewrites it before
    anything calls it, so generating code for every intermediate graph (about a third of
    `fix(model, inputs)` on a small transformer) is work nobody reads."""
    return _LazyGraphModule({}, fx.Graph(), class_name=class_name)


def run_forward(gm: fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
    """`gm`'s forward, called without fx's wrapper around `gm(...)`, which prints its own
    traceback to stderr for every error raised in the generated code: the errors fxgrad
    expects while deciding (eager's, a rolled-back rewrite's) are reported, not printed.
    A lazy GraphModule's first `forward` goes through that wrapper, so its code is
    generated first."""
    recompile = getattr(gm, "real_recompile", None)
    if recompile is not None:
        recompile()
    return gm.forward(*args, **kwargs)


_LITERALS = (immutable_list, immutable_dict, tuple)


def fresh_containers(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A node's arguments as its generated code passes them, for an fx.Interpreter.

    Generated code builds a list or dict written in a node's arguments anew on every call;
    fx.Interpreter hands out fx's own immutable_list / immutable_dict instead, which a
    callee that fills its argument cannot write (torchvision's Swin3d passes a list it
    builds in forward to an fx.wrap'd `_get_window_and_shift_size`, which assigns into it).
    """
    if not any(type(a) in _LITERALS for a in args) and not any(
        type(v) in _LITERALS for v in kwargs.values()
    ):
        return args, kwargs
    return _fresh(args), {k: _fresh(v) for k, v in kwargs.items()}


def _fresh(a: Any) -> Any:
    t = type(a)
    if t is immutable_list:
        return [_fresh(x) for x in a]
    if t is immutable_dict:
        return {k: _fresh(v) for k, v in a.items()}
    if t is tuple:
        new = tuple(_fresh(x) for x in a)
        return new if any(n is not o for n, o in zip(new, a)) else a
    return a


def submodule(gm: fx.GraphModule, target: str) -> torch.nn.Module:
    """`gm.get_submodule(target)`, remembered per graph module.

    The passes ask for the module of every call_module node several times (is it an
    in-place ReLU? what does it save?), and walking the dotted path each time was most of
    FXG101's static cost. fxgrad only ever adds submodules under fresh names, so a target
    keeps its module.
    """
    table = _SUBMODULES.get(gm)
    if table is None:
        table = _SUBMODULES[gm] = {}
    mod = table.get(target)
    if mod is None:
        mod = table[target] = find_submodule(gm, target)
    return mod


def find_submodule(root: torch.nn.Module, target: str) -> torch.nn.Module:
    """`root.get_submodule(target)` through the `_modules` dicts, without Module.__getattr__."""
    mod: Any = root
    for atom in target.split("."):
        child = mod._modules.get(atom) if isinstance(mod, torch.nn.Module) else None
        if child is None:
            # a module kept as a constant of the graph (one the model calls but does not own)
            child = mod.__dict__.get(atom) if isinstance(mod, torch.nn.Module) else None
            if not isinstance(child, torch.nn.Module):
                return root.get_submodule(target)  # its error names what is missing
        mod = child
    return mod


def inplace_module(gm: fx.GraphModule | None, node: fx.Node) -> torch.nn.Module | None:
    """Return the module a call_module node runs when it writes its input in place."""
    if node.op != "call_module" or gm is None:
        return None
    try:
        mod = submodule(gm, str(node.target))
    except AttributeError:
        return None
    # Read the attribute without nn.Module.__getattr__'s slow miss for modules lacking it.
    flag = (
        mod.__dict__["inplace"]
        if "inplace" in mod.__dict__
        else getattr(type(mod), "inplace", False)
    )
    return mod if flag is True else None


def writes_to(node: fx.Node, gm: fx.GraphModule | None = None) -> fx.Node | None:
    """Return the node whose memory `node` writes in place, or None if it writes nothing.

    Covers in-place methods (`add_`), in-place torch functions (`torch.relu_`),
    `inplace=True` functional calls and modules, `operator.setitem`, augmented assignment
    (`operator.iadd`, ...) and `out=` arguments.
    """
    out = node.kwargs.get("out") if node.op in ("call_function", "call_method") else None
    if isinstance(out, fx.Node):
        return out
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op == "call_method":
        # The schema's `Tensor(a!) self`, less writes that leave the values alone
        # (`requires_grad_`, `detach_`): those change metadata, never what autograd saved.
        return first if ops.is_inplace(str(node.target)) else None
    if node.op == "call_function":
        target = node.target
        if target is operator.setitem or target in INPLACE_OPERATORS:
            return first
        if ops.is_inplace(target):
            return first
        module = getattr(target, "__module__", "") or ""
        if callable(target) and module.startswith("torch"):
            index = inplace_param_index(target)
            if index is not None and _flag(node, "inplace", index):
                return first
        return None
    if node.op == "call_module" and inplace_module(gm, node) is not None:
        return first
    return None


def has_side_effect(node: fx.Node, gm: fx.GraphModule | None = None) -> bool:
    """True when removing `node` would change what the program does even if unused."""
    if node.op in ("placeholder", "output"):
        return True
    if node.op == "call_module":
        return True  # modules may update their own state (BatchNorm running stats)
    if node.op == "call_function" and (
        node.target in SIDE_EFFECT_FUNCTIONS or getattr(node.target, "_fxgrad_side_effect", False)
    ):
        return True
    if node.op == "call_function" and getattr(node.target, "_fxgrad_function", None) is not None:
        return True  # custom autograd.Function: opaque, may have side effects
    if node.op in ("call_method", "call_function") and ops.writes_args(node.target):
        return True  # `h.requires_grad_()`, `h.detach_()`: unused result, changed tensor
    return writes_to(node, gm) is not None


def eliminate_dead_code(gm: fx.GraphModule) -> int:
    """Remove unused nodes that write nothing; returns how many were removed.

    Unlike `Graph.eliminate_dead_code()`, a write whose result is unused is kept: dropping
    `h.mul_(2)` would change every later reader of `h`.
    """
    removed = 0
    for node in reversed(list(gm.graph.nodes)):
        if node.users or has_side_effect(node, gm):
            continue
        gm.graph.erase_node(node)
        removed += 1
    return removed


def closure(nodes: Iterable[fx.Node], step: Callable[[fx.Node], Iterable[fx.Node]]) -> set[fx.Node]:
    """The nodes given and every node `step` leads to from them, transitively."""
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(step(n))
    return seen


def ancestors(nodes: Iterable[fx.Node]) -> set[fx.Node]:
    """The nodes given and every node they read, transitively."""
    return closure(nodes, lambda n: n.all_input_nodes)


def descendants(nodes: Iterable[fx.Node]) -> set[fx.Node]:
    """The nodes given and every node that reads them, transitively."""
    return closure(nodes, lambda n: n.users)


# ---------------------------------------------------------------------------------------
# Where a node came from in the user's code

_INTERNAL_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (torch.__file__, __file__)
    if path  # torch's is None where it is a namespace package
)

_internal_cache: dict[str, bool] = {}


def is_internal(filename: str) -> bool:
    """Whether code in `filename` is torch's or fxgrad's own: frames there are skipped when
    the user's line is wanted (an error, a traced call, a write)."""
    hit = _internal_cache.get(filename)
    if hit is None:
        hit = filename.startswith(_INTERNAL_DIRS) or filename.startswith("<frozen")
        _internal_cache[filename] = hit
    return hit


def user_frame_location(start_depth: int = 1) -> tuple[str, int] | None:
    """Return (filename, lineno) of the innermost frame outside torch and fxgrad.

    Walks frames only until the first user frame, which is far cheaper than recording the
    whole stack as fx's `record_stack_traces=True` does.
    """
    import sys

    frame: FrameType | None = sys._getframe(start_depth)
    fallback: tuple[str, int] | None = None
    cache = _internal_cache
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        internal = cache.get(filename)
        if internal is None:
            internal = is_internal(filename)
        if not internal:
            return filename, _frame_line(frame)
        if code is _TRACE_CODE:
            # No user frame inside the traced forward: the model is torch.nn code itself
            # (nn.TransformerEncoder); name its line rather than the line calling fix().
            return fallback
        if fallback is None and filename.startswith(_NN_DIR):
            fallback = (filename, _frame_line(frame))
        frame = frame.f_back
    return fallback


_TRACE_CODE = fx.Tracer.trace.__code__
_NN_DIR = os.path.dirname(os.path.abspath(torch.nn.__file__)) + os.sep


_line_tables: dict[int, tuple[weakref.ref, list[int], list[int | None]]] = {}


def _frame_line(frame: Any) -> int:
    """`frame.f_lineno` in O(log n). CPython scans the code's line table from the start
    (and hashing a code object reads all of it), so tracing a forward of n lines with
    `f_lineno` was O(n^2); the table is built once per code object, keyed by id."""
    code = frame.f_code
    entry = _line_tables.get(id(code))
    if entry is None or entry[0]() is not code:
        starts, lines = [], []
        for start, _end, line in code.co_lines():
            starts.append(start)
            lines.append(line)
        key = id(code)

        def forget(_: object) -> None:  # the code object is gone: its id may be reused
            _line_tables.pop(key, None)

        entry = (weakref.ref(code, forget), starts, lines)
        _line_tables[key] = entry
    i = bisect.bisect_right(entry[1], frame.f_lasti) - 1
    line = entry[2][i] if i >= 0 else None
    return line if line is not None else frame.f_lineno


def location(node: fx.Node) -> str:
    """Return the user's `file.py:line` for a node, or "" if unknown."""
    loc = node.meta.get("fxgrad_loc")
    if not loc:
        return ""
    return f"{os.path.basename(loc[0])}:{loc[1]}"


def source_line(node: fx.Node) -> str:
    """Return the stripped line of user source that produced the node, or ""."""
    loc = node.meta.get("fxgrad_loc")
    if not loc:
        return ""
    return _strip_comment(linecache.getline(loc[0], loc[1])).strip()


def source_list_items(node: fx.Node, count: int) -> list[str] | None:
    """The user's expressions for a call's list argument (`torch.cat([a.t(), y])` gives
    `["a.t()", "y"]`), read from the node's source line; None where the line does not show
    exactly one such call with `count` plain items (a call across lines, a `*rest`)."""
    import ast

    line = source_line(node)
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if not line or not name:
        return None
    try:
        tree = ast.parse(line)
    except SyntaxError:
        return None
    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called != name:
            continue
        items = call.args[0] if call.args else None
        if isinstance(items, (ast.List, ast.Tuple)) and len(items.elts) == count:
            if not any(isinstance(e, ast.Starred) for e in items.elts):
                found.append(items.elts)
    if len(found) != 1:
        return None
    texts = [ast.get_source_segment(line, e) for e in found[0]]
    segments = [t for t in texts if t is not None]
    return segments if len(segments) == len(texts) else None


def as_primary(text: str) -> str:
    """`text`, in parentheses where a method call after it would bind to a part (`y * 2`)."""
    import ast

    try:
        expr = ast.parse(text, mode="eval").body
    except SyntaxError:
        return f"({text})"
    simple = (ast.Name, ast.Attribute, ast.Call, ast.Subscript)
    return text if isinstance(expr, simple) else f"({text})"


def _strip_comment(line: str) -> str:
    """Drop a trailing `# comment` (a `#` inside a string literal stays)."""
    if "#" not in line:
        return line
    import io
    import tokenize

    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type == tokenize.COMMENT:
                return line[: tok.start[1]]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return line


# ---------------------------------------------------------------------------------------
# Rendering nodes as short Python

OPERATOR_SYMBOLS = {
    operator.add: "+",
    operator.sub: "-",
    operator.mul: "*",
    operator.truediv: "/",
    operator.floordiv: "//",
    operator.mod: "%",
    operator.pow: "**",
    operator.matmul: "@",
    operator.and_: "&",
    operator.or_: "|",
    operator.xor: "^",
    operator.lshift: "<<",
    operator.rshift: ">>",
    operator.eq: "==",
    operator.ne: "!=",
    operator.lt: "<",
    operator.le: "<=",
    operator.gt: ">",
    operator.ge: ">=",
}
_UNARY_SYMBOLS: dict[Callable[..., Any], str] = {
    operator.neg: "-",
    operator.pos: "+",
    operator.invert: "~",
}

# How tightly Python binds each operator, so that an operand written out in place is
# parenthesized only where it must be: `(a + b) * c`, `a - (b - c)`, `(a < b) == c`.
_COMPARISON, _UNARY, _POWER, _PRIMARY = 1, 8, 9, 10
_PRECEDENCE: dict[Callable[..., Any], int] = {
    **dict.fromkeys(
        (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge), _COMPARISON
    ),
    operator.or_: 2,
    operator.xor: 3,
    operator.and_: 4,
    operator.lshift: 5,
    operator.rshift: 5,
    operator.add: 6,
    operator.sub: 6,
    **dict.fromkeys(
        (operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.matmul), 7
    ),
    **dict.fromkeys(_UNARY_SYMBOLS, _UNARY),
    operator.pow: _POWER,
}

# torch's functions of torch.linalg, torch.special and torch.fft are builtins named
# `linalg_vector_norm`, `special_expit`, `fft_fft` in these modules.
_TORCH_NAMESPACES = {
    "torch._C._linalg": "linalg",
    "torch._C._special": "special",
    "torch._C._fft": "fft",
}


def target_name(target: Any) -> str:
    """Return a readable name for a call_function target (`torch.relu`, `np.sin`,
    `torch.linalg.vector_norm`, `np.linalg.norm`, `np.add.at`)."""
    ufunc = getattr(target, "_fxgrad_ufunc", None)
    if ufunc is not None:  # the tracer's stand-in for a ufunc method (`np.add.at`)
        return f"np.{ufunc.__name__}.{target._fxgrad_ufunc_method}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or repr(target)
    namespace = _TORCH_NAMESPACES.get(module)
    if namespace is not None and name.startswith(f"{namespace}_"):
        return f"torch.{namespace}.{name[len(namespace) + 1 :]}"
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module.startswith("torch"):
        return f"torch.{name}"
    if type(target).__name__ == "ufunc" or module == "numpy":
        return f"np.{name}"
    if module.startswith("numpy."):  # a public submodule names itself (`np.linalg.norm`)
        sub = module.split(".")[1]
        return f"np.{name}" if sub.startswith("_") else f"np.{sub}.{name}"
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    return name


def render_node(node: fx.Node, inline: Collection[fx.Node] = ()) -> str:
    """Render a node as one short line of Python, the way the generated code reads.

    An argument that is a call in `inline` is written out in place, parenthesized where
    Python's precedence needs it, so that a chain of nodes reads as one expression
    (`torch.sum(torch.sin(h) * 2, dim=1)`); any other node reads as its name.
    """
    r = _Renderer(inline)
    args, kwargs = node.args, node.kwargs
    if node.op == "call_module":
        return f"self.{node.target}({r.call(args, kwargs)})"
    if node.op == "get_attr":
        return f"self.{node.target}"
    if node.op == "placeholder":
        return str(node.target)
    if node.op == "output":
        return f"return {r.lit(args[0])}"
    if node.op == "call_function" and node.target in INPLACE_OPERATORS:
        symbol = OPERATOR_SYMBOLS[INPLACE_OPERATORS[node.target]]
        return f"{r.lit(args[0])} {symbol}= {r.lit(args[1])}"
    return r.expr(node)


def render_assignment(node: fx.Node) -> str:
    """Render `name = <expr>` for a node that produces a value."""
    return f"{node.name} = {render_node(node)}"


class _Renderer:
    """Python text for a node's arguments; nodes in `inline` are written out in place."""

    def __init__(self, inline: Collection[fx.Node]) -> None:
        self.inline = inline

    def lit(self, a: Any) -> str:
        if isinstance(a, fx.Node):
            return self.expr(a) if a in self.inline else a.name
        if isinstance(a, tuple):
            inner = ", ".join(self.lit(x) for x in a)
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        if isinstance(a, list):
            return "[" + ", ".join(self.lit(x) for x in a) + "]"
        if isinstance(a, slice):
            parts = [
                "" if a.start is None else self.lit(a.start),
                "" if a.stop is None else self.lit(a.stop),
            ]
            if a.step is not None:
                parts.append(self.lit(a.step))
            return ":".join(parts)
        if isinstance(a, dict):
            return "{" + ", ".join(f"{k!r}: {self.lit(v)}" for k, v in a.items()) + "}"
        if a is Ellipsis:
            return "..."
        return repr(a)

    def operand(self, a: Any, outer: int = _PRIMARY, right: bool = False) -> str:
        """`a` as an operand of an operator of precedence `outer`, parenthesized if need be.

        Comparisons chain (`a < b == c` is not `(a < b) == c`) and `**` groups from the
        right, so an operand of equal precedence gets parentheses on either side of them.
        """
        text = self.lit(a)
        if isinstance(a, fx.Node) and a in self.inline and a.op == "call_function":
            assert not isinstance(a.target, str)  # a call_function's target is the function
            inner = _PRECEDENCE.get(a.target, _PRIMARY)
            if inner < outer or (inner == outer and (right or outer in (_COMPARISON, _POWER))):
                return f"({text})"
        return text

    def call(self, args: tuple, kwargs: dict) -> str:
        return ", ".join(
            [self.lit(a) for a in args] + [f"{k}={self.lit(v)}" for k, v in kwargs.items()]
        )

    def index(self, a: Any) -> str:
        if isinstance(a, tuple):
            return ", ".join(self.lit(x) for x in a) if a else "()"
        return self.lit(a)

    def expr(self, n: fx.Node) -> str:
        """`n` as an expression; a node that is not a call reads as its name."""
        args, kwargs = n.args, n.kwargs
        if n.op == "call_method":
            return f"{self.operand(args[0])}.{n.target}({self.call(args[1:], kwargs)})"
        if n.op != "call_function":
            return n.name
        special = _SPELLINGS.get(n.target)
        if special is None and getattr(n.target, "__name__", "") == "writable_piece":
            special = _Renderer.writable_piece
        text = special(self, args, kwargs, n.target) if special is not None else None
        if text is not None:
            return text
        return f"{target_name(n.target)}({self.call(args, kwargs)})"

    def binary(self, args: tuple, kwargs: dict, target: Any) -> str | None:
        if len(args) != 2 or kwargs:
            return None
        prec = _PRECEDENCE[target]
        left, right = self.operand(args[0], prec), self.operand(args[1], prec, right=True)
        return f"{left} {OPERATOR_SYMBOLS[target]} {right}"

    def unary(self, args: tuple, _kwargs: dict, target: Any) -> str | None:
        return (
            f"{_UNARY_SYMBOLS[target]}{self.operand(args[0], _UNARY)}" if len(args) == 1 else None
        )

    def writable_piece(self, args: tuple, _kwargs: dict, _target: Any) -> str | None:
        """FXG101's `writable_piece(base, op, args, kwargs, i)`: piece i of `base.op(...)`."""
        if len(args) != 5:
            return None
        base, op, op_args, op_kwargs, index = args
        name = op if isinstance(op, str) else getattr(op, "__name__", "?")
        return f"{self.lit(base)}.{name}({self.call(tuple(op_args), dict(op_kwargs))})[{index}]"


# Functions written as Python syntax rather than as calls: (renderer, args, kwargs, target)
# -> the text, or None to write the call.
_SPELLINGS: dict[Any, Callable[[_Renderer, tuple, dict, Any], str | None]] = {
    builtins.getattr: lambda r, args, _kw, _t: f"{r.operand(args[0])}.{args[1]}",
    operator.getitem: lambda r, args, _kw, _t: f"{r.operand(args[0])}[{r.index(args[1])}]",
    operator.setitem: lambda r, args, _kw, _t: (
        f"{r.operand(args[0])}[{r.index(args[1])}] = {r.lit(args[2])}"
    ),
    **dict.fromkeys(OPERATOR_SYMBOLS, _Renderer.binary),
    **dict.fromkeys(_UNARY_SYMBOLS, _Renderer.unary),
    operator.abs: lambda r, args, _kw, _t: f"abs({r.lit(args[0])})",
}
