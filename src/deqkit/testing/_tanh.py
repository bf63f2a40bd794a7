"""The zoo's tanh layers, and the tanh layer as a module ``f(z, x)`` for DEQ tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._problem import ALL, Problem, _gen, _per_sample

__all__ = [
    "TanhCell",
    "expansive_tanh",
    "hard_tanh",
    "mixed_tanh",
    "tanh_at_fixed_point",
    "tanh_contraction",
    "tanh_fixed_point",
]


class TanhCell(nn.Module):
    r"""The tanh layer as a DEQ's ``f``: ``f(z, x) = tanh(W z + U x + b)``, ``||W||_2 = gain``.

    ``W`` (``[n, n]``) is Gaussian scaled to spectral norm ``gain``, so ``f`` is a
    contraction in ``z`` for ``gain < 1``; ``U`` (``[n, d]``) is Gaussian with variance
    ``1 / d``; ``b = bias * N(0, I)`` (drawn only when ``bias != 0``). All three are
    parameters, drawn in that order from a generator seeded with ``seed``.

    Args:
        n: State width, >= 1.
        d: Input width. Default ``None``: ``n``.
        gain: ``||W||_2``, > 0. Default ``0.9``.
        bias: Scale of ``b``. Default ``0.0`` (``b = 0``).
        seed: Seed of the generator. Default ``0``.
        dtype: Parameter dtype. Default ``torch.float32``.

    Call: ``cell(z, x)`` with ``z`` ``[B, n]`` and ``x`` ``[B, d]``; ``cell.initial_state(x)``
    is ``[B, n]`` zeros.
    """

    def __init__(
        self,
        n: int,
        d: int | None = None,
        *,
        gain: float = 0.9,
        bias: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        d = n if d is None else d
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n, n, generator=g, dtype=dtype)
        self.W = nn.Parameter(W * gain / torch.linalg.matrix_norm(W, 2))
        self.U = nn.Parameter(torch.randn(n, d, generator=g, dtype=dtype) / d**0.5)
        b = bias * torch.randn(n, generator=g, dtype=dtype) if bias else torch.zeros(n, dtype=dtype)
        self.b = nn.Parameter(b)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)

    def initial_state(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.W.shape[0])


def _tanh_layer(W: Tensor):
    def make_f(g: Tensor, inj: Tensor):
        def f(z: Tensor) -> Tensor:
            return torch.tanh(g.to(z) * (z @ W.T.to(z)) + inj.to(z))

        return f

    return make_f


def tanh_fixed_point(W: Tensor, g: Tensor, inj: Tensor, iters: int = 20) -> Tensor:
    """The fixed point of ``z = tanh(g W z + inj)`` by a dense Newton iteration in float64.

    Only meaningful where the map is a contraction (``g ||W||_2 < 1``), so that the fixed
    point is unique and Newton from a Picard warm start cannot go elsewhere.
    """
    z = torch.zeros_like(inj)
    for _ in range(50):
        z = torch.tanh(g * (z @ W.T) + inj)
    eye = torch.eye(W.shape[0], dtype=W.dtype)
    for _ in range(iters):
        fz = torch.tanh(g * (z @ W.T) + inj)
        if float((fz - z).abs().max()) <= 1e-15:
            break
        J = (1 - fz**2)[:, :, None] * (g[:, :, None] * W)  # [B, n, n]
        z = z + torch.linalg.solve(eye - J, fz - z)
    return z


def _tanh_problem(
    name, W, g, inj, *, converges, known, tol=1e-10, stop="rel", max_iter=200, fails=()
):
    f, restrict = _per_sample(_tanh_layer(W), g=g, inj=inj)
    z_star = tanh_fixed_point(W, g, inj) if known else None
    rate = float((g * torch.linalg.matrix_norm(W, ord=2)).max())
    return Problem(
        name=name,
        f=f,
        z0=torch.zeros_like(inj),
        z_star=z_star,
        converges=frozenset(converges),
        tol=tol,
        max_iter=max_iter,
        stop=stop,
        fails=frozenset(fails),
        # Contraction with rate q: ||z - z*|| <= ||g|| / (1 - q); rel residual <= tol means
        # ||g|| <= tol ||f(z)|| <= tol sqrt(n).
        z_atol=4 * tol * math.sqrt(inj.shape[1]) / max(1 - rate, 1e-3),
        restrict=restrict,
    )


def _tanh_data(n: int, batch: int, d: int, seed: int):
    gen = _gen(seed)
    W = torch.randn(n, n, generator=gen, dtype=torch.float64)
    U = torch.randn(n, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    x = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    b = 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    return W, x @ U.T + b


def tanh_contraction(
    g: float = 0.8, n: int = 16, batch: int = 4, d: int = 8, seed: int = 2
) -> Problem:
    """``f(z) = tanh(g W z + U x + b)`` with ``||W||_2 = 1`` and ``g < 1``: a contraction."""
    W, inj = _tanh_data(n, batch, d, seed)
    W = W / torch.linalg.matrix_norm(W, ord=2)
    gb = torch.full((batch, 1), g, dtype=torch.float64)
    return _tanh_problem(f"tanh_g={g:g}", W, gb, inj, converges=ALL, known=True)


def hard_tanh(g: float, n: int = 32, batch: int = 4, d: int = 8, seed: int = 3) -> Problem:
    """``W`` scaled to spectral radius 1 (so ``||W||_2`` is about 2) and ``g`` in {0.95, 0.99}.

    Not a contraction in norm, so the fixed point need not be unique: only the residual is
    checked. Plain iteration converges here, slowly; the accelerated methods much faster.
    """
    W, inj = _tanh_data(n, batch, d, seed)
    W = W / torch.linalg.eigvals(W).abs().max()
    gb = torch.full((batch, 1), g, dtype=torch.float64)
    return _tanh_problem(f"hard_tanh_g={g:g}", W, gb, inj, converges=ALL, known=False, max_iter=800)


def mixed_tanh(n: int = 16, batch: int = 6, d: int = 8, seed: int = 4) -> Problem:
    """Contraction with per-sample ``g_b`` spread over ``[0.5, 0.99]``: samples converge at
    very different times, which exposes stopping on the batch maximum.

    ``W`` is symmetric with ``||W||_2 = 1`` (so its spectral radius is 1 too) and the input is
    weak (0.3 x), so ``tanh`` hardly saturates and plain iteration really runs at rate about
    ``g_b``: from a few dozen evaluations for ``g = 0.5`` to a couple of thousand for 0.99.
    """
    W, inj = _tanh_data(n, batch, d, seed)
    W = W + W.T
    W = W / torch.linalg.matrix_norm(W, ord=2)
    gb = torch.linspace(0.5, 0.99, batch, dtype=torch.float64)[:, None]
    return _tanh_problem("mixed_tanh", W, gb, 0.3 * inj, converges=ALL, known=True, max_iter=3000)


def expansive_tanh(n: int = 16, batch: int = 8, d: int = 8, seed: int = 5) -> Problem:
    """``g = 1.3`` with ``W`` scaled to spectral radius 1 and a weak input (0.3 x): expansive
    near the origin, and some samples have no attracting fixed point.

    Nothing is expected to converge: plain iteration fails on every sample (for this seed;
    the fixed points near the origin repel it), the others converge on some samples, possibly
    to repelling fixed points. Every solver must end cleanly and report honestly.
    """
    W, inj = _tanh_data(n, batch, d, seed)
    W = W / torch.linalg.eigvals(W).abs().max()
    gb = torch.full((batch, 1), 1.3, dtype=torch.float64)
    return _tanh_problem(
        "expansive_tanh",
        W,
        gb,
        0.3 * inj,
        converges=(),
        fails={"picard"},
        known=False,
        max_iter=100,
        tol=1e-8,
    )


def tanh_at_fixed_point(n: int = 16, batch: int = 4, d: int = 8, seed: int = 6) -> Problem:
    """A tanh contraction whose sample 0 starts exactly at its fixed point.

    Sample 0 has no input, so ``f(0) = tanh(0) = 0`` exactly: ``g = 0`` and ``||f(z)|| = 0``,
    the case where a careless relative residual or Anderson step computes ``0 / 0``.
    """
    W, inj = _tanh_data(n, batch, d, seed)
    W = W / torch.linalg.matrix_norm(W, ord=2)
    inj[0] = 0.0
    gb = torch.full((batch, 1), 0.9, dtype=torch.float64)
    return _tanh_problem("tanh_at_fixed_point", W, gb, inj, converges=ALL, known=True)
