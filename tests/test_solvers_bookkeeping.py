"""The solvers' bookkeeping: what a solve allocates and counts, and what a DEQ call re-checks.

Counts, not timings: nothing here depends on the speed of the machine. Each test is a
regression test of a cost the speed work of issue 12 removed.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

import deqkit
from deqkit import testing as zoo
from deqkit.bench.memory import PeakMemory
from deqkit.nn import DEQ, Implicit
from deqkit.solvers import Evaluator
from deqkit.solvers import _loop as solver_loop

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64


class LargeAllocations(TorchDispatchMode):
    """Counts the new storages of at least ``nbytes`` bytes that operators create (views
    and in-place writes create none)."""

    def __init__(self, nbytes: int):
        super().__init__()
        self.nbytes = nbytes
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        seen = set()
        tree_map_only(
            torch.Tensor, lambda t: seen.add(t.untyped_storage().data_ptr()), (args, kwargs)
        )
        out = func(*args, **(kwargs or {}))

        def check(t: torch.Tensor) -> None:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen and storage.nbytes() >= self.nbytes:
                self.count += 1

        tree_map_only(torch.Tensor, check, out)
        return out


def _slow_tanh(batch: int = 4, n: int = 32):
    """A tanh layer that needs many steps (never meets tol=1e-300): a long steady state."""
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(n, n, generator=gen, dtype=D)
    W = 0.99 * W / torch.linalg.matrix_norm(W, ord=2)
    inj = 0.1 * torch.randn(batch, n, generator=gen, dtype=D)
    return (lambda z: torch.tanh(z @ W.T + inj)), torch.zeros(batch, n, dtype=D)


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu", "accelerator-path"])
def test_anderson_allocates_no_history_per_step(device_path: bool, monkeypatch):
    """The ``[B, m, n]`` history is allocated once and written in place: the number of
    history-sized tensors a solve creates does not grow with its steps, damped or not.
    (With ``beta != 1`` every step used to build ``dF - (1 - beta) dG`` anew.)"""
    if device_path:
        monkeypatch.setattr(solver_loop, "_host_checks_are_free", lambda device: False)
    f, z0 = _slow_tanh()
    m = 5
    for beta in (0.5, 1.0):
        counts = []
        for steps in (10, 40):
            with LargeAllocations(z0.numel() * m * z0.element_size()) as seen:
                r = deqkit.solve(f, z0, "anderson", m=m, beta=beta, tol=1e-300, max_iter=steps)
            assert int(r.iterations.max()) == steps
            counts.append(seen.count)
        assert counts[0] == counts[1] <= 3, (beta, counts)


def test_broyden_memory_follows_the_pairs_in_use():
    """Broyden's buffers grow with the pairs a solve can hold, not with ``memory``: a short
    solve allowed 2000 pairs keeps as little as one allowed 10 (before, it zero-filled two
    ``[B, min(memory, max_iter - 2), n]`` buffers up front)."""
    p = zoo.tanh_contraction()
    peaks = []
    for memory in (10, 2000):
        with PeakMemory() as mem:
            r = deqkit.solve(p.f, p.z0, "broyden", memory=memory, tol=1e-10, max_iter=5000)
        assert r.all_converged and int(r.iterations.max()) < 30
        peaks.append(mem.peak)
    assert peaks[1] <= 1.5 * peaks[0], peaks


def test_evaluator_counts_on_the_host_while_every_sample_runs():
    """While every sample runs, evaluations are counted on the host (no tensor operation per
    evaluation); ``nfev`` is exact either way and ``uniform_count`` says when it is uniform."""
    p = zoo.tanh_contraction()
    B = p.batch
    ev = Evaluator(p.f, p.z0, D, "rel", 50)
    pt = ev.point(p.z0.reshape(B, -1))
    ev.point(pt.fz)
    assert ev.uniform_count == 2 and ev.nfev.tolist() == [2] * B
    some = torch.arange(B) % 2 == 0
    ev.set_active(some)
    ev.point(pt.fz)
    assert ev.uniform_count is None
    assert ev.nfev.tolist() == [3 if i % 2 == 0 else 2 for i in range(B)]
    assert Evaluator(p.f, p.z0, D, "rel", 50).host_checks_free
    assert not Evaluator(p.f, p.z0, D, "rel", 50, host_checks_free=False).host_checks_free


def test_deq_call_neither_resolves_nor_revalidates_its_settings(monkeypatch):
    """A DEQ's settings, its adjoint's included, are resolved at construction: a training
    step (forward and implicit backward) goes straight to the loop. Its start is still
    checked on every call."""
    calls = []
    for name in ("resolve", "check_budget"):
        real = getattr(solver_loop, name)
        monkeypatch.setattr(
            solver_loop,
            name,
            lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k),
        )
    gen = torch.Generator().manual_seed(0)
    W = torch.nn.Parameter(0.5 * torch.randn(6, 6, generator=gen, dtype=D) / 6**0.5)
    x = torch.randn(3, 6, generator=gen, dtype=D)
    deq = DEQ(lambda z, x: torch.tanh(z @ W.T + x), backward=Implicit(), tol=1e-8)
    calls.clear()
    z, info = deq(x, torch.zeros(3, 6, dtype=D))
    z.square().sum().backward()
    assert info.forward.all_converged and info.backward.all_converged
    assert W.grad is not None and calls == []
    with pytest.raises(ValueError, match="z0 must be finite"):
        deq(x, torch.full((3, 6), float("nan"), dtype=D))
    with pytest.raises(TypeError, match="floating-point"):
        deq(x, torch.zeros(3, 6, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finiteness_check_is_one_reduction_and_exact(dtype):
    """``all_finite`` answers from one sum where that sum is finite (no [B, n] bool mask),
    and from the elementwise check where the sum overflows: finite values whose sum is
    inf pass, a single NaN or inf anywhere fails."""
    from deqkit.solvers import all_finite

    big = torch.finfo(dtype).max
    z = torch.randn(64, 256, dtype=torch.float64).to(dtype)
    with LargeAllocations(64 * 256) as big_allocs:
        assert all_finite(z)
    assert big_allocs.count == 0
    huge = torch.full((4, 8), big, dtype=dtype)  # finite, its sum overflows
    assert not torch.isfinite(huge.sum()) and all_finite(huge)
    assert all_finite(torch.cat([huge, -huge]))
    for bad in (float("nan"), float("inf"), float("-inf")):
        for where in ((0, 0), (3, 7)):
            for base in (z[:4, :8].clone(), huge.clone()):
                base[where] = bad
                assert not all_finite(base), (bad, where)
    with pytest.raises(ValueError, match="z0 must be finite"):
        deqkit.solve(lambda v: 0.5 * v, torch.cat([huge, torch.full((1, 8), float("inf"))]))
    assert deqkit.solve(lambda v: 0.5 * v, huge).z.shape == huge.shape  # finite: accepted


class HostReads(TorchDispatchMode):
    """Counts the operators that make the host wait for the device on an accelerator: a
    value read on the host (``bool``/``int``/``float``/``item``), and the data-dependent
    shapes (``nonzero``, ``masked_select``, indexing with a bool mask). On the CPU they
    cost nothing, so the count is the accelerator's number of synchronisations."""

    SYNCS = (
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.nonzero.default,
        torch.ops.aten.masked_select.default,
    )

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCS:
            self.count += 1
        elif func is torch.ops.aten.index.Tensor and any(
            i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]
        ):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", zoo.METHODS)
@pytest.mark.parametrize("name", ["mixed_tanh", "expansive_tanh", "linear_slow", "cos"])
def test_accelerator_path_waits_for_the_device_once_per_evaluation(method, name, monkeypatch):
    """Under the accelerator's policy (the CPU emulating it) a solve makes the host wait
    only where that can save an evaluation of ``f``: the loop's "is any sample running?"
    before each step (and the finiteness check of ``z0``), and in a Newton step the read of
    the remaining budget that bounds its Krylov dimension, GMRES's "does any sample still
    iterate?" and the line search's "does any sample still backtrack?". So at most one wait
    per evaluation of ``f``, plus two per Newton step, plus two. (Newton's step used to
    read its budget twice, through a bool-mask index each time, and ask again whether any
    sample was running: six waits per step beyond its evaluations.)"""
    p = zoo.by_name(name)
    calls = []

    def f(z):
        calls.append(1)
        return p.f(z)

    monkeypatch.setattr(solver_loop, "_host_checks_are_free", lambda device: False)
    with HostReads() as reads:
        r = deqkit.solve(
            f, p.z0, method, tol=p.tol, stop=p.stop, max_iter=p.max_iter, record_trace=True
        )
    steps = r.trace.shape[0] - 1
    extra = 2 * steps if method == "newton" else 0
    assert reads.count <= len(calls) + extra + 2, (reads.count, len(calls), steps)
