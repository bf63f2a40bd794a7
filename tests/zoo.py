"""A zoo of fixed-point problems with known answers, for the solver tests.

Every builder returns a :class:`Problem`: a batched map ``f``, a start ``z0`` (batch first),
the answer ``z_star`` where it is known and unique, the methods that must converge on it
(and those that must not), and the budget to run them with. Problems are small (``n <= 64``,
``B <= 16``) and float64 unless asked otherwise, so that exactness checks are meaningful and the
whole zoo runs in seconds. See REFERENCE.md section 3 for where each one comes from.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

__all__ = [
    "COS_FIXED_POINT",
    "METHODS",
    "Problem",
    "affine_scalar",
    "all_problems",
    "by_name",
    "cos_map",
    "cyclic_shift",
    "expansive_tanh",
    "hard_tanh",
    "linear",
    "mixed_tanh",
    "nan_map",
    "non_normal_linear",
    "orthogonal",
    "pressure_network",
    "sqrt2_map",
    "tanh_at_fixed_point",
    "tanh_contraction",
    "tanh_fixed_point",
]

METHODS = ("picard", "anderson", "broyden", "newton")
ACCELERATED = frozenset({"anderson", "broyden", "newton"})
ALL = frozenset(METHODS)

COS_FIXED_POINT = 0.7390851332151607
"""The Dottie number: the unique real solution of ``cos(z) = z``."""


@dataclass(frozen=True)
class Problem:
    """A fixed-point problem ``z = f(z)`` with what is known about it.

    Attributes:
        name: Short id, used as the pytest id.
        f: Batched map, ``[B, ...] -> [B, ...]``; samples do not interact.
        z0: ``[B, ...]`` start.
        z_star: ``[B, ...]`` the unique fixed point, or ``None`` where it is unknown or not
            unique. Entries of samples listed in ``nonfinite`` are meaningless.
        converges: Methods that must converge on every sample not in ``nonfinite``.
        tol: Tolerance to solve with.
        max_iter: Budget to solve with.
        stop: ``"abs"`` or ``"rel"``.
        fails: Methods that must not converge on any sample (diverging or stagnating).
        z_atol: Largest allowed ``||z - z_star||`` per sample, for converged samples. For the
            linear problems it is the bound ``||(I - M)^-1||_2 tol`` with some slack; a small
            residual can hide a large error on non-normal maps, so the bound matters.
        nonfinite: Samples whose ``f`` turns non-finite along the way.
        restrict: ``idx -> f`` for the sub-batch ``idx`` (the same map on fewer samples), so
            batch invariance can be checked; ``None`` when ``f`` has no per-sample parameters.
    """

    name: str
    f: Callable[[Tensor], Tensor]
    z0: Tensor
    z_star: Tensor | None
    converges: frozenset[str]
    tol: float = 1e-10
    max_iter: int = 200
    stop: str = "abs"
    fails: frozenset[str] = frozenset()
    z_atol: float = 1e-8
    nonfinite: tuple[int, ...] = ()
    restrict: Callable[[Tensor], Callable[[Tensor], Tensor]] | None = field(
        default=None, repr=False
    )

    @property
    def batch(self) -> int:
        return self.z0.shape[0]

    def subset(self, idx: Tensor | list[int]) -> Problem:
        """The same problem on the samples ``idx`` only."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        f = self.f if self.restrict is None else self.restrict(idx)
        bad = tuple(i for i, j in enumerate(idx.tolist()) if j in self.nonfinite)
        return replace(
            self,
            f=f,
            z0=self.z0[idx],
            z_star=None if self.z_star is None else self.z_star[idx],
            nonfinite=bad,
            restrict=None if self.restrict is None else _compose(self.restrict, idx),
        )

    def to(self, *args, **kwargs) -> Problem:
        """The problem with ``z0`` (and ``z_star``) moved by ``Tensor.to(*args, **kwargs)``;
        ``f`` follows its input's dtype and device."""
        z_star = None if self.z_star is None else self.z_star.to(*args, **kwargs)
        return replace(self, z0=self.z0.to(*args, **kwargs), z_star=z_star)


def _compose(restrict, idx):
    return lambda sub: restrict(idx[sub])


def _per_sample(make_f: Callable[..., Callable[[Tensor], Tensor]], **params: Tensor):
    """``(f, restrict)`` for a map whose batch-dependent parameters are ``params``."""

    def restrict(idx: Tensor):
        return make_f(**{k: v[idx] for k, v in params.items()})

    return make_f(**params), restrict


def orthogonal(n: int, gen: torch.Generator, dtype=torch.float64) -> Tensor:
    """A random ``n x n`` orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- linear maps


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


# --------------------------------------------------------------------------- tanh layers


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


def all_problems() -> list[Problem]:
    """Every problem of the zoo, in a fixed order."""
    return [
        linear(-0.99, 0.99, name="linear_slow", max_iter=3000),
        linear(
            -1.5,
            0.5,
            name="linear_plain_diverges",
            converges=ACCELERATED,
            fails={"picard"},
        ),
        non_normal_linear(),
        cos_map(),
        sqrt2_map(),
        affine_scalar(),
        tanh_contraction(),
        hard_tanh(0.95),
        hard_tanh(0.99),
        mixed_tanh(),
        expansive_tanh(),
        tanh_at_fixed_point(),
        cyclic_shift(),
        nan_map(),
        pressure_network(),
    ]


@functools.cache
def _by_name() -> Mapping[str, Problem]:
    return {p.name: p for p in all_problems()}


def by_name(name: str) -> Problem:
    """The zoo problem called ``name`` (built once; problems are immutable)."""
    return _by_name()[name]
