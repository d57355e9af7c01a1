"""FXG101 inplace-op

## What it does
Rewrites the in-place writes that break autograd into functional code, and only those:
`h.mul_(2)` becomes `h = h.mul(2)`, `relu(x, inplace=True)` becomes `relu(x)`, `z += 1`
becomes `z = z + 1`, and a write into a view (`y[1:3].mul_(2)`, `y.t().add_(1)`,
`a, b = x.unbind(); a.zero_()`) becomes the same write on a clone of its base. Every
later reader of the written memory (the tensor, its base, every view of either) is
repointed, and views read later are rebuilt on the new base, so each sees what eager
PyTorch would show. All write forms are recognised: in-place methods and torch functions,
`inplace=True` calls and modules (`nn.ReLU(inplace=True)` and its siblings), item and
augmented assignment, `out=` arguments, and writes through `.data`.

With example inputs the decision is exact: the graph is run once while watching what
autograd saves for backward, which saved tensors backward unpacks, storages and version
counters. Without them it is static and conservative, from a table of which ops save
their inputs or outputs. Each report line says which way it was decided and names both
lines: the op that saved the value and the write that destroys it.

## Why is this bad?
A write is unsafe when eager autograd fails or is silently wrong:
1. it overwrites a tensor, or any alias of its storage, that an earlier op saved for
   backward ("one of the variables needed for gradient computation has been modified by
   an inplace operation"), and anomaly mode names only the op that saved it;
2. it writes into a leaf that requires grad (a parameter, an input) while grad mode is on;
3. it writes into a view autograd refuses (outputs of `unbind`/`split`/`chunk`, views
   made under `no_grad`, expanded tensors whose elements overlap);
4. it writes through `.data`, around the version counter: backward then uses the new
   values where it needed the old ones, and no error tells you.

## Example
    h = torch.sigmoid(x)   # sigmoid saves its output for backward
    h.mul_(2)              # overwrites it: backward fails
    y = x * 2
    a, b = y.unbind(0)
    a.add_(1)              # unbind outputs cannot be written in place
    return h, y

## Use instead
    h = torch.sigmoid(x)
    h = h.mul(2)
    y = x * 2
    y = y.clone()
    y.select(0, 0).add_(1)
    return h, y

## Left alone when
- nothing backward still needs is overwritten and the target is no leaf that requires
  grad: `ReLU(inplace=True)` after a conv, linear or batch norm, `x += b` on a fresh
  tensor nobody saved, `y = x * 2; y[0] = 10` (autograd records it as `CopySlices`);
  these writes save memory, so rewriting them would only cost
- the write is module state a caller observes (a buffer such as BatchNorm's running
  statistics, an input that does not require grad): it is kept, and when an op saved the
  value before the write, that op is given a clone to save instead
- the write goes through `.data` but nothing backward needs is overwritten: it is
  reported, not rewritten, because gradients then ignore the write by design
- a rewrite cannot be proven (an alias fxgrad cannot rebuild, a static decision about
  `reshape` that may copy): the code is kept and the report says why
"""

from __future__ import annotations

from fxgrad.passes.inplace_op.aliases import Step, StepKind, alias_map
from fxgrad.passes.inplace_op.driver import applies, refused_write, run
from fxgrad.passes.inplace_op.dynamo import protect_escaping
from fxgrad.passes.inplace_op.saves import MODULE_OPS, STATIC_SAVES, Saves, module_op
from fxgrad.passes.inplace_op.views import ViewOp
from fxgrad.registry import Pass

# The pass's parts that tests read from the package.
__all__ = [
    "MODULE_OPS",
    "PASS",
    "STATIC_SAVES",
    "Saves",
    "Step",
    "StepKind",
    "ViewOp",
    "alias_map",
    "applies",
    "module_op",
    "refused_write",
    "run",
]

PASS = Pass(
    code="FXG101",
    name="inplace-op",
    run=run,
    doc=__doc__,
    applies=applies,
    repairs_errors=(refused_write,),
    on_dynamo_graph=protect_escaping,
)
