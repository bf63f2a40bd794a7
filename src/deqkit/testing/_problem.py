"""The zoo's problem type and what its builders share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

__all__ = [
    "ACCELERATED",
    "ALL",
    "COS_FIXED_POINT",
    "METHODS",
    "Problem",
    "orthogonal",
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
