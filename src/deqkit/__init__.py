"""deqkit: deep equilibrium models and the fixed-point solvers behind them."""

from . import analysis, models, nn, solvers, tasks
from .nn import DEQ, DEQInfo, DEQSettings, Implicit, Phantom, Unrolled
from .solvers import SolveError, SolveResult, Status, solve

__version__ = "0.1.0"

__all__ = [
    "DEQ",
    "DEQInfo",
    "DEQSettings",
    "Implicit",
    "Phantom",
    "SolveError",
    "SolveResult",
    "Status",
    "Unrolled",
    "__version__",
    "analysis",
    "models",
    "nn",
    "solve",
    "solvers",
    "tasks",
]
