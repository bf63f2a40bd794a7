"""DEQ layer: gradients (implicit, phantom, unrolled), modes, states, stabilisers, errors."""

import pytest
import torch
from torch import nn

import deqkit
from deqkit import testing
from deqkit.nn import apply_spectral_norm, apply_weight_norm, jacobian_frobenius, mixed_init

D = torch.float64


def tanh_cell(n=6, d=4, gain=0.7, dtype=D, seed=0):
    """The zoo's tanh cell, f(z, x) = tanh(W z + U x + b), ||W||_2 = gain, with this file's
    defaults (float64, b drawn at scale 0.1)."""
    return testing.TanhCell(n, d, gain=gain, bias=0.1, seed=seed, dtype=dtype)


class LinearCell(nn.Module):
    def __init__(self, W, U):
        super().__init__()
        self.W, self.U = nn.Parameter(W.clone()), nn.Parameter(U.clone())

    def forward(self, z, x):
        return z @ self.W.T + x @ self.U.T

    def initial_state(self, x):
        return x.new_zeros(x.shape[0], self.W.shape[0])


def tight(**kw):
    return dict(tol=1e-13, max_iter=300, stop="abs", backward="implicit", backward_tol=1e-13, **kw)


def param_grads(deq, x, seed=1):
    z, _ = deq(x)
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=z.dtype)
    loss = (z * w).sum()
    return torch.autograd.grad(loss, [*deq.parameters(), x])


def unrolled_reference(cell, x, steps=400):
    z = cell.initial_state(x)
    for _ in range(steps):
        z = cell(z, x)
    return z


def test_implicit_gradcheck_float64():
    cell = tanh_cell()
    deq = deqkit.DEQ(cell, **tight())
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: deq(x)[0], (x, *cell.parameters()), atol=1e-7)


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_implicit_gradient_equals_backprop_through_long_unrolled_iteration(solver):
    cell = tanh_cell(gain=0.8)
    x = torch.randn(5, 4, dtype=D, requires_grad=True)
    deq = deqkit.DEQ(cell, solver=solver, **tight())
    got = param_grads(deq, x)
    z = unrolled_reference(cell, x)
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=D)
    want = torch.autograd.grad((z * w).sum(), [*cell.parameters(), x])
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)


def test_implicit_gradient_of_linear_deq_is_analytic():
    torch.manual_seed(0)
    n, d = 5, 3
    W = torch.randn(n, n, dtype=D)
    W = 0.6 * W / torch.linalg.matrix_norm(W, 2)
    U = torch.randn(n, d, dtype=D)
    x = torch.randn(4, d, dtype=D, requires_grad=True)
    c = torch.randn(4, n, dtype=D)
    deq = deqkit.DEQ(LinearCell(W, U), **tight())
    z, _ = deq(x)
    (z * c).sum().backward()
    # z* = (I - W)^-1 U x; L = sum c . z*  =>  dL/dx = c (I - W)^-T U ... per sample
    inv = torch.linalg.inv(torch.eye(n, dtype=D) - W)
    torch.testing.assert_close(x.grad, c @ inv @ U)
    torch.testing.assert_close(deq.f.U.grad, inv.T @ c.T @ x.detach())
    zs = x.detach() @ U.T @ inv.T
    torch.testing.assert_close(deq.f.W.grad, inv.T @ c.T @ zs)


def test_phantom_with_many_steps_approaches_implicit():
    cell = tanh_cell(gain=0.9)
    x = torch.randn(4, 4, dtype=D, requires_grad=True)
    exact = param_grads(deqkit.DEQ(cell, **tight()), x)

    def rel_err(k, tau):
        got = param_grads(
            deqkit.DEQ(
                cell,
                tol=1e-13,
                max_iter=300,
                stop="abs",
                backward="phantom",
                backward_options={"k": k, "tau": tau},
            ),
            x,
        )
        num = sum((g - e).pow(2).sum() for g, e in zip(got, exact, strict=True))
        return float(num.sqrt() / sum(e.pow(2).sum() for e in exact).sqrt())

    errs = [rel_err(k, 1.0) for k in (1, 5, 40, 200)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 1e-6 < errs[0]


def test_unrolled_matches_implicit_on_a_contraction():
    cell = tanh_cell(gain=0.5)
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    imp = param_grads(deqkit.DEQ(cell, **tight()), x)
    unr = param_grads(
        deqkit.DEQ(cell, tol=1e-14, max_iter=200, stop="abs", backward="unrolled", solver="picard"),
        x,
    )
    for a, b in zip(imp, unr, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_backward_info_filled_and_forward_keeps_no_graph():
    cell = tanh_cell()
    deq = deqkit.DEQ(cell, **tight())
    x = torch.randn(3, 4, dtype=D)
    z, info = deq(x)
    assert info.backward is None and bool(info.converged.all())
    assert info.forward.z.grad_fn is None
    z.sum().backward()
    assert info.backward is not None and bool(info.backward.converged.all())
    assert int(info.backward.iterations.max()) > 1
    assert "backward" in repr(info)


def test_eval_mode_still_gives_gradients():
    cell = tanh_cell()
    deq = deqkit.DEQ(cell, **tight()).eval()
    x = torch.randn(2, 4, dtype=D)
    z, _ = deq(x)
    z.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cell.parameters())


def test_no_grad_keeps_no_graph_and_returns_fixed_point():
    cell = tanh_cell()
    deq = deqkit.DEQ(cell, **tight())
    x = torch.randn(2, 4, dtype=D)
    with torch.no_grad():
        z, info = deq(x)
    assert z.grad_fn is None and not z.requires_grad
    torch.testing.assert_close(cell(z, x), z)


def test_overrides_change_the_budget_for_one_call():
    deq = deqkit.DEQ(tanh_cell(gain=0.95), tol=1e-12, max_iter=3, solver="picard")
    x = torch.randn(2, 4, dtype=D)
    _, short = deq(x)
    _, long = deq(x, max_iter=100)
    assert int(short.iterations.max()) == 3 and not bool(short.converged.any())
    assert int(long.iterations.max()) > 3 and bool(long.converged.all())
    assert deq.settings.max_iter == 3
    with pytest.raises(TypeError, match="max_iters"):
        deq(x, max_iters=5)


class TupleCell(nn.Module):
    """Two-scale state (a [B, 4] and a [B, 2, 3] part), coupled."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.A = nn.Parameter(0.3 * torch.randn(4, 6, generator=g, dtype=D))
        self.B = nn.Parameter(0.3 * torch.randn(6, 4, generator=g, dtype=D))

    def forward(self, z, x):
        a, b = z
        bf = b.reshape(b.shape[0], 6)
        return torch.tanh(bf @ self.A.T + x), torch.tanh(a @ self.B.T).reshape(-1, 2, 3)

    def initial_state(self, x):
        return x.new_zeros(x.shape[0], 4), x.new_zeros(x.shape[0], 2, 3)


def test_tuple_states_round_trip_and_gradcheck():
    cell = TupleCell()
    deq = deqkit.DEQ(cell, **tight())
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    (a, b), info = deq(x)
    assert a.shape == (3, 4) and b.shape == (3, 2, 3)
    a2, b2 = cell((a, b), x)
    torch.testing.assert_close(a2, a)
    torch.testing.assert_close(b2, b)
    assert torch.autograd.gradcheck(
        lambda x: torch.cat([t.flatten(1) for t in deq(x)[0]], 1), (x,), atol=1e-7
    )


def test_autocast_bfloat16_cell_with_float32_state():
    cell = tanh_cell(dtype=torch.float32)
    deq = deqkit.DEQ(cell, tol=1e-2, max_iter=30)
    x = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, info = deq(x)
    assert z.dtype == torch.float32
    z.float().sum().backward()
    assert cell.W.grad is not None and torch.isfinite(cell.W.grad).all()


def test_print_deq_shows_solver_tolerance_stop_budget_and_gradient():
    cell = tanh_cell(4)
    text = repr(deqkit.DEQ(cell))
    defaults = "solver=anderson, tol=0.0001, stop=rel, max_iter=30, backward=Phantom(k=5, tau=0.5)"
    assert text.splitlines()[:3] == ["DEQ(", f"  {defaults}", "  (f): TanhCell()"]
    deq = deqkit.DEQ(
        cell,
        solver="anderson",
        solver_options={"m": 8},
        tol=1e-5,
        stop="abs",
        max_iter=50,
        backward=deqkit.Implicit(fallback=deqkit.Phantom(k=3)),
        correction=2,
    )
    assert deq.extra_repr() == (
        "solver=anderson(m=8), tol=1e-05, stop=abs, max_iter=50, backward=Implicit("
        "solver=anderson(m=8), tol=1e-06, max_iter=100, fallback=Phantom(k=3, tau=0.5)), "
        "correction=2"
    )
    assert deqkit.DEQ(cell, backward="unrolled").extra_repr().endswith("backward=Unrolled()")


def test_bad_cells_and_settings_give_clear_errors():
    x = torch.randn(2, 4, dtype=D)
    with pytest.raises(ValueError, match="initial_state"):
        deqkit.DEQ(lambda z, x: z)(x)
    wrong = deqkit.DEQ(lambda z, x: z[:, :2])
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(2, 2\)"):
        wrong(x, z0=torch.zeros(2, 5, dtype=D))
    with pytest.raises(ValueError, match="backward"):
        deqkit.DEQ(tanh_cell(), backward="adjoint")
    with pytest.raises(ValueError, match="unknown method"):
        deqkit.DEQ(tanh_cell(), solver="andersen")
    with pytest.raises(TypeError, match="unknown option"):
        deqkit.DEQ(tanh_cell(), solver_options={"mm": 3})
    with pytest.raises(TypeError, match="kk"):
        deqkit.DEQ(tanh_cell(), backward="phantom", backward_options={"kk": 3})
    with pytest.raises(ValueError, match="tol"):
        deqkit.DEQ(tanh_cell(), tol=0.0)
    with pytest.raises(TypeError, match="callable"):
        deqkit.DEQ(3)


def test_spectral_norm_cell_keeps_unit_norm_through_training():
    torch.manual_seed(0)

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.inj = nn.Linear(3, 8)

        def forward(self, z, x):
            return torch.tanh(self.lin(z) + self.inj(x))

        def initial_state(self, x):
            return x.new_zeros(x.shape[0], 8)

    cell = apply_spectral_norm(Cell(), n_power_iterations=5)
    deq = deqkit.DEQ(cell, tol=1e-6, max_iter=50)
    opt = torch.optim.SGD(cell.parameters(), lr=0.5)
    x, y = torch.randn(16, 3), torch.randn(16, 8)
    for _ in range(20):
        z, _ = deq(x)
        loss = (z - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert cell.lin.parametrizations.weight.original.grad is not None
    sigma = torch.linalg.matrix_norm(cell.lin.weight.detach(), 2)
    assert float(sigma) <= 1.0 + 1e-3
    apply_weight_norm(cell, types=(nn.Linear,))  # stacks cleanly on other layers too


def test_jacobian_frobenius_matches_exact_and_is_differentiable():
    cell = tanh_cell(n=5, gain=0.9)
    x = torch.randn(3, 4, dtype=D)
    z = torch.randn(3, 5, dtype=D)
    est = jacobian_frobenius(
        lambda z: cell(z, x), z, samples=4000, generator=torch.Generator().manual_seed(0)
    )
    J = torch.func.vmap(torch.func.jacrev(lambda zz, xx: cell(zz[None], xx[None])[0]))(z, x)
    exact = J.pow(2).sum((1, 2)) / 5
    torch.testing.assert_close(est, exact, rtol=0.1, atol=0)
    est.sum().backward()
    assert cell.W.grad is not None
    with pytest.raises(ValueError, match="samples"):
        jacobian_frobenius(lambda z: cell(z, x), z, samples=0)


def test_mixed_init_and_fixed_point_correction_states():
    cell = tanh_cell()
    x = torch.randn(64, 4, dtype=D)
    z0 = mixed_init(cell.initial_state(x), p=0.5, generator=torch.Generator().manual_seed(0))
    zero = (z0 == 0).all(1)
    assert 10 < int(zero.sum()) < 54
    deq = deqkit.DEQ(cell, tol=1e-10, max_iter=40, solver="picard", correction=3)
    z, info = deq(x, z0=z0)
    assert len(info.corrections) == 3
    loss = sum(c.pow(2).sum() for c in info.corrections)
    loss.backward()
    assert cell.W.grad is not None
    with pytest.raises(ValueError, match=r"Invalid p: 1.5 \(expected a number in \[0, 1\]\)"):
        mixed_init(z0, p=1.5)


def test_packer_flattens_a_tuple_state_and_back():
    """``deqkit.nn.Packer``: one ``[B, N]`` batch of vectors, the parts in order."""
    from deqkit.nn import Packer

    a, b = torch.randn(3, 4), torch.randn(3, 2, 3)
    packer = Packer.of((a, b))
    flat = packer.pack((a, b))
    assert flat.shape == (3, 10)
    assert torch.equal(flat[:, :4], a) and torch.equal(flat[:, 4:], b.reshape(3, 6))
    back = packer.unpack(flat)
    assert isinstance(back, tuple) and torch.equal(back[0], a) and torch.equal(back[1], b)
    plain = Packer.of(b)
    assert plain.pack(b).shape == (3, 6) and torch.equal(plain.unpack(plain.pack(b)), b)
    with pytest.raises(ValueError, match="shaped like z"):
        packer.pack(a)
    with pytest.raises(ValueError, match="same batch size"):
        Packer.of((a, torch.randn(2, 4)))


# -- DEQSettings: the settings as one object ------------------------------------------------


def test_deq_settings_are_one_frozen_validated_object_with_defaults():
    import dataclasses
    import inspect

    s = deqkit.DEQSettings()
    assert deqkit.nn.DEQSettings is deqkit.DEQSettings
    assert (s.solver, s.tol, s.max_iter, s.stop, s.backward) == (
        "anderson",
        1e-4,
        30,
        "rel",
        "phantom",
    )
    assert s.gradient == deqkit.Phantom(5, 0.5) and s.solver_obj == deqkit.solvers.Anderson()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.tol = 1e-3
    # DEQ's keywords are the settings' fields, with the same defaults
    params = inspect.signature(deqkit.DEQ).parameters
    fields = {f.name: f.default for f in dataclasses.fields(deqkit.DEQSettings)}
    assert {n: params[n].default for n in params if n not in ("f", "settings")} == fields
    assert deqkit.models.DEQ_SETTINGS == tuple(fields)
    assert repr(s) == (
        "DEQSettings(solver='anderson', tol=0.0001, max_iter=30, stop='rel', backward='phantom')"
    )
    assert repr(deqkit.DEQSettings(max_iter=5, solver_options={"m": 3})) == (
        "DEQSettings(solver='anderson', tol=0.0001, max_iter=5, stop='rel', backward='phantom', "
        "solver_options={'m': 3})"
    )
    assert deqkit.DEQSettings(tol=1).tol == 1.0 and isinstance(deqkit.DEQSettings(tol=1).tol, float)
    options = {"m": 3}
    kept = deqkit.DEQSettings(solver_options=options)
    options["m"] = 4  # the caller's dict changing later does not change the settings
    assert kept.solver_options == {"m": 3}


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"max_iter": 2.5}, ValueError, r"^Invalid max_iter: 2\.5 \(expected an integer >= 1\)$"),
        ({"tol": 0.0}, ValueError, r"^Invalid tol: 0\.0 \(expected a finite number > 0\)$"),
        ({"stop": "max"}, ValueError, r"^Invalid stop: 'max' \(expected one of 'abs', 'rel'\)$"),
        ({"correction": -1}, ValueError, r"^Invalid correction: -1 \(expected an integer >= 0\)"),
        ({"solver": "andersen"}, ValueError, "unknown method"),
        ({"backward": "adjoint"}, ValueError, "backward"),
        ({"backward": "phantom", "backward_tol": 1e-3}, ValueError, "implicit"),
        ({"solver_options": {"mm": 3}}, TypeError, "unknown option"),
    ],
)
def test_deq_settings_reject_bad_values_naming_them(kw, error, match):
    with pytest.raises(error, match=match):
        deqkit.DEQSettings(**kw)
    with pytest.raises(error, match=match):
        deqkit.DEQSettings().replace(**kw)  # replace validates again


def test_deq_settings_replace_makes_a_validated_copy():
    s = deqkit.DEQSettings(solver="picard", max_iter=50)
    t = s.replace(max_iter=100, backward="implicit")
    assert (s.max_iter, s.backward) == (50, "phantom")  # unchanged
    assert t == deqkit.DEQSettings(solver="picard", max_iter=100, backward="implicit")
    assert t.bound.max_iter == 200 and s.replace() is s
    with pytest.raises(TypeError, match=r"unknown DEQ setting\(s\) max_iters; valid: solver, tol"):
        s.replace(max_iters=3)


def test_a_deq_from_a_settings_object_equals_one_from_the_same_keywords():
    kw = dict(solver="broyden", tol=1e-9, max_iter=80, stop="abs", backward="implicit")
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    by_keywords = deqkit.DEQ(tanh_cell(), **kw)
    by_object = deqkit.DEQ(tanh_cell(), settings=deqkit.DEQSettings(**kw))
    assert by_object.settings == by_keywords.settings == deqkit.DEQSettings(**kw)
    assert by_object.extra_repr() == by_keywords.extra_repr()
    z1, i1 = by_keywords(x)
    z2, i2 = by_object(x)
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    assert i1.iterations.tolist() == i2.iterations.tolist()
    for g1, g2 in zip(param_grads(by_keywords, x), param_grads(by_object, x), strict=True):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_settings_and_keywords_that_disagree_are_an_error():
    s = deqkit.DEQSettings(max_iter=7)
    assert deqkit.DEQ(tanh_cell(), settings=s, max_iter=7).settings is s  # agrees: fine
    assert deqkit.DEQ(tanh_cell(), settings=s, solver="anderson").settings is s  # a default
    with pytest.raises(ValueError, match=r"settings=DEQSettings\(.*max_iter=7.*\) and tol=0\.001"):
        deqkit.DEQ(tanh_cell(), settings=s, tol=1e-3)
    with pytest.raises(TypeError, match="settings must be a DEQSettings or None, got dict"):
        deqkit.DEQ(tanh_cell(), settings={"tol": 1e-3})


def test_assigning_new_settings_changes_every_later_call():
    deq = deqkit.DEQ(tanh_cell(gain=0.95), solver="picard", tol=1e-12, max_iter=3)
    x = torch.randn(2, 4, dtype=D)
    assert int(deq(x)[1].iterations.max()) == 3
    deq(x, max_iter=4)  # fills the per-call cache
    deq.settings = deq.settings.replace(max_iter=100)
    assert int(deq(x)[1].iterations.max()) > 3
    assert int(deq(x, max_iter=4)[1].iterations.max()) == 4
    assert "max_iter=100" in repr(deq)
    with pytest.raises(TypeError, match="settings must be a DEQSettings"):
        deq.settings = {"max_iter": 3}
