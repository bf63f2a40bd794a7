"""Training recipes: each option is shown to act, from a plain loop and from train()."""

import json

import pytest
import torch
from test_deq import tanh_cell
from torch import nn
from torch.nn.utils import parametrize

import deqkit
from deqkit import Implicit, Phantom, Unrolled
from deqkit.nn import Recipe, jacobian_frobenius
from deqkit.train import TrainConfig, train

D = torch.float64


def x_batch(n=4, seed=0):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=D)


def grads(deq, x, z0=None, **overrides):
    z, info = deq(x, z0, **overrides)
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=D)
    return torch.autograd.grad((z * w).sum(), list(deq.parameters())), info


def test_pretraining_trains_a_weight_tied_stack_then_hands_over():
    cell = tanh_cell(gain=0.9)
    deq = deqkit.DEQ(cell, tol=1e-10, max_iter=100, backward=Implicit(tol=1e-12))
    recipe = Recipe(pretrain_steps=3, pretrain_iters=6)
    x = x_batch()
    early, late = recipe.plan(2, deq), recipe.plan(3, deq)
    assert early.pretraining and not late.pretraining
    adjoint = dict.fromkeys(("backward_solver", "backward_tol", "backward_max_iter"))
    assert early.overrides == {
        "backward": Unrolled(),
        **adjoint,
        "backward_options": None,
        "solver": "picard",
        "solver_options": None,
        "max_iter": 6,
    }
    assert late.overrides == {}
    got, info = grads(deq, x, **early.overrides)
    assert info.iterations.tolist() == [6] * 4  # six evaluations: z0 and five plain steps
    z = cell.initial_state(x)
    for _ in range(5):
        z = cell(z, x)
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=D)
    want = torch.autograd.grad((z * w).sum(), list(cell.parameters()))
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r)
    implicit, _ = grads(deq, x, **late.overrides)
    assert (implicit[0] - got[0]).abs().max() > 1e-3


def test_pretraining_leaves_out_the_layers_own_solver_options_and_adjoint_settings():
    # A layer that holds solver hyperparameters and adjoint settings of its own (as one
    # built from a config's [deq] table does) pretrains with the pretraining solver and
    # gradient at their defaults; the layer's settings were combined with them before.
    deq = deqkit.DEQ(
        tanh_cell(gain=0.9),
        solver="anderson",
        solver_options={"m": 3},
        backward="implicit",
        backward_tol=1e-9,
        backward_options={"m": 2},
    )
    x = x_batch()
    plan = Recipe(pretrain_steps=1, pretrain_iters=4).plan(0, deq)
    got, info = grads(deq, x, **plan.overrides)
    assert info.forward.method == "picard" and info.iterations.tolist() == [4] * 4
    assert isinstance(deq.resolved(**plan.overrides).gradient, Unrolled)
    gradient_only = Recipe(pretrain_steps=1, pretrain_solver=None, pretrain_iters=None)
    kept = deq.resolved(**gradient_only.plan(0, deq).overrides)
    assert kept.solver_options == {"m": 3} and isinstance(kept.gradient, Unrolled)


def test_jacobian_penalty_runs_on_its_schedule_and_lowers_the_jacobian():
    recipe = Recipe(jac_weight=2.0, jac_every=3, jac_stop=7)
    assert [recipe.plan(s).jac_weight for s in range(9)] == [2, 0, 0, 2, 0, 0, 2, 0, 0]
    late = Recipe(jac_weight=2.0, jac_every=2, jac_start=3, jac_stop=8)
    assert [late.plan(s).jac_weight for s in range(9)] == [0, 0, 0, 2, 0, 2, 0, 2, 0]

    def trained(weight):
        torch.manual_seed(0)
        cell = tanh_cell(gain=1.5, seed=1)
        deq = deqkit.DEQ(cell, backward=Phantom(), tol=1e-6, max_iter=60)
        head = nn.Linear(6, 1, dtype=D)
        opt = torch.optim.Adam([*cell.parameters(), *head.parameters()], lr=1e-2)
        r = Recipe(jac_weight=weight)
        x = x_batch(32)
        y = torch.sin(x.sum(1, keepdim=True))
        for step in range(40):
            plan = r.plan(step, deq)
            z, info = deq(x, **plan.overrides)
            loss = (head(z) - y).pow(2).mean()
            loss = loss + plan.jacobian_penalty(lambda z: cell(z, x), info.forward.z)
            opt.zero_grad()
            loss.backward()
            opt.step()
        z, _ = deq(x)
        gen = torch.Generator().manual_seed(0)
        return jacobian_frobenius(lambda z: cell(z, x), z, 8, generator=gen).mean().item()

    assert trained(5.0) < 0.5 * trained(0.0)


def test_fixed_point_correction_loss_has_exponential_weights_and_gradients():
    cell = tanh_cell(gain=0.9)
    deq = deqkit.DEQ(cell, solver="picard", tol=1e-12, max_iter=40, backward=Phantom())
    plan = Recipe(correction=3, correction_gamma=0.5).plan(0, deq)
    assert plan.overrides == {"correction": 3}
    x = x_batch()
    z, info = deq(x, **plan.overrides)
    assert len(info.corrections) == 3
    losses = [c.pow(2).sum() for c in info.corrections]
    got = plan.correction_loss(info, lambda z: z.pow(2).sum())
    torch.testing.assert_close(got, 0.125 * losses[0] + 0.25 * losses[1] + 0.5 * losses[2])
    (g,) = torch.autograd.grad(got, [cell.W])
    assert g.abs().max() > 0
    with pytest.raises(ValueError, match="plan.overrides"):
        plan.correction_loss(deq(x)[1], lambda z: z.sum())


def test_initial_states_random_and_mixed_replace_the_start():
    z0 = torch.zeros(200, 6, dtype=D)
    gen = torch.Generator().manual_seed(0)
    assert Recipe().plan(0, generator=gen).initial_state(z0) is z0
    rnd = Recipe(init="random", init_scale=2.0).plan(0, generator=gen).initial_state(z0)
    assert (rnd != 0).all(dim=1).all()
    assert 1.7 < rnd.std().item() < 2.3
    mixed = Recipe(init="mixed", init_p=0.25).plan(0, generator=gen).initial_state(z0)
    frac = (mixed != 0).any(dim=1).double().mean().item()
    assert 0.15 < frac < 0.35
    deq = deqkit.DEQ(tanh_cell(gain=0.9), solver="picard", tol=1e-8, max_iter=100)
    x = x_batch(200)
    assert (deq(x, rnd)[1].iterations != deq(x)[1].iterations).any()  # the solve starts there


def test_budget_jitter_draws_each_steps_budget_around_the_deqs():
    deq = deqkit.DEQ(tanh_cell(), max_iter=20)
    recipe = Recipe(max_iter_jitter=5)
    gen = torch.Generator().manual_seed(0)
    budgets = [recipe.plan(s, deq, generator=gen).overrides["max_iter"] for s in range(200)]
    assert min(budgets) == 15 and max(budgets) == 25
    again = torch.Generator().manual_seed(0)
    assert budgets == [
        recipe.plan(s, deq, generator=again).overrides["max_iter"] for s in range(200)
    ]
    assert recipe.plan(0, max_iter=3, generator=gen).overrides["max_iter"] in range(1, 9)
    stack = Recipe(max_iter_jitter=5, pretrain_steps=1, pretrain_iters=10)
    assert {stack.plan(0, deq, generator=gen).overrides["max_iter"] for _ in range(100)} == set(
        range(5, 16)
    )  # around the pretraining budget
    phantom_first = Recipe(
        max_iter_jitter=5,
        pretrain_steps=1,
        pretrain_solver=None,
        pretrain_iters=None,
        pretrain_gradient=deqkit.Phantom(),
    )
    first = [phantom_first.plan(0, deq, generator=gen).overrides for _ in range(100)]
    assert {o["max_iter"] for o in first} == set(range(15, 26))  # jitter while pretraining
    assert all(isinstance(o["backward"], deqkit.Phantom) for o in first)
    x = x_batch()
    _, info = deq(x, tol=1e-30, **recipe.plan(0, deq, generator=gen).overrides)
    assert 15 <= info.iterations[0] <= 25


def test_weight_norm_recipe_parametrizes_the_cell():
    plain = nn.Sequential(nn.Linear(3, 3))
    assert not parametrize.is_parametrized(Recipe().prepare(plain)[0])
    cell = Recipe(weight_norm=True).prepare(nn.Sequential(nn.Linear(3, 3)))
    assert parametrize.is_parametrized(cell[0], "weight")


def test_bad_recipe_options_name_the_field():
    with pytest.raises(ValueError, match="init: 'noise' .expected one of 'zeros', 'random', 'mix"):
        Recipe(init="noise")
    with pytest.raises(ValueError, match=r"Invalid jac_every: 0 \(expected an integer >= 1\)"):
        Recipe(jac_every=0)
    with pytest.raises(ValueError, match="correction_gamma"):
        Recipe(correction_gamma=1.5)
    # a float where an integer is needed is a bad value like any other (ValueError)
    with pytest.raises(ValueError, match=r"Invalid pretrain_steps: 2.5 \(expected an integer"):
        Recipe(pretrain_steps=2.5)
    with pytest.raises(ValueError, match="unknown backward"):
        Recipe(pretrain_gradient="bogus")


# ------------------------------------------------------------------------ through train()


def small(tmp_path, name, **kw):
    base = dict(
        task="prefix_sums",
        difficulty=6,
        model_kwargs={"width": 8, "num_blocks": 1},
        tol=1e-3,
        max_iter=8,
        steps=4,
        batch_size=8,
        eval_size=16,
        out_dir=str(tmp_path / name),
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def records(result):
    lines = result.metrics.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_train_config_recipes_act_step_by_step(tmp_path):
    pre = small(tmp_path, "pre", pretrain_steps=2, pretrain_iters=3, backward="implicit")
    r = train(pre, progress=False)
    rec = records(r)
    assert [x["iters_max"] for x in rec[:2]] == [3, 3]  # the weight-tied stack
    assert [x["backward_iters"] is None for x in rec] == [True, True, False, False]
    r = train(small(tmp_path, "jac", jac_penalty=0.5, jac_every=2, jac_stop=3), progress=False)
    assert [x["penalty"] is not None for x in records(r)] == [True, False, True, False]
    fb = {"name": "implicit", "fallback": {"name": "phantom", "k": 2}}
    r = train(small(tmp_path, "fb", backward=fb, max_iter=2), progress=False)
    assert all(x["fallback"] > 0 for x in records(r))  # 2 evaluations never converge
    r = train(small(tmp_path, "wn", weight_norm=True, correction=2, init="mixed"), progress=False)
    assert hasattr(r.model.cell.recall_conv, "parametrizations")
    reloaded, _, _ = deqkit.train.load_checkpoint(r.checkpoint)
    assert hasattr(reloaded.cell.recall_conv, "parametrizations")


def test_train_config_recipe_errors(tmp_path):
    with pytest.raises(ValueError, match="Invalid init: 'noise' .expected one of"):
        small(tmp_path, "x", init="noise")
    with pytest.raises(ValueError, match=r"Invalid jac_every: 0 \(expected an integer >= 1\)"):
        small(tmp_path, "x", jac_every=0)
    with pytest.raises(ValueError, match="pretrain_steps.*apply to mode='deq' only"):
        small(tmp_path, "x", mode="recurrent", pretrain_steps=3)
    cfg = small(
        tmp_path,
        "explicit",
        model="explicit_mlp",
        task="digits",
        difficulty=None,
        eval_size=None,
        model_kwargs={},
        init="mixed",
    )
    with pytest.raises(ValueError, match="init needs an equilibrium model"):
        train(cfg, progress=False)
