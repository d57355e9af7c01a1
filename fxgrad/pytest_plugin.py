"""pytest plugin for model repositories (registered through the pytest11 entry point).

pytest loads it in every run where fxgrad is installed, so it imports nothing heavy at load
time: torch and fxgrad load only when a test uses the fixture or the marker.

- `fxgrad_check` fixture: the `fxgrad.testing` helpers under short names
  (`fxgrad_check.autograd_safe(model, x)`, `.grads_flow`, `.fix_equivalent`,
  `.custom_functions`).
- `@pytest.mark.autograd_safe`: the test returns `(model, inputs)` and the plugin checks
  it (`inputs` is a tuple of forward arguments, or one tensor). Keyword arguments add
  checks: `grads_flow=True`, `custom_functions=True`, `fix_equivalent=True`.
- A failed check is reported as its message (fxgrad's table), not as a traceback
  through fxgrad's internals.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

_MARKER = "autograd_safe"
_CHECKS = ("grads_flow", "custom_functions", "fix_equivalent")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(grads_flow=False, custom_functions=False, fix_equivalent=False): "
        "check that the (model, inputs) the test returns is autograd-safe (fxgrad)",
    )


@pytest.fixture
def fxgrad_check() -> Any:
    """The fxgrad.testing helpers: autograd_safe, grads_flow, fix_equivalent, custom_functions."""
    from fxgrad.testing import Checks

    return Checks()


def _check_returned(item: pytest.Function, marker: pytest.Mark, returned: Any) -> None:
    __tracebackhide__ = True
    from fxgrad import testing

    unknown = sorted(set(marker.kwargs) - set(_CHECKS))
    if marker.args or unknown:
        raise testing.AutogradCheckError(
            f"@pytest.mark.{_MARKER} takes only the keyword arguments "
            f"{', '.join(_CHECKS)}; got {', '.join(map(repr, marker.args)) or ''}"
            f"{', '.join(unknown)}."
        )
    if not (isinstance(returned, tuple) and len(returned) == 2):
        got = "None" if returned is None else type(returned).__name__
        raise testing.AutogradCheckError(
            f"A test marked @pytest.mark.{_MARKER} must return (model, inputs); "
            f"{item.name} returned {got}.\n"
            "For example: return MyModel(), (torch.randn(8, 3, 32, 32),)"
        )
    model, inputs = returned
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    testing.assert_autograd_safe(model, *args)
    if marker.kwargs.get("grads_flow"):
        testing.assert_grads_flow(model, *args)
    if marker.kwargs.get("custom_functions"):
        testing.check_custom_functions(model, *args)
    if marker.kwargs.get("fix_equivalent"):
        testing.assert_fix_equivalent(model, *args)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    marker = pyfuncitem.get_closest_marker(_MARKER)
    original = pyfuncitem.obj
    if marker is None or _is_async(original):
        return (yield)
    returned: list[Any] = []

    def keep_return_value(*args: Any, **kwargs: Any) -> None:
        # pytest warns about tests that return a value; this test returns one on purpose.
        returned.append(original(*args, **kwargs))

    pyfuncitem.obj = keep_return_value
    try:
        result = yield
    finally:
        pyfuncitem.obj = original
    _check_returned(pyfuncitem, marker, returned[0] if returned else None)
    return result


def _is_async(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    excinfo = call.excinfo
    if excinfo is None or report.passed or type(excinfo.value).__name__ != "AutogradCheckError":
        return report
    from fxgrad.testing import AutogradCheckError

    if isinstance(excinfo.value, AutogradCheckError):
        # The message is the report; the frames through fxgrad and torch are noise.
        path = getattr(item, "path", None)
        fspath, lineno, _ = item.location
        where = f"{fspath}:{(lineno or 0) + 1}"  # the test itself (the marker's check)
        for entry in reversed(excinfo.traceback):
            if path is not None and entry.path == path:
                where = f"{fspath}:{entry.lineno + 1}"  # the line in the test that failed
                break
        report.longrepr = f"{excinfo.value.message}\n\n(fxgrad check failed in {where})"
    return report
