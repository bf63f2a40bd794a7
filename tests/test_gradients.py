"""Gradient objects: aliases, the per-sample fallback, higher order, torch.func, bad input."""

import pytest
import torch
from test_deq import tanh_cell
from torch import nn

import deqkit
from deqkit import Implicit, Phantom, Unrolled
from deqkit.nn import _settings as settings_module
from deqkit.nn import available_gradients, make_gradient

D = torch.float64


class ScaledLinear(nn.Module):
    """f(z, x) = s_b W z + c_b with s_b = x[:, 0] and c_b = x[:, 1:]: the contraction rate of
    each sample is its own s_b, and the Jacobian is the same at every point."""

    def __init__(self, n=5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n, n, generator=g, dtype=D)
        self.W = nn.Parameter(W / torch.linalg.matrix_norm(W, 2))

    def forward(self, z, x):
        return x[:, :1] * (z @ self.W.T) + x[:, 1:]

    def initial_state(self, x):
        return torch.zeros_like(x[:, 1:])


def x_grads(deq, x, seed=3):
    z, info = deq(x)
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=D)
    (gx,) = torch.autograd.grad((z * w).sum(), x)
    return gx, info


# ------------------------------------------------------------------ objects and aliases


def test_string_aliases_resolve_to_the_gradient_objects():
    cell = tanh_cell()
    assert deqkit.DEQ(cell).gradient == Phantom(5, 0.5)  # the default
    assert deqkit.DEQ(cell, backward="implicit").gradient == Implicit()
    assert deqkit.DEQ(cell, backward="phantom").gradient == Phantom(5, 0.5)
    assert deqkit.DEQ(
        cell, backward="phantom", backward_options={"k": 3, "tau": 0.7}
    ).gradient == Phantom(3, 0.7)
    got = deqkit.DEQ(
        cell, backward="implicit", backward_solver="picard", backward_tol=1e-6, backward_max_iter=9
    )
    assert got.gradient == Implicit("picard", 1e-6, 9)
    assert deqkit.DEQ(cell, backward="unrolled").gradient == Unrolled()
    spec = {"name": "implicit", "tol": 1e-6, "fallback": {"name": "phantom", "k": 2}}
    assert deqkit.DEQ(cell, backward=spec).gradient == Implicit(tol=1e-6, fallback=Phantom(2))
    for g in (Implicit("anderson", 1e-5, 7, fallback=Phantom(3), m=4), Phantom(2, 0.3)):
        assert make_gradient(g.to_spec()) == g


def test_available_gradients_are_the_aliases_make_gradient_accepts():
    assert available_gradients() == ["implicit", "phantom", "unrolled"]
    for name, cls in zip(available_gradients(), (Implicit, Phantom, Unrolled), strict=True):
        assert type(make_gradient(name)) is cls


@pytest.mark.parametrize(
    ("alias", "obj"),
    [
        ({"backward": "phantom", "backward_options": {"k": 4, "tau": 0.6}}, Phantom(4, 0.6)),
        (
            {"backward": "implicit", "backward_solver": "picard", "backward_tol": 1e-12},
            Implicit("picard", 1e-12),
        ),
        ({"backward": "unrolled", "solver": "picard"}, Unrolled()),
    ],
)
def test_an_alias_and_its_object_give_the_same_gradient(alias, obj):
    cell = tanh_cell()
    x = torch.randn(4, 4, dtype=D, requires_grad=True)
    extra = {"solver": "picard"} if "solver" in alias else {}
    a, _ = x_grads(deqkit.DEQ(cell, tol=1e-10, max_iter=200, **alias), x)
    b, _ = x_grads(deqkit.DEQ(cell, tol=1e-10, max_iter=200, backward=obj, **extra), x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_adjoint_solver_defaults_to_the_forward_solver_and_its_options():
    cell = tanh_cell()
    deq = deqkit.DEQ(cell, solver="anderson", solver_options={"m": 3}, backward="implicit")
    assert deq.settings.bound.solver == deqkit.solvers.Anderson(m=3)
    deq = deqkit.DEQ(cell, solver_options={"m": 3}, backward=Implicit(m=7))
    assert deq.settings.bound.solver == deqkit.solvers.Anderson(m=7)
    deq = deqkit.DEQ(cell, solver_options={"m": 3}, backward=Implicit("picard", max_iter=9))
    assert deq.settings.bound.solver == deqkit.solvers.Picard()
    assert (deq.settings.bound.max_iter, deq.settings.bound.tol) == (9, 1e-5)


def test_settings_are_resolved_once_per_construction_and_per_override_set(monkeypatch):
    calls = []
    real = settings_module.make_gradient
    monkeypatch.setattr(
        settings_module, "make_gradient", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    deq = deqkit.DEQ(tanh_cell())
    x = torch.randn(2, 4, dtype=D)
    assert len(calls) == 1
    for _ in range(3):
        deq(x)
        deq(x, max_iter=5)
    assert len(calls) == 2  # the constructor, then the max_iter=5 set once
    deq(x, max_iter=6)
    assert len(calls) == 3


# ------------------------------------------------------------------- per-sample fallback


def fallback_setup():
    cell = ScaledLinear()
    c = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=D)
    # sample 0 contracts at rate 0.2 (converges in 30 picard steps), sample 1 at 0.98 (not)
    x = torch.cat([torch.tensor([[0.2], [0.98]], dtype=D), c], dim=1).requires_grad_()
    common = dict(solver="picard", tol=1e-10, stop="abs", max_iter=30)
    return cell, x, common


def test_fallback_is_exact_where_the_forward_converged_and_phantom_where_it_did_not():
    cell, x, common = fallback_setup()
    ph = Phantom(4, 0.8)
    fb = deqkit.DEQ(cell, backward=Implicit(tol=1e-12, max_iter=2000, fallback=ph), **common)
    got, info = x_grads(fb, x)
    assert info.converged.tolist() == [True, False]
    assert info.fallback.tolist() == [False, True]
    exact, _ = x_grads(deqkit.DEQ(cell, backward=Implicit(tol=1e-12, max_iter=2000), **common), x)
    phantom, _ = x_grads(deqkit.DEQ(cell, backward=ph, **common), x)
    torch.testing.assert_close(got[0], exact[0], rtol=1e-9, atol=1e-12)
    # f is linear in z, so the phantom adjoint at z equals backprop through the phantom
    # steps; df/dc does not depend on where the steps are, df/ds = W z does (so c alone)
    torch.testing.assert_close(got[1, 1:], phantom[1, 1:], rtol=1e-9, atol=1e-12)
    assert (got[1] - exact[1]).abs().max() > 1e-3  # without the fallback it would differ


def test_fallback_also_covers_samples_whose_adjoint_solve_did_not_converge():
    cell, x, common = fallback_setup()
    common["max_iter"] = 400  # both forward solves converge now
    ph = Phantom(3, 1.0)
    fb = deqkit.DEQ(cell, backward=Implicit(tol=1e-12, max_iter=40, fallback=ph), **common)
    got, info = x_grads(fb, x)
    assert info.converged.all()
    assert info.backward.converged.tolist() == [True, False]
    assert info.fallback.tolist() == [False, True]
    phantom, _ = x_grads(deqkit.DEQ(cell, backward=ph, **common), x)
    torch.testing.assert_close(got[1], phantom[1], rtol=1e-9, atol=1e-9)  # at a fixed point


def test_phantom_adjoint_is_the_damped_neumann_series():
    J = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=D) * 0.3
    v = torch.randn(2, 4, dtype=D)
    k, tau = 6, 0.4
    A = (1 - tau) * torch.eye(4, dtype=D) + tau * J.T
    want = tau * sum(v @ torch.linalg.matrix_power(A, j).T for j in range(k))
    got = Phantom(k, tau).adjoint(lambda u: u @ J, v)
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------- higher order


def strong_contraction():
    return tanh_cell(gain=0.2)


def test_implicit_refuses_double_backward_with_a_clear_error():
    for backward in (Implicit(tol=1e-10), Implicit(fallback=Phantom())):
        deq = deqkit.DEQ(strong_contraction(), backward=backward, tol=1e-10, max_iter=100)
        x = torch.randn(3, 4, dtype=D, requires_grad=True)
        z, _ = deq(x)
        with pytest.raises(RuntimeError, match="double backward.*Phantom.*Unrolled"):
            torch.autograd.grad(z.pow(2).sum(), x, create_graph=True)
        z, _ = deq(x)
        torch.autograd.grad(z.pow(2).sum(), x)  # first order still works


def test_unrolled_second_derivatives_match_finite_differences():
    cell = tanh_cell(gain=0.6)
    deq = deqkit.DEQ(
        cell, backward="unrolled", solver="picard", tol=1e-300, stop="abs", max_iter=25
    )
    x = torch.randn(2, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, *p: deq(x)[0], (x, *cell.parameters()))


def test_phantom_second_derivatives_match_the_true_fixed_point_on_a_strong_contraction():
    # Starting from z*, k steps of a 0.2-contraction forget where they started to 0.2^k, so
    # the phantom gradient and its derivative approach the exact ones: finite differences
    # of the whole map (the solve included) must agree.
    cell = strong_contraction()
    deq = deqkit.DEQ(cell, backward=Phantom(30, 1.0), tol=1e-14, stop="abs", max_iter=200)
    x = torch.randn(2, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, *p: deq(x)[0], (x, *cell.parameters()))


# -------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("backward", [Phantom(3, 0.5), Unrolled()])
def test_torch_func_grad_and_jacrev_agree_with_autograd(backward):
    cell = tanh_cell()
    deq = deqkit.DEQ(cell, backward=backward, solver="picard", tol=1e-10, max_iter=60)
    x = torch.randn(3, 4, dtype=D)
    params = {k: v.detach() for k, v in deq.named_parameters()}

    def loss(p, x):
        z, _ = torch.func.functional_call(deq, p, (x,))
        return z.pow(2).sum()

    got = torch.func.grad(loss)(params, x)
    z, _ = deq(x)
    want = torch.autograd.grad(z.pow(2).sum(), list(deq.parameters()))
    for g, w in zip(got.values(), want, strict=True):
        torch.testing.assert_close(g, w)
    jac = torch.func.jacrev(lambda x: deq(x)[0])(x)
    assert jac.shape == (3, 6, 3, 4)
    torch.testing.assert_close(jac[0, :, 1], torch.zeros(6, 4, dtype=D))  # samples apart


def test_torch_func_with_the_implicit_gradient_says_what_is_not_supported():
    deq = deqkit.DEQ(tanh_cell(), backward="implicit")
    x = torch.randn(3, 4, dtype=D)
    with pytest.raises(RuntimeError, match="torch.func.*Phantom"):
        torch.func.grad(lambda x: deq(x)[0].sum())(x)


# ------------------------------------------------------------------------------ errors


def test_bad_gradients_and_options_that_do_not_apply_are_errors():
    cell = tanh_cell()
    with pytest.raises(ValueError, match="unknown backward.*'implicit', 'phantom', 'unrolled'"):
        deqkit.DEQ(cell, backward="adjoint")
    with pytest.raises(TypeError, match="backward must be one of"):
        deqkit.DEQ(cell, backward=3)
    with pytest.raises(TypeError, match="tol"):
        Phantom(tol=1e-3)
    with pytest.raises(ValueError, match="do.*not apply to the phantom gradient"):
        make_gradient({"name": "phantom", "tol": 1e-3})
    with pytest.raises(ValueError, match="backward_tol cannot be combined with a gradient object"):
        deqkit.DEQ(cell, backward=Phantom(), backward_tol=1e-3)
    with pytest.raises(ValueError, match="backward_tol apply to backward='implicit' only"):
        deqkit.DEQ(cell, backward="phantom", backward_tol=1e-3)
    with pytest.raises(TypeError, match="fallback must be None or a deqkit.Phantom"):
        Implicit(fallback=Unrolled())
    with pytest.raises(ValueError, match="tol"):
        Implicit(tol=-1.0)
    with pytest.raises(TypeError, match="unknown option.*nonsense"):
        Implicit("anderson", nonsense=1)
    with pytest.raises(TypeError, match="unknown option.*nonsense"):
        deqkit.DEQ(cell, backward=Implicit(nonsense=1))  # checked against the forward solver
    with pytest.raises(ValueError, match="Invalid k for Phantom"):
        Phantom(0)
    with pytest.raises(ValueError, match="Invalid tau for Phantom"):
        Phantom(2, 1.5)
    with pytest.raises(ValueError, match="differentiable.*'newton'"):
        deqkit.DEQ(cell, backward=Unrolled(), solver="newton")
    deq = deqkit.DEQ(cell)
    with pytest.raises(TypeError, match="unknown DEQ setting.*widht"):
        deq(torch.randn(2, 4, dtype=D), widht=3)


def test_a_z0_whose_batch_differs_from_x_names_both_batch_sizes():
    deq = deqkit.DEQ(tanh_cell())
    with pytest.raises(ValueError, match="x has batch size 5 but z0 has batch size 3"):
        deq(torch.randn(5, 4, dtype=D), z0=torch.zeros(3, 6, dtype=D))
