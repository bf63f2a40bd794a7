"""Fixed-point solvers: every solver over the problem zoo, batch semantics, budgets, errors.

The zoo lives in :mod:`deqkit.testing`. Exactness checks run in float64 on small problems; the
whole file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import uuid

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deqkit import SolveError, SolveResult, Status, solve
from deqkit import testing as zoo
from deqkit.solvers import (
    Anderson,
    Broyden,
    Evaluator,
    Graphed,
    NewtonKrylov,
    Picard,
    Solver,
    available,
    register,
    resolve,
    where_active,
)
from deqkit.solvers import _loop as solver_loop
from deqkit.testing import METHODS, Problem

D = torch.float64
PROBLEMS = zoo.all_problems()
ONE_EVAL_PER_STEP = ("picard", "anderson", "broyden")  # Newton spends several per step


# --------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_thread")


class Counted:
    """Wraps ``f`` and counts its calls (a ``torch.func.jvp`` through it counts once)."""

    def __init__(self, f):
        self.f = f
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return self.f(z)


def residual_of(f, z: torch.Tensor, stop: str) -> torch.Tensor:
    """``[B]`` residual of ``z`` under ``stop``, computed the way the docs define it."""
    fz = f(z).reshape(z.shape[0], -1).to(D)
    g = fz - z.reshape(z.shape[0], -1).to(D)
    gnorm = torch.linalg.vector_norm(g, dim=1)
    if stop == "abs":
        return gnorm
    return gnorm / (torch.linalg.vector_norm(fz, dim=1) + torch.finfo(D).tiny ** 0.5)


def solve_problem(p: Problem, method, **kwargs) -> SolveResult:
    kwargs = {"tol": p.tol, "stop": p.stop, "max_iter": p.max_iter, **kwargs}
    return solve(p.f, p.z0, method, **kwargs)


def assert_honest(r: SolveResult, f, z0: torch.Tensor, *, tol, stop, max_iter) -> None:
    """What every result must satisfy, whatever the problem and the solver."""
    B = z0.shape[0]
    assert r.z.shape == z0.shape and r.z.dtype == z0.dtype and r.z.device == z0.device
    assert r.converged.shape == r.iterations.shape == r.residual.shape == r.status.shape == (B,)
    assert r.converged.dtype == torch.bool and r.iterations.dtype == torch.long
    assert (r.stop, r.tol, r.max_iter) == (stop, tol, max_iter)
    assert bool(torch.isfinite(r.z).all()), "returned z must be finite, even for failed samples"
    assert bool((r.iterations >= 1).all()) and bool((r.iterations <= max_iter).all())
    assert torch.equal(r.converged, r.residual <= tol)
    assert torch.equal(r.converged, r.status == Status.CONVERGED)
    assert set(r.status.tolist()) <= {int(s) for s in Status}
    # A sample that ran out of budget used all of it.
    out = r.status == Status.MAX_ITER
    assert bool((r.iterations[out] == max_iter).all())
    # The reported residual is the residual of the returned z.
    finite = torch.isfinite(r.residual)
    assert bool(finite[r.status != Status.NONFINITE].all())
    again = residual_of(f, r.z, stop)
    rtol, atol = (1e-9, 1e-14) if r.residual.dtype == D else (1e-3, 1e-6)
    torch.testing.assert_close(r.residual[finite].to(D), again[finite], rtol=rtol, atol=atol)


def problem_ids(problems):
    return [p.name for p in problems]


# --------------------------------------------------------------------------- the zoo


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("problem", PROBLEMS, ids=problem_ids(PROBLEMS))
def test_zoo(problem: Problem, method: str):
    r = solve_problem(problem, method)
    assert_honest(
        r, problem.f, problem.z0, tol=problem.tol, stop=problem.stop, max_iter=problem.max_iter
    )
    good = torch.ones(problem.batch, dtype=torch.bool)
    good[list(problem.nonfinite)] = False
    if method in problem.converges:
        assert bool(r.converged[good].all()), r.summary()
        if problem.z_star is not None:
            err = torch.linalg.vector_norm((r.z - problem.z_star).flatten(1), dim=1)
            assert bool((err[good] <= problem.z_atol).all()), (err, problem.z_atol)
    if method in problem.fails:
        assert not bool(r.converged.any()), r.summary()
    for b in problem.nonfinite:
        assert r.status[b] == Status.NONFINITE, r.summary()


def test_zoo_has_known_answers():
    assert math.cos(zoo.COS_FIXED_POINT) == pytest.approx(zoo.COS_FIXED_POINT, abs=1e-15)
    for p in PROBLEMS:
        if p.z_star is not None:
            q = p.subset([b for b in range(p.batch) if b not in p.nonfinite])
            r = residual_of(q.f, q.z_star, "abs")
            assert bool((r <= 1e-12).all()), p.name


def test_cyclic_shift_stagnates_anderson_cleanly():
    p = zoo.cyclic_shift()
    r = solve_problem(p, "anderson", record_trace=True)
    assert r.status.tolist() == [Status.MAX_ITER]
    assert r.iterations.tolist() == [p.max_iter]
    assert r.trace.shape == (p.max_iter, 1)
    assert bool(torch.isfinite(r.trace).all())


def test_expansive_map_ends_cleanly_and_reports():
    p = zoo.expansive_tanh()
    for method in METHODS:
        r = solve_problem(p, method, record_trace=True)
        # tanh is bounded, so nothing may turn non-finite; whatever failed ran out of budget.
        assert bool((r.status != Status.NONFINITE).all())
        counts = torch.bincount(r.status, minlength=len(Status)).tolist()
        text = r.summary()
        assert text.startswith(f"{method}: ") and f"of {p.batch} samples" in text
        for status, count in zip(Status, counts, strict=True):
            assert (f"{count} {status.name.lower()}" in text) == (count > 0)
    assert solve_problem(p, "picard").summary().startswith("picard: 8 max_iter of 8 samples")


@pytest.mark.parametrize("stop", ["abs", "rel"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["tanh_g=0.8", "nan_map", "expansive_tanh"])
def test_residual_field_is_residual_of_returned_z(name: str, method: str, stop: str):
    p = zoo.by_name(name)
    r = solve(p.f, p.z0, method, tol=1e-9, stop=stop, max_iter=60)
    assert_honest(r, p.f, p.z0, tol=1e-9, stop=stop, max_iter=60)


# --------------------------------------------------------------------------- batch semantics


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["mixed_tanh", "linear_plain_diverges", "expansive_tanh"])
def test_batch_invariance(name: str, method: str):
    p = zoo.by_name(name)
    r = solve_problem(p, method)
    for b in range(p.batch):
        q = p.subset([b])
        alone = solve_problem(q, method)
        # Batched and single-sample matrix products round differently; a map that does not
        # contract (expansive tanh) amplifies that over the budget, so only converging
        # problems are held to 1e-12.
        atol = 1e-12 if method in p.converges else 1e-8
        torch.testing.assert_close(r.z[b : b + 1], alone.z, rtol=0, atol=atol)
        assert r.status[b] == alone.status[0]
        if method in ONE_EVAL_PER_STEP:
            assert r.iterations[b] == alone.iterations[0]


def poisoned(f, bad: int, after: int):
    """``f`` whose sample ``bad`` turns NaN from call ``after + 1`` on: the NaN comes at a set
    place in the call sequence, whatever kind of step the solver is taking then."""
    calls = [0]

    def g(z):
        calls[0] += 1
        out = f(z)
        if calls[0] > after:
            mask = torch.zeros(z.shape[0], dtype=torch.bool)
            mask[bad] = True
            out = torch.where(mask.view(-1, *[1] * (out.dim() - 1)), torch.nan, out)
        return out

    return g


@pytest.mark.parametrize("method", METHODS)
def test_nan_sample_is_isolated(method: str):
    p = zoo.mixed_tanh()
    bad = 2
    r = solve(poisoned(p.f, bad, after=4), p.z0, method, tol=p.tol, stop=p.stop, max_iter=200)
    assert r.status[bad] == Status.NONFINITE
    assert not bool(r.converged[bad])
    assert bool(torch.isfinite(r.z[bad]).all()) and bool(torch.isfinite(r.residual[bad]))
    assert r.iterations[bad] <= 200
    others = [b for b in range(p.batch) if b != bad]
    ref = solve_problem(p.subset(others), method, max_iter=200)
    torch.testing.assert_close(r.z[others], ref.z, rtol=0, atol=1e-12)
    assert torch.equal(r.status[others], ref.status)
    assert bool(ref.converged.all())
    if method in ONE_EVAL_PER_STEP:
        assert torch.equal(r.iterations[others], ref.iterations)


@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_at_the_start(method: str):
    """A sample whose very first evaluation is NaN: NONFINITE after one evaluation, z0 back,
    residual NaN (documented), and the other samples go on."""
    p = zoo.tanh_contraction()
    r = solve(poisoned(p.f, 1, after=0), p.z0, method, tol=p.tol, stop=p.stop)
    assert r.status[1] == Status.NONFINITE and r.iterations[1] == 1
    assert torch.equal(r.z[1], p.z0[1]) and bool(r.residual[1].isnan())
    assert bool(r.converged[[0, 2, 3]].all())
    assert "first failing sample 1" in str(SolveError(r))


@pytest.mark.parametrize("stop", ["abs", "rel"])
@pytest.mark.parametrize("method", METHODS)
def test_sample_already_at_fixed_point_gives_no_nan(method: str, stop: str):
    p = zoo.tanh_at_fixed_point()
    r = solve(p.f, p.z0, method, tol=1e-10, stop=stop, max_iter=200, record_trace=True)
    assert_honest(r, p.f, p.z0, tol=1e-10, stop=stop, max_iter=200)
    assert bool(r.converged.all())
    assert r.iterations[0] == 1 and r.residual[0] == 0.0
    assert torch.equal(r.z[0], p.z0[0])
    assert r.trace[0, 0] == 0.0 and bool(r.trace[1:, 0].isnan().all())


def test_samples_stop_on_their_own():
    p = zoo.mixed_tanh()
    r = solve_problem(p, "picard")
    # g_b grows with b, so later samples need more evaluations; nobody is charged the max.
    assert r.iterations.tolist() == sorted(r.iterations.tolist())
    assert r.iterations[0] < r.iterations[-1] / 2


# --------------------------------------------------------------------------- budgets and counts


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("method", METHODS)
def test_max_iter_is_a_hard_budget(method: str, k: int):
    p = zoo.hard_tanh(0.99)
    f = Counted(p.f)
    r = solve(f, p.z0, method, tol=1e-14, stop="abs", max_iter=k, record_trace=True)
    assert_honest(r, p.f, p.z0, tol=1e-14, stop="abs", max_iter=k)
    assert bool((r.iterations <= k).all())
    assert r.trace.shape[0] <= k
    assert bool((r.status == Status.MAX_ITER).all())
    if method in ONE_EVAL_PER_STEP:
        # No early stop: one evaluation per step, every sample charged for each.
        assert f.calls == k
        assert r.iterations.tolist() == [k] * p.batch
        assert r.trace.shape[0] == k


def test_max_iter_one_returns_z0():
    p = zoo.tanh_contraction()
    for method in METHODS:
        f = Counted(p.f)
        r = solve(f, p.z0, method, max_iter=1)
        assert f.calls == 1 and r.iterations.tolist() == [1] * p.batch
        assert torch.equal(r.z, p.z0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["tanh_g=0.8", "cos", "hard_tanh_g=0.95", "cyclic_shift"])
def test_single_sample_counts_every_call(name: str, method: str):
    p = zoo.by_name(name).subset([0])
    f = Counted(p.f)
    r = solve(f, p.z0, method, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    assert f.calls == int(r.iterations[0])


@pytest.mark.parametrize("method", ONE_EVAL_PER_STEP)
def test_per_sample_counts_when_samples_stop_at_different_times(method: str):
    p = zoo.mixed_tanh()
    f = Counted(p.f)
    r = solve(f, p.z0, method, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    assert f.calls == int(r.iterations.max())
    assert len(set(r.iterations.tolist())) > 1
    for b in range(p.batch):
        q = p.subset([b])
        g = Counted(q.f)
        solve(g, q.z0, method, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
        assert g.calls == int(r.iterations[b])


@pytest.mark.parametrize("name", ["linear_slow", "hard_tanh_g=0.95", "hard_tanh_g=0.99"])
def test_anderson_needs_fewer_evaluations_than_picard(name: str):
    p = zoo.by_name(name)
    a, f = solve_problem(p, "anderson"), solve_problem(p, "picard")
    assert a.all_converged and f.all_converged
    assert int(a.iterations.sum()) < int(f.iterations.sum())
    assert bool((a.iterations <= f.iterations).all())


@pytest.mark.parametrize("extra", [0, 4])
@pytest.mark.parametrize("n", [4, 8, 12])
@pytest.mark.parametrize("spectrum", [(-1.5, 0.5), (-0.99, 0.99)])
def test_anderson_with_full_memory_is_gmres_on_linear(spectrum, n: int, extra: int):
    """Walker & Ni: on ``z = M z + c`` with ``m >= n``, Anderson (lam = 0) is GMRES on
    ``(I - M) z = c``, exact after ``n`` accelerated steps: ``n + 2`` evaluations, even where
    plain iteration diverges."""
    p = zoo.linear(*spectrum, n=n)
    r = solve(p.f, p.z0, "anderson", m=n + extra, lam=0.0, tol=1e-10, stop="rel", max_iter=100)
    assert r.all_converged
    assert bool((r.iterations <= n + 3).all()), r.iterations
    err = torch.linalg.vector_norm(r.z - p.z_star, dim=1)
    assert bool((err <= 1e-8).all())
    if spectrum == (-0.99, 0.99):
        # The default relative ridge does not get in the way on a spectrum inside (-1, 1).
        r = solve(p.f, p.z0, "anderson", m=n + extra, tol=1e-10, stop="rel", max_iter=100)
        assert bool((r.iterations <= n + 4).all()), r.iterations
    else:
        assert not solve(p.f, p.z0, "picard", tol=1e-10, stop="rel", max_iter=100).all_converged


def test_damped_picard_converges_where_plain_diverges():
    """``M`` has eigenvalues in ``[-1.5, 0.5]``: plain iteration diverges, while damping by
    ``beta = 0.5`` maps them into ``[-0.25, 0.75]``."""
    p = zoo.by_name("linear_plain_diverges")
    r = solve_problem(p, "picard", beta=0.5)
    assert r.all_converged
    torch.testing.assert_close(r.z, p.z_star, rtol=0, atol=p.z_atol)
    r = solve_problem(p, Anderson(beta=0.5))
    assert r.all_converged
    torch.testing.assert_close(r.z, p.z_star, rtol=0, atol=p.z_atol)


@pytest.mark.parametrize("name", ["tanh_g=0.8", "linear_plain_diverges", "cos", "nan_map"])
def test_newton_with_finite_difference_jvp(name: str):
    p = zoo.by_name(name)
    f = Counted(p.f)
    r = solve(f, p.z0, "newton", jvp="fd", tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    assert_honest(r, p.f, p.z0, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    good = [b for b in range(p.batch) if b not in p.nonfinite]
    assert bool(r.converged[good].all())
    err = torch.linalg.vector_norm((r.z - p.z_star).flatten(1), dim=1)
    assert bool((err[good] <= max(p.z_atol, 1e-8)).all())
    assert f.calls >= int(r.iterations.max())


@pytest.mark.parametrize(
    "solver",
    [Anderson(m=1), Broyden(memory=1), Broyden(memory=2), NewtonKrylov(krylov_dim=1)],
    ids=["anderson_m=1", "broyden_memory=1", "broyden_memory=2", "newton_krylov_dim=1"],
)
@pytest.mark.parametrize("name", ["tanh_g=0.8", "mixed_tanh"])
def test_smallest_memories_still_converge(name: str, solver: Solver):
    """The ring of length one, a Broyden memory cleared every step or two, a one-dimensional
    Krylov space: edge cases of the buffer bookkeeping, on maps where any of them converges."""
    p = zoo.by_name(name)
    r = solve_problem(p, solver)
    assert_honest(r, p.f, p.z0, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    assert r.all_converged
    torch.testing.assert_close(r.z, p.z_star, rtol=0, atol=p.z_atol)


def reference_anderson(f, z0: torch.Tensor, m: int, steps: int) -> torch.Tensor:
    """Textbook Anderson type II for one sample (no ridge, no safeguard, from scratch each
    step): ``z_{k+1} = f_k - dF gamma`` with ``gamma = argmin ||g_k - dG gamma||`` over the
    last ``min(m, k)`` differences, by a QR least-squares solve. Returns ``[steps + 1, n]``."""
    zs, fs = [z0], [f(z0)]
    for k in range(steps):
        mk = min(m, k)
        if mk == 0:
            z = fs[-1]
        else:
            F = torch.stack(fs[-mk - 1 :], dim=1)
            G = F - torch.stack(zs[-mk - 1 :], dim=1)
            dF, dG = F[:, 1:] - F[:, :-1], G[:, 1:] - G[:, :-1]
            gamma = torch.linalg.lstsq(dG, G[:, -1:]).solution[:, 0]
            z = fs[-1] - dF @ gamma
        zs.append(z)
        fs.append(f(z))
    return torch.stack(zs)


@pytest.mark.parametrize("m", [1, 3, 5])
def test_anderson_matches_reference_iterates(m: int):
    p = zoo.tanh_contraction(g=0.9, n=8, batch=1)
    ref = reference_anderson(lambda z: p.f(z[None])[0], p.z0[0], m, steps=10)
    solver = Anderson(m=m, lam=0.0, safeguard=math.inf)
    r = solve(p.f, p.z0, solver, tol=1e-300, stop="abs", max_iter=11, record_iterates=True)
    assert r.iterates.shape == (11, 1, 8)
    torch.testing.assert_close(r.iterates[:, 0], ref, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- dtype, device, graph


def tanh_module(n=8, d=4, gain=0.8, seed=0):
    """A tanh layer with trainable parameters, as a DEQ would hold it."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=gen)
    W = torch.nn.Parameter(gain * W / torch.linalg.matrix_norm(W, ord=2))
    U = torch.nn.Parameter(torch.randn(n, d, generator=gen) / d**0.5)
    x = torch.randn(3, d, generator=gen)

    def f(z):
        # Parameters follow z's dtype; under autocast the matmuls run in bfloat16.
        return torch.tanh(z @ W.T.to(z.dtype) + x.to(z.dtype) @ U.T.to(z.dtype))

    return f, torch.zeros(3, n), (W, U)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_dtype_and_device_preserved(method: str, dtype: torch.dtype):
    f, z0, _ = tanh_module()
    z0 = z0.to(dtype)
    r = solve(f, z0, method, tol=1e-5, record_trace=True, record_iterates=True)
    assert r.z.dtype == dtype and r.z.device == z0.device
    assert r.iterates.dtype == dtype
    assert r.all_converged
    assert_honest(r, f, z0, tol=1e-5, stop="rel", max_iter=50)


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_start(method: str):
    f, z0, _ = tanh_module()
    z0 = z0.to(torch.bfloat16)
    r = solve(f, z0, method, tol=1e-2, max_iter=30, record_iterates=True)
    assert r.z.dtype == torch.bfloat16 and r.iterates.dtype == torch.bfloat16
    assert bool(torch.isfinite(r.z).all())
    assert r.all_converged


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_map_under_autocast(method: str):
    f, z0, _ = tanh_module()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert f(z0).dtype == torch.bfloat16
        r = solve(f, z0, method, tol=1e-2, max_iter=30)
    assert r.z.dtype == torch.float32
    assert bool(torch.isfinite(r.z).all())
    assert r.all_converged


@pytest.mark.parametrize("method", METHODS)
def test_solve_keeps_no_graph(method: str):
    f, z0, params = tanh_module()
    assert all(q.requires_grad for q in params)
    z0 = z0.clone().requires_grad_(True)
    r = solve(f, z0, method, record_trace=True, record_iterates=True)
    for t in (r.z, r.residual, r.trace, r.iterates):
        assert not t.requires_grad and t.grad_fn is None
    assert torch.is_grad_enabled()


def test_z0_is_not_modified_and_may_be_non_contiguous():
    p = zoo.tanh_contraction()
    z0 = torch.randn(p.z0.shape[1], p.batch, dtype=D).T  # non-contiguous view
    before = z0.clone()
    for method in METHODS:
        r = solve(p.f, z0, method, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
        assert r.all_converged and torch.equal(z0, before)
        torch.testing.assert_close(r.z, p.z_star, rtol=0, atol=p.z_atol)


# --------------------------------------------------------------------------- trace and iterates


@pytest.mark.parametrize("method", METHODS)
def test_trace_is_unpadded_and_per_sample(method: str):
    p = zoo.mixed_tanh()
    r = solve_problem(p, method, record_trace=True, record_iterates=True)
    steps = r.trace.shape[0]
    assert r.trace.shape == (steps, p.batch) and r.iterates.shape == (steps, *p.z0.shape)
    assert steps < p.max_iter  # not padded to the budget
    torch.testing.assert_close(r.trace[0].to(D), residual_of(p.f, p.z0, p.stop))
    torch.testing.assert_close(r.iterates[0], p.z0)
    ran = (~r.trace.isnan()).sum(0)
    for b in range(p.batch):
        k = int(ran[b])
        assert bool(torch.isfinite(r.trace[:k, b]).all()) and bool(r.trace[k:, b].isnan().all())
        assert r.trace[k - 1, b] <= p.tol  # it stopped because it converged
        # A stopped sample stays where it stopped.
        assert bool((r.iterates[k:, b] == r.iterates[k - 1, b]).all())
    assert int(ran.max()) == steps  # the loop ran until the last sample stopped
    if method in ONE_EVAL_PER_STEP:
        assert steps == int(r.iterations.max())
        assert torch.equal(ran, r.iterations)
    else:
        assert bool((ran <= r.iterations).all())


@pytest.mark.parametrize("method", METHODS)
def test_trace_matches_iterates(method: str):
    p = zoo.mixed_tanh()
    r = solve_problem(p, method, record_trace=True, record_iterates=True)
    res = torch.stack([residual_of(p.f, z, p.stop) for z in r.iterates])
    live = ~r.trace.isnan()
    torch.testing.assert_close(r.trace[live].to(D), res[live], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize(
    ("method", "options"), [("anderson", {"safeguard": 1.1}), ("broyden", {"safeguard": 1.1})]
)
def test_trace_records_current_iterate_after_rejected_step(method: str, options: dict):
    """The trace is documented as the residual of each sample's *current* iterate, and the
    iterates as the current iterate: after a rejected proposal (safeguard) the current iterate
    is the old one, so its residual is what the trace must show, not the proposal's."""
    p = zoo.expansive_tanh()
    record = {"record_trace": True, "record_iterates": True}
    r = solve(p.f, p.z0, method, tol=1e-8, stop="abs", max_iter=60, **record, **options)
    stuck = (r.iterates[1:] == r.iterates[:-1]).flatten(2).all(-1) & ~r.trace[1:].isnan()
    assert bool(stuck.any()), "the problem must provoke at least one rejected step"
    res = torch.stack([residual_of(p.f, z, "abs") for z in r.iterates])
    live = ~r.trace.isnan()
    torch.testing.assert_close(r.trace[live].to(D), res[live], rtol=1e-9, atol=1e-14)


# --------------------------------------------------------------------------- failure reporting


def test_raise_on_failure_carries_the_result():
    p = zoo.by_name("linear_plain_diverges")
    with pytest.raises(SolveError) as info:
        solve_problem(p, "picard", raise_on_failure=True)
    result = info.value.result
    assert isinstance(result, SolveResult)
    assert not bool(result.converged.any())
    assert bool((result.status == Status.MAX_ITER).all())
    assert "first failing sample 0" in str(info.value) and "max_iter" in str(info.value)
    r = solve_problem(p, "anderson", raise_on_failure=True)
    assert r.all_converged and r.raise_for_status() is r


def test_raise_on_failure_names_nonfinite_sample():
    p = zoo.nan_map()
    with pytest.raises(SolveError, match="first failing sample 1: f returned a non-finite"):
        solve_problem(p, "picard", raise_on_failure=True)


def test_summary_counts_statuses():
    p = zoo.nan_map()
    text = solve_problem(p, "picard").summary()
    assert text.startswith("picard: 2 converged, 1 nonfinite of 3 samples")


# --------------------------------------------------------------------------- argument checks


def _z0():
    return torch.zeros(2, 3, dtype=D)


BAD_CALLS = {
    "int z0": (dict(z0=torch.zeros(2, 3, dtype=torch.long)), TypeError, "floating-point"),
    "list z0": (dict(z0=[[0.0, 1.0]]), TypeError, "z0 must be a torch.Tensor"),
    "scalar z0": (dict(z0=torch.tensor(1.0, dtype=D)), ValueError, "batch-first"),
    "1-D z0": (dict(z0=torch.zeros(16, dtype=D)), ValueError, r"z0\[None\]"),
    "empty z0": (dict(z0=torch.zeros(0, 3, dtype=D)), ValueError, "batch-first"),
    "nan z0": (dict(z0=torch.full((2, 3), torch.nan, dtype=D)), ValueError, "finite"),
    "inf z0": (dict(z0=torch.full((2, 3), torch.inf, dtype=D)), ValueError, "finite"),
    "tol=0": (dict(tol=0.0), ValueError, "tol"),
    "tol<0": (dict(tol=-1e-5), ValueError, "tol"),
    "tol=nan": (dict(tol=math.nan), ValueError, "tol"),
    "tol=inf": (dict(tol=math.inf), ValueError, "tol"),
    "tol=True": (dict(tol=True), ValueError, "tol"),
    "tol=str": (dict(tol="1e-5"), ValueError, "tol"),
    "max_iter=0": (dict(max_iter=0), ValueError, "max_iter"),
    "max_iter<0": (dict(max_iter=-3), ValueError, "max_iter"),
    "max_iter=float": (dict(max_iter=10.0), ValueError, "max_iter"),
    "max_iter=True": (dict(max_iter=True), ValueError, "max_iter"),
    "stop": (dict(stop="max"), ValueError, r"Invalid stop: 'max' \(expected one of 'abs', 'rel'\)"),
    "method name": (dict(method="andersen"), ValueError, "unknown method 'andersen'"),
    "method type": (dict(method=3), TypeError, "method must be"),
    "method class": (dict(method=Anderson), TypeError, "method must be"),
    "option": (dict(method="anderson", mm=3), TypeError, "unknown option.*mm"),
    "option of another solver": (dict(method="picard", m=3), TypeError, "unknown option.*m"),
    "anderson m=0": (dict(method="anderson", m=0), ValueError, "Invalid m"),
    "anderson m=2.0": (dict(method="anderson", m=2.0), ValueError, "Invalid m"),
    "anderson beta=0": (dict(method="anderson", beta=0.0), ValueError, "Invalid beta"),
    "anderson lam<0": (dict(method="anderson", lam=-1.0), ValueError, "Invalid lam"),
    "anderson lam=nan": (dict(method="anderson", lam=math.nan), ValueError, "Invalid lam"),
    "anderson safeguard": (dict(method="anderson", safeguard=1.0), ValueError, "Invalid safe"),
    "anderson max_weight": (dict(method="anderson", max_weight=0), ValueError, "Invalid max_w"),
    "picard beta=0": (dict(method="picard", beta=0.0), ValueError, "Invalid beta"),
    "picard beta=3": (dict(method="picard", beta=3.0), ValueError, "Invalid beta"),
    "picard beta=nan": (dict(method="picard", beta=math.nan), ValueError, "Invalid beta"),
    "broyden memory": (dict(method="broyden", memory=0), ValueError, "Invalid memory"),
    "broyden safeguard": (dict(method="broyden", safeguard=0.5), ValueError, "Invalid safe"),
    "broyden backtracks": (dict(method="broyden", max_backtracks=-1), ValueError, "Invalid max_b"),
    "broyden backtracks=1.0": (
        dict(method="broyden", max_backtracks=1.0),
        ValueError,
        "Invalid max_backtracks",
    ),
    "newton krylov_dim": (dict(method="newton", krylov_dim=0), ValueError, "Invalid krylov"),
    "newton eta_max": (dict(method="newton", eta_max=1.0), ValueError, "Invalid eta_max"),
    "newton gamma": (dict(method="newton", gamma=0.0), ValueError, "Invalid gamma"),
    "newton backtracks": (dict(method="newton", max_backtracks=-1), ValueError, "Invalid max_b"),
    "newton jvp": (dict(method="newton", jvp="numeric"), ValueError, "Invalid jvp"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_bad_input_raises_before_calling_f(case: str):
    kwargs, error, match = BAD_CALLS[case]
    kwargs = dict(kwargs)
    f = Counted(lambda z: 0.5 * z)
    z0 = kwargs.pop("z0", _z0())
    method = kwargs.pop("method", "anderson")
    with pytest.raises(error, match=match):
        solve(f, z0, method, **kwargs)
    assert f.calls == 0


def test_one_dimensional_z0_says_how_to_pass_one_vector_or_many_scalars():
    """A 1-D ``z0`` used to be taken as ``n`` scalar samples, so a coupled ``f`` (one
    ``n``-vector problem) silently failed to converge: the caller must say which it is."""
    f = Counted(lambda z: 0.5 * z.roll(1, dims=-1))
    with pytest.raises(ValueError) as info:
        solve(f, torch.zeros(16, dtype=D))
    text = str(info.value)
    for part in ("batch-first", "shape (16,)", "z0[None]", "[1, 16]", "z0[:, None]", "[16, 1]"):
        assert part in text, (part, text)
    assert f.calls == 0
    assert solve(f, torch.ones(16, dtype=D)[None], stop="abs", tol=1e-10).all_converged


def test_non_callable_f_raises():
    with pytest.raises(TypeError, match="f must be callable, got int"):
        solve(3, _z0())


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError) as info:
        solve(lambda z: z, _z0(), "andersen")
    for name in ("picard", "fixed_point", "anderson", "broyden", "newton"):
        assert name in str(info.value)
    assert set(available()) >= {"picard", "fixed_point", "anderson", "broyden", "newton"}


@pytest.mark.parametrize("method", METHODS)
def test_f_returning_another_shape_names_both_shapes(method: str):
    f = Counted(lambda z: z[:, :2])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\)"):
        solve(f, _z0(), method)
    assert f.calls == 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("out", [1.0, [0.0, 0.0, 0.0], None])
def test_f_returning_a_non_tensor_raises(method: str, out):
    with pytest.raises(TypeError, match="f must return a tensor"):
        solve(lambda z: out, _z0(), method)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (Anderson, {"m": 0}),
        (Anderson, {"m": True}),
        (Anderson, {"beta": -1.0}),
        (Anderson, {"safeguard": 0.5}),
        (Picard, {"beta": 0.0}),
        (Broyden, {"memory": 0}),
        (Broyden, {"memory": 1.5}),
        (NewtonKrylov, {"krylov_dim": 0}),
        (NewtonKrylov, {"jvp": "bad"}),
    ],
)
def test_invalid_hyperparameters(cls, kwargs):
    with pytest.raises(ValueError, match="Invalid"):
        cls(**kwargs)


def test_solver_object_plus_options_uses_replace():
    p = zoo.tanh_contraction()
    base = Anderson(m=3)
    r = solve(p.f, p.z0, base, beta=0.5, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    ref = solve(p.f, p.z0, Anderson(m=3, beta=0.5), tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    assert torch.equal(r.z, ref.z) and torch.equal(r.iterations, ref.iterations)
    assert base == Anderson(m=3)  # the object passed in is untouched
    assert resolve(base, {"beta": 0.5}) == Anderson(m=3, beta=0.5)
    assert resolve(base) is base
    with pytest.raises(TypeError, match="unknown option.*memory"):
        solve(p.f, p.z0, base, memory=3)
    with pytest.raises(ValueError, match="Invalid m"):
        solve(p.f, p.z0, base, m=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.m = 4


def test_names_resolve_to_solvers():
    assert resolve("picard") == Picard() and resolve("fixed_point") == Picard()
    assert resolve("anderson", {"m": 2}) == Anderson(m=2)
    assert isinstance(resolve("broyden"), Broyden)
    assert isinstance(resolve("newton"), NewtonKrylov)
    p = zoo.tanh_contraction()
    assert solve(p.f, p.z0, "fixed_point").method == "picard"


@dataclasses.dataclass(frozen=True)
class HalfStep(Solver):
    """A user's solver, written as the docs say: damped iteration with its own ``beta``."""

    beta: float = 0.5
    name = "halfstep"

    def step(self, ev, p, active, state):
        return ev.point(where_active(active, p.z + self.beta * p.g, p.z)), None, state


def test_user_registered_solver_runs_through_solve():
    name = f"halfstep_{uuid.uuid4().hex[:8]}"
    register(name, HalfStep)
    assert name in available()
    p = zoo.tanh_contraction()
    f = Counted(p.f)
    r = solve(f, p.z0, name, beta=0.7, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    assert r.all_converged and r.method == "halfstep"
    assert f.calls == int(r.iterations.max())
    torch.testing.assert_close(r.z, p.z_star, rtol=0, atol=p.z_atol)
    with pytest.raises(TypeError, match="unknown option.*m"):
        solve(p.f, p.z0, name, m=3)
    with pytest.raises(ValueError, match="already registered"):
        register(name, HalfStep)


def test_register_rejects_bad_arguments():
    with pytest.raises(ValueError, match="already registered"):
        register("anderson", Anderson)
    with pytest.raises(ValueError, match="already registered"):
        register("picard", HalfStep)
    with pytest.raises(TypeError, match="subclass"):
        register("not_a_solver", object)
    with pytest.raises(TypeError, match="subclass"):
        register("an_instance", Anderson())
    with pytest.raises(ValueError, match="non-empty"):
        register("", HalfStep)
    assert "not_a_solver" not in available()


# --------------------------------------------------------------------------- regressions


def degenerate_batch(kinds=(0, 1, 2, 3)):
    """One sample of each kind below, in four dimensions, each hard on the Anderson system:

    0. a tanh contraction (the control);
    1. ``z -> z + c``: no fixed point, ``g`` constant, so every difference ``dG`` is exactly
       zero and the Gram matrix is the zero matrix;
    2. ``cos`` from a vector with equal coordinates: all differences are parallel, so the Gram
       matrix has rank one (exactly linearly dependent columns);
    3. ``z -> z / 2``, starting at its fixed point 0 (``g = 0`` from the start).
    """
    n = 4
    gen = torch.Generator().manual_seed(7)
    W = torch.randn(n, n, generator=gen, dtype=D)
    W = 0.8 * W / torch.linalg.matrix_norm(W, ord=2)
    inj = torch.randn(n, generator=gen, dtype=D)
    k = torch.tensor(kinds).view(-1, 1)

    def f(z):
        return torch.where(
            k == 0,
            torch.tanh(z @ W.T + inj),
            torch.where(k == 1, z + 0.25, torch.where(k == 2, torch.cos(z), 0.5 * z)),
        )

    z0 = torch.zeros(len(kinds), n, dtype=D)
    z0[k[:, 0] == 2] = 1.0
    return f, z0


@pytest.mark.parametrize("lam", [0.0, 1e-8])
@pytest.mark.parametrize("m", [1, 3, 6])
def test_anderson_singular_gram_does_not_abort_batch(m: int, lam: float):
    f, z0 = degenerate_batch()
    r = solve(f, z0, "anderson", m=m, lam=lam, tol=1e-10, stop="abs", max_iter=80)
    assert_honest(r, f, z0, tol=1e-10, stop="abs", max_iter=80)
    assert r.status.tolist() == [Status.CONVERGED, Status.MAX_ITER] + [Status.CONVERGED] * 2
    torch.testing.assert_close(
        r.z[2], torch.full((4,), zoo.COS_FIXED_POINT, dtype=D), rtol=0, atol=1e-9
    )
    assert torch.equal(r.z[3], z0[3]) and r.iterations[3] == 1
    # The control sample is unaffected by its degenerate neighbours.
    f, z0 = degenerate_batch(kinds=(0,))
    alone = solve(f, z0, "anderson", m=m, lam=lam, tol=1e-10, stop="abs", max_iter=80)
    # With m > n = 4 and lam = 0 the control's own Gram matrix is singular too, so batch and
    # single runs may round differently; both must still be at the answer.
    torch.testing.assert_close(r.z[:1], alone.z, rtol=0, atol=1e-9)
    assert r.iterations[0] == alone.iterations[0]


@pytest.mark.parametrize("method", ["broyden", "newton"])
def test_quasi_newton_degenerate_batch_ends_cleanly(method: str):
    f, z0 = degenerate_batch()
    r = solve(f, z0, method, tol=1e-10, stop="abs", max_iter=80)
    assert_honest(r, f, z0, tol=1e-10, stop="abs", max_iter=80)
    assert bool(r.converged[[0, 2, 3]].all()) and not bool(r.converged[1])


# Broyden's evaluations per sample on every zoo problem, recorded before the search after a
# rejected step was added (pressure_network: with it; before, samples 1-4 diverged). The
# search must not cost evaluations where the old reset was right.
BROYDEN_EVALUATIONS = {
    "linear_slow": [31, 29, 38],
    "linear_plain_diverges": [23, 23, 23],
    "non_normal": [25, 29, 30],
    "cos": [7, 7, 7, 9],
    "sqrt2": [7, 7, 8],
    "affine_a=-2": [3, 3],
    "tanh_g=0.8": [16, 14, 17, 15],
    "hard_tanh_g=0.95": [22, 23, 26, 28],
    "hard_tanh_g=0.99": [23, 23, 26, 29],
    "mixed_tanh": [17, 17, 20, 20, 21, 23],
    "expansive_tanh": [25, 32, 31, 24, 30, 28, 30, 34],
    "tanh_at_fixed_point": [1, 14, 14, 16],
    "cyclic_shift": [16],
    "nan_map": [3, 6, 3],
    "pressure_network": [18, 32, 55, 52, 90],
}


@pytest.mark.parametrize("problem", PROBLEMS, ids=problem_ids(PROBLEMS))
def test_broyden_evaluations_do_not_grow(problem: Problem):
    r = solve_problem(problem, "broyden")
    pinned = torch.tensor(BROYDEN_EVALUATIONS[problem.name])
    assert bool((r.iterations <= pinned).all()), (r.iterations.tolist(), pinned.tolist())


def test_broyden_searches_after_a_rejection_instead_of_resetting():
    """On the pressure network far from its roots a quasi-Newton step is rejected, and the
    plain step that a reset takes multiplies the residual (by 27 up to 1e50 for the start
    and flow scaled by 8); accepting it whatever it gave sent the iterates to 1e19-1e50.
    The search (the plain step only if it lowers ||g||, else the rejected step halved)
    converges on every sample; ``max_backtracks=0`` is the reset of before."""
    p = zoo.pressure_network()
    r = solve_problem(p, "broyden")
    assert_honest(r, p.f, p.z0, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    assert r.all_converged, r.summary()
    reset = solve_problem(p, "broyden", max_backtracks=0)
    assert not bool(reset.converged[1:].any()), reset.summary()


def test_broyden_needs_no_more_evaluations_than_scipy_broyden1_on_pressure_network():
    """SciPy's ``broyden1`` (Armijo line search on every step) converges on the same starts;
    ours must not need more evaluations (SciPy's stopping test, the largest entry of ``F``,
    is the looser one)."""
    optimize = pytest.importorskip("scipy.optimize")
    p = zoo.pressure_network()
    r = solve_problem(p, "broyden")

    def root_form(f):  # F(x) = x - f(x) on one NumPy vector
        return lambda x: (torch.from_numpy(x)[None] - f(torch.from_numpy(x)[None]))[0].numpy()

    for b in range(p.batch):
        q = p.subset([b])
        F = Counted(root_form(q.f))
        x = optimize.broyden1(F, q.z0[0].numpy(), f_tol=p.tol)
        used = F.calls
        assert float(abs(F(x)).max()) <= p.tol
        assert int(r.iterations[b]) <= used, (b, int(r.iterations[b]), used)


def test_anderson_is_exact_on_scalar_affine_after_two_accelerated_steps():
    p = zoo.affine_scalar()
    r = solve_problem(p, "anderson", lam=0.0)
    assert r.all_converged and bool((r.iterations <= 4).all())
    torch.testing.assert_close(r.z, p.z_star, rtol=0, atol=1e-13)


def nan_once(f, bad: int, call: int):
    """``f`` whose sample ``bad`` is NaN on call number ``call`` only (a proposal that left
    the map's domain once, e.g. an overshoot)."""
    calls = [0]

    def g(z):
        calls[0] += 1
        out = f(z)
        if calls[0] == call:
            mask = torch.zeros(z.shape[0], dtype=torch.bool)
            mask[bad] = True
            out = torch.where(mask.view(-1, *[1] * (out.dim() - 1)), torch.nan, out)
        return out

    return g


@pytest.mark.parametrize("call", [3, 4, 6, 9])
@pytest.mark.parametrize("method", ["anderson", "broyden", "newton"])
def test_nonfinite_proposal_is_rejected_and_the_sample_recovers(method: str, call: int):
    """Anderson and Broyden are documented to reject a non-finite accelerated proposal,
    clear that sample's history and take a plain step from the last accepted iterate (Newton
    backtracks). A single NaN after the first plain step must therefore cost a few
    evaluations, not the sample: on this map plain iteration diverges, so a sample that
    silently fell back to plain steps for good would not converge either."""
    p = zoo.by_name("linear_plain_diverges")
    r = solve(nan_once(p.f, 0, call), p.z0, method, tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    assert r.status.tolist() == [Status.CONVERGED] * p.batch, r.summary()
    torch.testing.assert_close(r.z, p.z_star, rtol=0, atol=p.z_atol)


@pytest.mark.parametrize("method", METHODS)
def test_returned_z_does_not_alias_z0(method: str):
    """The result must own its memory: a caller that reuses its start buffer in place (a
    warm-start cache) must not change a result it already holds, and vice versa."""
    p = zoo.tanh_at_fixed_point()
    cases = [
        (p.f, p.z0.clone(), {"max_iter": 1}),  # no step at all
        (p.subset([0]).f, p.z0[:1].clone(), {}),  # converged at z0
    ]
    for f, z0, kwargs in cases:
        before = z0.clone()
        r = solve(f, z0, method, **kwargs)
        assert torch.equal(r.z, before)
        z0.add_(1.0)
        assert torch.equal(r.z, before), "result.z changed when the caller modified z0"


def test_converged_samples_are_not_updated_by_later_steps():
    """The DEQ references keep iterating finished samples until the whole batch is done,
    which drives their Anderson differences to zero and can push them back out."""
    p = zoo.mixed_tanh()
    r = solve_problem(p, "anderson", record_iterates=True)
    for b in range(p.batch):
        k = int(r.iterations[b])
        assert bool((r.iterates[k - 1 :, b] == r.iterates[k - 1, b]).all())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["mixed_tanh", "tanh_g=0.8", "pressure_network"])
def test_no_evaluation_once_every_sample_stopped_on_any_device(name: str, method: str, monkeypatch):
    """Where reading a tensor on the host is not free (an accelerator) the loop skips the
    checks that only save per-sample selects, but not "is any sample still running?": f must
    not run on the whole batch after the last sample stopped. The accelerator's policy is
    emulated on the CPU."""
    p = zoo.by_name(name)
    budget = {"tol": p.tol, "stop": p.stop, "max_iter": p.max_iter}
    f = Counted(p.f)
    cpu = solve(f, p.z0, method, **budget)
    monkeypatch.setattr(solver_loop, "_host_checks_are_free", lambda device: False)
    g = Counted(p.f)
    acc = solve(g, p.z0, method, **budget)
    assert g.calls == f.calls
    if method in ONE_EVAL_PER_STEP:
        assert g.calls == int(acc.iterations.max())
    assert torch.equal(acc.iterations, cpu.iterations) and torch.equal(acc.z, cpu.z)


def test_only_the_loop_sets_the_active_mask(monkeypatch):
    """The loop owns which samples are running: a solver restricts what one evaluation
    costs through the evaluator (``charge=``), never by rewriting the loop's mask."""
    origins = set()
    plain_setattr = Evaluator.__setattr__

    def spy(self, name, value):
        if "active" in name:
            frame = sys._getframe(1)
            while frame.f_globals["__name__"] == Evaluator.__module__:  # the evaluator's own
                frame = frame.f_back
            origins.add(frame.f_globals["__name__"])
        plain_setattr(self, name, value)

    monkeypatch.setattr(Evaluator, "__setattr__", spy)
    # Newton's inner iterations and line search end at different times per sample here.
    # Graphed runs the loop's steps in chunks (through the loop's own run_steps).
    graphed = (Graphed("anderson", steps=3), Graphed("picard", steps=2))
    for name in ("mixed_tanh", "linear_plain_diverges", "pressure_network", "nan_map"):
        for method in (*METHODS, *graphed):
            solve_problem(zoo.by_name(name), method)
    assert origins == {"deqkit.solvers._loop"}


@pytest.mark.parametrize(
    "solver", [Picard(), Anderson(), Broyden(), NewtonKrylov()], ids=lambda s: s.name
)
def test_solver_step_with_no_active_sample(solver: Solver):
    """The loop stops before a step with every sample inactive, but a solver is public API
    (users write their own loops around ``step``): it must then leave every sample in place
    and charge nothing."""
    p = zoo.tanh_contraction()
    ev = Evaluator(p.f, p.z0, D, "rel", 50)
    pt = ev.point(p.z0.reshape(p.batch, -1))
    none = torch.zeros(p.batch, dtype=torch.bool)
    ev.set_active(none)
    state = solver.init(ev, pt, none)
    q, _, _ = solver.step(ev, pt, none, state)
    assert torch.equal(q.z, pt.z)
    assert ev.nfev.tolist() == [1] * p.batch


# --------------------------------------------------------------------------- properties


@st.composite
def contractions(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    batch = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    norm = draw(st.floats(0.0, 0.8))
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=gen, dtype=D)
    W = norm * W / torch.linalg.matrix_norm(W, ord=2)
    inj = torch.randn(batch, n, generator=gen, dtype=D)
    z0 = torch.randn(batch, *shape, generator=gen, dtype=D)

    def f(z):
        return torch.tanh(z.reshape(batch, n) @ W.T + inj).reshape(z.shape)

    return f, z0


@settings(max_examples=25, deadline=None)
@given(problem=contractions())
def test_random_contractions_converge_for_every_method(problem):
    f, z0 = problem
    for method in METHODS:
        r = solve(f, z0, method, tol=1e-9, stop="abs", max_iter=300)
        assert r.all_converged, (method, r.summary())
        assert_honest(r, f, z0, tol=1e-9, stop="abs", max_iter=300)
        assert bool((residual_of(f, r.z, "abs") <= 1e-9).all())


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_zoo_tanh_on_cuda(method: str):
    p = zoo.mixed_tanh()
    cpu = solve_problem(p, method)
    q = p.to("cuda")
    r = solve_problem(q, method, record_trace=True, record_iterates=True)
    assert r.z.device == q.z0.device and r.z.dtype == D
    for t in (r.converged, r.iterations, r.residual, r.status, r.trace, r.iterates):
        assert t.device == q.z0.device
    assert r.all_converged
    torch.testing.assert_close(r.z.cpu(), cpu.z, rtol=0, atol=1e-9)
    torch.testing.assert_close(r.z.cpu(), p.z_star, rtol=0, atol=p.z_atol)


# --------------------------------------------------------------------------- fast paths (issue 12)


def _solve_both_ways(p: Problem, solver: Solver, monkeypatch, **budget):
    """Solve on the CPU's fast paths, then with the accelerator's policy emulated (every
    per-sample select and mask, no host reads but "any sample running?")."""
    kwargs = {"tol": p.tol, "stop": p.stop, "max_iter": p.max_iter, **budget}
    fast = solve(p.f, p.z0, solver, record_iterates=True, record_trace=True, **kwargs)
    with monkeypatch.context() as mp:
        mp.setattr(solver_loop, "_host_checks_are_free", lambda device: False)
        general = solve(p.f, p.z0, solver, record_iterates=True, record_trace=True, **kwargs)
    return fast, general


@pytest.mark.parametrize(
    "solver",
    [
        Anderson(m=1),
        Anderson(m=3),
        Anderson(),
        Anderson(beta=0.7),
        Anderson(max_weight=2.0),  # weights rejected: the uniform path's bound is not met
        Anderson(safeguard=1.05),  # proposals rejected: the uniform path is left
        Picard(),
    ],
    ids=lambda s: (
        f"{s.name}-m{getattr(s, 'm', 0)}-b{s.beta}-w{getattr(s, 'max_weight', 0)}"
        f"-s{getattr(s, 'safeguard', 0)}"
    ),
)
@pytest.mark.parametrize("name", ["mixed_tanh", "tanh_g=0.8", "expansive_tanh", "non_normal"])
def test_fast_paths_give_the_general_paths_iterates(name: str, solver: Solver, monkeypatch):
    """The uniform Anderson path (buffers written in place, one host read for all weights,
    the residual written into the step's buffer) and the loop's selects-free paths (every
    sample running, or some stopped) give bit for bit the iterates, counts, statuses and
    residuals of the general per-sample path, in float64."""
    p = zoo.by_name(name)
    fast, general = _solve_both_ways(p, solver, monkeypatch)
    assert torch.equal(fast.iterates, general.iterates)
    for field in ("z", "iterations", "status", "residual", "converged"):
        assert torch.equal(getattr(fast, field), getattr(general, field)), field
    assert torch.equal(fast.trace.isnan(), general.trace.isnan())


@pytest.mark.parametrize("method", ["anderson", "picard"])
def test_fast_paths_end_the_budget_exactly_while_some_samples_stopped(method: str, monkeypatch):
    """Samples stop at different times and the rest run out of budget: the loop's path for
    "some samples stopped" skips the budget check only while no sample can have used its
    budget (``Evaluator.max_count``)."""
    p = zoo.by_name("mixed_tanh")  # anderson stops its samples after 19-32, picard 30-126
    for max_iter in (2, 3, 17, 25 if method == "anderson" else 50):
        fast, general = _solve_both_ways(p, method, monkeypatch, max_iter=max_iter)
        assert torch.equal(fast.iterations, general.iterations)
        assert torch.equal(fast.status, general.status) and torch.equal(fast.z, general.z)
        assert int(fast.iterations.max()) == max_iter
    statuses = set(fast.status.tolist())
    assert statuses == {Status.CONVERGED, Status.MAX_ITER}, statuses


@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_anderson_recording_autograd_gives_the_in_place_iterates(beta: float):
    """Under autograd (the unrolled backward) Anderson's uniform path writes nothing in
    place; its iterates equal the in-place path's and gradients flow through them."""
    p = zoo.tanh_contraction(g=0.9, n=8, batch=3)
    W = torch.nn.Parameter(torch.eye(8, dtype=D))

    def f(z):
        return p.f(z @ W.T)

    solver = Anderson(m=3, beta=beta)
    ref = solve(f, p.z0, solver, tol=1e-300, stop="abs", max_iter=12)
    with torch.enable_grad():
        r = solver_loop.run(f, p.z0, solver, 1e-300, "abs", 12)
    torch.testing.assert_close(r.z, ref.z, rtol=0, atol=1e-12)
    assert torch.equal(r.iterations, ref.iterations)
    (grad,) = torch.autograd.grad(r.z.sum(), W)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_evaluator_writes_the_residual_into_a_given_buffer():
    """``Evaluator.point(z, g_out=buf)`` gives the same point, with ``g`` written into
    ``buf`` (no new tensor); ``max_count`` bounds every sample's count on the host."""
    p = zoo.tanh_contraction()
    z = p.z0.reshape(p.batch, -1)
    ev = Evaluator(p.f, p.z0, D, "rel", 50)
    plain = ev.point(z)
    buf = torch.full_like(z, float("nan"))
    into = ev.point(z, g_out=buf)
    assert into.g is buf
    for a, b in zip(plain, into, strict=True):
        assert torch.equal(a, b)
    ev.set_active(torch.arange(p.batch) % 2 == 0)
    ev.point(z)
    assert ev.max_count == 3 and ev.max_count >= int(ev.nfev.max())
