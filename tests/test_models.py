"""deqkit.models: protocol, shapes, parameter counts, training, iterates, guarantees, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import deqkit
from deqkit import models
from deqkit.models import (
    DEQMLP,
    DEQConv,
    EquilibriumModel,
    ExplicitConv,
    ExplicitMLP,
    ExplicitModel,
    MonotoneCell,
    MonotoneMLP,
    RecallNet,
    available_models,
    build_model,
    model_factory,
    progressive_loss,
)

W = 16  # small width keeps the file fast


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def recall1d(**kw):
    return RecallNet.for_prefix_sums(width=W, **kw)


def recall2d(**kw):
    return RecallNet.for_mazes(width=W, **kw)


def deq_mlp(**kw):
    return DEQMLP(64, hidden=W, groups=4, **kw)


def deq_conv(**kw):
    return DEQConv(channels=(8, 16), **kw)


def monotone(**kw):
    return MonotoneMLP(64, hidden=W, **kw)


EQUILIBRIUM = {
    "recall1d": (recall1d, (4, 1, 16)),
    "recall2d": (recall2d, (4, 3, 19, 19)),
    "deq_mlp": (deq_mlp, (4, 1, 8, 8)),
    "deq_conv": (deq_conv, (4, 1, 8, 8)),
    "monotone_mlp": (monotone, (4, 64)),
}


def bits(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, 1, length), generator=g)
    return x.float(), x[:, 0].cumsum(-1).remainder(2)


def state_close(a, b, **kw):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    assert len(a) == len(b)
    for s, t in zip(a, b, strict=True):
        torch.testing.assert_close(s, t, **kw)


def test_public_names_exported():
    for name in models.__all__:
        assert hasattr(models, name), name
    assert sorted(models.__all__) == sorted(set(models.__all__))


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("make", "shape", "out"),
    [
        (recall1d, (3, 1, 16), (3, 2, 16)),
        (recall1d, (3, 1, 64), (3, 2, 64)),
        (recall2d, (2, 3, 19, 19), (2, 2, 19, 19)),
        (recall2d, (2, 3, 27, 27), (2, 2, 27, 27)),
        (lambda: recall1d(recall=False), (3, 1, 64), (3, 2, 64)),
        (lambda: recall2d(norm_groups=4), (2, 3, 27, 27), (2, 2, 27, 27)),
        (deq_mlp, (3, 1, 8, 8), (3, 10)),
        (deq_mlp, (3, 64), (3, 10)),
        (lambda: DEQMLP(784, 7, hidden=W, norm="layer", activation="tanh"), (3, 1, 28, 28), (3, 7)),
        (deq_conv, (3, 1, 8, 8), (3, 10)),
        (deq_conv, (3, 1, 28, 28), (3, 10)),
        (lambda: DEQConv(channels=(8,)), (3, 1, 28, 28), (3, 10)),
        (lambda: DEQConv(3, 5, channels=(8, 16)), (3, 3, 9, 7), (3, 5)),
        (monotone, (3, 64), (3, 10)),
        (lambda: MonotoneMLP(784, hidden=W), (3, 1, 28, 28), (3, 10)),
    ],
)
def test_equilibrium_model_shapes_and_protocol(make, shape, out):
    model = make()
    assert isinstance(model, EquilibriumModel) and isinstance(model.deq, deqkit.DEQ)
    assert model.cell is model.deq.f
    x = torch.rand(shape)
    logits, info = model(x)
    assert logits.shape == out and isinstance(info, deqkit.DEQInfo)
    assert info.forward.iterations.shape == (shape[0],)
    # the cheap initial_state equals the cell's own start from the injection
    u = model.inject(x)
    state_close(model.initial_state(x), model.cell.initial_state(u))
    # readout works on any iterate, and the cell maps a state to a state
    z1 = model.cell(model.initial_state(x), u)
    assert model.readout(z1).shape == out
    outs = model.iterate(x, 2)
    assert len(outs) == 2 and all(o.shape == out for o in outs)


@pytest.mark.parametrize(
    ("model", "shape", "classes"),
    [
        (ExplicitMLP(64, hidden=W, depth=3), (3, 1, 8, 8), 10),
        (ExplicitMLP(784, 4, hidden=W, depth=2, norm=None), (3, 1, 28, 28), 4),
        (ExplicitConv(channels=(8, 16), depth=2), (3, 1, 8, 8), 10),
        (ExplicitConv(3, 5, channels=(8,), depth=3), (3, 3, 28, 28), 5),
    ],
)
def test_explicit_model_shapes(model, shape, classes):
    assert isinstance(model, ExplicitModel)
    logits, info = model(torch.rand(shape))
    assert info is None and logits.shape == (shape[0], classes)
    assert model.num_parameters() > 0


def test_an_equilibrium_model_from_custom_parts():
    model = EquilibriumModel(
        nn.Linear(5, 8), models.MLPCell(8, groups=2), nn.Linear(8, 3), tol=1e-5
    )
    logits, info = model(torch.rand(4, 5))
    assert logits.shape == (4, 3) and bool(info.converged.all())
    assert model.num_parameters() == 5 * 8 + 8 + 8 * 8 + 2 * 8 + 8 * 3 + 3
    with pytest.raises(TypeError, match="initial_state"):
        EquilibriumModel(nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 3))


def test_one_recall_model_runs_on_any_size():
    model = recall1d()
    for length in (16, 64, 200):
        assert model.iterate(bits(2, length)[0], 3, every=False)[0].shape == (2, 2, length)
    model = recall2d()
    for size in (9, 19, 27):
        assert model(torch.rand(1, 3, size, size))[0].shape == (1, 2, size, size)


# --------------------------------------------------------------------------- parameter counts


def test_parameter_count_of_a_small_recall_net_by_hand():
    model = RecallNet(1, 1, width=4, num_blocks=1, head_channels=(3, 2))
    inject = 1 * 4 * 3
    recall = (4 + 4) * 4 * 3
    block = 2 * 4 * 4 * 3
    head = 4 * 3 * 3 + 3 * 2 * 3 + 2 * 2 * 3
    assert model.num_parameters() == inject + recall + block + head == 270
    no_recall = RecallNet(1, 1, width=4, num_blocks=1, head_channels=(3, 2), recall=False)
    assert no_recall.num_parameters() == 270 - recall
    # the cell is registered once (as deq.f), so the state dict holds each weight once
    assert not any(k.startswith("cell.") for k in model.state_dict())


def test_parameter_counts_of_dense_models_by_hand():
    inject, w, gn, head = 5 * 4 + 4, 4 * 4, 2 * 4, 4 * 3 + 3
    assert DEQMLP(5, 3, hidden=4, groups=2).num_parameters() == inject + w + gn + head == 63
    assert ExplicitMLP(5, 3, hidden=4, groups=2, depth=3).num_parameters() == 63 + 2 * (w + gn)
    assert DEQMLP(5, 3, hidden=4, norm=None).num_parameters() == 63 - gn
    assert MonotoneMLP(5, 3, hidden=4).num_parameters() == inject + 2 * w + head


def test_parameter_count_of_a_small_conv_model_by_hand():
    model = DEQConv(1, 3, channels=(4, 8), groups=2)
    inject = (9 * 4 + 4) + (9 * 8 + 8)
    branches = sum(2 * 9 * c * c + 3 * 2 * c for c in (4, 8))
    fuse = (9 * 4 * 8 + 2 * 8) + (8 * 4 + 2 * 4)
    head = 12 * 3 + 3
    assert model.num_parameters() == inject + branches + fuse + head == 2015
    cell = branches + fuse
    explicit = ExplicitConv(1, 3, channels=(4, 8), groups=2, depth=3)
    assert explicit.num_parameters() == 2015 + 2 * cell


def test_num_parameters_trainable_only():
    model = deq_mlp()
    model.head.requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - (W * 10 + 10)


# --------------------------------------------------------------------------- training


# Recall nets have no norms and no biases (as DeepThinking) and want small steps and
# clipping: at 3e-3 the 2-D DEQ stops converging after a few steps and its loss jumps.
LR = {"recall1d": 3e-3, "recall2d": 1e-3, "deq_mlp": 1e-2, "deq_conv": 1e-2, "monotone_mlp": 1e-2}


def _train(model, x, y, loss_of, lr, steps=20):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(model, x, y)
        assert torch.isfinite(loss)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def _deq_loss(model, x, y):
    return F.cross_entropy(model(x)[0], y)


def _eval_loss(model, x, y, iterations=None):
    with torch.no_grad():
        out = model(x)[0] if iterations is None else model.iterate(x, iterations, every=False)[0]
    return F.cross_entropy(out, y).item()


def _train_data(name):
    g = torch.Generator().manual_seed(1)
    if name == "recall1d":  # copy the bits: local, so a few steps show progress
        x, _ = bits(8, 16)
        return x, x[:, 0].long()
    if name == "recall2d":
        x = (torch.rand(4, 3, 9, 9, generator=g) > 0.5).float()
        return x, (x[:, 0] * x[:, 1]).long()
    x = torch.rand(16, *EQUILIBRIUM[name][1][1:], generator=g)
    return x, torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("name", list(EQUILIBRIUM))
def test_deq_form_trains(name):
    model = EQUILIBRIUM[name][0]()
    x, y = _train_data(name)
    before = _eval_loss(model, x, y)
    _train(model, x, y, _deq_loss, LR[name], steps=40)  # phantom (the default) starts slower
    assert _eval_loss(model, x, y) < 0.9 * before


@pytest.mark.parametrize("name", list(EQUILIBRIUM))
def test_recurrent_form_trains_with_progressive_loss(name):
    model = EQUILIBRIUM[name][0]()
    x, y = _train_data(name)
    g = torch.Generator().manual_seed(0)
    before = _eval_loss(model, x, y, iterations=6)
    _train(model, x, y, lambda m, x, y: progressive_loss(m, x, y, 6, 0.5, g), LR[name])
    assert _eval_loss(model, x, y, iterations=6) < 0.9 * before


@pytest.mark.parametrize(
    "model",
    [ExplicitMLP(64, hidden=W, groups=4, depth=3), ExplicitConv(channels=(8, 16), depth=2)],
)
def test_explicit_model_trains(model):
    x, y = _train_data("deq_conv")
    before = _eval_loss(model, x, y)
    _train(model, x, y, _deq_loss, 1e-2)
    assert _eval_loss(model, x, y) < 0.9 * before


# --------------------------------------------------------------------------- iterates


@pytest.mark.parametrize("name", list(EQUILIBRIUM))
def test_iterate_readouts_equal_running_the_cell(name):
    make, shape = EQUILIBRIUM[name]
    model = make()
    x = torch.rand(shape)
    outs = model.iterate(x, 5)
    assert len(outs) == 5
    u = model.inject(x)
    z = model.cell.initial_state(u)
    for k in range(5):
        z = model.cell(z, u)
        torch.testing.assert_close(outs[k], model.readout(z))
    last = model.iterate(x, 5, every=False)
    assert len(last) == 1
    torch.testing.assert_close(last[0], outs[-1])
    for n in (1, 3):
        torch.testing.assert_close(model.iterate(x, n)[-1], outs[n - 1])
    state_close(model.unroll(x, 5), z)
    state_close(model.unroll(x, 0), model.initial_state(x))


def test_iterate_from_a_given_state_continues_the_run():
    model = recall1d()
    x, _ = bits(3, 16)
    z2 = model.unroll(x, 2)
    torch.testing.assert_close(model.iterate(x, 3, z0=z2)[-1], model.iterate(x, 5)[-1])


def test_iterate_backprops_through_every_step():
    model = recall1d()
    x, y = bits(3, 16)
    outs = model.iterate(x, 4)
    grads = torch.autograd.grad(F.cross_entropy(outs[0], y), model.cell.parameters())
    assert any(g.abs().sum() > 0 for g in grads)


def test_iterate_rejects_bad_iteration_counts():
    model = recall1d()
    x, _ = bits(2, 16)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="iterations"):
            model.iterate(x, bad)
    with pytest.raises(ValueError, match="iterations"):
        model.unroll(x, -1)


@pytest.mark.parametrize("make", [recall1d, recall2d])
def test_no_recall_ablation_ignores_the_input_after_the_start(make):
    model = make(recall=False)
    shape = (3, 1, 16) if model.dim == 1 else (2, 3, 9, 9)
    x1, x2 = torch.rand(shape), torch.rand(shape)
    u1, u2 = model.inject(x1), model.inject(x2)
    torch.testing.assert_close(model.initial_state(x1), u1)
    z = torch.rand_like(u1)
    torch.testing.assert_close(model.cell(z, u1), model.cell(z, u2))
    # a perturbed input changes the run only through z0
    z0 = model.initial_state(x1)
    for a, b in zip(model.iterate(x1, 4, z0), model.iterate(x2, 4, z0), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(model.iterate(x1, 4)[-1], model.iterate(x2, 4)[-1])
    # with recall, the same start and another input give another run
    recall = make()
    z0 = recall.initial_state(x1)
    assert not torch.allclose(recall.iterate(x1, 2, z0)[-1], recall.iterate(x2, 2, z0)[-1])


# --------------------------------------------------------------------------- fixed points


@pytest.mark.parametrize("name", list(EQUILIBRIUM))
def test_deq_fixed_point_is_a_fixed_point_of_the_cell(name):
    make, shape = EQUILIBRIUM[name]
    model = make()
    x = torch.rand(shape)
    with torch.no_grad():
        u = model.inject(x)
        z, info = model.deq(u, tol=1e-5, max_iter=200)
        fz = model.cell(z, u)
    assert bool(info.converged.all()), info

    def flat(s):
        return torch.cat([t.flatten(1) for t in (s if isinstance(s, tuple) else (s,))], 1)

    gap = (flat(fz) - flat(z)).norm(dim=1) / flat(fz).norm(dim=1)
    assert float(gap.max()) < 2e-5
    logits, _ = model(x, tol=1e-5, max_iter=200)
    torch.testing.assert_close(logits, model.readout(z), atol=1e-4, rtol=1e-4)


def test_deq_settings_reach_the_layer_and_can_be_overridden_per_call():
    model = RecallNet.for_prefix_sums(width=W, solver="picard", deq_kwargs={"max_iter": 7})
    s = model.deq.settings
    assert (s.solver, s.max_iter, s.tol) == ("picard", 7, 1e-3)  # RecallNet's tol
    x, _ = bits(3, 16)
    _, info = model(x)
    assert int(info.iterations.max()) <= 7
    _, info = model(x, max_iter=2, solver="anderson")
    assert int(info.iterations.max()) <= 2 and info.forward.method == "anderson"
    assert MonotoneMLP(8).deq.settings.solver == "picard"
    assert MonotoneMLP(8, solver="anderson").deq.settings.solver == "anderson"


def test_deq_setting_errors():
    with pytest.raises(TypeError, match="unknown argument.*max_iters.*valid.*a DEQ setting"):
        recall1d(max_iters=5)
    with pytest.raises(ValueError, match="tol.*both"):
        recall1d(tol=1e-3, deq_kwargs={"tol": 1e-4})
    with pytest.raises(ValueError, match="tol.*both"):
        recall1d(tol=1e-3, deq_settings={"tol": 1e-4})
    with pytest.raises(ValueError, match=r"Invalid tol: -1\.0"):
        recall1d(tol=-1.0)
    with pytest.raises(TypeError, match="deq_kwargs"):
        recall1d(deq_kwargs=[("tol", 1e-3)])
    with pytest.raises(TypeError, match="unknown DEQ setting.*tols in deq_settings; valid"):
        recall1d(deq_settings={"tols": 1e-3})
    with pytest.raises(ValueError, match="deq_settings or its alias deq_kwargs, not both"):
        recall1d(deq_settings={"tol": 1e-3}, deq_kwargs={"max_iter": 3})
    with pytest.raises(ValueError, match="max_iter given both in deq_settings"):
        recall1d(deq_settings=deqkit.DEQSettings(max_iter=5), max_iter=6)


def test_a_misspelt_model_argument_is_an_unknown_model_argument():
    # was "unknown DEQ setting(s) widht": the model's own arguments went unnamed
    for make, valid in ((lambda **kw: DEQMLP(64, 10, **kw), "hidden"), (recall1d, "width")):
        with pytest.raises(TypeError) as err:
            make(widht=8)
        message = str(err.value)
        assert "unknown argument(s) widht" in message and "unknown DEQ setting" not in message
        assert f" {valid}," in message and "or a DEQ setting (solver, tol" in message


def test_a_model_takes_its_deq_settings_as_one_argument():
    settings = deqkit.DEQSettings(solver="picard", tol=1e-5, max_iter=40, backward="implicit")
    keywords = dict(solver="picard", tol=1e-5, max_iter=40, backward="implicit")
    with_object = recall1d(deq_settings=settings)
    assert with_object.deq.settings == settings  # a whole object replaces the defaults
    assert recall1d(**keywords).deq.settings == settings
    assert recall1d(deq_kwargs=keywords).deq.settings == settings
    # a dict is some settings, over the model's own defaults (RecallNet: tol=1e-3)
    partial = recall1d(deq_settings={"solver": "picard"}).deq.settings
    assert partial == deqkit.DEQSettings(solver="picard", tol=1e-3)
    assert MonotoneMLP(8, deq_settings={"max_iter": 7}).deq.settings == deqkit.DEQSettings(
        solver="picard", max_iter=7, backward="implicit"
    )
    # a keyword equal to the object's value is no conflict
    assert recall1d(deq_settings=settings, tol=1e-5).deq.settings == settings
    x, _ = bits(3, 16)
    torch.manual_seed(0)
    a, ia = recall1d(deq_settings=settings)(x)
    torch.manual_seed(0)
    b, ib = recall1d(**keywords)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ia.iterations.tolist() == ib.iterations.tolist()


def test_explicit_twin_with_tied_weights_is_the_recurrent_run():
    deq = deq_mlp()
    twin = ExplicitMLP(64, hidden=W, groups=4, depth=3)
    twin.injection.load_state_dict(deq.injection.state_dict())
    twin.head.load_state_dict(deq.head.state_dict())
    for layer in twin.layers:
        layer.load_state_dict(deq.cell.state_dict())
    x = torch.rand(4, 64)
    torch.testing.assert_close(twin(x)[0], deq.iterate(x, 3)[-1])

    deq, twin = deq_conv(), ExplicitConv(channels=(8, 16), depth=2)
    twin.injection.load_state_dict(deq.injection.state_dict())
    twin.head.load_state_dict(deq.head.state_dict())
    for layer in twin.layers:
        layer.load_state_dict(deq.cell.state_dict())
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(twin(x)[0], deq.iterate(x, 2)[-1])


# --------------------------------------------------------------------------- guarantees


def _monotone_case(seed, scale):
    torch.manual_seed(seed)
    model = MonotoneMLP(16, 4, hidden=12, m=0.5)
    with torch.no_grad():  # weights far from the initialisation: the guarantee is for any
        model.cell.A.mul_(scale)
        model.cell.B.mul_(scale)
    return model, 3.0 * torch.randn(6, 16)


@pytest.mark.parametrize(("seed", "scale"), [(0, 1.0), (1, 3.0), (2, 6.0)])
def test_monotone_cell_is_strongly_monotone_and_picard_converges(seed, scale):
    model, x = _monotone_case(seed, scale)
    cell = model.cell
    Wm = cell.weight().detach().double()
    sym = torch.eye(12, dtype=Wm.dtype) - 0.5 * (Wm + Wm.T)
    assert float(torch.linalg.eigvalsh(sym).min()) >= cell.m - 1e-5
    L = float(torch.linalg.matrix_norm(torch.eye(12, dtype=Wm.dtype) - Wm, 2))
    assert cell.lipschitz() == pytest.approx(L, rel=1e-6)
    assert 0 < cell.step_size() <= 2 * cell.m / L**2
    assert cell.contraction_factor() < 1
    with torch.no_grad():
        u = model.inject(x)
        z, info = model.deq(u, solver="picard", tol=1e-6, stop="abs", max_iter=5000)
    assert bool(info.converged.all()), info
    # the limit solves the monDEQ equation z = relu(W z + U x + b), whatever the step size
    torch.testing.assert_close(z, torch.relu(z @ cell.weight().T + u), atol=1e-4, rtol=1e-4)


def test_monotone_step_size_is_frozen_for_a_solve_and_restored():
    cell = MonotoneCell(8)
    assert cell._alpha is None
    with cell.frozen_step_size() as alpha:
        assert cell.step_size() == alpha
        with torch.no_grad():
            cell.A.mul_(3.0)
        assert cell.step_size() == alpha
    assert cell._alpha is None and cell.step_size() < alpha


def _normalised_weights(model):
    for m in model.cell.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            yield m.weight.reshape(m.weight.shape[0], -1)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: recall1d(spectral_norm=True), (3, 1, 16)),
        (lambda: recall2d(spectral_norm=True), (2, 3, 9, 9)),
        (lambda: deq_mlp(spectral_norm=True), (3, 64)),
        (lambda: deq_conv(spectral_norm=True), (3, 1, 8, 8)),
    ],
)
def test_spectral_norm_bounds_every_cell_weight(make, shape):
    model = make().train()
    layers = [m for m in model.cell.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    model(torch.rand(shape))
    with torch.no_grad():
        for w in _normalised_weights(model):
            assert float(torch.linalg.matrix_norm(w, 2)) <= 1 + 1e-3


# --------------------------------------------------------------------------- progressive loss


def test_progressive_loss_is_differentiable_and_reproducible():
    model = recall1d()
    x, y = bits(4, 16)
    for alpha in (0.0, 0.5, 1.0):
        loss = progressive_loss(model, x, y, 5, alpha, torch.Generator().manual_seed(3))
        assert loss.dim() == 0 and torch.isfinite(loss)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    a = progressive_loss(model, x, y, 5, 1.0, torch.Generator().manual_seed(7))
    b = progressive_loss(model, x, y, 5, 1.0, torch.Generator().manual_seed(7))
    assert a.item() == b.item()
    # alpha=0 is plain backprop through max_iters steps
    full = F.cross_entropy(model.iterate(x, 5, every=False)[0], y)
    torch.testing.assert_close(progressive_loss(model, x, y, 5, 0.0), full)


def test_progressive_loss_with_custom_loss_and_no_recall():
    model = recall1d(recall=False)
    x, y = bits(4, 16)
    loss = progressive_loss(model, x, y, 3, 0.5, loss_fn=lambda out, y: out.pow(2).mean())
    loss.backward()
    assert model.injection.conv.weight.grad is not None


@pytest.mark.parametrize(
    ("kw", "match"), [({"max_iters": 0}, "max_iters"), ({"alpha": 1.5}, "alpha")]
)
def test_progressive_loss_rejects_bad_arguments(kw, match):
    x, y = bits(2, 8)
    args = {"max_iters": 3, "alpha": 0.5, **kw}
    with pytest.raises(ValueError, match=match):
        progressive_loss(recall1d(), x, y, **args)


# --------------------------------------------------------------------------- errors and registry


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RecallNet(3, 1), "dim"),
        (lambda: RecallNet(1, 0), "in_channels"),
        (lambda: RecallNet(1, 1, width=0), "width"),
        (lambda: RecallNet(1, 1, num_blocks=0), "num_blocks"),
        (lambda: RecallNet(1, 1, width=6, norm_groups=4), "norm_groups"),
        (lambda: RecallNet(1, 1, head_channels=(32, 0)), "head_channels"),
        (lambda: RecallNet(1, 1, out_channels=0), "out_channels"),
        (lambda: DEQMLP(0), "in_features"),
        (lambda: DEQMLP(8, 0), "num_classes"),
        (lambda: DEQMLP(8, hidden=0), "hidden"),
        (lambda: DEQMLP(8, norm="batch"), "norm"),
        (lambda: DEQMLP(8, hidden=12, groups=8), "groups"),
        (lambda: DEQMLP(8, activation="sigmoid"), "activation"),
        (lambda: ExplicitMLP(8, depth=0), "depth"),
        (lambda: DEQConv(channels=(8, 16, 32)), "channels"),
        (lambda: DEQConv(channels=(6,), groups=4), "groups"),
        (lambda: DEQConv(in_channels=0), "in_channels"),
        (lambda: ExplicitConv(depth=0), "depth"),
        (lambda: DEQConv(dropout=1.0), "Invalid dropout: 1.0"),
        (lambda: DEQConv(dropout=-0.1), "Invalid dropout"),
        (lambda: MonotoneMLP(8, m=0.0), "Invalid m: 0.0"),
        (lambda: MonotoneMLP(8, damping=2.0), "damping"),
        (lambda: MonotoneMLP(8, hidden=-1), "hidden"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("model", "x"),
    [
        (RecallNet.for_prefix_sums(width=4), torch.rand(2, 16)),
        (RecallNet.for_mazes(width=4), torch.rand(2, 1, 9, 9)),
        (DEQMLP(64, hidden=8), torch.rand(2, 1, 28, 28)),
        (DEQConv(channels=(4,)), torch.rand(2, 3, 8, 8)),
    ],
)
def test_wrong_input_shape_is_a_clear_error(model, x):
    with pytest.raises(ValueError, match="x must be"):
        model(x)
    with pytest.raises(ValueError, match="x must be"):
        model.initial_state(x)


def test_build_model_knows_every_name():
    assert available_models() == sorted(
        [
            "recall1d",
            "recall2d",
            "deq_mlp",
            "deq_conv",
            "monotone_mlp",
            "explicit_mlp",
            "explicit_conv",
            "deq_attention",
            "explicit_attention",
        ]
    )
    for name in available_models():
        kw = {"in_features": 64} if name.endswith("mlp") else {}
        model = build_model(name, **kw)
        assert isinstance(model, EquilibriumModel | ExplicitModel) and model.num_parameters() > 0
    assert build_model("recall1d", width=8).width == 8
    assert build_model("recall2d", width=8).dim == 2


def test_build_model_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*deq_conv.*recall1d.*recall2d"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown model 'resnet'.*deq_conv.*recall1d.*recall2d"):
        model_factory("resnet")


def test_model_factory_is_the_constructor_build_model_calls():
    assert model_factory("deq_mlp") is DEQMLP
    assert model_factory("recall1d") == RecallNet.for_prefix_sums
    assert model_factory("recall2d") == RecallNet.for_mazes
    for name in available_models():
        assert callable(model_factory(name)), name


# --------------------------------------------------------------------------- variational dropout


def _dropout_conv(p=0.3):
    torch.manual_seed(0)
    return DEQConv(channels=(8, 16), dropout=p, solver="anderson", tol=1e-6, max_iter=200)


def test_variational_dropout_is_one_map_for_a_whole_solve():
    """In training mode the solve converges to a fixed point of the masked cell (the mask
    is the same at every iteration); a per-call mask would leave no fixed point."""
    model = _dropout_conv().double().train()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        with model._frozen():  # what forward does: draw masks, then solve
            u = model.inject(x)
            z, info = model.deq(u)
        assert bool(info.converged.all())
        fz = model.cell(z, u)  # the cell alone draws nothing new
    state_close(fz, z, atol=1e-5, rtol=0)
    # the same call without dropout has another fixed point: the masks act
    for branch in model.cell.branches:
        assert branch.drop.mask is not None and (branch.drop.mask == 0).any()
    with torch.no_grad():
        plain = [b.drop.p for b in model.cell.branches]
        for b in model.cell.branches:
            b.drop.p = 0.0
        g = model.cell(z, u)
        for b, p in zip(model.cell.branches, plain, strict=True):
            b.drop.p = p
    assert max((a - b).abs().max().item() for a, b in zip(g, z, strict=True)) > 1e-3


def test_variational_dropout_draws_new_masks_at_every_forward_and_none_in_eval():
    model = _dropout_conv().train()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        model(x)
        first = model.cell.branches[0].drop.mask.clone()
        model(x)
        second = model.cell.branches[0].drop.mask
    assert not torch.equal(first, second)
    keep = (second != 0).float().mean().item()
    assert 0.55 < keep < 0.85  # p = 0.3
    torch.testing.assert_close(second[second != 0], torch.full_like(second[second != 0], 1 / 0.7))
    # eval mode: the identity, equal to the same weights built without dropout
    model.eval()
    torch.manual_seed(0)
    twin = DEQConv(channels=(8, 16), solver="anderson", tol=1e-6, max_iter=200).eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], twin(x)[0])


def test_variational_dropout_keeps_the_implicit_gradient_exact():
    """The implicit backward re-evaluates the cell at z*; it must see the forward's mask,
    so the gradient equals autograd through a long unrolled run of the same masked map."""
    torch.manual_seed(0)
    model = DEQConv(
        channels=(8, 16),
        dropout=0.25,
        tol=1e-10,
        max_iter=300,
        backward=deqkit.Implicit(tol=1e-12, max_iter=400),
    )
    model = model.double().train()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    logits, _ = model(x)
    logits.square().sum().backward()
    implicit = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # calling the cell directly (not the model) keeps the forward's masks
    u = model.inject(x)
    z = model.cell.initial_state(u)
    for _ in range(400):
        z = model.cell(z, u)
    model.readout(z).square().sum().backward()
    for a, b in zip(implicit, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_deq_conv_defaults_to_the_measured_phantom_horizon_and_recall_keeps_the_layers():
    # DEQConv's default gradient is Phantom(8, 0.7) (measured on digits, docs/results.md
    # section 0); the recall networks keep the layer's Phantom(5, 0.5); a setting given
    # replaces the model's default, and the alias string still means Phantom(5, 0.5).
    assert models.DEQConv().deq.settings.gradient == deqkit.Phantom(8, 0.7)
    assert models.RecallNet(1, 1).deq.settings.gradient == deqkit.Phantom(5, 0.5)
    assert models.DEQConv(backward="phantom").deq.settings.gradient == deqkit.Phantom(5, 0.5)
    built = models.build_model("deq_conv", in_channels=1, num_classes=10)
    assert built.deq.settings.gradient == deqkit.Phantom(8, 0.7)
    implicit = models.DEQConv(deq_settings={"backward": "implicit"}).deq.settings.gradient
    assert isinstance(implicit, deqkit.Implicit)
