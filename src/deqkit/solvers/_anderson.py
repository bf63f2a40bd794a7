"""Anderson acceleration (type II), safeguarded, per sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .._validate import assign, integer, real
from ._core import Evaluator, Point, Solver, put


class _History(NamedTuple):
    dF: Tensor  # [B, m, n] differences of f(z) between consecutive accepted iterates
    dG: Tensor  # [B, m, n] differences of g(z) = f(z) - z
    gram: Tensor  # [B, m, m] float64 dG dG^T, zero outside the valid block
    rhs: Tensor  # [B, m] float64, dG g_k for the current iterate (valid columns only count)
    accepted: Tensor  # [B] long, differences recorded since the last reset; the ring's
    # next column is accepted % m and its valid columns are 0..min(accepted, m) - 1
    rows: Tensor  # [B] long, 0..B-1
    cols: Tensor  # [m] long, 0..m-1


@dataclass(frozen=True)
class Anderson(Solver):
    r"""Anderson acceleration, type II, in difference form with a per-column relative ridge.

    With residual ``g(z) = f(z) - z`` and the last ``m_k <= m`` differences
    ``dG = [g_{i+1} - g_i]``, ``dF = [f(z_{i+1}) - f(z_i)]`` (so ``dZ = dF - dG``):

    .. math::

        \gamma_k &= \arg\min_\gamma \|g_k - dG\,\gamma\|^2
                   + \lambda \textstyle\sum_i \|dG_i\|^2 \gamma_i^2 \\
        z_{k+1} &= z_k + \beta g_k - (dZ + \beta\, dG)\,\gamma_k

    which equals the classical form ``z_{k+1} = sum_i alpha_i f(z_i)`` (``sum alpha = 1``,
    ``alpha`` minimising ``||G alpha||``) for ``beta = 1, lambda = 0`` (Walker & Ni 2011,
    SIAM J. Numer. Anal. 49(4)).

    How this differs from the DEQ tutorial (Kolter, Duvenaud & Johnson), torchdeq 0.1 and
    jaxopt, and why:

    1. The ridge is relative: each weight is penalised in proportion to its own column's
       ``||dG_i||^2`` (a Tikhonov term on the column-normalised problem), so it is invariant
       to the scale of ``f`` and of each difference. An absolute ``lam = 1e-4`` on the Gram
       matrix (tutorial, torchdeq) damps the method into being slower than plain iteration on
       most problems and stalls it near ``1e-4`` residual. A ridge relative to the trace
       ``tr(dG^T dG) / m`` (also scale invariant) still damps the newest, much smaller
       differences of a fast solve: with ``m >= n`` on a linear map it took 13 evaluations
       where GMRES-equivalent Anderson takes 10; the per-column ridge takes 10.
    2. The ``m x m`` system is solved per sample in float64 by a Cholesky factorisation that
       reports failure per sample (``cholesky_ex``); a failing sample takes a plain damped step
       and clears its history instead of aborting the batch with "singular U".
    3. Safeguard: a proposal whose residual ``||g||`` is non-finite or grows by more than
       ``safeguard`` times over the last accepted iterate is rejected; that sample clears its
       history and its next step is a plain damped step. Weights with ``||gamma|| > max_weight``
       are rejected the same way. None of the three references has a safeguard.
    4. Converged samples are frozen by the shared loop; the tutorial and torchdeq keep updating
       them until the whole batch meets the tolerance, which drives their differences to zero,
       the Gram matrix singular, and sometimes the sample back out of convergence.
    5. The Gram matrix and ``dG g_k`` are updated incrementally: after an evaluation one
       batched product against the history gives both the new Gram row and the next right-hand
       side, so a step costs two passes over the history (three when ``beta != 1``) instead
       of rebuilding ``m^2 n`` Gram entries.
    6. History is a preallocated ring per sample with its own length, so samples may reset
       independently; nothing in the step synchronises with the host.

    Args:
        m: History length (number of differences), >= 1. Default ``5``.
        beta: Mixing (damping) in ``(0, 2]``. Default ``1.0``.
        lam: Relative ridge ``lambda`` >= 0 (bounds the condition number of the
            column-normalised system by about ``m / lambda``). Default ``1e-8``.
        safeguard: Growth factor of ``||g||`` above which an accelerated proposal is
            rejected, > 1 (``inf`` disables). Default ``10.0``; a factor of 2 stalls on
            non-normal maps, whose residual may legitimately grow by ``||M||`` per step.
        max_weight: Largest accepted ``||gamma||``. Default ``1e6``.
    """

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-8
    safeguard: float = 10.0
    max_weight: float = 1e6
    name = "anderson"

    def __post_init__(self):
        of = self.name
        assign(
            self,
            m=integer("m", self.m, 1, of=of),
            beta=real("beta", self.beta, 0.0, 2.0, low_open=True, of=of),
            lam=real("lam", self.lam, 0.0, of=of),
            safeguard=real("safeguard", self.safeguard, 1.0, low_open=True, finite=False, of=of),
            max_weight=real("max_weight", self.max_weight, 0, low_open=True, finite=False, of=of),
        )

    def init(self, ev: Evaluator, p: Point, active: Tensor) -> _History:
        B, n = p.z.shape
        m, dev = self.m, p.z.device
        return _History(
            dF=p.z.new_zeros(B, m, n),
            dG=p.z.new_zeros(B, m, n),
            gram=torch.zeros(B, m, m, dtype=torch.float64, device=dev),
            rhs=torch.zeros(B, m, dtype=torch.float64, device=dev),
            accepted=torch.zeros(B, dtype=torch.long, device=dev),
            rows=torch.arange(B, device=dev),
            cols=torch.arange(m, device=dev),
        )

    def step(self, ev: Evaluator, p: Point, active: Tensor, h: _History):
        m = h.cols.shape[0]
        count = h.accepted.clamp(max=m)
        ridge = self.lam * torch.diagonal(h.gram, dim1=1, dim2=2) + _TINY
        chol, info = torch.linalg.cholesky_ex(h.gram + torch.diag_embed(ridge))
        rhs = torch.where(h.cols < count[:, None], h.rhs, 0.0)
        gamma = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
        failed = (info != 0) | ~(torch.linalg.vector_norm(gamma, dim=-1) <= self.max_weight)
        gamma = gamma.masked_fill(failed[:, None], 0.0).to(p.z.dtype)[:, None, :]
        accepted = h.accepted.masked_fill(failed, 0)
        count = count.masked_fill(failed, 0)
        if self.beta == 1.0:
            prop = p.fz - torch.bmm(gamma, h.dF)[:, 0]
        else:
            dZb = h.dF - (1.0 - self.beta) * h.dG
            prop = p.z + self.beta * p.g - torch.bmm(gamma, dZb)[:, 0]
        q = ev.point(ev.propose(active, prop, p.z))

        # NaN compares False, so a non-finite accelerated proposal is rejected here.
        accept = active & ((q.gnorm <= self.safeguard * p.gnorm) | (count == 0))
        reset = failed | (active & ~accept)
        # Only accepted samples record a difference; the others write zeros into a column that
        # is invalid for them (a reset sample) or never read again (a frozen one). Selects,
        # not multiplications, keep a rejected NaN proposal out of the history.
        slot = accepted % m
        dg = (q.g - p.g).masked_fill_(~accept[:, None], 0.0)
        dF = put(h.dF, (h.rows, slot), (q.fz - p.fz).masked_fill_(~accept[:, None], 0.0))
        dG = put(h.dG, (h.rows, slot), dg)
        # One pass over the history: the new Gram row (dG dg) and next rhs (dG g_{k+1}).
        # [B, 2, n] x [B, n, m] is the layout BLAS handles well (about 5x faster than the
        # transposed product).
        both = torch.bmm(torch.stack((dg, q.g), dim=1), dG.transpose(1, 2)).to(torch.float64)
        gram = torch.where(reset[:, None, None], 0.0, h.gram)
        row = torch.where((h.cols <= count[:, None]) & accept[:, None], both[:, 0], 0.0)
        r, c, k = h.rows[:, None], h.cols[None, :], slot[:, None]
        gram = put(put(gram, (r, k, c), row), (r, c, k), row)
        accepted = torch.where(accept, accepted + 1, accepted * ~reset)
        return q, accept, h._replace(dF=dF, dG=dG, gram=gram, rhs=both[:, 1], accepted=accepted)


_TINY = torch.finfo(torch.float64).tiny
