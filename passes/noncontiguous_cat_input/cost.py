"""The cost model: what a cat can become, and how measured times decide between them.

A candidate is applied only when its median time beats the original's by `MIN_SPEEDUP`;
a `Decision` keeps the times that decided it, and is also what the decision cache stores.
"""

from __future__ import annotations

import enum
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MIN_SPEEDUP = 1.10
"""Apply a candidate only when it makes the timed code this many times faster.

Measurements on a busy machine wobble by a few percent; a 10% margin on medians keeps
noise from turning into rewrites that make the model slower.
"""

REPLAY_FAILS = "it fails when replayed on fresh tensors of the same layouts"

KEPT_UNMEASURED = frozenset({REPLAY_FAILS})
"""Why a site went untimed, where the next fix would find the same: kept in the cache.

Other reasons (the budget was spent, timing would take more than is left of it) depend
on what else this fix timed; such sites are not kept, so the next fix measures them.
"""

_LABEL = re.compile(r"\w+(?: \+ \w+)* fwd(?:\+bwd)?")  # "cat + conv fwd+bwd"


class Variant(enum.Enum):
    """What a cat can become."""

    ORIGINAL = "original"
    CONTIGUOUS = "contiguous"  # .contiguous() on each non-contiguous input
    PERMUTED = "permuted"  # cat of the dense tensors, permuted once afterwards


VARIANT_TEXT = {
    Variant.ORIGINAL: "as is",
    Variant.CONTIGUOUS: "with .contiguous()",
    Variant.PERMUTED: "as a permuted cat",
}


def _ms(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


@dataclass(frozen=True)
class Decision:
    """What a site becomes and why; also what the cache keeps (as a dict)."""

    choice: Variant
    times: dict[Variant, float]  # median seconds per call of each timed variant
    label: str = ""  # "cat + conv fwd+bwd"
    why_unmeasured: str = ""  # set when nothing was timed

    @property
    def measured(self) -> bool:
        return not self.why_unmeasured

    def ratio(self, variant: Variant) -> float:
        t = self.times.get(variant, 0.0)
        return self.times.get(Variant.ORIGINAL, 0.0) / t if t > 0 else 0.0

    def to_record(self) -> dict:
        return {
            "choice": self.choice.value,
            "times": {v.value: t for v, t in self.times.items()},
            "label": self.label,
            "why_unmeasured": self.why_unmeasured,
        }

    @classmethod
    def from_record(cls, record: Any, variants: Sequence[Variant]) -> Decision:
        """The decision a cached record holds for a site with these variants.

        ValueError, saying what is wrong without quoting the record, for one this version
        would not have written for the site: read from disk, it may be anything.
        """
        try:
            choice = Variant(record["choice"])
            read = {Variant(k): _seconds(t) for k, t in record["times"].items()}
            label, why = record["label"], record["why_unmeasured"]
        except (KeyError, ValueError, TypeError, AttributeError):
            raise ValueError("a record of another shape") from None
        times = {v: t for v, t in read.items() if t is not None}
        if len(times) != len(read):
            raise ValueError("a time that is not a finite, non-negative number")
        if choice not in variants or not set(times) <= set(variants):
            raise ValueError("a variant this site does not have")
        if not isinstance(why, str) or not isinstance(label, str):
            raise ValueError("a record of another shape")
        if why:
            if why not in KEPT_UNMEASURED or times or choice is not Variant.ORIGINAL:
                raise ValueError("an unmeasured decision that is not kept")
            return cls(choice, {}, "", why)
        if set(times) != set(variants) or not _LABEL.fullmatch(label):
            raise ValueError("a measurement of other variants or ops")
        times = {v: times[v] for v in variants}
        if _choose(times) is not choice:
            raise ValueError("a choice its own times do not give")
        return cls(choice, times, label)

    def note(self, source: str) -> str:
        if not self.measured:
            cached = " (cached)" if source == "cached" else ""
            if source != "analysis only" and self.why_unmeasured not in KEPT_UNMEASURED:
                cached = "; not cached, the next fix measures it"
            return f"not measured: {self.why_unmeasured}; no measurement, no rewrite{cached}"
        original = self.times[Variant.ORIGINAL]
        others = [v for v in self.times if v not in (Variant.ORIGINAL, self.choice)]
        alternatives = ", ".join(
            f"{_ms(self.times[v])} {VARIANT_TEXT[v]} ({self.ratio(v):.2f}x)" for v in others
        )
        if self.choice is Variant.ORIGINAL:
            return (
                f"{self.label} {_ms(original)} as is, {alternatives}; not above the "
                f"{MIN_SPEEDUP:.2f}x margin ({source})"
            )
        rest = f"; {alternatives}" if alternatives else ""
        return (
            f"{self.label} {_ms(original)} -> {_ms(self.times[self.choice])} "
            f"({self.ratio(self.choice):.2f}x{rest}; {source})"
        )


def _seconds(value: Any) -> float | None:
    """A time read from the cache as seconds; None unless a finite, non-negative number."""
    if type(value) not in (int, float):  # not bool, nor a string of digits
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def decide(samples: dict[Variant, list[float]], label: str) -> Decision:
    """The fastest candidate whose median beats the original's by MIN_SPEEDUP, else as is."""
    times = {v: statistics.median(s) for v, s in samples.items()}
    return Decision(_choose(times), times, label)


def _choose(times: dict[Variant, float]) -> Variant:
    """The variant these median times decide for."""
    original = times[Variant.ORIGINAL]

    def ratio(v: Variant) -> float:
        return original / times[v] if times[v] > 0 else 0.0

    best = max((v for v in times if v is not Variant.ORIGINAL), key=ratio, default=None)
    if best is not None and ratio(best) > MIN_SPEEDUP:
        return best
    return Variant.ORIGINAL
