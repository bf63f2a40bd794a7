"""Contraction by construction: operator_norm_bound is a bound (and spectral normalisation's
reshaped norm is not), and a RecallNet cell with lipschitz=L is L-Lipschitz in z whatever its
weights, estimated by power iteration on the Jacobian and by random pairs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import jvp, vjp
from torch.nn.utils import parametrize

import deqkit
from deqkit.models import RecallNet
from deqkit.nn import apply_norm_bound, operator_norm_bound


def conv_operator_norm(weight: torch.Tensor, shape: tuple[int, ...], iters: int = 150) -> float:
    """Power iteration on A^T A for the zero-padded stride-1 conv with ``weight`` on inputs
    ``[1, in, *shape]`` (a lower estimate that converges to the true norm)."""
    conv = F.conv1d if weight.dim() == 3 else F.conv2d
    pad = weight.shape[-1] // 2
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, weight.shape[1], *shape, generator=g, dtype=weight.dtype)
    for _ in range(iters):
        v = v / v.norm()
        _, back = vjp(lambda t: conv(t, weight, padding=pad), v)
        v = back(conv(v, weight, padding=pad))[0]
    return v.norm().sqrt().item()


def jacobian_norm(f, z: torch.Tensor, iters: int = 100) -> float:
    """||df/dz||_2 at z by power iteration on J^T J (jvp, then vjp)."""
    g = torch.Generator().manual_seed(1)
    v = torch.randn(z.shape, generator=g, dtype=z.dtype)
    with parametrize.cached():  # the bounded weights once, not at every product
        _, pullback = vjp(f, z)
        for _ in range(iters):
            v = v / v.norm()
            _, jv = jvp(f, (z,), (v,))
            v = pullback(jv)[0]
    return v.norm().sqrt().item()


@pytest.mark.parametrize("dim", [1, 2])
def test_the_bound_bounds_the_true_operator_norm_and_the_reshaped_norm_does_not(dim):
    g = torch.Generator().manual_seed(dim)
    shape = (24,) if dim == 1 else (9, 9)
    for _ in range(3):
        w = torch.randn(6, 4, *([3] * dim), generator=g, dtype=torch.float64)
        assert conv_operator_norm(w, shape) <= operator_norm_bound(w).item() * (1 + 1e-9)
    # Identical taps: the conv acts like (sum of taps) on smooth inputs, T times one tap,
    # while the reshaped kernel's norm is sqrt(T) times one tap's.
    tap = torch.randn(6, 4, generator=g, dtype=torch.float64)
    w = tap[(...,) + (None,) * dim].expand(6, 4, *([3] * dim)).contiguous()
    true = conv_operator_norm(w, shape)
    reshaped = torch.linalg.matrix_norm(w.flatten(1), ord=2).item()
    assert reshaped < 0.7 * true <= operator_norm_bound(w).item()
    lin = torch.randn(5, 7, generator=g, dtype=torch.float64)
    assert operator_norm_bound(lin).item() == pytest.approx(torch.linalg.svdvals(lin)[0].item())


def scaled(model: RecallNet, factor: float) -> RecallNet:
    """Raw weights times ``factor``: a cell whose unconstrained version expands."""
    with torch.no_grad():
        for p in model.cell.parameters():
            if p.dim() > 1:
                p.mul_(factor)
    return model


@pytest.mark.parametrize("dim,L", [(1, 0.5), (1, 0.9), (2, 0.99)])
def test_a_lipschitz_cell_is_l_lipschitz_in_z_whatever_its_weights(dim, L):
    torch.manual_seed(dim)
    make = RecallNet.for_prefix_sums if dim == 1 else RecallNet.for_mazes
    shape = (1, 20) if dim == 1 else (3, 9, 9)
    bound = scaled(make(width=6, lipschitz=L).double(), 10.0)
    free = scaled(make(width=6).double(), 10.0)
    for _ in range(3):
        x = torch.rand(2, *shape, dtype=torch.float64).round()
        z = torch.randn(2, 6, *shape[1:], dtype=torch.float64)
        u = bound.inject(x)
        assert jacobian_norm(lambda t, u=u: bound.cell(t, u), z) <= L * (1 + 1e-6)
        z2 = z + 0.3 * torch.randn_like(z)
        ratio = (bound.cell(z, u) - bound.cell(z2, u)).norm() / (z - z2).norm()
        assert ratio <= L * (1 + 1e-9)
        # The guard: the same weights without the construction expand.
        uf = free.inject(x)
        assert jacobian_norm(lambda t, u=uf: free.cell(t, u), z) > 1.5


@pytest.mark.parametrize("L", [0.5, 0.99])
def test_the_constant_is_attained_where_the_bound_is_tight(L):
    """Identity taps (a conv that sums each channel over three neighbours, whose bound is
    nearly attained) and a positive state, so every ReLU is active: the Jacobian norm
    comes within 1% of L. A cell that broke the construction anywhere (a block x + a g(x),
    a missing factor) would exceed L here; random weights, whose bounds are loose, cannot
    show that."""
    width, length = 4, 64
    model = RecallNet.for_prefix_sums(width=width, lipschitz=L).double()
    eye = torch.eye(width, dtype=torch.float64)[..., None].expand(width, width, 3)
    with torch.no_grad():
        for module in model.cell.modules():
            if hasattr(module, "parametrizations"):
                raw = module.parametrizations.weight.original
                raw.zero_()
                raw[:, :width] = eye  # the recall conv reads z only
    x = torch.rand(2, 1, length, dtype=torch.float64).round()
    u = model.inject(x)
    z = 1.0 + torch.rand(2, width, length, dtype=torch.float64)
    norm = jacobian_norm(lambda t: model.cell(t, u), z, iters=300)
    assert 0.99 * L <= norm <= L * (1 + 1e-6)


def test_plain_iteration_on_a_contractive_cell_contracts_at_rate_l():
    torch.manual_seed(0)
    model = scaled(RecallNet.for_prefix_sums(width=8, lipschitz=0.8).double(), 5.0)
    x = torch.rand(3, 1, 24, dtype=torch.float64).round()
    u = model.inject(x)
    z = 10 * torch.randn(3, 8, 24, dtype=torch.float64)
    steps = []
    for _ in range(12):
        new = model.cell(z, u)
        steps.append((new - z).norm().item())
        z = new
    for a, b in zip(steps, steps[1:], strict=False):
        assert b <= 0.8 * a * (1 + 1e-9)
    _, info = model(x, solver="picard", tol=1e-8, max_iter=200)
    assert info.forward.converged.all()


def test_a_contractive_model_trains_through_its_bounded_weights():
    torch.manual_seed(0)
    model = RecallNet.for_prefix_sums(width=8, lipschitz=0.9)
    x = torch.rand(4, 1, 12).round()
    y = (x[:, 0].cumsum(-1) % 2).long()
    logits, _ = model(x)
    F.cross_entropy(logits, y).backward()
    raw = model.cell.recall_conv.parametrizations.weight.original
    assert raw.grad is not None and raw.grad.abs().sum() > 0
    assert model.cell.blocks[0].theta.grad is not None
    # Saved and reloaded, the model is the same function.
    clone = RecallNet.for_prefix_sums(width=8, lipschitz=0.9)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone(x)[0], model(x)[0])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"Invalid lipschitz: 0\.0"):
        RecallNet.for_prefix_sums(width=4, lipschitz=0.0)
    with pytest.raises(ValueError, match="lipschitz and spectral_norm cannot be combined"):
        RecallNet.for_prefix_sums(width=4, lipschitz=0.9, spectral_norm=True)
    with pytest.raises(ValueError, match="lipschitz and norm_groups cannot be combined"):
        RecallNet.for_prefix_sums(width=4, lipschitz=0.9, norm_groups=2)
    with pytest.raises(ValueError, match="stride"):
        apply_norm_bound(torch.nn.Conv1d(2, 2, 3, stride=2))
    with pytest.raises(ValueError, match=r"weight must be a tensor \[out, in\]"):
        operator_norm_bound(torch.ones(3))
    # By name, as a config gives it.
    model = deqkit.models.build_model("recall2d", width=4, lipschitz=0.5)
    assert model.lipschitz == 0.5


def test_the_averaged_control_is_the_contractive_architecture_without_its_bound():
    """averaged=True: the blocks of lipschitz=L (averaged, no group norm) with the same
    parameters, but no norm bound and no factor L, so large weights expand it."""
    torch.manual_seed(0)
    control = RecallNet.for_prefix_sums(width=6, averaged=True).double()
    bound = RecallNet.for_prefix_sums(width=6, lipschitz=0.5).double()
    assert [type(b).__name__ for b in control.cell.blocks] == ["AveragedBlock"] * 2
    assert not parametrize.is_parametrized(control.cell.recall_conv)
    shapes = lambda m: {n: p.shape for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(control) == {
        n.replace(".parametrizations.weight.original", ".weight"): s
        for n, s in shapes(bound).items()
    }
    free = scaled(control, 10.0)
    x = torch.rand(2, 1, 20, dtype=torch.float64).round()
    z = torch.randn(2, 6, 20, dtype=torch.float64)
    u = free.inject(x)
    assert jacobian_norm(lambda t: free.cell(t, u), z) > 1.5
    with pytest.raises(ValueError, match="averaged and norm_groups cannot be combined"):
        RecallNet.for_prefix_sums(width=4, averaged=True, norm_groups=2)
    with pytest.raises(ValueError, match="Invalid averaged"):
        RecallNet.for_prefix_sums(width=4, averaged="yes")
    assert deqkit.models.build_model("recall1d", width=4, averaged=True).cell.lipschitz is None
