"""The zoo's linear maps, scalar maps and nonlinear systems."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._problem import ACCELERATED, ALL, COS_FIXED_POINT, Problem, _gen, _per_sample, orthogonal

__all__ = [
    "affine_scalar",
    "cos_map",
    "cyclic_shift",
    "linear",
    "nan_map",
    "non_normal_linear",
    "pressure_network",
    "sqrt2_map",
]


def _affine(M: Tensor):
    def make_f(c: Tensor):
        return lambda z: z @ M.T.to(z) + c.to(z)

    return make_f


def _linear_problem(name, M, c, converges, fails, tol, max_iter, stop="abs", z0=None):
    n = M.shape[0]
    eye = torch.eye(n, dtype=M.dtype)
    z_star = torch.linalg.solve(eye - M, c.T).T
    # ||z - z*|| = ||(I - M)^-1 g|| <= ||(I - M)^-1||_2 ||g||: the only honest bound, since on a
    # non-normal map a small residual can hide a large error.
    amp = float(torch.linalg.matrix_norm(torch.linalg.inv(eye - M), ord=2))
    f, restrict = _per_sample(_affine(M), c=c)
    return Problem(
        name=name,
        f=f,
        z0=torch.zeros_like(c) if z0 is None else z0,
        z_star=z_star,
        converges=frozenset(converges),
        tol=tol,
        max_iter=max_iter,
        stop=stop,
        fails=frozenset(fails),
        z_atol=4 * amp * tol,
        restrict=restrict,
    )


def linear(
    lo: float,
    hi: float,
    n: int = 16,
    batch: int = 3,
    seed: int = 0,
    *,
    name: str | None = None,
    converges=ALL,
    fails=(),
    tol: float = 1e-10,
    max_iter: int = 200,
) -> Problem:
    """``f(z) = M z + c`` with ``M = Q diag(l) Q^T``, ``l`` evenly spaced in ``[lo, hi]``.

    ``z* = (I - M)^-1 c``. With ``[-0.99, 0.99]`` plain iteration converges at rate 0.99 (slow);
    with ``[-1.5, 0.5]`` it diverges while Anderson, Broyden and Newton converge.
    """
    gen = _gen(seed)
    Q = orthogonal(n, gen)
    lam = torch.linspace(lo, hi, n, dtype=torch.float64)
    M = Q @ torch.diag(lam) @ Q.T
    c = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    name = name or f"linear[{lo:g},{hi:g}]"
    return _linear_problem(name, M, c, converges, fails, tol, max_iter)


def non_normal_linear(n: int = 16, batch: int = 3, s: float = 3.0, seed: int = 1) -> Problem:
    """``M = Q (diag(l) + s / sqrt(n) triu(randn, 1)) Q^T``: ``||M||_2 > 1``, ``rho(M) < 1``.

    Plain iteration shows a long transient growth before it converges; the residual says
    little about the error, so the tolerance is tight and ``z_atol`` is the linear bound.
    """
    gen = _gen(seed)
    Q = orthogonal(n, gen)
    lam = torch.linspace(-0.5, 0.5, n, dtype=torch.float64)
    N = s / math.sqrt(n) * torch.triu(torch.randn(n, n, generator=gen, dtype=torch.float64), 1)
    M = Q @ (torch.diag(lam) + N) @ Q.T
    c = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    assert float(torch.linalg.matrix_norm(M, ord=2)) > 1.0
    return _linear_problem("non_normal", M, c, ALL, (), tol=1e-11, max_iter=400)


def cyclic_shift(n: int = 8) -> Problem:
    """``f(z) = z - (P z - e_1)`` with ``P`` the cyclic shift, from ``z0 = 0``.

    GMRES on ``P z = e_1`` makes no progress for ``n - 1`` steps, so windowed Anderson
    (``m < n``) stagnates for ever and plain iteration diverges (``I - P`` has eigenvalues of
    modulus up to 2). Newton-GMRES (Krylov dimension >= n) and Broyden (at most ``2n`` steps
    on a linear map, Gay 1979) converge.
    """
    eye = torch.eye(n, dtype=torch.float64)
    P = torch.roll(eye, 1, dims=0)
    c = eye[:1].clone()
    return _linear_problem(
        "cyclic_shift",
        eye - P,
        c,
        converges={"newton", "broyden"},
        fails={"picard", "anderson"},
        tol=1e-10,
        max_iter=60,
    )


# --------------------------------------------------------------------------- scalar maps


def cos_map() -> Problem:
    """``z -> cos(z)`` from four starts; the answer is the Dottie number."""
    z0 = torch.tensor([[0.0], [0.5], [1.0], [2.0]], dtype=torch.float64)
    return Problem(
        name="cos",
        f=torch.cos,
        z0=z0,
        z_star=torch.full_like(z0, COS_FIXED_POINT),
        converges=ALL,
        tol=1e-12,
        max_iter=200,
        # |z - z*| <= |g| / (1 - sin(z*)) ~ 3.1 |g| near the answer.
        z_atol=4e-12,
    )


def sqrt2_map() -> Problem:
    """``z -> (z + 2 / z) / 2`` (Heron), converging quadratically to ``sqrt(2)``."""
    z0 = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    return Problem(
        name="sqrt2",
        f=lambda z: (z + 2.0 / z) / 2.0,
        z0=z0,
        z_star=torch.full_like(z0, math.sqrt(2.0)),
        converges=ALL,
        tol=1e-12,
        max_iter=100,
        z_atol=4e-12,
    )


def affine_scalar(a: float = -2.0, c: float = 3.0) -> Problem:
    """``z -> a z + c`` with ``a = -2``: plain iteration diverges; Anderson (a secant method in
    one dimension) is exact after two accelerated steps. ``z* = c / (1 - a) = 1``."""
    z0 = torch.tensor([[0.0], [5.0]], dtype=torch.float64)
    return Problem(
        name="affine_a=-2",
        f=lambda z: a * z + c,
        z0=z0,
        z_star=torch.full_like(z0, c / (1.0 - a)),
        converges=ACCELERATED,
        fails={"picard"},
        tol=1e-12,
        max_iter=60,
        z_atol=1e-11,
    )


def nan_map() -> Problem:
    """``z -> z / 2 + c_b``, returning NaN wherever ``z > 3``.

    From ``z0 = 0`` the samples with ``c_b = 1`` converge to 2 and never leave ``[0, 2]``; the
    sample with ``c_b = 2`` heads for 4 and its ``f`` turns NaN once it passes 3.
    """
    c = torch.tensor([[1.0], [2.0], [1.0]], dtype=torch.float64)

    def make_f(c: Tensor):
        def f(z: Tensor) -> Tensor:
            return torch.where(z > 3.0, torch.nan, 0.5 * z + c.to(z))

        return f

    f, restrict = _per_sample(make_f, c=c)
    return Problem(
        name="nan_map",
        f=f,
        z0=torch.zeros_like(c),
        z_star=2.0 * c,
        converges=ALL,
        tol=1e-12,
        max_iter=60,
        z_atol=4e-12,
        nonfinite=(1,),
        restrict=restrict,
    )


# --------------------------------------------------------------------------- nonlinear systems


def pressure_network() -> Problem:
    """SciPy's pressure-network problem (``scipy/optimize/tests``: ``pressure_network``, the
    system ``F5`` of ``test_nonlin.py``) written as ``f(z) = z - F(z)``.

    Four parallel pipes with flows ``z_i`` and valve coefficients ``k_i = 0.5`` have pressures
    ``P_i = k_i z_i^2``; ``F(z) = (P_1 - P_0, P_2 - P_0, P_3 - P_0, sum_i z_i - Q)``, zero when
    every pipe has the same pressure drop and the flows add up to the total ``Q``. SciPy's
    start is ``(2, 0, 2, 0)`` with ``Q = 4``; here sample ``b`` starts at ``s_b (2, 0, 2, 0)``
    with ``(s_b, Q_b)`` = (1, 4), (8, 32) (the start scaled with the total flow), (8, 4),
    (10, 4), (20, 4): far from the roots, where plain iteration overflows (``P`` is
    quadratic) and Broyden needs a globalisation. The roots are not unique (any flows of
    equal magnitude adding up to ``Q``), so only the residual is checked.
    """
    scale = torch.tensor([[1.0], [8.0], [8.0], [10.0], [20.0]], dtype=torch.float64)
    total = torch.tensor([[4.0], [32.0], [4.0], [4.0], [4.0]], dtype=torch.float64)
    start = torch.tensor([2.0, 0.0, 2.0, 0.0], dtype=torch.float64)

    def make_f(total: Tensor):
        def f(z: Tensor) -> Tensor:
            P = 0.5 * z**2
            F = torch.cat((P[:, 1:] - P[:, :1], z.sum(1, keepdim=True) - total.to(z)), dim=1)
            return z - F

        return f

    f, restrict = _per_sample(make_f, total=total)
    return Problem(
        name="pressure_network",
        f=f,
        z0=scale * start,
        z_star=None,
        converges={"anderson", "broyden", "newton"},
        fails={"picard"},
        tol=1e-10,
        max_iter=300,
        restrict=restrict,
    )
