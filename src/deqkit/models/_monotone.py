"""Monotone operator equilibrium network (Winston & Kolter 2020): convergence guaranteed."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._validate import integer, real
from ..nn import DEQSettings
from ._base import EquilibriumModel
from ._mlp import DenseInjection, _head

__all__ = ["MonotoneCell", "MonotoneMLP"]


class MonotoneCell(nn.Module):
    r"""Forward-backward splitting step of a monotone operator DEQ (monDEQ).

    Winston & Kolter (2020), "Monotone operator equilibrium networks", parametrise

    .. math:: W = (1 - m) I - A^\top A + B - B^\top,

    so the symmetric part of :math:`I - W = m I + A^\top A - (B - B^\top)` is
    :math:`m I + A^\top A \succeq m I` (strong monotonicity) for *any* ``A``, ``B``. Then
    :math:`z = \mathrm{relu}(W z + u)` has exactly one solution, and it is the fixed point
    of the forward-backward step this cell computes,

    .. math:: f(z, u) = \mathrm{relu}\big((1 - \alpha) z + \alpha (W z + u)\big),

    which is a contraction in the 2-norm, with factor
    :math:`\sqrt{1 - 2\alpha m + \alpha^2 L^2} < 1` for :math:`0 < \alpha < 2m / L^2`,
    :math:`L = \|I - W\|_2` (relu is non-expansive). So plain (Picard) iteration, as run by
    the :mod:`deqkit` solvers, converges from any start, whatever the weights; the
    fixed point does not depend on ``alpha``. The cell uses
    :math:`\alpha = \mathrm{damping} \cdot m / L^2`, with ``L`` computed exactly from the
    current weights (no gradient through ``alpha``); ``damping = 1`` minimises the bound,
    giving the factor :math:`\sqrt{1 - m^2 / L^2}`. Larger ``m`` converges faster but
    restricts ``W`` more. Winston & Kolter also use Peaceman-Rachford splitting, which
    converges faster; this cell keeps the form every deqkit solver can run.

    Args:
        hidden: State width, >= 1.
        m: Monotonicity parameter, > 0. Default ``0.5``.
        damping: ``alpha`` as a fraction of ``m / L^2``, in ``(0, 2)``. Default ``1.0``.

    Raises:
        ValueError: a bad argument, named in the message.
    """

    def __init__(self, hidden: int, *, m: float = 0.5, damping: float = 1.0):
        super().__init__()
        integer("hidden", hidden, 1)
        real("m", m, 0.0, low_open=True)
        damping = real("damping", damping, 0.0, 2.0, low_open=True, high_open=True)
        self.hidden = hidden
        self.m = float(m)
        self.damping = float(damping)
        # Small init keeps L near m, so the factor sqrt(1 - m^2 / L^2) starts near 0.75.
        self.A = nn.Parameter(0.25 * torch.randn(hidden, hidden) / hidden**0.5)
        self.B = nn.Parameter(0.1 * torch.randn(hidden, hidden) / hidden**0.5)
        self._alpha: float | None = None

    def weight(self) -> Tensor:
        r"""``W = (1 - m) I - A^T A + B - B^T``, ``[hidden, hidden]``, differentiable."""
        eye = torch.eye(self.hidden, dtype=self.A.dtype, device=self.A.device)
        return (1.0 - self.m) * eye - self.A.T @ self.A + self.B - self.B.T

    def lipschitz(self) -> float:
        """``L = ||I - W||_2``, the Lipschitz constant of the monotone operator."""
        with torch.no_grad():
            eye = torch.eye(self.hidden, dtype=torch.float64, device=self.A.device)
            M = eye - self.weight().double()
            return float(torch.linalg.eigvalsh(M.T @ M)[-1].clamp_min(0.0).sqrt())

    def step_size(self) -> float:
        """``alpha = damping * m / L^2`` (below the bound ``2 m / L^2``)."""
        if self._alpha is not None:
            return self._alpha
        return self.damping * self.m / self.lipschitz() ** 2

    def contraction_factor(self) -> float:
        """``sqrt(1 - 2 alpha m + alpha^2 L^2)``: the guaranteed rate, < 1."""
        L, alpha = self.lipschitz(), self.step_size()
        return math.sqrt(max(0.0, 1.0 - 2.0 * alpha * self.m + alpha**2 * L**2))

    @contextlib.contextmanager
    def frozen_step_size(self) -> Iterator[float]:
        """Compute ``alpha`` once for the duration of the block (one solve: the weights do
        not change between iterations, and ``L`` costs an eigenvalue problem)."""
        previous = self._alpha
        self._alpha = None
        self._alpha = self.step_size()
        try:
            yield self._alpha
        finally:
            self._alpha = previous

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        alpha = self.step_size()
        return torch.relu((1.0 - alpha) * z + alpha * (z @ self.weight().T + u))

    def initial_state(self, u: Tensor) -> Tensor:
        """Zeros ``[N, hidden]``."""
        return u.new_zeros(u.shape)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, m={self.m}, damping={self.damping}"


class MonotoneMLP(EquilibriumModel):
    r"""Dense monotone operator DEQ classifier: a fixed point that always exists, is unique,
    and which plain iteration always reaches.

    .. math:: z^* = \mathrm{relu}(W z^* + U\,\mathrm{flatten}(x) + b), \qquad
              \mathrm{logits} = V z^* + c

    with ``W`` parametrised as in :class:`MonotoneCell`. Solved by Picard iteration on the
    forward-backward step by default, the setting for which convergence is guaranteed;
    any other solver may be passed. Compare with :class:`DEQMLP` (unconstrained) or the
    other models with ``spectral_norm=True`` (weights constrained, convergence not
    guaranteed because of residual connections and norms).

    Args:
        in_features: Values per input sample (flattened inside).
        num_classes: Output classes. Default ``10``.
        hidden: State width. Default ``64``.
        m: Monotonicity parameter, > 0. Default ``0.5``.
        damping: Step size as a fraction of ``m / L^2``, in ``(0, 2)``. Default ``1.0``.
        deq_settings: DEQ settings, a :class:`~deqkit.DEQSettings` or a dict of some.
            Defaults here: ``solver="picard"``, ``max_iter=100``, ``backward="implicit"``
            (the rest as :class:`~deqkit.DEQSettings`).
        deq_kwargs: Older alias of ``deq_settings`` (a dict).
        **deq_keywords: The same settings as keywords (``solver="anderson"``, ...).

    Call:
        ``logits [N, num_classes], info = model(x, z0=None, **overrides)``.

    Raises:
        ValueError: a bad argument, named in the message.
    """

    # Convergence is guaranteed, so the exact implicit gradient applies (not the phantom
    # default of DEQ, which is chosen for cells that may not converge).
    _deq_defaults = {"solver": "picard", "max_iter": 100, "backward": "implicit"}

    def __init__(
        self,
        in_features: int,
        num_classes: int = 10,
        *,
        hidden: int = 64,
        m: float = 0.5,
        damping: float = 1.0,
        deq_settings: DEQSettings | Mapping[str, Any] | None = None,
        deq_kwargs: Mapping[str, Any] | None = None,
        **deq_keywords: Any,
    ):
        integer("in_features", in_features, 1)
        super().__init__(
            DenseInjection(in_features, hidden),
            MonotoneCell(hidden, m=m, damping=damping),
            _head(hidden, num_classes),
            deq_settings=deq_settings,
            deq_kwargs=deq_kwargs,
            **deq_keywords,
        )
        self.hidden = hidden

    def initial_state(self, x: Tensor) -> Tensor:
        """Zeros ``[N, hidden]``."""
        self.injection.check_input(x)
        return x.new_zeros(x.shape[0], self.hidden)

    def _frozen(self) -> contextlib.AbstractContextManager:
        return self.cell.frozen_step_size()
