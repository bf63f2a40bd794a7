"""``Graphed``: a solver's steps in fixed chunks with no host read inside (CUDA graphs).

On the CPU the chunks run eagerly, through the same code that a CUDA graph records: the
steps, the loop's per-sample update, and the copy of a chunk's results into the tensors
the next chunk reads. Every result must equal the shared loop's, bit for bit; only the
recording and replay themselves need a GPU (``tests/test_gpu.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from test_solvers_bookkeeping import HostReads

from deqkit import DEQ, Implicit, Phantom, solve
from deqkit import testing as zoo
from deqkit.solvers import Anderson, Broyden, Graphed, NewtonKrylov, Picard, Solver, resolve
from deqkit.solvers import _loop as solver_loop
from deqkit.solvers._anderson import _triangular_solves
from deqkit.solvers._graphed import _in_backward

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64
CAPTURABLE = ("picard", "anderson")


class Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, z):
        self.calls += 1
        return self.f(z)


def _budget(p: zoo.Problem) -> dict:
    return {"tol": p.tol, "stop": p.stop, "max_iter": p.max_iter}


def _equal(a, b) -> None:
    assert torch.equal(a.iterations, b.iterations)
    assert torch.equal(a.status, b.status)
    assert torch.equal(a.z, b.z)
    assert torch.equal(a.residual.isnan(), b.residual.isnan())
    ok = ~a.residual.isnan()
    assert torch.equal(a.residual[ok], b.residual[ok])


@pytest.mark.parametrize("steps", [1, 3, 8])
@pytest.mark.parametrize("method", CAPTURABLE)
@pytest.mark.parametrize("p", zoo.all_problems(), ids=lambda p: p.name)
def test_chunks_give_the_loops_iterates_counts_and_statuses_bit_for_bit(p, method, steps):
    """On every zoo problem (NaN samples, stagnation, divergence, resets included)."""
    plain = solve(p.f, p.z0, method, **_budget(p))
    _equal(solve(p.f, p.z0, Graphed(method, steps=steps), **_budget(p)), plain)


@pytest.mark.parametrize("method", CAPTURABLE)
@pytest.mark.parametrize("name", ["mixed_tanh", "nan_map", "pressure_network"])
def test_chunks_equal_the_loop_under_the_accelerator_policy(name, method, monkeypatch):
    """The loop on a GPU reads nothing inside a step; Graphed runs that policy everywhere."""
    p = zoo.by_name(name)
    monkeypatch.setattr(solver_loop, "_host_checks_are_free", lambda device: False)
    plain = solve(p.f, p.z0, method, **_budget(p))
    _equal(solve(p.f, p.z0, Graphed(method, steps=5), **_budget(p)), plain)


@pytest.mark.parametrize("steps", [1, 4, 7])
def test_evaluations_after_the_last_stop_are_at_most_the_rest_of_a_chunk(steps):
    p = zoo.by_name("mixed_tanh")
    f, g = Counted(p.f), Counted(p.f)
    r = solve(f, p.z0, "anderson", **_budget(p))
    solve(g, p.z0, Graphed("anderson", steps=steps), **_budget(p))
    loop_steps = f.calls - 1  # one evaluation per step, plus the first at z0
    chunks = -(-loop_steps // steps)
    assert r.all_converged
    assert g.calls == 1 + chunks * steps


@pytest.mark.parametrize("method", CAPTURABLE)
@pytest.mark.parametrize("name", ["mixed_tanh", "nan_map", "linear_slow"])
def test_nothing_is_read_on_the_host_inside_a_chunk(name, method):
    """What a CUDA graph needs: the host waits once per chunk ("is any sample running?"),
    plus the checks before the first step (z0 finite, every sample running), never inside
    a step. The shared loop under the accelerator policy waits once per step."""
    p = zoo.by_name(name)
    g = Counted(p.f)
    with HostReads() as reads:
        solve(g, p.z0, Graphed(method, steps=6), **_budget(p))
    chunks = -(-(g.calls - 1) // 6)
    assert reads.count <= chunks + 3, (reads.count, chunks)


def test_a_budget_that_is_not_a_multiple_of_the_chunk_is_not_exceeded():
    """The budget's last steps run as a shorter chunk: no evaluation beyond ``max_iter``."""
    p = zoo.by_name("linear_slow")  # needs far more than 10 evaluations
    for max_iter in (1, 2, 10, 11, 12):
        g = Counted(p.f)
        r = solve(g, p.z0, Graphed("anderson", steps=4), tol=1e-12, max_iter=max_iter)
        assert g.calls == max_iter
        assert int(r.iterations.max()) == max_iter


def test_a_solve_whose_start_has_converged_takes_no_step():
    g = Counted(lambda z: 0.5 * z)
    r = solve(g, torch.zeros(3, 4, dtype=D), Graphed("anderson"), tol=1e-8)
    assert r.all_converged and g.calls == 1


def test_a_solve_that_records_its_steps_runs_them_through_the_loop():
    """A trace or iterates need every step seen by the loop: the inner solver's steps run
    there, unrecorded, with the same result."""
    p = zoo.by_name("mixed_tanh")
    plain = solve(p.f, p.z0, "anderson", record_trace=True, record_iterates=True, **_budget(p))
    graphed = solve(
        p.f, p.z0, Graphed("anderson"), record_trace=True, record_iterates=True, **_budget(p)
    )
    _equal(graphed, plain)
    assert torch.equal(graphed.trace.nan_to_num(-1), plain.trace.nan_to_num(-1))
    assert torch.equal(graphed.iterates, plain.iterates)


def test_by_name_and_with_options():
    p = zoo.by_name("mixed_tanh")
    r = solve(p.f, p.z0, "graphed", solver=Anderson(m=3), steps=4, **_budget(p))
    _equal(r, solve(p.f, p.z0, Anderson(m=3), **_budget(p)))
    assert r.method == "graphed"
    assert resolve("graphed", {"solver": "picard"}).solver == Picard()
    spec = {"solver": {"name": "anderson", "m": 3, "beta": 0.8}, "steps": 2}
    assert resolve("graphed", spec) == Graphed(Anderson(m=3, beta=0.8), steps=2)


@pytest.mark.parametrize(
    "inner, message",
    [
        (Broyden(), "'broyden' cannot be recorded"),
        (NewtonKrylov(), "'newton' cannot be recorded"),
        ("broyden", "'broyden' cannot be recorded"),
        (Anderson(native=True), "native solve is CPU code"),
    ],
)
def test_solvers_that_cannot_be_recorded_are_refused(inner, message):
    with pytest.raises(ValueError, match=message):
        Graphed(inner)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="steps"):
        Graphed("anderson", steps=0)
    with pytest.raises(TypeError, match="solver must be"):
        Graphed(3.0)
    with pytest.raises(ValueError, match="unknown method"):
        Graphed("andersen")
    with pytest.raises(ValueError, match="cannot be recorded"):
        Graphed(Graphed("picard"))
    with pytest.raises(TypeError, match="under 'name'"):
        Graphed({"m": 3})
    with pytest.raises(TypeError, match="unknown option"):
        Graphed({"name": "anderson", "memory": 3})


@dataclass(frozen=True)
class _Growing(Solver):
    """A solver that claims to be capturable but grows its state every step."""

    name = "growing"
    capturable = True

    def init(self, ev, p, active):
        return p.z.new_zeros(1)

    def step(self, ev, p, active, state):
        q = ev.point(ev.propose(active, p.z + p.g, p.z))
        return q, None, torch.cat((state, state[:1]))


def test_a_state_that_changes_shape_is_reported():
    p = zoo.by_name("mixed_tanh")
    with pytest.raises(RuntimeError, match="'growing' changed its structure"):
        solve(p.f, p.z0, Graphed(_Growing(), steps=2), **_budget(p))


def _layer(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(12, 12).double()
    with torch.no_grad():
        lin.weight.mul_(0.7 / torch.linalg.matrix_norm(lin.weight, ord=2))
    return lin, torch.randn(5, 12, dtype=D)


@pytest.mark.parametrize("backward", ["implicit", "phantom"])
def test_a_deq_with_graphed_solves_gives_the_same_state_and_gradients(backward):
    lin, x = _layer()

    def cell(z, x):
        return torch.tanh(lin(z) + x)

    grads = []
    for solver in (Anderson(), Graphed(Anderson(), steps=3)):
        gradient = Implicit(solver=solver, tol=1e-10) if backward == "implicit" else Phantom()
        deq = DEQ(cell, solver=solver, tol=1e-10, max_iter=60, backward=gradient)
        z, info = deq(x, torch.zeros_like(x))
        lin.zero_grad()
        z.square().sum().backward()
        assert info.forward.all_converged
        if backward == "implicit":
            assert info.backward.all_converged
        grads.append((z.detach(), lin.weight.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])


def test_the_unrolled_gradient_refuses_a_graphed_solver():
    lin, _ = _layer()
    with pytest.raises(ValueError, match="graphed"):
        DEQ(lambda z, x: torch.tanh(lin(z) + x), solver=Graphed("anderson"), backward="unrolled")


def test_the_accelerators_small_solve_equals_lapacks():
    """Off the CPU, Anderson solves its m x m systems by two batched triangular solves
    (torch's batched CUDA cholesky_solve calls MAGMA, which synchronises): the same
    weights as LAPACK's cholesky_solve, checked here on the CPU."""
    gen = torch.Generator().manual_seed(0)
    for m in (1, 3, 5, 8):
        X = torch.randn(16, m, m, generator=gen, dtype=D)
        A = X @ X.mT + 1e-3 * torch.eye(m, dtype=D)
        chol, info = torch.linalg.cholesky_ex(A)
        assert not info.any()
        rhs = torch.randn(16, m, 1, generator=gen, dtype=D)
        torch.testing.assert_close(
            _triangular_solves(rhs, chol), torch.cholesky_solve(rhs, chol), rtol=1e-10, atol=0
        )


def test_recording_is_skipped_inside_a_backward_pass():
    """The implicit gradient's adjoint solve runs inside autograd's backward pass, where
    f's vector-Jacobian products cannot be recorded: Graphed knows where it is."""
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            seen.append(_in_backward())
            return g

    x = torch.ones(2, requires_grad=True)
    Probe.apply(x).sum().backward()
    assert seen == [True] and not _in_backward()
