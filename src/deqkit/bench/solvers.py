r"""Solver benchmark: deqkit's fixed-point solvers against torchdeq's, side by side.

Every solver runs on the same problems in the same process: a tanh layer

.. math:: f(z)_b = \tanh(g_b\, W z_b + \sigma\, U x_b)

with ``W`` scaled to a given spectral norm or spectral radius (see :class:`ProblemSpec`). Per
problem and solver the benchmark reports the evaluations of ``f`` to the tolerance, the
fraction of samples that converged (as the solver claims it, and as checked by recomputing the
residual of the returned ``z``), the median time over repeats, the evaluation-only limit and
the share of the time spent beyond it, the ratios deqkit/torchdeq, and for deqkit the overhead
per iteration beyond evaluating ``f``.

How it measures:

* Evaluations are counted by wrapping ``f``: ``calls`` is the number of batched calls of one
  solve. deqkit charges evaluations per sample (``SolveResult.iterations``); its ``evals`` is
  the maximum over samples. torchdeq evaluates every sample on every call, so its ``evals`` is
  ``calls``.
* Convergence is judged with one formula for both libraries,
  ``||f(z) - z|| / (||f(z)|| + 1e-12) <= tol`` at the returned ``z``, next to what each solver
  claims (deqkit ``converged``; torchdeq ``info["rel_lowest"] < tol``).
* A first, instrumented run of each solver records every call's per-sample residual (the
  convergence trace and "evaluations to tolerance"), and warms the code paths up. The timed
  runs that follow are interleaved (every solver once per round, ``repeats`` rounds), so slow
  drift of the machine hits all solvers alike; the median is reported. In each round a
  solver is timed over a burst of back-to-back runs of about 20 ms (at least one), as ``f``
  is, so that a short solve is timed in the cache state it leaves itself, not in the one
  the previous solver left.
* The evaluation-only limit of a solve is ``calls * t_f``, ``t_f`` the time of one
  evaluation of ``f`` timed alone (a ~20 ms burst of calls in every round, median over
  rounds): no solve that calls ``f`` this often can be faster. The overhead share is
  ``1 - limit / time``; the overhead per iteration ``(time - calls * t_f) / calls`` as a
  fraction of ``t_f``. Limit and times come from the same run, on one clock (wall time by
  default; the process's CPU time with ``BenchConfig(clock="cpu")``, steadier on a shared
  machine).
* :func:`check_targets` states the comparisons with torchdeq, :func:`check_limit_targets`
  those with the limit and with plain iteration, each as ``PASS``/``FAIL``/``SKIP`` lines.

The problems are :mod:`deqkit.testing`'s benchmark tanh layers (``ProblemSpec`` is
:class:`deqkit.testing.TanhSpec`, ``Problem`` :class:`~deqkit.testing.TanhProblem`,
``build_problem`` :func:`~deqkit.testing.build_tanh`, ``default_problems``
:func:`~deqkit.testing.benchmark_problems`). The module is split by what the code does:
``_run`` (the configuration, the rows and the timed runs), ``_targets`` and ``_report``.

torchdeq (``pip install deqkit[bench]``) is optional; without it, run with
``include_torchdeq=False``.
"""

from __future__ import annotations

from ._report import format_table, plot_convergence, write_report
from ._run import (
    OURS,
    THEIRS,
    TORCHDEQ_SOLVERS,
    BenchConfig,
    Problem,
    ProblemSpec,
    Row,
    build_problem,
    default_problems,
    run_solver_benchmark,
    torchdeq_available,
)
from ._targets import check_limit_targets, check_targets

__all__ = [
    "OURS",
    "THEIRS",
    "TORCHDEQ_SOLVERS",
    "BenchConfig",
    "Problem",
    "ProblemSpec",
    "Row",
    "build_problem",
    "check_limit_targets",
    "check_targets",
    "default_problems",
    "format_table",
    "plot_convergence",
    "run_solver_benchmark",
    "torchdeq_available",
    "write_report",
]
