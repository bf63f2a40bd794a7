"""deqkit.analysis: spectra, trajectories, limit cycles, compute curves, path independence."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import deqkit
from deqkit import analysis as A

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batched_linear(M: torch.Tensor, c: torch.Tensor):
    """Per-sample affine map z_b -> M_b z_b + c_b."""
    return lambda z: torch.einsum("bij,bj->bi", M, z) + c


def embed(block: list[list[float]], n: int = 4) -> torch.Tensor:
    """A 2x2 block in the corner of an n x n matrix whose other eigenvalues are small."""
    M = torch.diag(torch.linspace(0.1, 0.2, n, dtype=D))
    M[:2, :2] = torch.tensor(block, dtype=D)
    return M


def rotation(angle: float, scale: float = 1.0) -> list[list[float]]:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return [[c, -s], [s, c]]


# ---------------------------------------------------------------- spectral radius and norm


def known_maps() -> torch.Tensor:
    return torch.stack(
        [
            embed([[0.5, 2.0], [0.0, 0.3]]),  # non-normal: radius 0.5, norm ~2.08
            embed(rotation(0.7, 0.9)),  # complex pair 0.9 e^{+-0.7i}
            embed([[-0.9, 0.3], [0.0, 0.5]]),  # eigenvalue -0.9 dominant
            embed([[0.9, 0.0], [0.0, -0.9]]),  # +-0.9: plain power iteration oscillates
            torch.randn(4, 4, dtype=D, generator=gen(1)) / 2,
        ]
    )


def test_spectral_radius_and_norm_of_linear_maps_with_known_spectra():
    M = known_maps()
    f = batched_linear(M, torch.randn(5, 4, dtype=D, generator=gen(2)))
    z = torch.randn(5, 4, dtype=D, generator=gen(3))
    rho = A.spectral_radius(f, z, generator=gen(4))
    norm = A.spectral_norm(f, z, generator=gen(4))
    true_rho = torch.linalg.eigvals(M).abs().amax(dim=1)
    true_norm = torch.linalg.matrix_norm(M, 2)
    torch.testing.assert_close(rho.value, true_rho, atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.value, true_norm, atol=1e-3, rtol=0)
    assert rho.converged.all() and norm.converged.all()
    assert rho.value[0] == pytest.approx(0.5, abs=1e-3) and norm.value[0] > 2.0  # the gap
    assert abs(rho.eigenvalue[1].imag) == pytest.approx(0.9 * math.sin(0.7), abs=1e-3)
    assert rho.eigenvalue[2].real == pytest.approx(-0.9, abs=1e-3)
    assert norm.eigenvalue is None
    assert rho.value.dtype == D and rho.iterations.dtype == torch.long


def tanh_layer(n: int, B: int, gain: float, dtype=D, seed: int = 0):
    g = gen(seed)
    W = torch.randn(B, n, n, dtype=D, generator=g)
    W = (W * gain / torch.linalg.matrix_norm(W, 2)[:, None, None]).to(dtype)
    u = torch.randn(B, n, dtype=D, generator=g).to(dtype)
    z = torch.randn(B, n, dtype=D, generator=g).to(dtype)

    def f(z):
        return torch.tanh(torch.einsum("bij,bj->bi", W, z) + u)

    jac = torch.func.vmap(torch.func.jacrev(lambda zb, Wb, ub: torch.tanh(Wb @ zb + ub)))
    return f, z, jac(z, W, u)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spectral_estimates_of_a_tanh_layer_match_the_dense_jacobian(dtype):
    f, z, J = tanh_layer(40, 6, gain=1.5, dtype=dtype)
    tol, rtol = (1e-9, 1e-6) if dtype == torch.float64 else (1e-4, 1e-3)
    rho = A.spectral_radius(f, z, tol=tol, generator=gen(5))
    norm = A.spectral_norm(f, z, tol=tol, generator=gen(5))
    J = J.double()
    torch.testing.assert_close(
        rho.value.double(), torch.linalg.eigvals(J).abs().amax(1), rtol=rtol, atol=0
    )
    torch.testing.assert_close(
        norm.value.double(), torch.linalg.matrix_norm(J, 2), rtol=rtol, atol=0
    )
    assert rho.value.dtype == dtype and rho.converged.all() and norm.converged.all()


def test_spectral_radius_restarts_when_the_krylov_space_is_small():
    n, B = 30, 3
    Q = torch.linalg.qr(torch.randn(B, n, n, dtype=D, generator=gen(6))).Q
    lam = torch.linspace(-0.5, 0.5, n, dtype=D).repeat(B, 1)
    lam[:, -1] = torch.tensor([0.95, -0.95, 0.8], dtype=D)
    M = Q @ torch.diag_embed(lam) @ Q.mT
    f = batched_linear(M, torch.zeros(B, n, dtype=D))
    est = A.spectral_radius(f, torch.zeros(B, n, dtype=D), krylov_dim=4, restarts=30, tol=1e-8)
    torch.testing.assert_close(est.value, lam[:, -1].abs(), atol=1e-6, rtol=0)
    assert est.converged.all()
    assert (est.iterations > 4).all() and (est.iterations % 4 == 0).all()
    few = A.spectral_radius(f, torch.zeros(B, n, dtype=D), krylov_dim=2, restarts=0, tol=1e-12)
    assert not few.converged.any() and (few.iterations == 2).all()


def test_spectral_estimates_of_tuple_states():
    M = known_maps()[:2]

    def f(state):
        a, b = state
        z = torch.cat([a, b.flatten(1)], dim=1)
        out = torch.einsum("bij,bj->bi", M, z)
        return out[:, :1], out[:, 1:].reshape(-1, 3, 1)

    z = (torch.ones(2, 1, dtype=D), torch.ones(2, 3, 1, dtype=D))
    rho = A.spectral_radius(f, z, generator=gen(0))
    torch.testing.assert_close(rho.value, torch.linalg.eigvals(M).abs().amax(1), atol=1e-6, rtol=0)


def test_spectral_estimate_of_a_zero_jacobian_is_zero_and_converged():
    f = lambda z: torch.zeros_like(z) + 1.0  # noqa: E731
    est = A.spectral_radius(f, torch.randn(3, 5, dtype=D, generator=gen(0)))
    assert (est.value == 0).all() and est.converged.all()


@pytest.mark.parametrize("fn", [A.spectral_radius, A.spectral_norm])
def test_a_sample_with_a_nonfinite_jacobian_does_not_affect_the_others(fn):
    z = torch.tensor([[1.0, 4.0], [-1.0, 0.5]], dtype=D)
    est = fn(lambda z: 0.5 * torch.sqrt(z), z)  # d/dz = 0.25 / sqrt(z): NaN for z < 0
    assert est.value[0] == pytest.approx(0.25) and est.converged.tolist() == [True, False]
    assert math.isnan(est.value[1])


@pytest.mark.parametrize("fn", [A.spectral_radius, A.spectral_norm])
def test_spectral_bad_input(fn):
    f, z = (lambda z: 0.5 * z), torch.ones(2, 3)
    for kw, name in (({"krylov_dim": 0}, "krylov_dim"), ({"restarts": -1}, "restarts")):
        with pytest.raises(ValueError, match=name):
            fn(f, z, **kw)
    with pytest.raises(ValueError, match="tol"):
        fn(f, z, tol=0.0)
    with pytest.raises(TypeError, match="f must be callable"):
        fn(3, z)
    with pytest.raises(ValueError, match="shaped like"):
        fn(lambda z: z[:, :2], z)


def test_jacobian_frobenius_is_the_regulariser_estimator():
    assert A.jacobian_frobenius is deqkit.nn.jacobian_frobenius
    M = known_maps()
    f = batched_linear(M, torch.zeros(5, 4, dtype=D))
    est = A.jacobian_frobenius(f, torch.zeros(5, 4, dtype=D), 4000, generator=gen(0))
    torch.testing.assert_close(est, M.pow(2).sum((1, 2)) / 4, rtol=0.1, atol=0)


# ---------------------------------------------------------------- trajectory, limit cycles


def test_trajectory_rows_are_the_solver_iterates_with_their_costs_and_residuals():
    f, _, _ = tanh_layer(6, 4, gain=0.9)
    z0 = torch.zeros(4, 6, dtype=D)
    full = A.trajectory(f, z0, "anderson", max_iter=30, tol=1e-9)
    ref = deqkit.solve(f, z0, "anderson", max_iter=30, tol=1e-9, record_iterates=True)
    assert torch.equal(full.iterates, ref.iterates)
    T = full.iterates.shape[0]
    assert torch.equal(full.steps, torch.arange(T))
    assert torch.equal(full.evaluations, torch.minimum(full.steps[:, None] + 1, ref.iterations))
    # The residual of each row, recomputed from scratch under the relative criterion.
    fz = torch.stack([f(z) for z in full.iterates])
    eps = torch.finfo(D).tiny ** 0.5
    expected = (fz - full.iterates).norm(dim=2) / (fz.norm(dim=2) + eps)
    torch.testing.assert_close(full.residual, expected, rtol=1e-6, atol=1e-15)
    assert full.distance()[-1].max() < 1e-6
    every = A.trajectory(f, z0, "anderson", max_iter=30, tol=1e-9, every=4)
    assert every.steps.tolist() == sorted({*range(0, T, 4), T - 1})
    assert torch.equal(every.iterates, full.iterates[every.steps])
    assert len(every.readout(lambda z: z.sum(1))) == every.steps.numel()


def test_trajectory_of_picard_approaches_the_fixed_point_and_stopped_samples_stay():
    f, _, _ = tanh_layer(5, 3, gain=0.5)
    traj = A.trajectory(f, torch.zeros(3, 5, dtype=D), max_iter=60, tol=1e-10)
    dist = traj.distance()
    assert (dist[1:] <= dist[:-1] + 1e-15).all() and dist[-1].max() < 1e-9
    b = int(traj.result.iterations.argmin())
    stop = int(traj.result.iterations[b]) - 1
    assert stop < traj.iterates.shape[0] - 1  # sample b stopped before the others
    assert (traj.iterates[stop:, b] == traj.iterates[stop, b]).all()
    assert torch.isnan(traj.result.trace[stop + 1 :, b]).all()
    assert (traj.residual[stop:, b] == traj.residual[stop, b]).all()


def test_trajectory_without_a_per_step_cost_reports_no_evaluations():
    f, _, _ = tanh_layer(5, 2, gain=0.5)
    traj = A.trajectory(f, torch.zeros(2, 5, dtype=D), "newton", max_iter=20, tol=1e-10)
    assert traj.evaluations is None and traj.iterates.shape[1:] == (2, 5)


def test_trajectory_of_tuple_states_keeps_the_structure():
    def f(state):
        a, b = state
        return 0.5 * a + 1.0, 0.25 * b - a.sum(1, keepdim=True)[..., None]

    z0 = (torch.zeros(3, 2, dtype=D), torch.zeros(3, 1, 4, dtype=D))
    traj = A.trajectory(f, z0, max_iter=40, tol=1e-12, every=5)
    a, b = traj.iterates
    assert a.shape[1:] == (3, 2) and b.shape[1:] == (3, 1, 4) and a.shape[0] == b.shape[0]
    torch.testing.assert_close(a[-1], torch.full((3, 2), 2.0, dtype=D), atol=1e-9, rtol=0)
    assert traj.distance().shape == (a.shape[0], 3)
    outs = traj.readout(lambda s: s[0].sum(1) + s[1].sum((1, 2)))
    assert outs[-1].shape == (3,)


def test_trajectory_bad_input():
    with pytest.raises(ValueError, match="every"):
        A.trajectory(lambda z: z / 2, torch.ones(2, 3), every=0)
    with pytest.raises(TypeError, match="unknown option"):
        A.trajectory(lambda z: z / 2, torch.ones(2, 3), mm=3)


def cycle_maps():
    M = torch.stack(
        [
            -torch.eye(2, dtype=D),  # z -> c - z: alternates between z0 and c - z0
            torch.tensor(rotation(2 * math.pi / 3), dtype=D),  # a 3-cycle
            0.5 * torch.eye(2, dtype=D),  # a fixed point
            torch.tensor(rotation(1.0), dtype=D),  # quasi-periodic: no period
        ]
    )
    c = torch.tensor([[1.0, 0.5], [0.0, 0.0], [1.0, -1.0], [0.0, 0.0]], dtype=D)
    return batched_linear(M, c)


def test_limit_cycle_reports_2_and_3_cycles_a_fixed_point_and_no_period():
    z0 = torch.tensor([[0.3, 0.1], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=D)
    traj = A.trajectory(cycle_maps(), z0, "picard", max_iter=60, tol=1e-12)
    cyc = A.limit_cycle(traj)
    assert cyc.period.tolist() == [2, 3, 1, 0]
    assert cyc.cycling.tolist() == [True, True, False, False]
    assert cyc.amplitude[0] > 0.5 and cyc.amplitude[2] < 1e-9 and math.isnan(cyc.amplitude[3])
    assert cyc.distance.shape == (8, 4)
    assert A.limit_cycle(traj.iterates, max_period=1).period.tolist() == [0, 0, 1, 0]


def test_limit_cycle_needs_enough_rows_and_checks_its_arguments():
    iterates = torch.tensor([[1.0], [2.0], [1.0], [2.0], [1.0]])[:, None, :]  # [T=5, B=1, 1]
    assert A.limit_cycle(iterates, repeats=1).period.tolist() == [2]
    assert A.limit_cycle(iterates, repeats=2).period.tolist() == [0]  # 2-cycle needs T >= 6
    with pytest.raises(ValueError, match="max_period"):
        A.limit_cycle(iterates, max_period=0)
    with pytest.raises(ValueError, match="repeats"):
        A.limit_cycle(iterates, repeats=0)
    with pytest.raises(ValueError, match="tol"):
        A.limit_cycle(iterates, tol=-1.0)
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        A.limit_cycle(torch.ones(5))
    with pytest.raises(TypeError, match="iterates"):
        A.limit_cycle([1.0, 2.0])


# ---------------------------------------------------------------- path independence


def test_path_independence_of_a_contraction_is_one():
    f, _, _ = tanh_layer(8, 5, gain=0.6)
    pi = A.path_independence(f, torch.zeros(5, 8, dtype=D), n_random=3, generator=gen(0))
    assert pi.starts == ("shifted", "random0", "random1", "random2")
    assert pi.cosine.shape == (4, 5) and pi.converged.all()
    assert (pi.score > 0.9999).all() and (pi.mean >= pi.score).all()


def test_path_independence_is_low_for_samples_that_switch_fixed_point():
    # tanh(3 z + x): two attracting fixed points near +-1 for |x| < 1.3, one for larger |x|.
    x = torch.tensor([0.2, -0.2, 2.0, -2.0], dtype=D)[:, None].expand(4, 3)

    def f(z):
        return torch.tanh(3 * z + x)

    pi = A.path_independence(
        f, torch.zeros(4, 3, dtype=D), starts="shifted", method="picard", max_iter=200
    )
    # Samples 0 and 1 restart from the other's fixed point, of the opposite sign, and stay.
    assert (pi.score[:2] < -0.99).all() and (pi.score[2:] > 0.9999).all()
    given = A.path_independence(
        f,
        torch.zeros(4, 3, dtype=D),
        starts=[-torch.ones(4, 3, dtype=D)],
        method="picard",
        max_iter=200,
    )
    assert given.starts == ("given0",)
    assert given.score.tolist() == pytest.approx([-1.0, 1.0, 1.0, 1.0], abs=1e-6)


def test_path_independence_bad_input():
    f, z0 = (lambda z: z / 2), torch.ones(1, 3)
    with pytest.raises(ValueError, match="shifted"):
        A.path_independence(f, z0, starts="shifted")
    with pytest.raises(ValueError, match="starts"):
        A.path_independence(f, z0, starts="zeros")
    with pytest.raises(ValueError, match="n_random"):
        A.path_independence(f, z0, n_random=0)
    with pytest.raises(ValueError, match=r"starts\[0\]"):
        A.path_independence(f, z0, starts=[torch.ones(1, 4)])
    pi = A.path_independence(f, z0, generator=gen(0))  # B = 1: random starts only
    assert pi.starts == ("random0", "random1")


# ---------------------------------------------------------------- compute curve


class ToyModel(nn.Module):
    """The EquilibriumModel protocol around a given cell; readout records what it reads."""

    def __init__(self, cell: nn.Module, readout: nn.Module, solver="picard", **settings):
        super().__init__()
        self.cell = cell
        self.head = readout
        self.deq = deqkit.DEQ(cell, solver=solver, **settings)
        self.seen: list[torch.Tensor] = []

    def inject(self, x):
        return x

    def initial_state(self, x):
        return torch.zeros_like(x)

    def readout(self, z):
        self.seen.append(z.clone())
        return self.head(z)

    def forward(self, x, z0=None, **overrides):
        u = self.inject(x)
        z, info = self.deq(u, z0=self.initial_state(x) if z0 is None else z0, **overrides)
        return self.readout(z), info


class HalfCell(nn.Module):
    """f(z, u) = z / 2 + u: z_t = 2 u (1 - 2^-t), approaching z* = 2u along a ray."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, z, u):
        self.calls += 1
        return 0.5 * z + u


class Threshold(nn.Module):
    """Class 1 iff mean(z) > 1: right once the iterate is close enough to z* = 2u."""

    def forward(self, z):
        s = z.mean(dim=1)
        return torch.stack([1.0 - s, s - 1.0], dim=1)


class TanhCell(nn.Module):
    def __init__(self, n=6, gain=0.95, seed=0):
        super().__init__()
        W = torch.randn(n, n, dtype=D, generator=gen(seed))
        self.W = nn.Parameter(W * gain / torch.linalg.matrix_norm(W, 2))
        self.calls = 0

    def forward(self, z, u):
        self.calls += 1
        return torch.tanh(z @ self.W.T + u)


def toy_data(n=40, d=3, seed=0):
    u = torch.rand(n, d, dtype=D, generator=gen(seed))
    return u, (u.mean(dim=1) > 0.5).long()  # the label of the fixed point 2u


def test_compute_curve_of_a_monotone_solver_is_monotone():
    x, y = toy_data()
    model = ToyModel(HalfCell(), Threshold())
    budgets = [1, 2, 3, 5, 8, 13, 40]
    curve = A.compute_curve(model, x, y, budgets)
    assert curve.iterations == tuple(budgets) and curve.one_pass and curve.method == "picard"
    acc = curve.metric
    assert (acc.diff() >= 0).all() and acc[-1] == 1.0
    assert acc[0] == pytest.approx((y == 0).double().mean().item())  # budget 1 reads out z0
    assert (curve.residual.diff() < 0).all()
    assert torch.equal(curve.evaluations, torch.tensor(budgets)[:, None].expand(-1, 40))
    assert model.cell.calls == 40  # one solve for every budget
    assert curve.per_sample_metric.shape == (7, 40) and curve.per_sample_residual.shape == (7, 40)
    assert set(curve.to_dict()) >= {"iterations", "metric", "residual", "mean_evaluations"}


@pytest.mark.parametrize(
    ("method", "tol"),
    [("picard", 1e-12), ("anderson", 1e-12), ("anderson", 1e-6), ("broyden", 1e-12)],
)
def test_compute_curve_budgets_cost_what_they_say(method, tol):
    x = torch.randn(12, 6, dtype=D, generator=gen(1))
    head = nn.Linear(6, 3, dtype=D)
    model = ToyModel(TanhCell(), head, solver=method)
    y = torch.randint(0, 3, (12,), generator=gen(2))
    budgets = [1, 2, 4, 7, 15, 30]
    curve = A.compute_curve(model, x, y, budgets, tol=tol, batch_size=5)
    assert curve.one_pass and len(model.seen) == len(budgets) * 3
    assert model.cell.calls <= 3 * max(budgets)
    states = [torch.cat(model.seen[k::6]) for k in range(6)]  # 3 batches of 6 budgets
    f = lambda z: model.cell(z, x)  # noqa: E731
    for k, b in enumerate(budgets):
        fresh = deqkit.solve(f, torch.zeros_like(x), method, tol=tol, max_iter=b)
        torch.testing.assert_close(states[k], fresh.z, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            curve.per_sample_residual[k], fresh.residual, rtol=1e-8, atol=1e-15
        )
        assert torch.equal(curve.evaluations[k], fresh.iterations)
        with torch.no_grad():
            right = (head(fresh.z).argmax(1) == y).double()
        assert torch.equal(curve.per_sample_metric[k], right)


@pytest.mark.parametrize("pick", ["best", "last"])
def test_compute_curve_memory_does_not_grow_with_the_budget(pick):
    """One pass reads budgets out as the solve passes them; it keeps no iterates."""
    from deqkit.bench.memory import PeakMemory

    n, B = 500, 8
    x = torch.randn(B, n, dtype=D, generator=gen(1))
    model = ToyModel(TanhCell(n, gain=2.0), nn.Linear(n, 3, dtype=D), solver="anderson")
    model.seen = _Forgetful()  # the readout's record would grow with the budgets read
    y = torch.zeros(B, dtype=torch.long)
    peaks = {}
    for budget in (50, 400):
        with PeakMemory() as mem:
            curve = A.compute_curve(model, x, y, [1, 10, budget], pick=pick, tol=1e-300)
        assert int(curve.evaluations.max()) == budget
        peaks[budget] = mem.peak
    # keeping every iterate would add (400 - 50) * B * n * 8 bytes = 11.2 MB
    assert peaks[400] < peaks[50] + 350 * B * n * 8 / 10, peaks


class _Forgetful(list):
    def append(self, item):
        pass


def test_compute_curve_solves_anew_for_solvers_with_several_evaluations_per_step():
    x = torch.randn(6, 6, dtype=D, generator=gen(1))
    model = ToyModel(TanhCell(), nn.Linear(6, 3, dtype=D), solver="newton")
    y = torch.zeros(6, dtype=torch.long)
    curve = A.compute_curve(model, x, y, [3, 10])
    assert not curve.one_pass and curve.method == "newton"
    fresh = deqkit.solve(
        lambda z: model.cell(z, x), torch.zeros_like(x), "newton", tol=1e-12, max_iter=10
    )
    torch.testing.assert_close(model.seen[1], fresh.z, rtol=0, atol=0)
    assert (curve.evaluations <= torch.tensor([[3], [10]])).all()


def test_compute_curve_pick_last_reads_the_current_iterate():
    x = torch.randn(5, 6, dtype=D, generator=gen(3))
    model = ToyModel(TanhCell(), nn.Linear(6, 2, dtype=D), solver="anderson")
    A.compute_curve(model, x, torch.zeros(5, dtype=torch.long), [4, 9], pick="last")
    f = lambda z: model.cell(z, x)  # noqa: E731
    fresh = deqkit.solve(
        f, torch.zeros_like(x), "anderson", tol=1e-12, max_iter=9, record_iterates=True
    )
    torch.testing.assert_close(model.seen[1], fresh.iterates[-1], rtol=0, atol=0)


def test_compute_curve_uses_the_model_settings_and_restores_training_mode():
    x, y = toy_data(n=10)
    model = ToyModel(HalfCell(), Threshold(), solver="anderson", solver_options={"m": 2})
    model.train()
    model.head.eval()
    curve = A.compute_curve(model, x, y, [5, 1, 5, 3], metric=lambda lo, t: lo[:, 1] > 0)
    assert curve.iterations == (1, 3, 5) and curve.method == "anderson"
    assert model.training and model.cell.training and not model.head.training
    assert curve.per_sample_metric.dtype == D


def test_compute_curve_with_tuple_states():
    class TupleModel(ToyModel):
        def initial_state(self, x):
            return torch.zeros_like(x[:, :1]), torch.zeros_like(x[:, 1:])

        def readout(self, z):
            return self.head(torch.cat(z, dim=1))

    class TupleCell(nn.Module):
        def forward(self, z, u):
            return 0.5 * z[0] + u[:, :1], 0.5 * z[1] + u[:, 1:]

    x, y = toy_data(n=8)
    curve = A.compute_curve(TupleModel(TupleCell(), Threshold()), x, y, [1, 30])
    assert curve.metric.tolist() == [(y == 0).double().mean().item(), 1.0]


def test_compute_curve_bad_input():
    x, y = toy_data(n=6)
    model = ToyModel(HalfCell(), Threshold())
    with pytest.raises(ValueError, match="same number of samples"):
        A.compute_curve(model, x, y[:5], [1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        A.compute_curve(model, x, y, [])
    for bad in ([0, 2], [3, -1], [2.5], [True], "5"):
        with pytest.raises(ValueError, match="iterations"):
            A.compute_curve(model, x, y, bad)
    with pytest.raises(ValueError, match="metric"):
        A.compute_curve(model, x, y, [2], metric=lambda lo, t: lo)
    with pytest.raises(ValueError, match="pick"):
        A.compute_curve(model, x, y, [2], pick="first")
    with pytest.raises(ValueError, match="batch_size"):
        A.compute_curve(model, x, y, [2], batch_size=0)
    with pytest.raises(ValueError, match="tol"):
        A.compute_curve(model, x, y, [2], tol=-1.0)
    with pytest.raises(TypeError, match="readout"):
        A.compute_curve(nn.Linear(2, 2), x, y, [2])
    with pytest.raises(TypeError, match="unknown option"):
        A.compute_curve(model, x, y, [2], m=3)


# ---------------------------------------------------------------- plots


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_plots_write_png_files_atomically(tmp_path):
    f, _, _ = tanh_layer(6, 4, gain=0.9)
    z0 = torch.zeros(4, 6, dtype=D)
    traces = {
        m: deqkit.solve(f, z0, m, tol=1e-10, record_trace=True) for m in ("picard", "anderson")
    }
    traces["raw"] = traces["picard"].trace[:, 0]
    out = A.plot_residuals(traces, tmp_path / "a" / "residuals.png", title="tanh")
    assert out == tmp_path / "a" / "residuals.png"
    assert_png(out)

    x, y = toy_data(n=10)
    curves = {
        f"d={d}": A.compute_curve(ToyModel(HalfCell(), Threshold()), x * d, y, [1, 2, 5, 10])
        for d in (1, 2)
    }
    assert_png(A.plot_compute_curves(curves, tmp_path / "b" / "curves.png"))
    assert_png(A.plot_compute_curves(curves, tmp_path / "c" / "c.png", residual=False))

    rho = A.spectral_radius(f, z0, generator=gen(0))
    values = {"layer": rho, "raw": torch.tensor([0.5, 1.2, float("nan")])}
    assert_png(A.plot_spectral_histogram(values, tmp_path / "d" / "hist.png", bins=5))


def test_plots_bad_input(tmp_path):
    trace = torch.rand(5, 2)
    with pytest.raises(ValueError, match=".png"):
        A.plot_residuals({"x": trace}, tmp_path / "r.pdf")
    with pytest.raises(ValueError, match="non-empty"):
        A.plot_residuals({}, tmp_path / "r.png")
    with pytest.raises(ValueError, match="record_trace"):
        A.plot_residuals({"x": deqkit.solve(lambda z: z / 2, torch.ones(2, 2))}, tmp_path / "r.png")
    with pytest.raises(ValueError, match="CurveResult"):
        A.plot_compute_curves({"x": trace}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="bins"):
        A.plot_spectral_histogram({"x": trace[0]}, tmp_path / "h.png", bins=0)
    assert list(tmp_path.iterdir()) == []
