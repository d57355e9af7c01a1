"""Translating a detour in program order: the torch value of each NumPy array at the point
being translated.

A write gives the memory's owner a new value, written back through the views that lead to
the written array; an array read later is taken again from its owner's latest value.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx

from fxgrad.passes.numpy_round_trip.aliasing import _Layout, _View, _Write
from fxgrad.passes.numpy_round_trip.builders import _check_key
from fxgrad.passes.numpy_round_trip.emitter import _Emitter
from fxgrad.passes.numpy_round_trip.helpers import (
    _entry_source,
    _entry_source_tensor,
    _function,
    _is_array_value,
    _method,
    _np,
    _Unmapped,
)
from fxgrad.passes.numpy_round_trip.recording import _Run
from fxgrad.passes.numpy_round_trip.render import _render_call_name
from fxgrad.passes.numpy_round_trip.translate import _check_same, _translate_node
from fxgrad.passes.numpy_round_trip.writes import _WRITES


class _Memory:
    """The torch value of each NumPy array of a detour at the point being translated.

    `current[a]` is (version of a's memory, torch node); a write gives the root a new
    version, and an array whose version is old is rebuilt from the root through its views.
    """

    def __init__(self, lay: _Layout, e: _Emitter, seen: _Run, entries: set[fx.Node]) -> None:
        self.lay, self.e, self.seen, self.values = lay, e, seen, seen.values
        self.entries = entries
        self.tv: dict[fx.Node, fx.Node] = {}  # node -> its torch value when it was computed
        self.first: dict[fx.Node, fx.Node] = {}  # node -> its first torch value (sizes read it)
        self.version: dict[fx.Node, int] = {}
        self.current: dict[fx.Node, tuple[int, fx.Node]] = {}
        self.failed: dict[fx.Node, _Unmapped] = {}

    # -- reading ---------------------------------------------------------------------------

    def read(self, a: fx.Node) -> fx.Node:
        """The torch value array `a` has now, every write so far included."""
        r = self.lay.root.get(a)
        if r is None:
            return self.tv[a]
        ver = self.version[r]
        hit = self.current.get(a)
        if hit is not None and hit[0] == ver:
            return hit[1]
        val = self.current[r][1]
        for s in self.lay.chain[a]:
            hit = self.current.get(s)
            if hit is None or hit[0] != ver:
                hit = self.current[s] = (ver, self.replay(s, val))
            val = hit[1]
        return val

    def inputs(self, n: fx.Node, **given: fx.Node) -> dict[fx.Node, fx.Node]:
        out = {a: self.read(a) for a in n.all_input_nodes if a in self.tv}
        return out | {self.lay.parent[n]: given["parent"]} if given else out

    def replay(self, s: fx.Node, parent: fx.Node) -> fx.Node:
        """View `s` taken again from its parent's new value."""
        if self.lay.view_kind[s] is _View.SAME:
            return parent
        return _translate_node(self.e, s, self.inputs(s, parent=parent), self.values)

    def key(self, key: Any) -> Any:
        out = fx.node.map_arg(key, lambda a: self.read(a) if a in self.tv else a)
        _check_key(self.e, out)
        return out

    def operand(self, v: Any) -> Any:
        return self.read(v) if isinstance(v, fx.Node) and v in self.tv else v

    # -- one node ----------------------------------------------------------------------------

    def blocked(self, n: fx.Node) -> _Unmapped | None:
        """The failure of the first node `n` depends on, if any did fail."""
        pos = self.lay.pos
        return next(
            (
                self.failed[a]
                for a in sorted(self.lay.deps[n], key=pos.__getitem__)
                if a in self.failed
            ),
            None,
        )

    def step(self, n: fx.Node, at: fx.Node | None = None) -> None:
        """Translate node `n` (a value or a write) before `at`; on failure leave no trace."""
        bad = self.blocked(n)
        if bad is not None:  # downstream of a call without a twin: stays NumPy
            self.failed[n] = bad
            return
        e = self.e
        e.at, mark = at or n, len(e.created)
        saved = self.snapshot()
        try:
            write = self.lay.writes.get(n)
            if write is not None:
                self._write(write)
            else:
                t = _translate_node(e, n, self.inputs(n), self.values)
                # An entry's twin is its tensor, whose example value a NumPy write through
                # the shared memory may have changed since; the write itself is judged.
                if n not in self.entries:
                    _check_same(e.env[t], self.seen.snap[n], n, values=t not in e.arbitrary)
                self._define(n, t)
        except _Unmapped as err:
            err.node = err.node or n
            self.failed[n] = err
            self.undo(mark, saved)

    def snapshot(self) -> tuple:
        return dict(self.version), dict(self.current), self.e.anchor

    def undo(self, mark: int, saved: tuple) -> None:
        """Forget a translation that did not work out: its nodes, and views cached from them."""
        self.e.erase_since(mark)
        self.version, self.current, self.e.anchor = saved

    def _define(self, n: fx.Node, t: fx.Node) -> None:
        e = self.e
        self.tv[n] = self.first[n] = t
        if isinstance(e.env.get(t), torch.Tensor):
            e.tensors.add(t)
        if n in self.entries:
            e.anchor = t  # twins of factories and constants are made on its device
        r = self.lay.root.get(n)
        if r is n:
            self.version[n] = 0
        if r is not None:
            self.current[n] = (self.version[r], t)

    # -- writes ------------------------------------------------------------------------------

    def _write(self, w: _Write) -> None:
        how = _WRITES[w.kind]
        if isinstance(how, str):
            raise _Unmapped(how, w.node)
        self._check_writable(w)
        new = how(self, w)
        _check_same(self.e.env[new], self.seen.written[w.node], w.node)
        if new is not self.read(w.target):
            self._commit(w, new)
        if w.node in self.lay.root:  # `a += b` gives back `a`
            self.tv[w.node] = self.first[w.node] = new
            self.current[w.node] = self.current[w.target]

    def _check_writable(self, w: _Write) -> None:
        """Refuse a write into memory the detour does not own or cannot tell apart."""
        lay, t = self.lay, w.target
        r, at = lay.root[t], lay.pos[w.node]
        if r in lay.shared:
            raise _Unmapped(f"it writes into memory {_owner(r)} owns", w.node)
        for g in lay.linked(r, at) - {r}:
            if g in lay.shared:
                raise _Unmapped(
                    f"it may write into memory {_owner(g)} owns (whether "
                    f"{_render_call_name(lay.uncertain(r, g))} copies depends on strides)",
                    w.node,
                )
            if lay.last_use.get(g, -1) > at:
                raise _Unmapped(
                    f"whether {_render_call_name(lay.uncertain(r, g))} gives a view or a copy "
                    "depends on strides, and both arrays are used after this write",
                    w.node,
                )

    def _commit(self, w: _Write, new: fx.Node) -> None:
        """Make `new` the value of w.target, written back through the views leading to it."""
        lay, t = self.lay, w.target
        r = lay.root[t]
        chain = lay.chain[t]
        parents = [self.read(s) for s in (r, *chain[:-1])]
        root_value = new
        for s, parent in zip(reversed(chain), reversed(parents)):
            root_value = self._scatter(s, parent, root_value)
        self.version[r] += 1
        self.current[r] = (self.version[r], root_value)
        self.current[t] = (self.version[r], new)

    def _scatter(self, s: fx.Node, parent: fx.Node, new: fx.Node) -> fx.Node:
        """The parent's value with view `s` of it replaced by `new`."""
        scatter = _SCATTERS.get(self.lay.view_kind[s])
        if scatter is None:
            raise _Unmapped(
                f"it writes through {_render_call_name(s)}, which torch cannot write back", s
            )
        return scatter(self, s, parent, new)

    def into(self, w: _Write, result: fx.Node, operands: tuple) -> fx.Node:
        """A result stored into w.target as NumPy stores it: cast, broadcast to its shape."""
        e = self.e
        cur = self.read(w.target)
        result = e.cast(result, e.env[cur].dtype)
        if any(
            isinstance(a, fx.Node) and a is not w.target and _is_array_value(self.values.get(a))
            for a in pytree.tree_leaves(operands)
        ):
            # NumPy broadcasts into the array's shape and raises where the result would not
            # fit; without this, torch would hand back a larger array on such a call.
            result = e.m("expand_as", result, cur)
        return result

    def call(self, n: fx.Node, op: str, target: Any, args: tuple, kwargs: dict) -> fx.Node:
        """The torch twin of `target(*args, **kwargs)`, checked against what NumPy computed."""
        if n not in self.seen.plain:
            raise _Unmapped("NumPy raises on it without the write", n)
        want = self.seen.plain[n]
        t = _translate_node(
            self.e, n, self.inputs(n), self.values, call=(op, target, args, kwargs), want=want
        )
        _check_same(self.e.env[t], want, n)
        return t

    def stored(self, v: Any, w: _Write) -> Any:
        """A constant operand as NumPy stores it into w.target (`a[m] = 2.7` stores 2)."""
        if isinstance(v, fx.Node):
            return v
        return _np().array(v).astype(self.values[w.target].dtype).tolist()

    def scalar(self, v: Any, w: _Write) -> Any:
        """A scalar operand for `masked_fill` and friends, of w.target's dtype."""
        if isinstance(v, fx.Node) and v in self.tv:
            return self.e.cast(self.read(v), self.e.env[self.read(w.target)].dtype)
        return self.stored(v, w)

    def is_scalar(self, v: Any) -> bool:
        np = _np()
        x = self.values.get(v) if isinstance(v, fx.Node) else v
        if isinstance(x, (np.ndarray, torch.Tensor)):
            return x.ndim == 0
        return isinstance(x, (bool, int, float, complex, np.generic))

    def tensor(self, v: Any, like: fx.Node, dtype: torch.dtype) -> fx.Node:
        """An operand as a tensor of `dtype` on `like`'s device."""
        e = self.e
        if isinstance(v, fx.Node) and v in self.tv:
            return e.cast(self.read(v), dtype)
        if isinstance(v, fx.Node) and isinstance(self.values.get(v), torch.Tensor):
            return e.m("to", v, device=e.f(builtins.getattr, like, "device"), dtype=dtype)
        return e.m("new_tensor", like, v, dtype=dtype)


def _scatter_item(m: _Memory, s: fx.Node, parent: fx.Node, new: fx.Node) -> fx.Node:
    """A clone of the parent, written through the index (DESIGN: writes into views)."""
    base = m.e.m("clone", parent)
    m.e.f(operator.setitem, base, m.key(s.args[1]), new)
    return base


# How a new value of a view is written back into its parent, by the kind of view.
_SCATTERS: dict[_View, Callable[[_Memory, fx.Node, fx.Node, fx.Node], fx.Node]] = {
    _View.SAME: lambda _m, _s, _parent, new: new,
    _View.GETITEM: _scatter_item,
    _View.PERMUTE: lambda m, s, _parent, new: m.e.m(
        "permute", new, _inverse_permutation(s, m.lay, m.values)
    ),
    _View.RESHAPE: lambda m, _s, parent, new: m.e.m(
        "reshape", new, m.e.f(builtins.getattr, parent, "shape")
    ),
    # Flipping again gives the parent's order back.
    _View.FLIP: lambda m, s, _parent, new: m.replay(s, new),
}


def _owner(r: fx.Node) -> str:
    if r.op == "get_attr":
        return f"the constant {r.target}"
    if r.op == "placeholder":
        return f"input {r.target}"
    return f"tensor {_entry_node_source(r).name}"


def _entry_node_source(n: fx.Node) -> fx.Node:
    src = _entry_source(n)[0] if n.op == "call_method" else _entry_source_tensor(n)
    assert src is not None  # an entry reads a tensor (_find_detours), not a sequence
    return src


def _inverse_permutation(s: fx.Node, lay: _Layout, values: dict) -> tuple[int, ...]:
    """How to undo a transpose-like view: run it on an array whose sizes name its axes."""
    np = _np()
    nd = values[lay.parent[s]].ndim
    probe = np.empty(tuple(range(2, 2 + nd)), dtype=np.int8)
    args = fx.node.map_arg(s.args[1:], lambda a: values[a])
    kwargs = fx.node.map_arg(s.kwargs, lambda a: values[a])
    if s.op == "call_method":
        moved = getattr(probe, _method(s))(*args, **kwargs)
    elif s.target is builtins.getattr:
        moved = probe.T
    else:
        moved = _function(s)(probe, *args, **kwargs)
    return tuple(int(i) for i in np.argsort([d - 2 for d in moved.shape]))
