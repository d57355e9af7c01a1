"""render_node: one renderer for every report, a node's arguments by name or written out."""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx

from fxgrad.graph_utils import render_node, target_name
from fxgrad.runtime import ufunc_method


def _graph() -> tuple[fx.Graph, fx.Node, fx.Node]:
    graph = fx.Graph()
    return graph, graph.placeholder("a"), graph.placeholder("b")


def test_arguments_read_as_names_unless_written_out():
    g, a, b = _graph()
    s = g.call_function(operator.add, (a, b))
    m = g.call_function(operator.mul, (s, 2))
    r = g.call_method("sum", (m,), {"dim": 1})
    assert render_node(r) == "mul.sum(dim=1)"
    assert render_node(r, {s, m}) == "((a + b) * 2).sum(dim=1)"
    assert render_node(m, {s}) == "(a + b) * 2"


def test_operands_are_parenthesized_only_where_python_needs_it():
    g, a, b = _graph()
    sub = g.call_function(operator.sub, (a, b))
    mul = g.call_function(operator.mul, (a, b))
    lt = g.call_function(operator.lt, (a, b))
    neg = g.call_function(operator.neg, (a,))
    power = g.call_function(operator.pow, (a, b))
    both = g.call_function(operator.and_, (a, b))
    either = g.call_function(operator.or_, (a, b))
    inline = {sub, mul, lt, neg, power, both, either}

    def render(target, *args):
        return render_node(g.call_function(target, args), inline)

    assert render(operator.sub, a, sub) == "a - (a - b)"
    assert render(operator.sub, sub, a) == "a - b - a"
    assert render(operator.add, mul, a) == "a * b + a"
    assert render(operator.eq, lt, b) == "(a < b) == b"  # `a < b == b` chains
    assert render(operator.pow, power, b) == "(a ** b) ** b"
    assert render(operator.pow, neg, b) == "(-a) ** b"
    assert render(operator.neg, power) == "-a ** b"
    assert render(operator.or_, both, b) == "a & b | b"
    assert render(operator.and_, either, b) == "(a | b) & b"


def test_statements_and_literals():
    g, a, b = _graph()
    assert render_node(g.call_function(operator.setitem, (a, (Ellipsis, 0), b))) == "a[..., 0] = b"
    assert render_node(g.call_function(operator.getitem, (a, ()))) == "a[()]"
    assert render_node(g.call_function(operator.iadd, (a, 1))) == "a += 1"
    assert render_node(g.call_function(operator.getitem, (a, slice(None, 2)))) == "a[:2]"
    assert render_node(g.get_attr("w")) == "self.w"


def test_target_names_read_as_the_user_writes_them():
    assert target_name(torch.linalg.vector_norm) == "torch.linalg.vector_norm"
    assert target_name(torch.special.expit) == "torch.special.expit"
    assert target_name(torch.nn.functional.relu) == "F.relu"
    assert target_name(np.linalg.norm) == "np.linalg.norm"
    assert target_name(np.sum) == "np.sum"
    assert target_name(ufunc_method(np.add, "at")) == "np.add.at"
    assert target_name(operator.add) == "operator.add"
