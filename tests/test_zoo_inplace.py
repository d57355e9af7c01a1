"""FXG101 on real models: torchvision classifiers use in-place ReLUs and `+=` safely.

`fix()` must rewrite nothing on them, and forward values and gradients must equal eager.
"""

from __future__ import annotations

import pytest
import torch

import fxgrad
from fxgrad.context import clone_inputs
from fxgrad.pipeline import run_forward_backward

torchvision = pytest.importorskip("torchvision")

MODELS = ["resnet18", "mobilenet_v3_small", "squeezenet1_0"]


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_is_left_alone(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    fixed = fxgrad.fix(model, (x,), select=["FXG101"])
    assert not fixed.report.changes, fixed.report.table()
    params = [p for p in model.parameters() if p.requires_grad]
    out_e, grads_e, err_e = run_forward_backward(model, clone_inputs([x]), params, seed=0)
    out_f, grads_f, err_f = run_forward_backward(fixed, clone_inputs([x]), params, seed=0)
    assert err_e is None and err_f is None
    torch.testing.assert_close(out_f, out_e)
    for g, e in zip(grads_f, grads_e):
        torch.testing.assert_close(g, e)
