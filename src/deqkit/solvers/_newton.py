"""Newton-Krylov: Newton on g(z) = f(z) - z with batched GMRES and forward-mode JVPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .._validate import assign, choice, integer, real
from ._core import Evaluator, Point, Solver, where_active


class _Forcing(NamedTuple):
    eta: Tensor  # [B] forcing term of the last step
    gnorm: Tensor  # [B] ||g|| at the last step


@dataclass(frozen=True)
class NewtonKrylov(Solver):
    r"""Inexact Newton on ``g(z) = f(z) - z = 0`` with GMRES and Eisenstat-Walker forcing.

    Each step solves ``(J_f - I) d = -g`` by GMRES until ``||(J_f - I) d + g|| <= eta_k ||g||``
    (or ``krylov_dim`` iterations), then takes ``z + t d`` with a per-sample backtracking line
    search on ``||g||`` (Armijo, halving ``t``). The forcing term follows Eisenstat & Walker
    (1996), choice 2: ``eta_k = gamma (||g_k|| / ||g_{k-1}||)^2`` safeguarded by
    ``gamma eta_{k-1}^2`` and capped at ``eta_max``. ``J_f v`` comes from ``torch.func.jvp``
    (``jvp="autodiff"``) or a forward difference (``jvp="fd"``, for ``f`` without forward-mode
    support); either is charged as one evaluation of ``f``, though an autodiff JVP costs about
    two to three.

    Best on near-linear problems and high-accuracy solves; poor on strongly non-normal maps.
    Per-sample: inner iterations stop for the batch once every active sample meets its own
    forcing tolerance, and each sample's correction uses only its own Krylov columns.

    Args:
        krylov_dim: Largest number of GMRES iterations per Newton step (no restarts), >= 1.
            Default ``20``.
        eta_max: Largest forcing term in ``(0, 1)``. Default ``0.9``.
        gamma: Eisenstat-Walker ``gamma`` in ``(0, 1]``. Default ``0.9``.
        max_backtracks: Halvings of the step in the line search, >= 0. Default ``4``.
        jvp: ``"autodiff"`` (default) or ``"fd"``.
    """

    krylov_dim: int = 20
    eta_max: float = 0.9
    gamma: float = 0.9
    max_backtracks: int = 4
    jvp: str = "autodiff"
    name = "newton"
    differentiable_steps: ClassVar[bool] = False  # GMRES and line search: no usable graph

    def __post_init__(self):
        of = self.name
        assign(
            self,
            krylov_dim=integer("krylov_dim", self.krylov_dim, 1, of=of),
            eta_max=real("eta_max", self.eta_max, 0, 1, low_open=True, high_open=True, of=of),
            gamma=real("gamma", self.gamma, 0.0, 1.0, low_open=True, of=of),
            max_backtracks=integer("max_backtracks", self.max_backtracks, 0, of=of),
            jvp=choice("jvp", self.jvp, ("autodiff", "fd"), of=of),
        )

    def init(self, ev: Evaluator, p: Point, active: Tensor) -> _Forcing:
        return _Forcing(torch.full_like(p.gnorm, self.eta_max), p.gnorm.clone())

    def _matvec(self, ev: Evaluator, p: Point, v: Tensor, charge: Tensor) -> Tensor:
        """``(J_f - I) v`` at ``p``, charged to the samples in ``charge``."""
        if self.jvp == "autodiff":
            return ev.jvp(p.z, v, charge)[1] - v
        h = torch.finfo(p.z.dtype).eps ** 0.5 * (1.0 + torch.linalg.vector_norm(p.z, dim=1))
        return (ev.point(p.z + h[:, None] * v, charge).fz - p.fz) / h[:, None] - v

    def _forcing(self, p: Point, st: _Forcing) -> Tensor:
        eta = self.gamma * (p.gnorm / st.gnorm.clamp(min=torch.finfo(p.gnorm.dtype).tiny)) ** 2
        floor = self.gamma * st.eta**2
        eta = torch.where(floor > 0.1, torch.maximum(eta, floor), eta)
        return eta.clamp(max=self.eta_max).nan_to_num(self.eta_max)

    def _gmres(self, ev, p, active, eta, budget) -> Tensor:
        B, n = p.z.shape
        k_max = max(1, min(self.krylov_dim, budget))
        f64 = torch.float64
        beta0 = p.gnorm
        basis = [(-p.g / beta0.clamp(min=torch.finfo(p.z.dtype).tiny)[:, None])]
        R = torch.zeros(B, k_max, k_max, dtype=f64, device=p.z.device)
        cs = torch.zeros(B, k_max, dtype=f64, device=p.z.device)
        sn = torch.zeros_like(cs)
        e = torch.zeros(B, k_max + 1, dtype=f64, device=p.z.device)
        e[:, 0] = beta0.to(f64)
        used = torch.zeros(B, dtype=torch.long, device=p.z.device)
        running = active & (beta0 > 0)
        target = (eta * beta0).to(f64)
        for j in range(k_max):
            w = self._matvec(ev, p, basis[j], running)  # met its forcing term: pays no more
            Vs = torch.stack(basis, dim=1)  # [B, j+1, n]
            h = torch.zeros(B, j + 2, dtype=f64, device=p.z.device)
            for _ in range(2):  # classical Gram-Schmidt, reorthogonalised once
                c = torch.bmm(Vs, w[..., None])[..., 0]
                w = w - torch.bmm(c[:, None, :], Vs)[:, 0]
                h[:, : j + 1] += c.to(f64)
            hn = torch.linalg.vector_norm(w, dim=1)
            h[:, j + 1] = hn.to(f64)
            basis.append(w / hn.clamp(min=torch.finfo(w.dtype).tiny)[:, None])
            for i in range(j):  # earlier Givens rotations
                a, b = h[:, i].clone(), h[:, i + 1].clone()
                h[:, i], h[:, i + 1] = cs[:, i] * a + sn[:, i] * b, -sn[:, i] * a + cs[:, i] * b
            r = torch.hypot(h[:, j], h[:, j + 1]).clamp(min=torch.finfo(f64).tiny)
            cs[:, j], sn[:, j] = h[:, j] / r, h[:, j + 1] / r
            R[:, : j + 1, j] = h[:, : j + 1]
            R[:, j, j] = r
            e[:, j + 1] = -sn[:, j] * e[:, j]
            e[:, j] = cs[:, j] * e[:, j]
            used = torch.where(running, used + 1, used)
            breakdown = hn <= torch.finfo(w.dtype).eps * beta0
            running = running & (e[:, j + 1].abs() > target) & ~breakdown
            if j + 1 < k_max and not bool(running.any()):  # the last one would save nothing
                break
        k = R.shape[-1]
        cols = torch.arange(k, device=p.z.device)
        mask = cols < used[:, None]
        R = torch.where(mask[:, None, :] & mask[:, :, None], R, 0.0) + torch.diag_embed(
            (~mask).to(f64)
        )
        y = torch.linalg.solve_triangular(
            R, torch.where(mask, e[:, :k], 0.0)[..., None], upper=True
        )
        y = y[..., 0].nan_to_num(0.0, 0.0, 0.0)
        d = torch.bmm(y[:, None, : len(basis) - 1].to(p.z.dtype), torch.stack(basis[:-1], 1))[:, 0]
        return where_active(active & (used > 0), d, p.g)

    def step(self, ev: Evaluator, p: Point, active: Tensor, st: _Forcing):
        # Host reads, each of which makes the host wait on an accelerator: the remaining
        # budget once per step (it bounds the Krylov dimension), then only the checks that
        # can save an evaluation of f (GMRES's "any sample still iterating?", the line
        # search's "any sample still backtracking?").
        budget = _budget(ev, active)
        if budget is None:  # no sample running: the loop never asks, a direct caller may
            return p, None, st
        if budget < 2:  # no room for a Krylov step and its trial point: plain step
            return ev.point(ev.propose(active, p.z + p.g, p.z)), None, st
        eta = self._forcing(p, st)
        d = self._gmres(ev, p, active, eta, budget - 1)
        t = torch.ones_like(p.gnorm)
        q = ev.point(ev.propose(active, p.z + d, p.z))
        # The trial point charged every active sample once, so the fewest evaluations any of
        # them has left bounds the backtracks; it and the first "any sample backtracking?"
        # come in one read, packed into one integer (the budget is finite: samples run).
        bad = active & ~(q.gnorm <= (1.0 - 1e-4 * t) * p.gnorm)
        packed = int(2 * _budget_tensor(ev, active) + bad.any())
        left, any_bad = packed >> 1, bool(packed & 1)
        for i in range(min(self.max_backtracks, left)):
            if i:
                bad = active & ~(q.gnorm <= (1.0 - 1e-4 * t) * p.gnorm)
                any_bad = bool(bad.any())
            if not any_bad:
                break
            t = torch.where(bad, 0.5 * t, t)
            trial = ev.point(where_active(bad, p.z + t[:, None] * d, p.z), charge=bad)
            q = Point(*(where_active(bad, a, b) for a, b in zip(trial, q, strict=True)))
        return (
            q,
            None,
            _Forcing(torch.where(active, eta, st.eta), torch.where(active, p.gnorm, st.gnorm)),
        )


_NONE_RUNNING = torch.iinfo(torch.long).max // 4


def _budget_tensor(ev: Evaluator, active: Tensor) -> Tensor:
    """``[]`` long: the fewest evaluations any running sample has left, on the device
    (``_NONE_RUNNING`` where no sample runs): no bool-mask index, which would make the host
    wait for its shape."""
    return torch.where(active, ev.max_iter - ev.nfev, _NONE_RUNNING).min()


def _budget(ev: Evaluator, active: Tensor) -> int | None:
    """:func:`_budget_tensor` read on the host (one wait on an accelerator); ``None`` where
    no sample runs."""
    left = int(_budget_tensor(ev, active))
    return None if left == _NONE_RUNNING else left
