"""Fixed-point solvers for ``z = f(z)`` on batched tensors.

Use :func:`deqkit.solve` with a method name, or pass one of these objects as ``method`` to
fix hyperparameters once (``deqkit.solve(f, z0, Anderson(m=8))``). To add a solver, subclass
:class:`Solver` as a frozen dataclass, implement ``step`` (and ``init`` if it keeps state),
and :func:`register` it.

Extension API, for layers and instruments that drive the loop themselves (the DEQ layer's
unrolled backward, :func:`deqkit.analysis.compute_curve`): :func:`run` is the loop behind
:func:`solve` without its argument checks and without ``no_grad`` (so autograd can record
through it), with a per-step callback; :func:`check_budget` is the check of ``tol``,
``stop`` and ``max_iter`` that :func:`solve` applies, to call before :func:`run`, and
:func:`all_finite` its check that ``z0`` is finite; :func:`run_steps` is the loop's step
under the accelerator policy (no host read), for a :meth:`Solver.fused` that drives the
steps itself, as :class:`Graphed` does to record them as a CUDA graph.
"""

from ._anderson import Anderson
from ._broyden import Broyden
from ._core import (
    Evaluator,
    Point,
    SolveError,
    Solver,
    SolveResult,
    Status,
    all_finite,
    where_active,
)
from ._graphed import Graphed
from ._loop import available, check_budget, register, resolve, run, run_steps, solve
from ._newton import NewtonKrylov
from ._picard import Picard

for _name, _cls in (
    ("picard", Picard),
    ("fixed_point", Picard),
    ("anderson", Anderson),
    ("broyden", Broyden),
    ("newton", NewtonKrylov),
    ("graphed", Graphed),
):
    register(_name, _cls)

__all__ = [
    "Anderson",
    "Broyden",
    "Evaluator",
    "Graphed",
    "NewtonKrylov",
    "Picard",
    "Point",
    "SolveError",
    "SolveResult",
    "Solver",
    "Status",
    "all_finite",
    "available",
    "check_budget",
    "register",
    "resolve",
    "run",
    "run_steps",
    "solve",
    "where_active",
]
