"""Anderson(native=True): the C++ bookkeeping agrees with the eager step on the whole zoo,
takes the rejected-step and NaN paths as the eager step does, and is really the path taken.
Skipped where the extension cannot be built (no C++ compiler or ninja); the first test to
run builds it (about 40 s, then cached)."""

from __future__ import annotations

import pytest
import torch

from deqkit import DEQ, solve
from deqkit import testing as zoo
from deqkit.solvers import Anderson, _native
from deqkit.solvers._anderson import Anderson as AndersonImpl
from deqkit.testing import benchmark_problems, build_tanh


def poisoned(f, bad: int, after: int):
    """``f`` whose sample ``bad`` turns NaN from call ``after + 1`` on."""
    calls = [0]

    def g(z):
        calls[0] += 1
        out = f(z)
        if calls[0] > after:
            out = out.clone()
            out[bad] = torch.nan
        return out

    return g


@pytest.fixture(scope="module", autouse=True)
def extension():
    try:
        return _native.load()
    except RuntimeError as err:
        pytest.skip(f"the native extension does not build here: {err}")


def both(p, dtype=torch.float64, **options):
    f, z0 = p.f, p.z0.to(dtype)
    kw = dict(tol=p.tol, stop=p.stop, max_iter=p.max_iter, record_trace=True)
    return solve(f, z0, Anderson(**options), **kw), solve(
        f, z0, Anderson(native=True, **options), **kw
    )


@pytest.mark.parametrize("p", zoo.all_problems(), ids=lambda p: p.name)
def test_native_agrees_with_the_eager_step_on_the_zoo(p):
    eager, native = both(p)
    assert torch.equal(native.status, eager.status)
    assert torch.equal(native.iterations, eager.iterations)
    ok = eager.converged
    torch.testing.assert_close(native.z[ok], eager.z[ok], rtol=0, atol=1e-9)


@pytest.mark.parametrize("beta", [1.0, 0.7])
@pytest.mark.parametrize("m", [1, 3, 5])
def test_native_agrees_for_every_history_and_mixing(m, beta):
    p = zoo.by_name("mixed_tanh")
    eager, native = both(p, m=m, beta=beta)
    assert torch.equal(native.iterations, eager.iterations)
    assert torch.equal(native.status, eager.status)
    torch.testing.assert_close(native.z, eager.z, rtol=0, atol=1e-9)
    torch.testing.assert_close(native.trace, eager.trace, rtol=1e-6, atol=1e-12, equal_nan=True)


def test_native_float32_converges_like_the_eager_step():
    """float32 state: sums in double round differently, so counts may differ by a step."""
    for spec in benchmark_problems(quick=True):
        p = build_tanh(spec)
        eager = solve(p.f, p.z0, Anderson(), tol=1e-5, max_iter=300)
        native = solve(p.f, p.z0, Anderson(native=True), tol=1e-5, max_iter=300)
        assert native.z.dtype == torch.float32
        assert bool(native.converged.all()) and bool(eager.converged.all())
        assert (native.iterations - eager.iterations).abs().max() <= 2


def test_the_native_step_is_the_one_taken(monkeypatch):
    """With the eager uniform step disabled, a native solve still runs from start to end:
    it never needed it (and the eager solve, which does, fails)."""

    def refuse(*args):
        raise AssertionError("the eager uniform step ran")

    monkeypatch.setattr(AndersonImpl, "_step_uniform", refuse)
    p = zoo.by_name("tanh_g=0.8")
    r = solve(p.f, p.z0, Anderson(native=True), tol=1e-10, max_iter=100)
    assert bool(r.converged.all()) and int(r.iterations.max()) > 3
    with pytest.raises(AssertionError, match="eager uniform step ran"):
        solve(p.f, p.z0, Anderson(), tol=1e-10, max_iter=100)


def test_a_rejected_step_and_a_nan_sample_as_in_the_eager_step():
    """A sample turning NaN mid-solve: the safeguard rejects, the native step hands over to
    the per-sample path at the same step as the eager one."""
    p = zoo.mixed_tanh()
    f = poisoned(p.f, 2, after=4)
    g = poisoned(p.f, 2, after=4)
    kw = dict(tol=p.tol, stop=p.stop, max_iter=200)
    eager = solve(f, p.z0, Anderson(), **kw)
    native = solve(g, p.z0, Anderson(native=True), **kw)
    assert torch.equal(native.status, eager.status)
    assert torch.equal(native.iterations, eager.iterations)
    torch.testing.assert_close(native.z, eager.z, rtol=0, atol=1e-9)


def test_the_unrolled_gradient_runs_the_eager_step():
    torch.manual_seed(0)
    cell = torch.nn.Linear(6, 6).double()
    with torch.no_grad():
        cell.weight.mul_(0.3)
    x = torch.randn(4, 6, dtype=torch.float64)
    grads = []
    for native in (False, True):
        deq = DEQ(lambda z, x: torch.tanh(cell(z) + x), solver=Anderson(native=native),
                  backward="unrolled", tol=1e-8, max_iter=30)  # fmt: skip
        z, _ = deq(x, torch.zeros_like(x))
        (grad,) = torch.autograd.grad(z.square().sum(), cell.weight)
        grads.append(grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)


def test_bad_native_arguments_are_named(monkeypatch):
    with pytest.raises(TypeError, match="native must be True or False"):
        Anderson(native=1)
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    # A build that fails is reported once, with what it needs, and not retried.
    monkeypatch.setattr(_native, "_MODULE", None)
    monkeypatch.setattr(_native, "_ERROR", "OSError: no compiler")
    with pytest.raises(RuntimeError, match=r"needs its C\+\+ extension.*ninja.*native=False"):
        solve(lambda z: z * 0.5, z0, Anderson(native=True))


def test_the_solver_benchmark_runs_the_native_anderson():
    from deqkit import bench

    config = bench.BenchConfig(
        problems=bench.default_problems(quick=True)[:1],
        repeats=1,
        include_torchdeq=False,
        ours=("anderson", "picard"),
        native=True,
    )
    rows = bench.run_solver_benchmark(config)
    assert {r.solver for r in rows} == {"anderson", "picard"}
    assert config.to_dict()["native"] is True
    with pytest.raises(ValueError, match="Invalid native"):
        bench.BenchConfig(native="yes")
    with pytest.raises(ValueError, match="Invalid native: True with device 'cuda'"):
        bench.BenchConfig(native=True, device="cuda")
