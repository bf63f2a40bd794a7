"""Path independence: does the fixed point depend on where the solver starts?"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validate import integer, invalid
from ..nn import Packer, State
from ..solvers import Solver, SolveResult, resolve, solve
from ._common import check_callable, flat_map, random_like

__all__ = ["PathIndependence", "path_independence"]

STARTS = ("mixed", "shifted", "random")


@dataclass(frozen=True)
class PathIndependence:
    """Asymptotic alignment of the limits reached from several initial states, per sample.

    Attributes:
        score: ``[B]`` smallest cosine similarity between the reference limit (from ``z0``)
            and a restart's limit: 1 when every start led to the same fixed point, low or
            negative for a sample that switched to another one.
        mean: ``[B]`` mean cosine similarity over the restarts.
        cosine: ``[S, B]`` cosine similarity of each restart's limit with the reference.
        starts: ``S`` labels, one per restart (``"shifted"``, ``"random0"``, ...,
            ``"given0"``, ...).
        converged: ``[B]`` bool, whether the reference and every restart converged (a low
            score from a solve that ran out of budget says less).
        reference: The solve from ``z0``.
        restarts: The ``S`` restarted solves.
    """

    score: Tensor
    mean: Tensor
    cosine: Tensor
    starts: tuple[str, ...]
    converged: Tensor
    reference: SolveResult
    restarts: tuple[SolveResult, ...]


def path_independence(
    f: Callable[[State], State],
    z0: State,
    *,
    starts: str | Sequence[State] = "mixed",
    n_random: int = 2,
    method: str | Solver = "anderson",
    tol: float = 1e-5,
    stop: str = "rel",
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    **options,
) -> PathIndependence:
    r"""Asymptotic-alignment score of Anil et al. 2022 ("Path Independent Equilibrium Models
    Can Better Exploit Test-Time Computation", arXiv 2211.09961), per sample.

    Solve from ``z0`` (usually zeros) to a limit ``z*``, restart each sample from other
    initial states, and compare limits by cosine similarity
    ``<z*_b, z'_b> / (||z*_b|| ||z'_b||)`` (1 where both limits are exactly zero, 0 where
    only one is). Initial states (``starts``):

    * ``"shifted"``: another sample's fixed point, ``z0'[b] = z*[(b + 1) % B]``, with sample
      ``b``'s own input (needs ``B >= 2``): a realistic "wrong" state.
    * ``"random"``: ``n_random`` Gaussian states, each sample's scaled to ``||z*_b||`` (unit
      variance per entry where ``z*_b = 0``).
    * ``"mixed"`` (default): both (only the random ones when ``B = 1``).
    * a sequence of states shaped like ``z0``: those.

    Args:
        f: The map at a fixed input, ``z -> f(z, x)``, row ``b`` of the batch using input
            ``b`` (samples must not interact).
        z0: ``[B, ...]`` reference initial state (tensor or tuple of tensors).
        starts: See above. Default ``"mixed"``.
        n_random: Random starts for ``"random"``/``"mixed"``, >= 1. Default ``2``.
        method: Solver name or :class:`~deqkit.solvers.Solver`. Default ``"anderson"``.
        tol: Solver tolerance. Default ``1e-5``.
        stop: ``"rel"`` (default) or ``"abs"``.
        max_iter: Evaluation budget of each solve. Default ``100``.
        generator: Random generator for the random starts. Default: the global one.
        **options: Hyperparameters of ``method``.

    Returns:
        A :class:`PathIndependence`.

    Raises:
        ValueError: unknown ``starts``, ``"shifted"`` with ``B = 1``, bad ``n_random``, a
            given start of another shape (and whatever :func:`deqkit.solve` rejects).
        TypeError: ``f`` not callable, unknown option.
    """
    check_callable("f", f)
    solver = resolve(method, options)
    packer = Packer.of(z0, "z0")
    fz = flat_map(f, packer)
    start = packer.pack(z0, "z0")
    B = start.shape[0]
    kw = dict(tol=tol, stop=stop, max_iter=max_iter)
    ref = solve(fz, start, solver, **kw)
    z_star = ref.z

    labels, inits = [], []
    if isinstance(starts, str):
        if starts not in STARTS:
            options = ", ".join(map(repr, STARTS))
            raise invalid("starts", starts, f"one of {options} or a sequence of states")
        if starts == "shifted" and B < 2:
            raise ValueError("starts='shifted' needs a batch of at least 2 samples")
        if starts in ("shifted", "mixed") and B >= 2:
            labels.append("shifted")
            inits.append(torch.roll(z_star, shifts=-1, dims=0))
        if starts in ("random", "mixed"):
            integer("n_random", n_random, 1)
            target = torch.linalg.vector_norm(z_star, dim=1, keepdim=True)
            target = torch.where(target > 0, target, float(z_star.shape[1]) ** 0.5)
            for i in range(n_random):
                noise = random_like(z_star, generator, z_star.dtype)
                noise = noise * target / torch.linalg.vector_norm(noise, dim=1, keepdim=True)
                labels.append(f"random{i}")
                inits.append(noise)
    else:
        if len(starts) == 0:
            raise ValueError("starts must not be an empty sequence")
        for i, s in enumerate(starts):
            given = Packer.of(s, f"starts[{i}]")
            if given.shapes != packer.shapes or given.is_tuple != packer.is_tuple:
                raise ValueError(
                    f"starts[{i}] must be shaped like z0 {[tuple(t) for t in packer.shapes]}, "
                    f"got {[tuple(t) for t in given.shapes]}"
                )
            labels.append(f"given{i}")
            inits.append(packer.pack(s, f"starts[{i}]").to(start.dtype))

    restarts = tuple(solve(fz, s, solver, **kw) for s in inits)
    cosine = torch.stack([_cosine(z_star, r.z) for r in restarts])
    converged = ref.converged.clone()
    for r in restarts:
        converged &= r.converged
    return PathIndependence(
        score=cosine.amin(dim=0),
        mean=cosine.mean(dim=0),
        cosine=cosine,
        starts=tuple(labels),
        converged=converged,
        reference=ref,
        restarts=restarts,
    )


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    na = torch.linalg.vector_norm(a, dim=1)
    nb = torch.linalg.vector_norm(b, dim=1)
    cos = (a * b).sum(dim=1) / (na * nb).clamp(min=torch.finfo(a.dtype).tiny)
    both_zero = (na == 0) & (nb == 0)
    return torch.where(both_zero, 1.0, cos.clamp(-1.0, 1.0))
