"""Limited-memory ("good") Broyden on g(z) = f(z) - z, per sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .._validate import assign, integer, real
from ._core import Evaluator, Point, Solver, put, where_active

_DECREASE = 1e-4
"""Sufficient decrease of a trial after a rejection: ``||g|| <= (1 - 1e-4 t) ||g_k||``."""


class _Memory(NamedTuple):
    U: Tensor  # [B, memory, n]
    V: Tensor  # [B, memory, n]
    count: Tensor  # [B] long: pairs in use
    d: Tensor  # [B, n] quasi-Newton step -H g for the current iterate
    trial: Tensor  # [B] long: what the next proposal is (see Broyden, point 3)


def _apply(U: Tensor, V: Tensor, count: Tensor, x: Tensor) -> Tensor:
    """``(-I + sum_{i < count} u_i v_i^T) x`` per sample."""
    valid = torch.arange(U.shape[1], device=x.device) < count[:, None]
    coef = torch.where(valid, torch.bmm(V, x[..., None])[..., 0], 0.0)
    return torch.bmm(coef[:, None, :], U)[:, 0] - x


@dataclass(frozen=True)
class Broyden(Solver):
    r"""Limited-memory good Broyden method on ``g(z) = f(z) - z = 0``.

    Keeps an inverse-Jacobian estimate ``H ~ (J_f - I)^{-1}``, starting from ``H_0 = -I``
    (so the first step is a plain fixed-point step), and updates it by Sherman-Morrison:

    .. math::

        z_{k+1} = z_k + t_k d_k,\quad d_k = -H_k g_k,\qquad s = z_{k+1} - z_k,\quad
        y = g_{k+1} - g_k, \\
        H_{k+1} = H_k + \frac{(s - H_k y)\, s^\top H_k}{s^\top H_k y}
                = H_k + u v^\top

    (Broyden 1965; the DEQ form of Bai et al. 2019), with ``t_k = 1`` unless a step was
    rejected (point 3). ``H = -I + sum_i u_i v_i^T`` is stored as at most ``memory`` pairs
    per sample.

    How this differs from the DEQ originals and torchdeq 0.1, and why:

    1. Memory is capped and, when full, cleared (restart from ``-I``) rather than growing with
       ``max_iter`` (torchdeq) or overwriting the oldest pair (which stalled on non-normal maps).
    2. Everything is per sample: the update is skipped for a sample whose ``s^T H y`` is
       numerically zero, and a step is rejected for one sample alone. The originals use one
       line-search step for the batch.
    3. A quasi-Newton step whose ``||g||`` grows by more than ``safeguard`` times is rejected,
       and the sample searches from ``z_k``, one evaluation per trial, in this order:

       * the plain step ``z_k + g_k`` (``H = -I``), accepted if
         ``||g|| <= (1 - 10^{-4}) ||g_k||``; then the memory is dropped (a restart from ``-I``);
       * the rejected step halved, ``z_k + 2^{-j} d_k`` for ``j = 1 .. max_backtracks``, with
         the memory kept, accepted once ``||g|| <= (1 - 10^{-4} 2^{-j}) ||g_k||``;
       * the last trial is accepted whatever it gives, so that the sample moves on.

       An accepted trial updates ``H`` with the step actually taken; every step is still one
       evaluation (a trial is a step whose proposal may be rejected). Before, a rejection
       cleared the memory and the plain step was accepted whatever its residual: where plain
       iteration is unstable each such reset multiplied ``||g||`` (by 27 up to 1e50 on
       SciPy's pressure-network problem started far from its roots, whose iterates then went
       to 1e19-1e50), while the halved quasi-Newton step lowers it. Where the plain step does
       lower ``||g||`` (every rejection in the test zoo), the search is that reset: same
       iterates, same evaluations. ``max_backtracks=0`` restores the old reset. A non-finite
       quasi-Newton proposal is handled as before, not searched: the memory is cleared and
       the plain step that follows is accepted whatever it gives, so a sample whose ``f``
       left its domain for good is reported ``NONFINITE``. (Restarting from the best iterate
       instead keeps the failing ingredient, a plain step from a cleared memory; where the
       current iterate is the best, as at the first rejection of the pressure network's start
       scaled with its flow, it is the very same step.)
    4. The next direction ``-H_{k+1} g_{k+1}`` is formed from ``H_k g_{k+1}`` and the new pair,
       so a step costs four passes over the memory instead of six.

    Args:
        memory: Number of ``(u, v)`` pairs kept, >= 1; buffers are sized to
            ``min(memory, max_iter - 2)``, all a budget can use. Default ``100`` (with 30, a
            solve of a near-linear tanh layer at spectral radius 0.99 cleared its memory and
            needed 113-132 evaluations instead of 82).
        safeguard: Growth factor of ``||g||`` above which a quasi-Newton step is rejected,
            > 1. Default ``30.0`` (10 rejected legitimate steps on near-linear problems).
        max_backtracks: Halvings of a rejected step tried after the plain step, >= 0
            (point 3). Default ``4``.
    """

    memory: int = 100
    safeguard: float = 30.0
    max_backtracks: int = 4
    name = "broyden"

    def __post_init__(self):
        of = self.name
        assign(
            self,
            memory=integer("memory", self.memory, 1, of=of),
            safeguard=real("safeguard", self.safeguard, 1.0, low_open=True, finite=False, of=of),
            max_backtracks=integer("max_backtracks", self.max_backtracks, 0, of=of),
        )

    def init(self, ev: Evaluator, p: Point, active: Tensor) -> _Memory:
        B, n = p.z.shape
        # A budget of max_iter evaluations can use at most max_iter - 2 pairs.
        zeros = p.z.new_zeros(B, max(1, min(self.memory, ev.max_iter - 2)), n)
        count = torch.zeros(B, dtype=torch.long, device=p.z.device)
        return _Memory(zeros, zeros.clone(), count, p.g.clone(), count.clone())

    def step(self, ev: Evaluator, p: Point, active: Tensor, mem: _Memory):
        U, V, count, d, trial = mem
        # trial 0: the quasi-Newton step; 1: the plain step after a rejection; j + 1: the
        # rejected step halved j times (point 3).
        fresh, plain = trial == 0, trial == 1
        t = torch.where(trial > 1, 0.5 ** (trial - 1).to(p.z.dtype), 1.0)
        direction = where_active(plain, p.g, d)
        q = ev.point(ev.propose(active, p.z + t[:, None] * direction, p.z))
        finite = torch.isfinite(q.gnorm)
        # NaN compares False: a non-finite proposal fails both tests.
        ok = torch.where(
            fresh,
            q.gnorm <= self.safeguard * p.gnorm,
            q.gnorm <= (1.0 - _DECREASE * t) * p.gnorm,
        )
        last = trial == self.max_backtracks + 1
        accept = active & (ok | (fresh & (count == 0)) | last)
        lost = active & fresh & ~finite & ~accept  # cleared as before, not searched
        search = active & ~accept & ~lost

        used = torch.where(plain, 0, count)  # the plain trial is taken with H = -I
        s = q.z - p.z
        Hq = _apply(U, V, used, q.g)
        Hy = Hq + direction  # H y = H g_{k+1} - H g_k, and -H g_k = direction
        HTs = _apply(V, U, used, s)
        denom = (s * Hy).sum(1)
        scale = torch.linalg.vector_norm(s, dim=1) * torch.linalg.vector_norm(Hy, dim=1)
        eps = torch.finfo(s.dtype).eps
        update = accept & torch.isfinite(denom) & (denom.abs() > eps * scale)
        u = (s - Hy) / torch.where(update, denom, 1.0)[:, None]
        full = update & (used >= U.shape[1])
        write = update & ~full
        rows = torch.arange(U.shape[0], device=U.device)
        slot = used.clamp(max=U.shape[1] - 1)
        U = put(U, (rows, slot), where_active(write, u, U[rows, slot]))
        V = put(V, (rows, slot), where_active(write, HTs, V[rows, slot]))
        # -H_{k+1} g_{k+1} = -(H_k g_{k+1} + u (v . g_{k+1}))
        d_next = -(Hq + torch.where(write, (HTs * q.g).sum(1), 0.0)[:, None] * u)
        restart = lost | full
        d_next = where_active(restart, torch.where(lost[:, None], p.g, q.g), d_next)
        d_next = where_active(search, d, d_next)
        count_next = torch.where(restart, 0, torch.where(write, used + 1, used))
        count_next = torch.where(search, count, count_next)
        d = where_active(active, d_next, d)
        count = torch.where(active, count_next, count)
        trial = torch.where(search, trial + 1, torch.where(active, 0, trial))
        return q, accept, _Memory(U, V, count, d, trial)
