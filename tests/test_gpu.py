"""The solvers and the DEQ layer on CUDA: the same answers and counts as on the CPU.

Marked ``gpu`` and skipped without CUDA (``make test-gpu`` runs them). Each test runs one
computation on both devices and compares: evaluation counts and statuses exactly, iterates
to float64 round-off, so a device-specific path (the loop's host checks, the per-sample
selects) cannot change what a user gets.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deqkit
from deqkit import Implicit, Status, solve
from deqkit import testing as zoo
from deqkit.solvers import Anderson, Graphed
from deqkit.testing import TanhSpec, build_tanh

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

D = torch.float64


def _both(p: zoo.Problem, method: str, **kwargs):
    kw = {"tol": p.tol, "stop": p.stop, "max_iter": p.max_iter, **kwargs}
    cpu = solve(p.f, p.z0, method, **kw)
    q = p.to("cuda")
    return cpu, solve(q.f, q.z0, method, **kw)


@pytest.mark.parametrize("method", zoo.METHODS)
@pytest.mark.parametrize("name", ["mixed_tanh", "expansive_tanh", "linear_slow", "cos"])
def test_counts_statuses_and_iterates_equal_the_cpu_result(method, name):
    p = zoo.by_name(name)
    cpu, gpu = _both(p, method, record_trace=True)
    assert gpu.z.device.type == "cuda"
    assert torch.equal(gpu.iterations.cpu(), cpu.iterations)  # per-sample stopping
    assert torch.equal(gpu.status.cpu(), cpu.status)
    torch.testing.assert_close(gpu.z.cpu(), cpu.z, rtol=1e-9, atol=1e-9)
    assert gpu.trace.shape == cpu.trace.shape  # the loop ran as many steps


@pytest.mark.parametrize("method", zoo.METHODS)
def test_no_evaluation_after_every_sample_stopped_on_cuda(method):
    p = zoo.by_name("mixed_tanh").to("cuda")
    calls = []

    def f(z):
        calls.append(1)
        return p.f(z)

    r = solve(f, p.z0, method, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    assert r.all_converged
    per_call = 2 if method == "newton" else 1  # a Newton step may also evaluate a jvp
    assert len(calls) <= per_call * int(r.iterations.max()) + 1


@pytest.mark.parametrize("method", zoo.METHODS)
def test_a_nonfinite_sample_stays_isolated_on_cuda(method):
    p = zoo.nan_map()
    cpu, gpu = _both(p, method)
    assert torch.equal(gpu.status.cpu(), cpu.status)
    assert (gpu.status.cpu() == Status.NONFINITE).any()
    assert bool(torch.isfinite(gpu.z).all())
    ok = gpu.status.cpu() == Status.CONVERGED
    torch.testing.assert_close(gpu.z.cpu()[ok], cpu.z[ok], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_f_keeps_a_float32_state_on_cuda(dtype):
    torch.manual_seed(0)
    W = (0.5 * torch.randn(32, 32) / 32**0.5).cuda()
    x = torch.randn(8, 32).cuda()

    def f(z):
        assert z.dtype == dtype
        return torch.tanh(z @ W.to(dtype).T + x.to(dtype))

    r = solve(f, torch.zeros(8, 32, device="cuda", dtype=dtype), "anderson", tol=1e-2)
    assert r.z.dtype == dtype and r.all_converged
    assert bool(torch.isfinite(r.residual).all())


class _Cell(nn.Module):
    def __init__(self, n=16, d=4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        W = torch.randn(n, n, generator=g, dtype=D)
        self.W = nn.Parameter(0.7 * W / torch.linalg.matrix_norm(W, 2))
        self.U = nn.Parameter(torch.randn(n, d, generator=g, dtype=D))

    def forward(self, z, x):
        return torch.tanh(z @ self.W.T + x @ self.U.T)

    def initial_state(self, x):
        return x.new_zeros(x.shape[0], self.W.shape[0])


@pytest.mark.parametrize("backward", ["implicit", "phantom", "unrolled"])
def test_deq_forward_and_gradients_equal_the_cpu_ones(backward):
    x = torch.randn(5, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    out = {}
    for device in ("cpu", "cuda"):
        cell = _Cell().to(device)
        deq = deqkit.DEQ(cell, backward=backward, tol=1e-10, max_iter=200)
        z, info = deq(x.to(device))
        z.square().sum().backward()
        out[device] = (z.cpu(), info.iterations.cpu(), cell.W.grad.cpu(), cell.U.grad.cpu())
    for a, b in zip(out["cpu"], out["cuda"], strict=True):
        if a.dtype == torch.long:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


# Graphed: chunks of steps recorded as a CUDA graph and replayed (tests/test_graphed.py
# checks the same chunks, run eagerly, on the CPU).


def _on_cuda(name: str) -> tuple:
    """``(f, z0, tol, max_iter)`` with every tensor of ``f`` on the GPU: a recording may not
    copy from CPU memory, which the zoo's maps do on every call (``M.to(z)``)."""
    if name == "linear_slow":  # spectrum in [-0.95, 0.95]: hundreds of plain steps
        g = torch.Generator().manual_seed(0)
        Q, _ = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=D))
        M = (Q * torch.linspace(-0.95, 0.95, 24, dtype=D)) @ Q.T
        M, c = M.cuda(), torch.randn(4, 24, generator=g, dtype=D).cuda()
        return (lambda z: z @ M.T + c), torch.zeros(4, 24, dtype=D, device="cuda"), 1e-10, 600
    spec = TanhSpec(name, width=32, batch=6, radius=1.0, gain=(0.5, 0.99), inject=0.1)
    p = build_tanh(spec, device="cuda", dtype=D)
    if name == "mixed":
        return p.f, p.z0, 1e-10, 400
    first = torch.arange(6, device="cuda")[:, None] == 0

    def f(z):  # sample 0 squares itself past the largest double: non-finite
        return torch.where(first, z * z + 1.0, p.f(z))

    return f, p.z0, 1e-10, 400


@pytest.mark.parametrize("method", ["picard", "anderson"])
@pytest.mark.parametrize("name", ["mixed", "linear_slow", "nan"])
def test_graphed_solves_equal_the_loops_on_cuda(name, method):
    f, z0, tol, max_iter = _on_cuda(name)
    plain = solve(f, z0, method, tol=tol, max_iter=max_iter)
    graphed = solve(f, z0, Graphed(method, steps=5), tol=tol, max_iter=max_iter)
    assert torch.equal(graphed.iterations, plain.iterations)
    assert torch.equal(graphed.status, plain.status)
    torch.testing.assert_close(graphed.z, plain.z, rtol=1e-12, atol=1e-12)
    if name == "nan":  # picard: non-finite; anderson's safeguard: rejected, out of budget
        assert int(graphed.status[0]) != Status.CONVERGED


def test_graphed_replays_without_running_f_in_python():
    """A replay runs the recorded kernels, not Python: f's Python body runs for the first
    evaluation, the warm-up chunk and the recording only."""
    g, z0, tol, max_iter = _on_cuda("linear_slow")
    calls = []

    def f(z):
        calls.append(1)
        return g(z)

    r = solve(f, z0, Graphed("anderson", steps=5), tol=tol, max_iter=max_iter)
    assert int(r.iterations.max()) > 30
    assert len(calls) <= 1 + 5 + 5 + 4  # z0, warm-up, recording, a last shorter chunk


def test_graphed_deq_training_step_on_cuda():
    x = torch.randn(5, 4, dtype=D, generator=torch.Generator().manual_seed(1)).cuda()
    grads = []
    for solver in (Anderson(), Graphed(Anderson(), steps=4)):
        cell = _Cell().cuda()
        deq = deqkit.DEQ(
            cell, solver=solver, tol=1e-10, max_iter=200, backward=Implicit(solver=solver)
        )
        z, info = deq(x)
        z.square().sum().backward()
        assert info.forward.all_converged and info.backward.all_converged
        grads.append((z.detach(), cell.W.grad, cell.U.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


def test_graphed_names_an_f_that_synchronises():
    g, z0, tol, max_iter = _on_cuda("linear_slow")

    def f(z):
        if float(z.abs().max()) > 1e30:  # a host read: not allowed in a recorded graph
            raise AssertionError
        return g(z)

    with pytest.raises(RuntimeError, match="recording 5 steps of 'anderson'"):
        solve(f, z0, Graphed("anderson", steps=5), tol=tol, max_iter=max_iter)
    # the stream is restored: an ordinary solve runs afterwards
    assert solve(g, z0, "anderson", tol=tol, max_iter=max_iter).all_converged
