"""The passes, in the order they run.

The NumPy pass runs first: it turns detours into torch ops, which may expose in-place
writes the in-place pass must then judge. The in-place pass runs before the contiguity
pass, so timings are taken on the graph that will actually run.
"""

if __name__ != "fxgrad.passes":
    raise ImportError(
        "The passes package ships as fxgrad.passes; import it under that name "
        "(pip install -e . and then `import fxgrad.passes`)."
    )

from fxgrad.passes import inplace_op, noncontiguous_cat_input, numpy_round_trip
from fxgrad.registry import Pass

ALL: tuple[Pass, ...] = (numpy_round_trip.PASS, inplace_op.PASS, noncontiguous_cat_input.PASS)
