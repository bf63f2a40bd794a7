"""deqkit: deep equilibrium models and the fixed-point solvers behind them."""

from . import solvers
from .solvers import SolveError, SolveResult, Status, solve

__version__ = "0.1.0"

__all__ = ["SolveError", "SolveResult", "Status", "__version__", "solve", "solvers"]
