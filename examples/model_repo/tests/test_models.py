"""The model repository's own tests, using fxgrad's pytest plugin and helpers."""

import pytest
import torch
from models import GatedScorer, TinyClassifier


@pytest.mark.autograd_safe(grads_flow=True)
def test_classifier_is_autograd_safe():
    # The marker checks the (model, inputs) the test returns.
    return TinyClassifier(), (torch.randn(8, 16),)


def test_classifier_fix_is_equivalent(fxgrad_check):
    model, x = TinyClassifier(), torch.randn(8, 16)
    fxgrad_check.autograd_safe(model, x)
    fxgrad_check.fix_equivalent(model, x)


@pytest.mark.demo_failure  # deselected by default; run `pytest -m demo_failure` to see it fail
@pytest.mark.autograd_safe
def test_gated_scorer_is_autograd_safe():
    return GatedScorer(), (torch.randn(8, 16),)
