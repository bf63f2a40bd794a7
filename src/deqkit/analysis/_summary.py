"""The headline numbers of ``examine`` at one difficulty, from its per-sample measurements."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["ExamineSummary"]

PATH_INDEPENDENT = 0.99  # path score above which a sample counts as path independent


def _frac(mask: Tensor) -> float:
    """Fraction of ``True`` in ``mask``; NaN for an empty selection."""
    return float(mask.double().mean()) if mask.numel() else float("nan")


@dataclass(frozen=True)
class ExamineSummary:
    """What :func:`~deqkit.analysis.examine` found at one difficulty, over its ``n`` samples.

    "Fraction" fields are in ``[0, 1]`` (NaN where they select no sample); "solver" is the
    model's solver (or ``examine``'s ``method``), "plain" is Picard iteration ``z <- f(z)``.
    A sample is *correct* when every position of its readout at ``z*`` is right; *path
    independent* when its path score exceeds 0.99.

    Attributes:
        n: Samples examined.
        accuracy: Fraction correct at the solver's ``z*``.
        position_accuracy: Mean fraction of positions right at ``z*``.
        converged: Fraction whose forward solve met ``tol``.
        median_iterations: Median forward evaluations of ``f``.
        picard_converged: Fraction whose plain iteration met ``tol``.
        picard_median_iterations: Median evaluations of plain iteration.
        picard_fails_solver_converges: Fraction where plain iteration fails, the solver not.
        solver_fails_picard_converges: Fraction where the solver fails, plain iteration not.
        picard_residual_grows: Fraction whose plain-iteration residual ended above its start.
        backward_converged: Fraction whose adjoint solve ``u = J^T u + g`` (the implicit
            gradient's) met ``tol`` with the solver.
        backward_median_iterations: Median evaluations of that adjoint solve.
        backward_picard_converged: Fraction whose adjoint system plain iteration solves.
        backward_picard_fails_solver_converges: Fraction where plain iteration fails on the
            adjoint system and the solver does not.
        median_radius: Median spectral radius ``rho(J)`` of ``J = df/dz`` at ``z*``.
        median_norm: Median spectral norm ``||J||_2`` at ``z*``.
        frac_radius_below_1: Fraction with ``rho(J) < 1`` (locally, eventually contractive).
        frac_norm_below_1: Fraction with ``||J||_2 < 1`` (a contraction near ``z*``).
        median_path_score: Median path-independence score (Anil et al., 2022).
        frac_path_independent: Fraction path independent.
        accuracy_path_independent: Accuracy among the path-independent samples.
        accuracy_path_dependent: Accuracy among the others.
        accuracy_radius_below_1: Accuracy among the samples with ``rho(J) < 1``.
        accuracy_radius_above_1: Accuracy among the samples with ``rho(J) >= 1``.
        best_readout_beats_fixed_point: Fraction whose best iterate of the solver reads out
            more positions right than ``z*`` does.
        ever_correct_not_at_fixed_point: Fraction correct at some iterate but not at ``z*``.
        oracle_accuracy: Fraction correct at some iterate or at ``z*``.
        picard_fixed_point: Fraction whose plain iterates settle on a point (period 1).
        picard_cycle: Fraction whose plain iterates settle on a cycle (period 2 to 8).
        picard_neither: Fraction that settle on neither.
        readout_curve_solver: Accuracy of the readout at each of the first ``T`` iterates of
            the solver (``T = readout_iters``), a sample's latest iterate after ``t``
            evaluations.
        readout_curve_picard: The same for plain iteration.
    """

    n: int
    accuracy: float
    position_accuracy: float
    converged: float
    median_iterations: float
    picard_converged: float
    picard_median_iterations: float
    picard_fails_solver_converges: float
    solver_fails_picard_converges: float
    picard_residual_grows: float
    backward_converged: float
    backward_median_iterations: float
    backward_picard_converged: float
    backward_picard_fails_solver_converges: float
    median_radius: float
    median_norm: float
    frac_radius_below_1: float
    frac_norm_below_1: float
    median_path_score: float
    frac_path_independent: float
    accuracy_path_independent: float
    accuracy_path_dependent: float
    accuracy_radius_below_1: float
    accuracy_radius_above_1: float
    best_readout_beats_fixed_point: float
    ever_correct_not_at_fixed_point: float
    oracle_accuracy: float
    picard_fixed_point: float
    picard_cycle: float
    picard_neither: float
    readout_curve_solver: tuple[float, ...]
    readout_curve_picard: tuple[float, ...]

    @classmethod
    def of(cls, s: dict[str, Tensor], curves: dict[str, Tensor]) -> ExamineSummary:
        """The summary of per-sample measurements ``s`` (``[n]`` tensors named as the columns
        of ``examples.csv``) and readout curves ``curves`` (``"solver"``/``"picard"``:
        ``[T, n]`` position accuracy of every iterate)."""
        fp = s["position_accuracy"]
        best = s["best_readout_accuracy"]
        conv = s["converged"]
        period = s["period"]
        correct = s["correct"]
        independent = s["path_score"] > PATH_INDEPENDENT
        return cls(
            n=int(fp.numel()),
            accuracy=_frac(correct),
            position_accuracy=float(fp.mean()),
            # Forward: the model's solver (e.g. Anderson) against plain iteration.
            converged=_frac(conv),
            median_iterations=float(s["iterations"].double().median()),
            picard_converged=_frac(s["picard_converged"]),
            picard_median_iterations=float(s["picard_iterations"].double().median()),
            picard_fails_solver_converges=_frac(~s["picard_converged"] & conv),
            solver_fails_picard_converges=_frac(~conv & s["picard_converged"]),
            picard_residual_grows=_frac(s["picard_growth"] > 1),
            # Backward (adjoint) solves at z*.
            backward_converged=_frac(s["backward_converged"]),
            backward_median_iterations=float(s["backward_iterations"].double().median()),
            backward_picard_converged=_frac(s["backward_picard_converged"]),
            backward_picard_fails_solver_converges=_frac(
                ~s["backward_picard_converged"] & s["backward_converged"]
            ),
            # Contraction and path independence at z*.
            median_radius=float(s["radius"].median()),
            median_norm=float(s["norm"].median()),
            frac_radius_below_1=_frac(s["radius"] < 1),
            frac_norm_below_1=_frac(s["norm"] < 1),
            median_path_score=float(s["path_score"].median()),
            frac_path_independent=_frac(independent),
            accuracy_path_independent=_frac(correct[independent]),
            accuracy_path_dependent=_frac(correct[s["path_score"] <= PATH_INDEPENDENT]),
            accuracy_radius_below_1=_frac(correct[s["radius"] < 1]),
            accuracy_radius_above_1=_frac(correct[s["radius"] >= 1]),
            # Intermediate iterates against the fixed point.
            best_readout_beats_fixed_point=_frac(best > fp + 1e-12),
            ever_correct_not_at_fixed_point=_frac(s["ever_correct"] & ~correct),
            oracle_accuracy=_frac(s["ever_correct"] | correct),
            picard_fixed_point=_frac(period == 1),
            picard_cycle=_frac(period > 1),
            picard_neither=_frac(period == 0),
            readout_curve_solver=tuple(curves["solver"].eq(1).double().mean(dim=1).tolist()),
            readout_curve_picard=tuple(curves["picard"].eq(1).double().mean(dim=1).tolist()),
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict in field order (curves as lists): one entry of
        ``examine.json``'s ``"difficulties"``."""
        out = dataclasses.asdict(self)
        out["readout_curve_solver"] = list(self.readout_curve_solver)
        out["readout_curve_picard"] = list(self.readout_curve_picard)
        return out
