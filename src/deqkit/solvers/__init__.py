"""Fixed-point solvers for ``z = f(z)`` on batched tensors.

Use :func:`deqkit.solve` with a method name, or pass one of these objects as ``method`` to
fix hyperparameters once (``deqkit.solve(f, z0, Anderson(m=8))``). To add a solver, subclass
:class:`Solver` as a frozen dataclass, implement ``step`` (and ``init`` if it keeps state),
and :func:`register` it.
"""

from ._anderson import Anderson
from ._broyden import Broyden
from ._core import Evaluator, Point, SolveError, Solver, SolveResult, Status, where_active
from ._loop import available, register, resolve, solve
from ._newton import NewtonKrylov
from ._picard import Picard

for _name, _cls in (
    ("picard", Picard),
    ("fixed_point", Picard),
    ("anderson", Anderson),
    ("broyden", Broyden),
    ("newton", NewtonKrylov),
):
    register(_name, _cls)

__all__ = [
    "Anderson",
    "Broyden",
    "Evaluator",
    "NewtonKrylov",
    "Picard",
    "Point",
    "SolveError",
    "SolveResult",
    "Solver",
    "Status",
    "available",
    "register",
    "resolve",
    "solve",
    "where_active",
]
