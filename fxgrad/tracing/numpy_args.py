"""NumPy calls on traced values: which functions are recorded, dtype arguments as names."""

from __future__ import annotations

from typing import Any

import torch.utils._pytree as pytree

# NumPy functions patched while tracing, recorded as calls when given a traced value.
_NUMPY_RECORDED = (
    "asarray",
    "array",
    "ascontiguousarray",
    "zeros",
    "ones",
    "empty",
    "full",
    "eye",
    "identity",
    "arange",
    "linspace",
)
# NumPy's global random draws, recorded as calls from model code: a fresh draw on every call
# (as eager makes), sizes read from `x.shape` kept symbolic, and NumPy's C code never handed a
# traced value (it crashes the process on one).
_NUMPY_RANDOM = (
    "rand",
    "randn",
    "randint",
    "random",
    "random_sample",
    "normal",
    "uniform",
    "standard_normal",
    "binomial",
    "poisson",
    "choice",
    "permutation",
    "beta",
    "exponential",
    "gamma",
    "laplace",
)
# Of those, the ones that take data rather than sizes: recorded only when given a traced value.
_NUMPY_DATA_FUNCTIONS = ("asarray", "array", "ascontiguousarray")


def _numpy_dtype_names(tree: Any) -> Any:
    """Replace dtype-like leaves (`np.float32`, `float`, `np.dtype("int8")`) by their names.

    NumPy reads the name as the same dtype, and fx can put a string into generated code.
    """

    def name(a: Any) -> Any:
        if not (isinstance(a, type) or type(a).__module__.startswith("numpy")):
            return a
        if isinstance(a, type) and not (
            a in (bool, int, float, complex) or a.__module__.startswith("numpy")
        ):
            return a
        import numpy as np

        try:
            dt = np.dtype(a)
        except TypeError:
            return a
        return dt.name if np.dtype(dt.name) == dt else a

    return pytree.tree_map(name, tree)


def _takes_numpy_dtypes(kind: str, target: Any) -> bool:
    if kind == "call_method":
        return target == "astype"
    module = getattr(target, "__module__", None) or ""
    return kind == "call_function" and (
        type(target).__name__ == "ufunc"
        or module.startswith("numpy")
        or hasattr(target, "_fxgrad_ufunc")
    )


def register_numpy_scalar_name() -> None:
    """Let generated code name NumPy scalars: fx writes a constant `np.float64(0.5)` as its
    repr, which needs `np` (a Python 0.5 would promote differently, so it cannot become one)."""
    try:
        import numpy
    except ImportError:
        return
    from torch.fx.graph import _custom_builtins, _register_custom_builtin

    if "np" not in _custom_builtins:
        _register_custom_builtin("np", "import numpy as np", numpy)
