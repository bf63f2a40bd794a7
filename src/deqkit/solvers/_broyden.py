"""Limited-memory ("good") Broyden on g(z) = f(z) - z, per sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ._core import Evaluator, Point, Solver, put, where_active


class _Memory(NamedTuple):
    U: Tensor  # [B, memory, n]
    V: Tensor  # [B, memory, n]
    count: Tensor  # [B] long: pairs in use
    d: Tensor  # [B, n] next step -H g for the current iterate


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

        z_{k+1} = z_k - H_k g_k,\qquad s = z_{k+1} - z_k,\quad y = g_{k+1} - g_k, \\
        H_{k+1} = H_k + \frac{(s - H_k y)\, s^\top H_k}{s^\top H_k y}
                = H_k + u v^\top

    (Broyden 1965; the DEQ form of Bai et al. 2019). ``H = -I + sum_i u_i v_i^T`` is stored as
    at most ``memory`` pairs per sample.

    How this differs from the DEQ originals and torchdeq 0.1, and why:

    1. Memory is capped and, when full, cleared (restart from ``-I``) rather than growing with
       ``max_iter`` (torchdeq) or overwriting the oldest pair (which stalled on non-normal maps).
    2. Everything is per sample: the update is skipped for a sample whose ``s^T H y`` is
       numerically zero; a step whose residual is non-finite or grows by more than
       ``safeguard`` times is rejected for that sample alone, which clears its memory (its
       next step is a plain step). The originals use one line-search step for the batch.
    3. The next direction ``-H_{k+1} g_{k+1}`` is formed from ``H_k g_{k+1}`` and the new pair,
       so a step costs four passes over the memory instead of six.

    Args:
        memory: Number of ``(u, v)`` pairs kept, >= 1; buffers are sized to
            ``min(memory, max_iter - 2)``, all a budget can use. Default ``100`` (with 30, a
            solve of a near-linear tanh layer at spectral radius 0.99 cleared its memory and
            needed 113-132 evaluations instead of 82).
        safeguard: Growth factor of ``||g||`` above which a quasi-Newton step is rejected,
            > 1. Default ``30.0`` (10 rejected legitimate steps on near-linear problems).
    """

    memory: int = 100
    safeguard: float = 30.0
    name = "broyden"

    def __post_init__(self):
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"Invalid memory for broyden: {self.memory!r} (expected int >= 1)")
        if not (self.safeguard > 1.0):
            raise ValueError(f"Invalid safeguard for broyden: {self.safeguard!r} (expected > 1)")

    def init(self, ev: Evaluator, p: Point, active: Tensor) -> _Memory:
        B, n = p.z.shape
        # A budget of max_iter evaluations can use at most max_iter - 2 pairs.
        zeros = p.z.new_zeros(B, max(1, min(self.memory, ev.max_iter - 2)), n)
        count = torch.zeros(B, dtype=torch.long, device=p.z.device)
        return _Memory(zeros, zeros.clone(), count, p.g.clone())

    def step(self, ev: Evaluator, p: Point, active: Tensor, mem: _Memory):
        U, V, count, d = mem
        q = ev.point(ev.propose(active, p.z + d, p.z))
        ok = torch.isfinite(q.gnorm) & (q.gnorm <= self.safeguard * p.gnorm)
        accept = active & (ok | (count == 0))
        reject = active & ~accept

        s = q.z - p.z
        Hq = _apply(U, V, count, q.g)
        Hy = Hq + d  # H y = H g_{k+1} - H g_k, and -H g_k = d
        HTs = _apply(V, U, count, s)
        denom = (s * Hy).sum(1)
        scale = torch.linalg.vector_norm(s, dim=1) * torch.linalg.vector_norm(Hy, dim=1)
        eps = torch.finfo(s.dtype).eps
        update = accept & torch.isfinite(denom) & (denom.abs() > eps * scale)
        u = (s - Hy) / torch.where(update, denom, 1.0)[:, None]
        full = update & (count >= U.shape[1])
        write = update & ~full
        rows = torch.arange(U.shape[0], device=U.device)
        slot = count.clamp(max=U.shape[1] - 1)
        U = put(U, (rows, slot), where_active(write, u, U[rows, slot]))
        V = put(V, (rows, slot), where_active(write, HTs, V[rows, slot]))
        # -H_{k+1} g_{k+1} = -(H_k g_{k+1} + u (v . g_{k+1}))
        d_next = -(Hq + torch.where(write, (HTs * q.g).sum(1), 0.0)[:, None] * u)
        restart = reject | full
        d_next = where_active(restart, torch.where(reject[:, None], p.g, q.g), d_next)
        d = where_active(active, d_next, d)
        count = torch.where(restart, 0, torch.where(write, count + 1, count))
        return q, accept, _Memory(U, V, count, d)
