"""Instruments for studying fixed points and whether test-time compute pays.

Each is a function over the public solver and layer API, batched, with per-sample results:

* :func:`spectral_radius` / :func:`spectral_norm`: ``rho(J)`` and ``||J||_2`` of
  ``J = df/dz`` per sample, from Jacobian products (Arnoldi / Lanczos). Norm < 1: a
  contraction; only radius < 1: eventually contractive.
* :func:`jacobian_frobenius`: Hutchinson estimate of ``||J||_F^2 / n`` (the regulariser's).
* :func:`trajectory`: every (or every k-th) iterate of a solve, to read out predictions
  along the way; :func:`limit_cycle` finds iterates that settle into a ``p``-cycle.
* :func:`compute_curve`: a metric as a function of the evaluation budget (the test-time
  compute curve), read off one solve per batch where the solver allows it.
* :func:`path_independence`: the asymptotic-alignment score of Anil et al. (2022).
* :func:`influence`: how strongly input position ``i`` moves output ``j`` through ``z*``
  (exact Jacobian), by offset ``j - i``, with its fitted decay (:class:`Influence`): the
  fading memory a contraction implies, measured.
* :func:`plot_residuals`, :func:`plot_compute_curves`, :func:`plot_spectral_histogram`: PNG
  figures, written atomically (matplotlib is imported only when one is drawn).

Studies of one trained model (an :class:`EquilibriumLike`, the protocol every
:class:`deqkit.models.EquilibriumModel` follows) on its run's evaluation sets, for the demo,
``deqkit sweep``/``examine`` and the experiments:

* :func:`sweep`: the compute curve at each difficulty (:class:`SweepResult`).
* :func:`compare_solvers`: evaluations and time to tolerance of several solvers at ``z*``
  (:class:`SolverTiming`).
* :func:`contraction`: spectral radius, norm and path independence at ``z*``
  (:class:`ContractionResult`).
* :func:`examine`: forward and backward solvers, contraction, path independence and the
  readout of every iterate, per test sample (:data:`EXAMPLE_COLUMNS`), summarised per
  difficulty (:class:`ExamineResult`, :class:`ExamineSummary`).

Every record is a frozen dataclass; ``to_dict()`` gives the JSON the CLI and the files
hold, with the same keys as the fields.
"""

from ..nn import jacobian_frobenius
from ._curve import CurveResult, compute_curve, exact_argmax
from ._examine import EXAMPLE_COLUMNS, ExamineResult, examine
from ._fixed_points import ContractionResult, SolverTiming, compare_solvers, contraction
from ._influence import Influence, influence
from ._model import EquilibriumLike
from ._path import PathIndependence, path_independence
from ._plots import plot_compute_curves, plot_residuals, plot_spectral_histogram
from ._spectral import SpectralEstimate, spectral_norm, spectral_radius
from ._summary import ExamineSummary
from ._sweep import SweepResult, sweep
from ._trajectory import LimitCycle, Trajectory, limit_cycle, trajectory

__all__ = [
    "EXAMPLE_COLUMNS",
    "ContractionResult",
    "CurveResult",
    "EquilibriumLike",
    "ExamineResult",
    "ExamineSummary",
    "Influence",
    "LimitCycle",
    "PathIndependence",
    "SolverTiming",
    "SpectralEstimate",
    "SweepResult",
    "Trajectory",
    "compare_solvers",
    "compute_curve",
    "influence",
    "contraction",
    "examine",
    "exact_argmax",
    "jacobian_frobenius",
    "limit_cycle",
    "path_independence",
    "plot_compute_curves",
    "plot_residuals",
    "plot_spectral_histogram",
    "spectral_norm",
    "spectral_radius",
    "sweep",
    "trajectory",
]
