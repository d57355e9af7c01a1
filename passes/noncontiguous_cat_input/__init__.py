"""FXG201 noncontiguous-cat-input

## What it does
Rewrites a `torch.cat` of non-contiguous inputs where that is measured to be faster, with
one of two candidates: `.contiguous()` on each non-contiguous input, or, when every input
is a permuted view of a dense tensor with one common permutation (transposed matrices,
channels_last images, attention heads after `permute`), a cat of the dense tensors along
the matching dimension, permuted once afterwards. On the example inputs' real shapes,
strides, dtype and device it times the forward and backward of the cat and the ops that
read its output, as written and with each candidate, in `ROUNDS` interleaved rounds
(original, candidates, original, ...), and applies the fastest candidate only when the
medians show it faster by more than `MIN_SPEEDUP` (1.10x). Covers `torch.cat`,
`torch.concat`, `torch.concatenate` and `torch.stack`.

Sites that cannot pay are never timed: fewer than `MIN_ELEMENTS` elements in the
non-contiguous inputs, inputs that are all contiguous (a stride that differs only in a
size-1 dimension does not count). Identical sites (same shapes, strides, dtype, device,
dim and consumers) are timed once. All timing together stays within about one forward and
backward of the model (`BUDGET_STEPS`, at least `BUDGET_FLOOR_S`), most promising sites
first. Decisions are kept in the user's cache directory per site, device and torch
version (`$FXGRAD_CACHE_DIR`, else `$XDG_CACHE_HOME/fxgrad`, else `~/.cache/fxgrad`; see
`fxgrad.decision_cache`), so fixing the same model on the same machine again times
nothing and gives the same code; delete `fxg201.json` there to measure again. A site left
unmeasured because the budget ran out is not kept: the next fix measures it. A cached
record that does not fit its site (a variant it lacks, times that are not finite and
non-negative, a choice its times do not give) is ignored with a warning and measured
again. With measuring off (`Context.measure_enabled`), only cached decisions are applied.
## Why is this bad?
`cat` copies every input into its output. Reading a transposed, permuted, strided or
channels_last input element by element can be much slower than dense copies: on a CPU,
joining two transposed 707 x 707 float32 matrices read by `relu`, forward and backward,
took 3.1 ms as written, 2.4 ms with `.contiguous()` and 1.0 ms as a permuted cat. For
small inputs the opposite holds: the extra op costs more than it saves. And the op that
reads the output matters: with a matmul reading permuted attention heads, neither candidate
was faster at any size. Only a measurement on the real shapes can tell, so every
decision, taken or not, is reported with the times.
## Example
    a = x.transpose(0, 1)          # x, y: 707 x 707
    b = y.transpose(0, 1)
    return torch.cat([a, b], dim=0).relu()
## Use instead
    # the same values for any input; only the output's strides differ
    return torch.cat([a.permute(1, 0), b.permute(1, 0)], 1).permute(1, 0).relu()
## Left alone when
- every input is contiguous, or the non-contiguous ones are small (under `MIN_ELEMENTS`)
- no candidate is faster by more than the 1.10x margin; the report gives all times
- later code depends on the output's strides: `view` (fails on some strides),
  `reshape`/`flatten`/`contiguous` whose result or source is written in place (a view
  or a copy, depending on strides), stride queries, unknown ops; the permuted cat is
  also not returned from the model, whose callers may rely on a contiguous result
- there are no example inputs, so layouts and timings are unknown (reported once)
- measuring is off or the budget is spent and no decision is cached (reported per site)
- the inputs are not a literal list of tensors (`torch.cat(x.split(2))`), or `out=` is given
- the cat cannot be replayed on fresh tensors of the same layouts (reported, not measured)
- the cat runs inside a torch.func transform the graph runs itself (`vmap` as Dynamo
  captures it): its tensors exist only inside the transform (reported, not measured)
"""

from __future__ import annotations

from fxgrad.changes import PassKind
from fxgrad.passes.noncontiguous_cat_input.cache import SITE_TEXT_MAX
from fxgrad.passes.noncontiguous_cat_input.cost import Decision, Variant
from fxgrad.passes.noncontiguous_cat_input.downstream import readers
from fxgrad.passes.noncontiguous_cat_input.driver import run
from fxgrad.passes.noncontiguous_cat_input.layout import Layout, Permuted, common_order, inverse
from fxgrad.passes.noncontiguous_cat_input.sites import is_cat
from fxgrad.passes.noncontiguous_cat_input.timing import MIN_ROUNDS, ROUNDS, Budget
from fxgrad.registry import Pass

# The pass's parts that tests read from the package. A name a test replaces (a budget, a
# timer) is replaced in the module that reads it: replacing a copy here would change nothing.
__all__ = [
    "MIN_ROUNDS",
    "PASS",
    "ROUNDS",
    "SITE_TEXT_MAX",
    "Budget",
    "Decision",
    "Layout",
    "Permuted",
    "Variant",
    "common_order",
    "inverse",
    "is_cat",
    "readers",
    "run",
]

PASS = Pass(
    code="FXG201",
    name="noncontiguous-cat-input",
    run=run,
    doc=__doc__,
    kind=PassKind.SPEED,  # a layout decision to keep code is never a finding
    applies=lambda gm: any(is_cat(n) for n in gm.graph.nodes),
)
