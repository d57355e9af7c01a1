"""What a change means is read from typed fields, never from a pass's code or a note's words.

`Pass.kind` says whether leaving code as is is a finding (hazard) or a decision (speed);
`Change.rolled_back` and `Note.actionable` carry what the exit code and
`assert_autograd_safe` answer to. A pass with any code, and notes in any wording, are judged
the same way.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import fxgrad
import fxgrad.passes
from fxgrad.changes import Change, Note, PassKind, is_actionable
from fxgrad.registry import Pass
from fxgrad.report import Report
from fxgrad.testing import AutogradCheckError, assert_autograd_safe


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sigmoid(self.lin(x)) * 2


def _leaves_sigmoid(code: str):
    """A pass that finds every sigmoid and leaves it (a finding or a decision, by its kind)."""

    def run(gm: fx.GraphModule, ctx) -> list[Change]:
        return [
            Change(code, n.name, "torch.sigmoid(h)", "", "", "left on purpose", applied=False)
            for n in gm.graph.nodes
            if n.target is torch.sigmoid
        ]

    return run


def _register(monkeypatch, code: str, kind: PassKind) -> Pass:
    p = Pass(code=code, name="leaves-sigmoid", run=_leaves_sigmoid(code), doc="test", kind=kind)
    monkeypatch.setattr(fxgrad.passes, "ALL", (p,))
    return p


@pytest.mark.parametrize("code", ["FXG490", "FXG290", "FXG190"])
def test_a_hazard_pass_left_as_is_is_a_finding_whatever_its_code(monkeypatch, code):
    _register(monkeypatch, code, PassKind.HAZARD)
    model, x = Small(), torch.randn(3, 4)
    fixed = fxgrad.fix(model, (x,))
    (change,) = fixed.report.changes
    assert change.kind is PassKind.HAZARD and change.left_as_is and change.finding
    assert fixed.report.exit_code == 1
    with pytest.raises(AutogradCheckError, match=code):
        assert_autograd_safe(model, x)
    other = torch.randn(5, 4)  # another batch: the left-as-is code runs as eager does
    torch.testing.assert_close(fixed(other), model(other))


@pytest.mark.parametrize("code", ["FXG490", "FXG190", "FXG290"])
def test_a_speed_pass_left_as_is_is_a_decision_whatever_its_code(monkeypatch, code):
    _register(monkeypatch, code, PassKind.SPEED)
    model, x = Small(), torch.randn(3, 4)
    fixed = fxgrad.fix(model, (x,))
    (change,) = fixed.report.changes
    assert change.kind is PassKind.SPEED and change.left_as_is and not change.finding
    assert fixed.report.exit_code == 0 and fixed.report.findings == []
    assert assert_autograd_safe(model, x) is not None  # nothing to act on


def _relu_to_neg(gm: fx.GraphModule, ctx) -> list[Change]:
    found = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is F.relu:
            n.target, n.kwargs = torch.neg, {}
            found.append(Change("FXG000", n.name, "relu", "neg", "", "wrong on purpose"))
    return found


class Relu(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return F.relu(self.lin(x)) * 2


def test_a_speed_rewrite_rolled_back_is_flagged_and_stays_a_finding(monkeypatch):
    wrong = Pass(code="FXG290", name="wrong", run=_relu_to_neg, doc="w", kind=PassKind.SPEED)
    monkeypatch.setattr(fxgrad.passes, "ALL", (wrong,))
    model, x = Relu(), torch.randn(3, 4)
    fixed = fxgrad.fix(model, (x,))
    (change,) = fixed.report.changes
    assert change.rolled_back and change.left_as_is and change.finding
    (note,) = [n for n in fixed.report.notes if "rolled back" in n]
    assert isinstance(note, Note) and note.actionable
    assert fixed.report.exit_code == 1
    torch.testing.assert_close(fixed(x), model(x))

    again = Report.from_dict(json.loads(fixed.report.to_json()))
    assert again.changes == fixed.report.changes  # kind and rolled_back survive JSON
    assert [n.actionable for n in again.notes] == [is_actionable(n) for n in fixed.report.notes]
    assert again.exit_code == 1


def test_the_exit_code_reads_the_flag_not_the_words():
    worded = Report(notes=["a submodule was rolled back; backward fails; forward raises"])
    assert worded.exit_code == 0  # a plain note, whatever it says, asks for nothing
    flagged = Report(notes=[Note("something to look at", actionable=True)])
    assert flagged.exit_code == 1
    assert "1 note to act on" in flagged.summary()
