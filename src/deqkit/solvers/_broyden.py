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
    U: Tensor  # [B, rows + 1, n]; the last row is a scratch row that is never read
    V: Tensor  # [B, rows + 1, n]
    count: Tensor  # [B] long: pairs in use
    d: Tensor  # [B, n] quasi-Newton step -H g for the current iterate
    trial: Tensor  # [B] long: what the next proposal is (see Broyden, point 3)
    bound: int  # no sample uses more than this many pairs (known on the host)
    cap: int  # the most pairs a sample keeps; U and V grow (doubling) up to cap rows


def _grow(buf: Tensor, rows: int, cap: int) -> Tensor:
    """``buf`` (``[B, r + 1, n]``, the last row scratch) with room for at least ``rows``
    rows (doubling ``r``, at most ``cap``), plus scratch; the new rows are zero."""
    B, have, n = buf.shape
    if have - 1 >= rows:
        return buf
    new = min(cap, max(rows, 2 * (have - 1)))
    return torch.cat((buf[:, : have - 1], buf.new_zeros(B, new - have + 2, n)), dim=1)


def _apply(U: Tensor, V: Tensor, count: Tensor, x: Tensor) -> Tensor:
    """``(-I + sum_{i < count} u_i v_i^T) x`` per sample, over the pairs ``U``/``V`` hold.

    ``[B, 1, n] x [B, n, k]`` is the layout BLAS handles well; the transposed product
    (``V x`` as ``[B, k, n] x [B, n, 1]``) was ten times slower.
    """
    valid = torch.arange(U.shape[1], device=x.device) < count[:, None]
    coef = torch.where(valid, torch.bmm(x[:, None, :], V.transpose(1, 2))[:, 0], 0.0)
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
    5. A pass reads only the pairs some sample can hold (one more per step, up to
       ``memory``), and the buffers grow by doubling as pairs are added: a solve pays for
       the memory it uses, not for the cap. (Before, every step read, and every solve
       zero-filled, all ``min(memory, max_iter - 2)`` pairs: 39 evaluations of ``f`` of
       overhead per step on a 12-evaluation solve at width 256, batch 64.)

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
        # A budget of max_iter evaluations can use at most max_iter - 2 pairs. The buffers
        # start small and double as pairs are added: a short solve never fills (zeroes)
        # memory for pairs it cannot reach, which at the default memory of 100 cost more
        # than the solve.
        cap = max(1, min(self.memory, ev.max_iter - 2))
        zeros = p.z.new_zeros(B, min(cap, 8) + 1, n)
        count = torch.zeros(B, dtype=torch.long, device=p.z.device)
        return _Memory(zeros, zeros.clone(), count, p.g.clone(), count.clone(), 0, cap)

    def step(self, ev: Evaluator, p: Point, active: Tensor, mem: _Memory):
        U, V, count, d, trial, bound, cap = mem
        grown = min(bound + 1, cap)  # the most pairs any sample can hold after this step
        U, V = _grow(U, grown, cap), _grow(V, grown, cap)
        scratch = U.shape[1] - 1
        # Only the pairs some sample may use are read: a step adds at most one pair per
        # sample, so `bound` grows by one per step. (The same on every device: the largest
        # count, exact and free on the CPU, would change the products' shapes and with them
        # the rounding, so that the CPU and an accelerator would not give the same iterates.)
        Uk, Vk = U[:, :bound], V[:, :bound]
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
        Hq = _apply(Uk, Vk, used, q.g)
        Hy = Hq + direction  # H y = H g_{k+1} - H g_k, and -H g_k = direction
        HTs = _apply(Vk, Uk, used, s)
        denom = (s * Hy).sum(1)
        scale = torch.linalg.vector_norm(s, dim=1) * torch.linalg.vector_norm(Hy, dim=1)
        eps = torch.finfo(s.dtype).eps
        update = accept & torch.isfinite(denom) & (denom.abs() > eps * scale)
        u = (s - Hy) / torch.where(update, denom, 1.0)[:, None]
        full = update & (used >= cap)
        write = update & ~full
        # A sample that does not write sends its row to the scratch row, so no pair in
        # use is overwritten and no gather of the old rows is needed.
        rows = torch.arange(U.shape[0], device=U.device)
        slot = torch.where(write, used, scratch)
        U = put(U, (rows, slot), u)
        V = put(V, (rows, slot), HTs)
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
        return q, accept, _Memory(U, V, count, d, trial, grown, cap)
