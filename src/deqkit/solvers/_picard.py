"""Plain (damped) fixed-point iteration."""

from __future__ import annotations

from dataclasses import dataclass

from .._validate import assign, real
from ._core import Evaluator, Point, Solver


@dataclass(frozen=True)
class Picard(Solver):
    r"""Damped fixed-point (Picard / Krasnosel'skii-Mann) iteration.

    .. math:: z_{k+1} = (1 - \beta) z_k + \beta f(z_k)

    The baseline every other solver is measured against, and the fallback step of Anderson
    and Broyden. Converges linearly at rate ``rho(J)`` for ``beta = 1`` when ``f`` is a
    contraction near the fixed point; damping (``beta < 1``) can make it converge on maps
    whose Jacobian has eigenvalues left of ``-1`` (then the rate is ``rho((1-beta)I + beta J)``).

    Args:
        beta: Damping in ``(0, 1]`` (a value above 1 over-relaxes and is allowed up to 2).
            Default ``1.0``.
    """

    beta: float = 1.0
    name = "picard"
    capturable = True  # no host read under the accelerator policy, fixed shapes

    def __post_init__(self):
        assign(self, beta=real("beta", self.beta, 0.0, 2.0, low_open=True, of=self.name))

    def step(self, ev: Evaluator, p: Point, active, state):
        z = p.z + p.g if self.beta == 1.0 else p.z + self.beta * p.g  # same values, one op less
        return ev.point(ev.propose(active, z, p.z)), None, state
