"""A trained model at its fixed points: solvers side by side, contraction."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from ..solvers import solve
from ._model import EquilibriumLike, fixed_point_map, require_equilibrium
from ._path import path_independence
from ._spectral import spectral_norm, spectral_radius

__all__ = ["ContractionResult", "SolverTiming", "compare_solvers", "contraction"]


@dataclass(frozen=True)
class SolverTiming:
    """One solver of :func:`compare_solvers` at a model's fixed points, over ``B`` samples.

    Attributes:
        method: The solver's name.
        median_evals: Median evaluations of ``f`` per sample.
        max_evals: The most any sample spent.
        converged: Fraction of samples that met ``tol``.
        median_residual: Median final residual.
        time_ms: Median wall time of one solve of the batch, in milliseconds.
    """

    method: str
    median_evals: float
    max_evals: int
    converged: float
    median_residual: float
    time_ms: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict with the same names (JSON-ready)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ContractionResult:
    """Contraction and path independence of a model at its fixed points, ``B`` samples.

    Attributes:
        converged: Fraction of the fixed-point solves that met ``tol``.
        radius: ``[B]`` spectral radius ``rho(J)`` of ``J = df/dz`` at each ``z*``.
        norm: ``[B]`` spectral norm ``||J||_2``.
        path_score: ``[B]`` path-independence score (Anil et al., 2022), 1 = independent.
        median_radius: Median of ``radius``.
        median_norm: Median of ``norm``.
        frac_radius_below_1: Fraction with ``rho(J) < 1``.
        frac_norm_below_1: Fraction with ``||J||_2 < 1``.
        median_path_score: Median of ``path_score``.
        frac_path_independent: Fraction with path score > 0.99.
    """

    converged: float
    radius: Tensor
    norm: Tensor
    path_score: Tensor
    median_radius: float
    median_norm: float
    frac_radius_below_1: float
    frac_norm_below_1: float
    median_path_score: float
    frac_path_independent: float

    def to_dict(self) -> dict[str, float]:
        """The summaries (every field but the ``[B]`` tensors), JSON-ready."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not isinstance(getattr(self, f.name), Tensor)
        }


def compare_solvers(
    model: EquilibriumLike,
    x: Tensor,
    methods: Sequence[str] = ("picard", "anderson", "broyden"),
    *,
    tol: float = 1e-4,
    max_iter: int = 300,
    repeats: int = 3,
) -> tuple[list[SolverTiming], dict[str, Tensor]]:
    """Iterations and time to tolerance of several solvers at the model's fixed points.

    Each solver solves ``z = f(z) = model.cell(z, model.inject(x))`` from
    ``model.initial_state(x)`` in eval mode, without gradients, ``repeats`` times.

    Args:
        model: An equilibrium model (:class:`EquilibriumLike`).
        x: ``[B, ...]`` inputs.
        methods: Solver names. Default picard, anderson, broyden.
        tol: Relative tolerance. Default ``1e-4``.
        max_iter: Budget. Default ``300``.
        repeats: Timed repeats (median). Default ``3``.

    Returns:
        ``(rows, traces)``: one :class:`SolverTiming` per method (median and max
        evaluations, converged fraction, median wall time in ms) and ``{method: trace}``, the
        ``[steps, B]`` residual traces.

    Raises:
        TypeError: ``model`` is not an equilibrium model.
    """
    require_equilibrium(model, "compare_solvers")
    rows, traces = [], {}
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), parametrize.cached():
            f, z0 = fixed_point_map(model, x)
            for m in methods:
                times = []
                for _ in range(max(1, repeats)):
                    t0 = time.perf_counter()
                    res = solve(f, z0, m, tol=tol, max_iter=max_iter, record_trace=True)
                    times.append(1e3 * (time.perf_counter() - t0))
                traces[m] = res.trace
                its = res.iterations.float()
                rows.append(
                    SolverTiming(
                        method=m,
                        median_evals=float(its.median()),
                        max_evals=int(res.iterations.max()),
                        converged=float(res.converged.float().mean()),
                        median_residual=float(res.residual.median()),
                        time_ms=sorted(times)[len(times) // 2],
                    )
                )
    finally:
        model.train(was)
    return rows, traces


def contraction(
    model: EquilibriumLike,
    x: Tensor,
    *,
    tol: float = 1e-5,
    max_iter: int = 300,
    generator: torch.Generator | None = None,
) -> ContractionResult:
    """Spectral radius and norm of ``J = df/dz`` at the fixed points, and path independence.

    ``z*`` is solved with the model's solver; ``rho(J)`` and ``||J||_2`` per sample come from
    :func:`spectral_radius` and :func:`spectral_norm`, the path score from
    :func:`path_independence`.

    Args:
        model: An equilibrium model (:class:`EquilibriumLike`).
        x: ``[B, ...]`` inputs.
        tol: Tolerance of the fixed-point solves. Default ``1e-5``.
        max_iter: Budget of the solves. Default ``300``.
        generator: For the random probes and restarts.

    Returns:
        A :class:`ContractionResult`: per-sample ``radius``, ``norm`` and ``path_score``,
        and their summaries.

    Raises:
        TypeError: ``model`` is not an equilibrium model.
    """
    require_equilibrium(model, "contraction")
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), parametrize.cached():
            f, z0 = fixed_point_map(model, x)
            method = model.deq.settings.solver
            res = solve(f, z0, method, tol=tol, max_iter=max_iter)
            radius = spectral_radius(f, res.z, generator=generator)
            norm = spectral_norm(f, res.z, generator=generator)
            path = path_independence(
                f, z0, method=method, tol=tol, max_iter=max_iter, generator=generator
            )
    finally:
        model.train(was)
    return ContractionResult(
        converged=float(res.converged.float().mean()),
        radius=radius.value,
        norm=norm.value,
        path_score=path.score,
        median_radius=float(radius.value.median()),
        median_norm=float(norm.value.median()),
        frac_radius_below_1=float((radius.value < 1).float().mean()),
        frac_norm_below_1=float((norm.value < 1).float().mean()),
        median_path_score=float(path.score.median()),
        frac_path_independent=float((path.score > 0.99).float().mean()),
    )
