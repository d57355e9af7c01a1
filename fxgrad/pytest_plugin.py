"""pytest plugin for model repositories (registered through the pytest11 entry point).

It imports nothing heavy at load time: torch and fxgrad load only when a test uses them.
"""

from __future__ import annotations


def pytest_configure(config) -> None:  # noqa: ANN001
    config.addinivalue_line(
        "markers",
        "autograd_safe: check that the model and inputs the test returns are autograd-safe",
    )
