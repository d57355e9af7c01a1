"""Beyond one process: a fixed module under DistributedDataParallel and torch.compile.

The DDP test runs 2 CPU processes with the gloo backend on 127.0.0.1 and compares the
trained parameters with one process training on the whole batch.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fxgrad
from fxgrad.testing import assert_autograd_safe

WORLD = 2
STEPS = 3
BATCH = 8


class Net(nn.Module):
    """An unsafe in-place write (sigmoid saved `h`) that only the fixed module can train."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc1(x).relu_())
        h.mul_(2)
        return self.fc2(h)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x)).relu()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, BATCH, 6, generator=gen), torch.randn(STEPS, BATCH, 3, generator=gen)


def _train(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _two_forwards_one_backward(ddp: nn.Module, x: torch.Tensor) -> str:
    try:
        (ddp(x[:4]).sum() + ddp(x[4:]).sum()).backward()
    except RuntimeError as e:
        return str(e).splitlines()[0]
    return "ok"


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.manual_seed(0)
        xs, ys = _data()
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        model = Net()
        fixed = fxgrad.fix(model, (xs[0, part],))
        ddp = nn.parallel.DistributedDataParallel(fixed)
        _train(ddp, xs[:, part], ys[:, part])

        # Without example inputs the fixed module decides on DDP's first forward.
        torch.manual_seed(0)
        lazy_model = Net()
        _train(
            nn.parallel.DistributedDataParallel(fxgrad.fix(lazy_model)), xs[:, part], ys[:, part]
        )

        # fix() refuses DDP around the model: the module inside, fixed, would drop DDP.
        try:
            fxgrad.fix(nn.parallel.DistributedDataParallel(Net()), (xs[0, part],))
            rewrapped = "accepted"
        except fxgrad.FxgradError as e:
            rewrapped = str(e)

        # BatchNorm under DDP, two forwards and one backward (pytorch issues 22095, 65907).
        torch.manual_seed(0)
        default = _two_forwards_one_backward(
            nn.parallel.DistributedDataParallel(fxgrad.fix(BNNet(), (xs[0],))), xs[0]
        )
        remedy = _two_forwards_one_backward(
            nn.parallel.DistributedDataParallel(
                fxgrad.fix(BNNet(), (xs[0],)), broadcast_buffers=False
            ),
            xs[0],
        )
        if rank == 0:
            torch.save(
                {
                    "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "lazy": {k: v.detach().clone() for k, v in lazy_model.state_dict().items()},
                    "rewrapped": rewrapped,
                    "default": default,
                    "remedy": remedy,
                },
                out,
            )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_ddp_training_of_a_fixed_module_matches_one_process(tmp_path: Path):
    out = tmp_path / "rank0.pt"
    for attempt in range(3):
        try:
            mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
            break
        except mp.ProcessRaisedException as e:
            # Another process may take the free port before rank 0 binds it; pick another.
            if "address already in use" not in str(e).lower() or attempt == 2:
                raise
    result = torch.load(out)

    torch.manual_seed(0)
    xs, ys = _data()
    model = Net()
    _train(fxgrad.fix(model, (xs[0],)), xs, ys)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(result["params"][name], value, msg=name)
        torch.testing.assert_close(result["lazy"][name], value, msg=name)
    assert "all-reduced" in result["rewrapped"]
    assert "DistributedDataParallel(fxgrad.fix(model" in result["rewrapped"]
    # The remedy always works; the default either works (DDP keeps the buffers' version
    # counters during its broadcast) or raises the version-counter error of those issues.
    assert result["remedy"] == "ok"
    assert result["default"] == "ok" or "modified by an inplace operation" in result["default"]


def test_batchnorm_buffer_written_between_forward_and_backward_breaks_backward():
    """What DDP's buffer broadcast does in the releases of those issues, in one process."""
    bn = nn.BatchNorm1d(4)
    out = bn(torch.randn(8, 4, requires_grad=True))
    with torch.no_grad():
        bn.running_mean.copy_(torch.ones(4))  # a broadcast from rank 0, in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def _compile_backend() -> str:
    # inductor generates C++ on the CPU; without a compiler, aot_eager still runs dynamo and
    # AOTAutograd (the parts that see the fixed module) and skips code generation.
    return "inductor" if shutil.which("g++") or shutil.which("c++") else "aot_eager"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu(self.bn(self.fc(x)), inplace=True)
        return self.head(h)


def test_compiled_fixed_module_matches_eager():
    torch._dynamo.reset()
    model, x = Block(), torch.randn(4, 6)
    fixed = fxgrad.fix(model, (x,))
    compiled = torch.compile(fixed, backend=_compile_backend())

    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = compiled(x)
    grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    model.load_state_dict(state)  # undo the running-statistics update
    ref = model(x)
    ref_grads = torch.autograd.grad(ref.sum(), list(model.parameters()))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grads, ref_grads)

    # Without example inputs, the first call decides, outside Dynamo's trace.
    torch._dynamo.reset()
    lazy = torch.compile(fxgrad.fix(model), backend=_compile_backend())
    model.load_state_dict(state)
    out = lazy(x)
    grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    model.load_state_dict(state)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grads, ref_grads)
    assert lazy._orig_mod.report.mode == "exact"

    # fix() and the helpers see through torch.compile too, and say so when it wraps a fix.
    assert fxgrad.fix(torch.compile(model), (x,)).original_class is Block
    assert_autograd_safe(torch.compile(model), x)
    with pytest.raises(fxgrad.FxgradError, match="already fixed"):
        fxgrad.fix(compiled, (x,))


def test_data_parallel_and_conversions_before_the_first_call():
    torch.manual_seed(0)
    model = Net()
    fixed = fxgrad.fix(model)
    dp = nn.DataParallel(fixed)  # on the CPU it calls the module itself
    x = torch.randn(4, 6)
    torch.testing.assert_close(dp(x), _functional_net(model, x))
    double = fxgrad.fix(Net()).double()  # converted before anything was decided
    xd = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    out = double(xd)
    assert out.dtype == torch.float64
    (g,) = torch.autograd.grad(out.sum(), xd)
    xr = xd.detach().requires_grad_()
    (want,) = torch.autograd.grad(_functional_net(double, xr).sum(), xr)
    torch.testing.assert_close(g, want)


def _functional_net(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Net's forward with its in-place writes out of place: what the fix computes."""
    h = torch.sigmoid(model.fc1(x).relu())
    return model.fc2(h * 2)
