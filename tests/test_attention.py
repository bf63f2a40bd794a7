"""The transformer-block cell: shapes on sequences and grids, batch invariance, its untied
twin, every gradient (the implicit one against finite differences), bad input named."""

from __future__ import annotations

import pytest
import torch

import deqkit
from deqkit.models import DEQAttention, ExplicitAttention, build_model, sinusoidal_positions


def small(**kw) -> DEQAttention:
    torch.manual_seed(0)
    base = dict(in_channels=1, d_model=16, heads=2, solver="anderson", tol=1e-10, max_iter=200)
    return DEQAttention(**{**base, **kw}).double()


def test_shapes_on_sequences_of_any_length_and_on_grids():
    model = small()
    for length in (8, 33):
        x = torch.rand(3, 1, length, dtype=torch.float64).round()
        logits, info = model(x)
        assert logits.shape == (3, 2, length) and info.forward.converged.all()
        assert model.iterate(x, 4)[-1].shape == (3, 2, length)
    grid = small(in_channels=10, out_channels=9, spatial_dims=2)
    logits, _ = grid(torch.rand(2, 10, 9, 9, dtype=torch.float64))
    assert logits.shape == (2, 9, 9, 9)
    pos = sinusoidal_positions((9, 9), 16)
    assert pos.shape == (81, 16) and len({tuple(r.tolist()) for r in pos}) == 81


def test_a_sample_does_not_depend_on_the_rest_of_the_batch():
    model = small()
    x = torch.rand(5, 1, 12, dtype=torch.float64).round()
    alone, _ = model(x[:1])
    together, _ = model(x)
    torch.testing.assert_close(together[:1], alone, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(model.iterate(x, 3)[-1][:1], model.iterate(x[:1], 3)[-1])


def test_the_untied_twin_with_tied_weights_is_the_recurrence():
    model = small()
    twin = ExplicitAttention(1, d_model=16, heads=2, depth=3).double()
    twin.injection.load_state_dict(model.injection.state_dict())
    twin.head.load_state_dict(model.head.state_dict())
    for layer in twin.layers:
        layer.load_state_dict(model.cell.state_dict())
    x = torch.rand(2, 1, 10, dtype=torch.float64).round()
    torch.testing.assert_close(twin(x)[0], model.iterate(x, 3)[-1])
    assert build_model("explicit_attention", in_channels=1, d_model=8, heads=2).depth == 4


@pytest.mark.parametrize(
    "backward",
    [deqkit.Implicit(tol=1e-11, max_iter=400), deqkit.Phantom(5, 0.5), deqkit.Unrolled()],
)
def test_every_gradient_trains_it(backward):
    model = small(backward=backward)
    x = torch.rand(4, 1, 10, dtype=torch.float64).round()
    y = (x[:, 0].cumsum(-1) % 2).long()
    logits, _ = model(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.cell.qkv.weight.grad.abs().sum() > 0


def test_the_implicit_gradient_matches_finite_differences():
    model = small(backward=deqkit.Implicit(tol=1e-12, max_iter=400))
    x = torch.rand(3, 1, 8, dtype=torch.float64).round()
    y = (x[:, 0].cumsum(-1) % 2).long()

    def loss() -> torch.Tensor:
        logits, info = model(x)
        assert info.forward.converged.all()
        return torch.nn.functional.cross_entropy(logits, y)

    loss().backward()
    weight = model.cell.mlp[0].weight
    direction = torch.randn_like(weight)
    analytic = (weight.grad * direction).sum().item()
    eps = 1e-5
    with torch.no_grad():
        weight += eps * direction
        up = loss().item()
        weight -= 2 * eps * direction
        down = loss().item()
        weight += eps * direction
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="d_model=10 must be divisible by heads=4"):
        DEQAttention(1, d_model=10, heads=4)
    with pytest.raises(ValueError, match=r"Invalid spatial_dims: 3"):
        DEQAttention(1, spatial_dims=3)
    with pytest.raises(ValueError, match=r"Invalid depth: 0"):
        ExplicitAttention(1, depth=0)
    model = DEQAttention(1, d_model=8, heads=2)
    with pytest.raises(ValueError, match=r"x must be \[B, C, L\] with C = in_channels = 1"):
        model(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="d_model=2 is too small for positions on 2 axes"):
        sinusoidal_positions((3, 3), 2)
