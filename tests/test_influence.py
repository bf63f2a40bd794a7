"""deqkit.analysis.influence: the exact Jacobian of the readout through z*, by offset, on
linear DEQs whose influence is known in closed form (on sequences and on images), and on
contractive recall nets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deqkit.analysis import influence
from deqkit.models import EquilibriumModel, RecallNet


class Carry(nn.Module):
    """``f(z, u)_j = a z_{j-1} + u_j``: z*_j = sum_k a^k u_{j-k}, the memory of a leaky sum."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, z, u):
        return self.a * nn.functional.pad(z, (1, 0))[..., :-1] + u

    def initial_state(self, u):
        return torch.zeros_like(u)


class Margin(nn.Module):
    """Two-class logits whose margin (class 1 minus class 0) is the state itself."""

    def forward(self, z):
        return torch.cat([torch.zeros_like(z), z], dim=1)


def carry_model(a: float) -> EquilibriumModel:
    return EquilibriumModel(nn.Identity(), Carry(a), Margin(), solver="picard", max_iter=500)


@pytest.mark.parametrize("a", [0.5, 0.8])
def test_influence_of_a_leaky_sum_is_a_to_the_offset(a):
    length = 12
    x = torch.rand(3, 1, length, dtype=torch.float64)
    got = influence(carry_model(a).double(), x, tol=1e-12)
    j, i = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    want = torch.where(j >= i, a ** (j - i).double(), torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(got.matrix, want, rtol=1e-6, atol=1e-9)
    past = got.by_offset[length - 1 :]
    torch.testing.assert_close(past, a ** torch.arange(length).double(), rtol=1e-6, atol=1e-9)
    assert (got.by_offset[: length - 1] == 0).all()  # no influence of a later input
    assert got.decay == pytest.approx(a, rel=1e-6)
    assert got.converged == 1.0
    assert got.metric == "offset"
    assert set(got.to_dict()) == {
        "by_offset",
        "decay",
        "fit_offsets",
        "converged",
        "iterations",
        "metric",
    }


def carry_rows_model(a: float) -> EquilibriumModel:
    """``Carry`` along the rows of an image: ``z*[r, c] = sum_k a^k u[r, c - k]``."""
    return EquilibriumModel(nn.Identity(), Carry(a), Margin(), solver="picard", max_iter=500)


def test_influence_on_images_is_a_to_the_column_offset_by_chebyshev_distance():
    """On a leaky sum along each row of a 4 x 6 image, pixel (r, c') reaches (r, c) with
    weight a^(c - c') for c >= c' and nothing else does; ``by_offset`` is the mean of that
    matrix over the pixel pairs at each Chebyshev distance, counted here pair by pair."""
    a, height, width = 0.6, 4, 6
    x = torch.rand(2, 1, height, width, dtype=torch.float64)
    got = influence(carry_rows_model(a).double(), x, tol=1e-12, fit_offsets=(1, 4))
    pixels = [(r, c) for r in range(height) for c in range(width)]
    want = torch.zeros(len(pixels), len(pixels), dtype=torch.float64)
    sums, counts = [0.0] * width, [0] * width
    for j, (rj, cj) in enumerate(pixels):
        for i, (ri, ci) in enumerate(pixels):
            if rj == ri and cj >= ci:
                want[j, i] = a ** (cj - ci)
            d = max(abs(rj - ri), abs(cj - ci))
            sums[d] += float(want[j, i])
            counts[d] += 1
    torch.testing.assert_close(got.matrix, want, rtol=1e-6, atol=1e-9)
    assert got.metric == "chebyshev" and got.offsets.tolist() == list(range(width))
    expected = torch.tensor([s / n for s, n in zip(sums, counts, strict=True)]).double()
    torch.testing.assert_close(got.by_offset, expected, rtol=1e-6, atol=1e-12)
    assert got.converged == 1.0 and got.to_dict()["metric"] == "chebyshev"


def test_a_contractive_recall_cell_forgets_at_least_as_fast_as_its_bound():
    """An untrained lipschitz=0.5 cell, 5 positions per application (recall conv and two
    blocks of two 3-wide convs) and a 3-conv head: beyond the head's reach the influence
    falls at least like 0.5 per 5 positions, with room (the bounds are loose)."""
    torch.manual_seed(0)
    model = RecallNet.for_prefix_sums(width=8, lipschitz=0.5).double()
    x = torch.rand(4, 1, 40, dtype=torch.float64).round()
    got = influence(model, x, tol=1e-10, fit_offsets=(8, 30))
    assert got.converged == 1.0
    assert got.decay <= 0.5 ** (1 / 5) + 1e-9


def test_bad_input_is_named():
    model = carry_model(0.5)
    with pytest.raises(ValueError, match=r"x must be a \[B, C_in, L\] or \[B, C_in, H, W\]"):
        influence(model, torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"max\(H, W\) = 5"):
        influence(model, torch.zeros(1, 1, 3, 5), fit_offsets=(2, 5))
    with pytest.raises(ValueError, match="fit_offsets must satisfy"):
        influence(model, torch.zeros(1, 1, 6), fit_offsets=(3, 9))
    with pytest.raises(TypeError, match="influence needs an equilibrium model"):
        influence(nn.Linear(2, 2), torch.zeros(1, 1, 6))
    assert influence(model, torch.zeros(1, 1, 6), fit_offsets=(4, 5)).decay == pytest.approx(0.5)
    gone = influence(carry_model(0.0), torch.zeros(1, 1, 6), fit_offsets=(1, 3))
    assert math.isnan(gone.decay)  # no influence past offset 0: nothing to fit


def test_a_contractive_maze_cell_forgets_at_least_as_fast_as_its_bound():
    """The 2-D cell of ``lipschitz=0.5`` (untrained) moves information 5 pixels (Chebyshev)
    per application, as the 1-D one moves it 5 positions: beyond the head's reach its
    influence falls at least like 0.5 per 5 pixels of distance."""
    torch.manual_seed(0)
    model = RecallNet.for_mazes(width=8, lipschitz=0.5).double()
    x = torch.rand(2, 3, 13, 13, dtype=torch.float64).round()
    got = influence(model, x, tol=1e-10, fit_offsets=(6, 11))
    assert got.converged == 1.0 and got.metric == "chebyshev"
    assert got.decay <= 0.5 ** (1 / 5) + 1e-9
