"""FXG301 numpy-round-trip

## What it does
Replaces a NumPy detour (`t.detach().cpu().numpy()`, NumPy math, then `torch.from_numpy`,
`torch.tensor` or `torch.as_tensor`) with the torch ops that compute the same values, with
the same dtypes, so gradients reach `t` again.

## Why is this bad?
`.detach()` and `.numpy()` cut the autograd graph: everything computed in NumPy comes back as
a constant, and the parameters that produced `t` silently get no gradient from that path. The
host copy also costs time on every call, and twice on a GPU.

## Example
    a = h.detach().cpu().numpy()
    s = np.sum(np.sin(a) * 2, axis=1, keepdims=True)
    return torch.from_numpy(s).to(h.device) * h

## Use instead
    s = torch.sum(torch.sin(h) * 2, dim=1, keepdim=True)
    return s.to(h.device) * h

The translation follows NumPy, not torch, wherever the two differ: `np.std` and `np.var`
default to `ddof=0`; integer and boolean inputs are cast first wherever NumPy promotes them
(`np.mean`, `np.sqrt` and `/` of integers give float64); Python scalars are weak (NEP 50);
`np.round` rounds half to even; `axis`/`keepdims` become `dim`/`keepdim`; `np.dot`,
`np.outer`, `np.repeat`, `np.cumsum(axis=None)` and `np.linalg.norm` keep their NumPy
meaning. The result has the dtype NumPy would have produced (float64 if NumPy promoted), and
it is moved back to the CPU where the original came back on the CPU, unless the next op moves
it to a device anyway.

Mapped: elementwise ufuncs and ndarray operators (trig, hyperbolic, exp/log family, sqrt,
square, abs, sign, floor/ceil/trunc/rint/round, clip, maximum/minimum, where, power,
arithmetic, comparison and logical operators), reductions (sum, mean, prod, max/min,
argmax/argmin, std/var, all/any, cumsum/cumprod, `np.add.reduce` and friends) with
`axis`/`keepdims`, shape functions (reshape, transpose, `.T`, swapaxes, moveaxis,
expand_dims, squeeze, ravel, concatenate, stack, hstack, vstack, split, flip, tile, repeat,
broadcast_to), `np.sort`, basic and advanced indexing, `astype`, linear algebra (dot,
matmul, einsum, outer, tensordot, `linalg.norm`), `zeros_like`/`ones_like`/`full_like`, and
factories (`np.zeros`, `ones`, `empty`, `full`, `eye`, `identity`, `arange`, `linspace`),
made on the device of the tensor the detour starts from with NumPy's dtype (float64 unless
told), their sizes read from the tensor on every call (`np.eye(a.shape[0])`). A constant
array the detour reads (`a @ W`, `W` a module-level array) becomes a tensor constant of its
dtype, moved to that device.

NumPy writes are translated in program order into functional torch code, so that every later
reader of the written array, of its base and of each view of either sees the written values:
`a[mask] = 0` becomes `masked_fill`, `a[idx] = v` with index arrays `index_put`, any other
`a[key] = v` a written clone; `a += b` and `out=a` rebind `a` to the result, cast to `a`'s
dtype and broadcast to its shape as NumPy stores it; `a.sort(axis)` becomes
`torch.sort(...).values`; `a.fill`, `a.put`/`np.put`, `a.flat[k] = v`, `np.copyto`,
`np.putmask`, `np.place` (one value), `np.fill_diagonal` (a matrix), `np.put_along_axis`
(`scatter`) and `np.add.at`/`np.subtract.at` (`index_put` accumulating) have functional
twins too. A write through a
view (`a[:, 0] += 1`, `a.T[0] = 0`, `np.flip(a)[0] = 1`) is written back into `a`, and a
view read later (`v = a[:, 0]`) is taken again from `a`'s new value. Which arrays share
memory follows what NumPy documents for each call, never the example run alone, so the
translation holds for inputs of other sizes too.

`torch.from_numpy(np.flip(a))` raises in eager PyTorch (negative strides); it is translated
to what the code asks for, and the report says eager raised there.

With example inputs every translated op and every translated write is run on the real
values and compared with what NumPy computed (dtype, shape and values); a chain is
rewritten only when all of them match.

## Left alone when
- a NumPy call in the chain has no faithful torch twin (`np.fft`, `np.unique`,
  `np.linalg.eig`, `where=` without `out=`, negative slice steps, ...): the whole chain
  stays and the report names the call where the gradient still stops
- a NumPy write has none: `a.partition()` (NumPy leaves the order on each side of kth
  unspecified), `a.resize()`, `a.shape = ...`, `np.multiply.at`, `np.place` with several
  values, a write through `np.split`'s pieces; or it writes into memory the detour does not own (`a = t.numpy(); a[0] = 0`
  writes into `t`, a constant array, an array passed in); or into an array whose aliasing
  depends on strides (`r = a.reshape(-1); r[0] = 5` while `a` is read later); or into an
  array after `torch.from_numpy` made a tensor sharing its memory
- a NumPy value of the chain is also used outside torch (`.item()`, `.tolist()`, `float()`,
  returned as an array), or the tensor it came from is written in place: the NumPy code
  stays for that use, its writes included
- `torch.tensor(..., requires_grad=True)` or `.requires_grad_()` makes a new leaf of a chain
  whose input does not require grad
- NumPy works on constants or sizes only (no traced tensor flows in)
- no example inputs are given: the dtypes NumPy picks depend on the input dtypes, so the
  chain is only reported
"""

from __future__ import annotations

from fxgrad.passes.numpy_round_trip import dynamo
from fxgrad.passes.numpy_round_trip.driver import run
from fxgrad.passes.numpy_round_trip.helpers import _is_numpy_call
from fxgrad.passes.numpy_round_trip.recording import _negative_strides, _recorder
from fxgrad.registry import Pass

# Also helpers.CODE, which the pass's modules use: here it is a literal, which
# `fxgrad passes` and `fxgrad explain` read without importing the pass (and torch).
CODE = "FXG301"

PASS = Pass(
    code=CODE,
    name="numpy-round-trip",
    run=run,
    doc=__doc__,
    observes=(_recorder,),
    repairs_errors=(_negative_strides,),
    applies=lambda gm: any(_is_numpy_call(n) or dynamo.is_wrapped_numpy(n) for n in gm.graph.nodes),
)
