"""Anderson(native=True): the C++ loop agrees with the eager solve on the whole zoo (statuses,
per-sample counts, iterates to rounding), takes the rejected-step, reset and NaN paths as the
eager solve does, and is really the path taken.
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
    kw = dict(tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    return solve(f, z0, Anderson(**options), **kw), solve(
        f, z0, Anderson(native=True, **options), **kw
    )


def assert_same(native, eager, atol=1e-9):
    assert torch.equal(native.status, eager.status)
    assert torch.equal(native.iterations, eager.iterations)
    torch.testing.assert_close(
        native.residual, eager.residual, rtol=1e-3, atol=1e-12, equal_nan=True
    )
    ok = eager.converged
    torch.testing.assert_close(native.z[ok], eager.z[ok], rtol=0, atol=atol)


@pytest.mark.parametrize("p", zoo.all_problems(), ids=lambda p: p.name)
def test_native_agrees_with_the_eager_solve_on_the_zoo(p):
    eager, native = both(p)
    assert_same(native, eager)


@pytest.mark.parametrize("beta", [1.0, 0.7])
@pytest.mark.parametrize("m", [1, 3, 5, 12])
def test_native_agrees_for_every_history_and_mixing(m, beta):
    p = zoo.by_name("mixed_tanh")
    eager, native = both(p, m=m, beta=beta)
    assert_same(native, eager)
    torch.testing.assert_close(native.z, eager.z, rtol=0, atol=1e-9)


RESETS = [  # (problem, options): each resets some sample's history 2 to 62 times
    *[(name, o) for name in ("non_normal", "expansive_tanh", "cyclic_shift", "nan_map")
      for o in (dict(safeguard=1.01), dict(max_weight=2.0))],
    ("pressure_network", dict(max_weight=2.0)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "options"), RESETS, ids=lambda v: str(v))
def test_rejections_and_resets_as_in_the_eager_solve(name, options):
    """A tight safeguard or weight bound rejects and resets often: the native loop keeps a
    rejected sample where it was, clears its history and steps plainly, as the eager one.
    (Where samples diverge or crawl for thousands of steps, rounding can change a count.)"""
    eager, native = both(zoo.by_name(name), **options)
    assert_same(native, eager, atol=1e-8)


BEST_NOT_LAST = [
    ("non_normal", 5),
    ("non_normal", 12),
    ("cyclic_shift", 20),
    ("pressure_network", 5),
]


@pytest.mark.parametrize(("name", "max_iter"), BEST_NOT_LAST)
def test_the_best_iterate_not_the_last_is_returned(name, max_iter):
    """Budgets where some samples end on a worse iterate than their best: the native loop
    hands back the same best iterate, and its residual, for every sample."""
    p = zoo.by_name(name)
    kw = dict(tol=p.tol, stop=p.stop, max_iter=max_iter)
    eager = solve(p.f, p.z0, Anderson(), record_trace=True, **kw)
    native = solve(p.f, p.z0, Anderson(native=True), **kw)
    assert bool((eager.residual < eager.trace[-1]).any())  # the case this test is about
    assert_same(native, eager)
    torch.testing.assert_close(native.z, eager.z, rtol=0, atol=1e-9)


def test_native_float32_converges_like_the_eager_solve():
    """float32 state: sums in another order round differently, so counts may differ by a
    step."""
    for spec in benchmark_problems(quick=True):
        p = build_tanh(spec)
        eager = solve(p.f, p.z0, Anderson(), tol=1e-5, max_iter=300)
        native = solve(p.f, p.z0, Anderson(native=True), tol=1e-5, max_iter=300)
        assert native.z.dtype == torch.float32
        assert bool(native.converged.all()) and bool(eager.converged.all())
        assert (native.iterations - eager.iterations).abs().max() <= 2


def residual_at(p, z):
    """The stopping criterion of ``p`` at ``z``, recomputed from ``f``."""
    fz = p.f(z)
    g = torch.linalg.vector_norm((fz - z).flatten(1), dim=1)
    if p.stop == "abs":
        return g
    eps = torch.finfo(z.dtype).tiny ** 0.5
    return g / (torch.linalg.vector_norm(fz.flatten(1), dim=1) + eps)


@pytest.mark.parametrize(("history", "dtype"), [("bfloat16", torch.bfloat16),
                                                ("float32", torch.float32)])  # fmt: skip
@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_a_narrow_history_stores_each_difference_rounded_once(history, dtype, beta):
    """history_dtype: the rings hold dG = g_1 - g_0 and D = dZ + beta dG computed in the
    state's precision and rounded once (to nearest even, as torch rounds; whether the
    compiler fuses a multiply-add moves the double value by an ulp, far below the rounding)."""
    ext = _native.load()
    gen = torch.Generator().manual_seed(0)
    B, n = 3, 37
    M = torch.randn(n, n, generator=gen, dtype=torch.float64) * 0.3
    x = torch.randn(B, n, generator=gen, dtype=torch.float64)

    def f(z):
        return torch.tanh(z @ M.T + x)

    z0 = torch.randn(B, n, generator=gen, dtype=torch.float64)
    fz0 = f(z0)
    g0 = fz0 - z0
    gnorm = torch.linalg.vector_norm(g0, dim=1)
    on, off = torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    loop = ext.start(z0, fz0, g0, gnorm, gnorm, on, off, 5, beta, 1e-8, 1e-300, 10.0, 1e6,
                     1e-14, False, 1e-150, 10, history)  # fmt: skip
    z1 = loop.proposal().clone()
    torch.testing.assert_close(z1, z0 + beta * g0, rtol=1e-14, atol=1e-15)  # FMA may round
    fz1 = f(z1)
    assert loop.advance(fz1) == B
    D, dG = loop.history()
    assert D.dtype == dG.dtype == dtype and D.shape == dG.shape == (B, 5, n)
    dg = (fz1 - z1) - g0
    assert torch.equal(dG[:, 0], dg.to(dtype))
    assert torch.equal(D[:, 0], ((z1 - z0) + beta * dg).to(dtype))
    assert not torch.equal(dG[:, 0].double(), dg)  # the rounding is real


@pytest.mark.parametrize("history", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", zoo.all_problems(), ids=lambda p: p.name)
def test_a_narrow_history_changes_proposals_never_residuals(p, history):
    """Whatever the history's dtype, a sample's reported residual is its returned point's,
    and 'converged' means it meets the tolerance there."""
    kw = dict(tol=p.tol, stop=p.stop, max_iter=p.max_iter)
    r = solve(p.f, p.z0, Anderson(native=True, history_dtype=history), **kw)
    ok = torch.isfinite(r.residual)
    assert bool(ok[r.converged].all())
    torch.testing.assert_close(r.residual[ok], residual_at(p, r.z)[ok], rtol=1e-9, atol=0)
    assert bool((r.residual[r.converged] <= p.tol).all())
    if history == torch.float32:  # under a float64 state: 7 fewer digits, the same solves
        full = solve(p.f, p.z0, Anderson(native=True), **kw)
        assert torch.equal(r.status, full.status)
        assert (r.iterations - full.iterations).abs().max() <= 2


def test_a_bfloat16_history_solves_the_benchmark_problems_in_as_many_evaluations():
    """float32 state, the solver benchmark's problems at width 256 (and 1024 at quick size):
    with an 8-bit history every sample converges, within 5% (+1) of the full history's
    evaluations."""
    specs = [s for s in benchmark_problems() if s.width == 256]
    for spec in [*specs, *benchmark_problems(quick=True)[4:]]:
        p = build_tanh(spec)
        full = solve(p.f, p.z0, Anderson(native=True), tol=1e-5, max_iter=300)
        narrow = solve(p.f, p.z0, Anderson(native=True, history_dtype=torch.bfloat16),
                       tol=1e-5, max_iter=300)  # fmt: skip
        assert bool(full.converged.all()) and bool(narrow.converged.all()), spec.name
        assert int(narrow.iterations.max()) <= 1.05 * int(full.iterations.max()) + 1, spec.name
        total, batch = int(full.iterations.sum()), p.z0.shape[0]
        assert int(narrow.iterations.sum()) <= 1.05 * total + batch, spec.name


def test_the_native_loop_is_the_one_taken(monkeypatch):
    """With the solver's step disabled, a native solve still runs from start to end: it
    never needed it (and the eager solve, which does, fails)."""

    def refuse(*args):
        raise AssertionError("the eager step ran")

    monkeypatch.setattr(AndersonImpl, "step", refuse)
    p = zoo.by_name("tanh_g=0.8")
    r = solve(p.f, p.z0, Anderson(native=True), tol=1e-10, max_iter=100)
    assert bool(r.converged.all()) and int(r.iterations.max()) > 3
    with pytest.raises(AssertionError, match="eager step ran"):
        solve(p.f, p.z0, Anderson(), tol=1e-10, max_iter=100)


def test_a_trace_or_on_step_runs_the_eager_steps():
    """What the native loop cannot record runs the eager steps: bit for bit the default."""
    p = zoo.by_name("mixed_tanh")
    kw = dict(tol=p.tol, stop=p.stop, max_iter=p.max_iter, record_trace=True)
    eager = solve(p.f, p.z0, Anderson(), **kw)
    native = solve(p.f, p.z0, Anderson(native=True), **kw)
    assert torch.equal(native.z, eager.z)
    torch.testing.assert_close(native.trace, eager.trace, rtol=0, atol=0, equal_nan=True)


def test_a_nan_sample_is_isolated_as_in_the_eager_solve():
    """A sample turning NaN mid-solve: the safeguard rejects the accelerated proposal, the
    plain step after it is NaN too and fails the sample; the others run on untouched."""
    p = zoo.mixed_tanh()
    kw = dict(tol=p.tol, stop=p.stop, max_iter=200)
    eager = solve(poisoned(p.f, 2, after=4), p.z0, Anderson(), **kw)
    native = solve(poisoned(p.f, 2, after=4), p.z0, Anderson(native=True), **kw)
    assert_same(native, eager)
    assert int(native.status[2]) == 2 and bool(native.converged[[0, 1, 3, 4, 5]].all())
    assert bool(torch.isfinite(native.z).all())


def test_budgets_stopping_and_inputs_as_in_the_eager_solve():
    torch.manual_seed(0)
    W = torch.randn(16, 16, dtype=torch.float64) * 0.3
    x = torch.randn(5, 16, dtype=torch.float64)

    def f(z):  # non-contiguous output, 3-D iterates
        flat = z.reshape(5, 16)
        return torch.tanh((W @ flat.T).T + x).reshape(5, 4, 4)

    z0 = torch.zeros(5, 4, 4, dtype=torch.float64)
    for max_iter in (1, 2, 3, 7, 40):
        for stop in ("abs", "rel"):
            kw = dict(tol=1e-9, stop=stop, max_iter=max_iter)
            eager = solve(f, z0, Anderson(), **kw)
            native = solve(f, z0, Anderson(native=True), **kw)
            assert_same(native, eager)
            assert native.z.shape == z0.shape and native.z.data_ptr() != z0.data_ptr()
    # bfloat16 iterates run a float32 state; f sees bfloat16
    seen = []

    def g(z):
        seen.append(z.dtype)
        return f(z.double()).to(z.dtype)

    zb = z0.to(torch.bfloat16)
    eager = solve(g, zb, Anderson(), tol=1e-2, max_iter=30)
    native = solve(g, zb, Anderson(native=True), tol=1e-2, max_iter=30)
    assert native.z.dtype == torch.bfloat16 and set(seen) == {torch.bfloat16}
    assert torch.equal(native.status, eager.status)


@pytest.mark.parametrize("backward", ["implicit", "phantom", "unrolled"])
def test_gradients_through_native_solves_equal_the_eager_ones(backward):
    """A DEQ with native Anderson gives the eager step's gradient: implicit (the forward and
    the adjoint solve native), phantom (the forward solve native) and unrolled (which runs
    the eager steps, autograd recording)."""
    torch.manual_seed(0)
    cell = torch.nn.Linear(6, 6).double()
    with torch.no_grad():
        cell.weight.mul_(0.3)
    x = torch.randn(4, 6, dtype=torch.float64)
    tol, atol = (1e-8, 1e-12) if backward == "unrolled" else (1e-10, 1e-9)
    grads = []
    for native in (False, True):
        deq = DEQ(lambda z, x: torch.tanh(cell(z) + x), solver=Anderson(native=native),
                  backward=backward, tol=tol, max_iter=60)  # fmt: skip
        z, info = deq(x, torch.zeros_like(x))
        (grad,) = torch.autograd.grad(z.square().sum(), cell.weight)
        assert info.forward.all_converged
        if backward == "implicit":
            assert info.backward is not None and info.backward.all_converged
        grads.append(grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=atol)


def test_bad_native_arguments_are_named(monkeypatch):
    with pytest.raises(TypeError, match="native must be True or False"):
        Anderson(native=1)
    ext = _native.load()
    z = torch.zeros(2, 3, dtype=torch.float64)
    n = torch.zeros(2, dtype=torch.float64)
    on, off = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    args = (5, 1.0, 1e-8, 1e-300, 10.0, 1e6, 1e-5, True, 1e-150, 10, "state")
    loop = ext.start(z, z, z + 1, n + 1, n + 1, on, off, *args)
    with pytest.raises(RuntimeError, match=r"f\(z\) has shape \[2, 4\], expected \[2, 3\]"):
        loop.advance(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"f\(z\) has dtype Float, expected Double"):
        loop.advance(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="gnorm has shape"):
        ext.start(z, z, z, n[:1], n, on, off, *args)
    with pytest.raises(RuntimeError, match="history must be 'state', 'bfloat16' or"):
        ext.start(z.float(), z.float(), z.float(), n.float(), n.float(), on, off,
                  *args[:-1], "float32")  # fmt: skip
    with pytest.raises(ValueError, match="history_dtype must be None, torch.bfloat16"):
        Anderson(native=True, history_dtype=torch.int8)
    with pytest.raises(ValueError, match="history_dtype=torch.bfloat16 needs native=True"):
        Anderson(history_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="history_dtype torch.float64 is wider than the state"):
        solve(lambda z: z * 0.5, z.float(), Anderson(native=True, history_dtype=torch.float64))
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
    with pytest.raises(ValueError, match="Invalid history: 'bfloat16' without native"):
        bench.BenchConfig(history="bfloat16")
    with pytest.raises(ValueError, match="history"):
        bench.BenchConfig(native=True, history="float16")
    narrow = bench.BenchConfig(
        problems=bench.default_problems(quick=True)[:1], repeats=1, include_torchdeq=False,
        ours=("anderson",), native=True, history="bfloat16",
    )  # fmt: skip
    (row,) = bench.run_solver_benchmark(narrow)
    assert row.solver == "anderson" and narrow.to_dict()["history"] == "bfloat16"


def test_history_dtype_by_name_for_configs():
    """A TOML or JSON config names the history's dtype: "bfloat16", "float32" or "float64"
    mean the torch dtypes, so a DEQ's ``solver_options`` can ask for the narrow history."""
    from deqkit.train import TrainConfig

    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32),
                        ("float64", torch.float64)):  # fmt: skip
        assert Anderson(native=True, history_dtype=name).history_dtype is dtype
    assert Anderson(native=True, history_dtype="bfloat16") == Anderson(
        native=True, history_dtype=torch.bfloat16
    )
    with pytest.raises(ValueError, match="history_dtype must be None, torch.bfloat16.*'half'"):
        Anderson(native=True, history_dtype="half")
    cfg = TrainConfig.from_dict(
        {"deq": {"solver_options": {"native": True, "history_dtype": "bfloat16"}}}
    )
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the name survives a round trip
    options = cfg.deq["solver_options"]
    deq = DEQ(lambda z, x: torch.tanh(0.5 * z + x), solver_options=options, tol=1e-6)
    x = torch.randn(3, 8)
    z, info = deq(x, torch.zeros(3, 8))
    assert info.forward.all_converged
    assert deq.settings.solver_obj == Anderson(native=True, history_dtype=torch.bfloat16)


@pytest.mark.parametrize("history", [None, torch.bfloat16])
def test_threads_split_the_batch_without_changing_a_sample(history):
    """The step runs samples in parallel (``at::parallel_for`` over the batch, scratch rows
    per thread): with two threads every sample's iterate, count and status are bit for bit
    those of one thread, on a batch whose samples stop at different times."""
    spec = next(s for s in benchmark_problems(quick=True) if s.name == "mixed-0.5-0.99")
    p = build_tanh(spec)
    solver = Anderson(native=True, history_dtype=history)
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(solve(p.f, p.z0, solver, tol=1e-6, max_iter=300))
    finally:
        torch.set_num_threads(before)
    one, two = out
    assert len(set(one.iterations.tolist())) > 1  # samples stopped at different steps
    for field in ("z", "iterations", "status", "residual"):
        assert torch.equal(getattr(one, field), getattr(two, field)), field
