"""Every iterate of a solve, and limit cycles among them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._validate import integer, real
from ..nn import Packer, State
from ..solvers import Solver, SolveResult, resolve, solve
from ._common import (
    check_callable,
    flat_map,
    flatten_rows,
    one_evaluation_per_step,
    row_residuals,
    unpack_rows,
)

__all__ = ["LimitCycle", "Trajectory", "limit_cycle", "trajectory"]


@dataclass(frozen=True)
class Trajectory:
    """The iterates of one solve, every ``every``-th step (the last one always included).

    Attributes:
        iterates: ``[T, B, ...]`` (a tuple of such for tuple states): row ``i`` is each
            sample's current iterate after ``steps[i]`` solver steps (row 0 is ``z0``). A
            sample that stopped stays where it stopped.
        steps: ``[T]`` long, the solver step of each kept row.
        evaluations: ``[T, B]`` long, evaluations of ``f`` each sample had spent to reach its
            row, ``min(steps + 1, result.iterations)``; ``None`` for solvers that spend
            several evaluations per step (Newton-Krylov, unknown subclasses).
        residual: ``[T, B]`` residual of each kept iterate under the solve's ``stop``
            criterion (a rejected proposal leaves the iterate and its residual unchanged).
        result: The :class:`~deqkit.SolveResult`, with the full ``trace`` and ``iterates``
            of every step. For tuple states it describes the flat ``[B, N]`` packing.
    """

    iterates: State
    steps: Tensor
    evaluations: Tensor | None
    residual: Tensor
    result: SolveResult

    def readout(self, fn: Callable[[State], Any]) -> list[Any]:
        """Apply ``fn`` (e.g. ``model.readout``) to every kept iterate, in order.

        Returns:
            A list of ``T`` outputs; ``torch.stack`` it when they are tensors.
        """
        parts = self.iterates if isinstance(self.iterates, tuple) else (self.iterates,)
        rows = zip(*(p.unbind(0) for p in parts), strict=True)
        return [fn(row if isinstance(self.iterates, tuple) else row[0]) for row in rows]

    def distance(self, reference: State | None = None) -> Tensor:
        """``[T, B]`` relative distance ``||z_t - ref|| / ||ref||`` of each kept iterate.

        Args:
            reference: ``[B, ...]`` state to compare with (tensor or tuple, like ``z0``).
                Default: the solve's returned iterate (its lowest-residual one).
        """
        flat = flatten_rows(self.iterates)
        if reference is None:
            ref = self.result.z.reshape(flat.shape[1], -1)
        else:
            ref = flatten_rows(tuple(r[None] for r in _parts(reference)), "reference")[0]
        if ref.shape != flat.shape[1:]:
            raise ValueError(
                f"reference must be shaped like one iterate {tuple(flat.shape[1:])} once "
                f"flattened, got {tuple(ref.shape)}"
            )
        eps = torch.finfo(flat.dtype).tiny ** 0.5
        gap = torch.linalg.vector_norm(flat - ref, dim=2)
        return gap / (torch.linalg.vector_norm(ref, dim=1) + eps)


def trajectory(
    f: Callable[[State], State],
    z0: State,
    method: str | Solver = "picard",
    *,
    max_iter: int = 50,
    tol: float = 1e-5,
    stop: str = "rel",
    every: int = 1,
    **options,
) -> Trajectory:
    """Solve ``z = f(z)`` and keep every ``every``-th iterate, so each can be read out.

    Runs :func:`deqkit.solve` with ``record_trace=True, record_iterates=True`` (memory grows
    as ``steps * B * N``). Row ``t`` of a solve is the current iterate after ``t`` steps; for
    Picard, Anderson and Broyden each step costs one evaluation of ``f`` per running sample,
    so row ``t`` is what ``t + 1`` evaluations reach. Use ``"picard"`` to study the map's own
    dynamics (cycles, overthinking); an accelerated solver's iterates are the solver's. Pass a
    tiny ``tol`` to run the whole budget.

    Args:
        f: Maps a state to one shaped alike (tensor or tuple of tensors, batch first).
        z0: ``[B, ...]`` starting state.
        method: Solver name or :class:`~deqkit.solvers.Solver`. Default ``"picard"``.
        max_iter: Evaluation budget per sample, >= 1. Default ``50``.
        tol: Tolerance, > 0. Default ``1e-5``.
        stop: ``"rel"`` (default) or ``"abs"``.
        every: Keep rows ``0, every, 2 * every, ...`` and the last, >= 1. Default ``1``.
        **options: Hyperparameters of ``method`` (unknown names raise).

    Returns:
        A :class:`Trajectory`.

    Raises:
        ValueError: bad ``every`` (and whatever :func:`deqkit.solve` rejects).
        TypeError: ``f`` not callable, unknown option.
    """
    check_callable("f", f)
    integer("every", every, 1)
    solver = resolve(method, options)
    packer = Packer.of(z0, "z0")
    if packer.is_tuple:
        fz, start = flat_map(f, packer), packer.pack(z0, "z0")
    else:
        fz, start = f, z0
    result = solve(
        fz,
        start,
        solver,
        tol=tol,
        stop=stop,
        max_iter=max_iter,
        record_trace=True,
        record_iterates=True,
    )
    steps = result.iterates.shape[0]
    keep = list(range(0, steps, every))
    if keep[-1] != steps - 1:
        keep.append(steps - 1)
    index = torch.tensor(keep, dtype=torch.long, device=result.iterates.device)
    kept = result.iterates.index_select(0, index)
    if packer.is_tuple:
        kept = unpack_rows(kept, packer)
    evaluations = None
    if one_evaluation_per_step(solver):
        evaluations = torch.minimum(index[:, None] + 1, result.iterations[None, :])
    return Trajectory(
        iterates=kept,
        steps=index,
        evaluations=evaluations,
        residual=row_residuals(result).index_select(0, index.to(result.trace.device)),
        result=result,
    )


@dataclass(frozen=True)
class LimitCycle:
    """Where iterates settle, per sample: a fixed point (period 1), a ``p``-cycle, or neither.

    Attributes:
        period: ``[B]`` long, the smallest period found (1 = fixed point, 2 = two points
            visited in turn, ...), 0 where none up to ``max_period``.
        distance: ``[max_period, B]`` for each ``p``, the largest relative distance
            ``||z_t - z_{t-p}|| / ||z_t||`` over the checked window; NaN where the trajectory
            is too short to check ``p``.
        amplitude: ``[B]`` largest relative step ``||z_t - z_{t-1}|| / ||z_t||`` over the last
            ``repeats * period`` rows (0 at a fixed point; the size of the orbit otherwise);
            NaN where no period was found.
        tol: The relative tolerance used.
    """

    period: Tensor
    distance: Tensor
    amplitude: Tensor
    tol: float

    @property
    def cycling(self) -> Tensor:
        """``[B]`` bool, samples in a cycle of period >= 2 (not at a fixed point)."""
        return self.period >= 2


def limit_cycle(
    iterates: State | Trajectory,
    max_period: int = 8,
    *,
    tol: float = 1e-4,
    atol: float = 0.0,
    repeats: int = 3,
) -> LimitCycle:
    r"""Detect iterates that settle into a cycle of period ``p`` instead of a fixed point.

    Sample ``b`` has period ``p`` when its last ``repeats * p`` iterates all satisfy

    .. math:: \|z_t - z_{t-p}\| \le \mathrm{atol} + \mathrm{tol}\,\|z_t\|,

    and the period reported is the smallest such ``p <= max_period`` (so a fixed point is
    period 1, and a 2-cycle is not also reported as 4). Recurrent solvers that are right while
    ending in 2-cycles are common on mazes (Knutson et al., AAAI 2026); read the prediction at
    every iterate (:meth:`Trajectory.readout`) to see whether it cycles too.

    Args:
        iterates: ``[T, B, ...]`` iterates (a tuple of such, or a :class:`Trajectory` whose
            rows are used as given: pass ``every=1``, or the periods are in kept rows).
        max_period: Largest period looked for, >= 1. Default ``8``.
        tol: Relative tolerance, >= 0. Default ``1e-4``.
        atol: Absolute tolerance, >= 0 (for states that converge to 0). Default ``0``.
        repeats: Consecutive checks per period, in periods, >= 1. Default ``3``: period ``p``
            needs ``T >= (repeats + 1) * p`` rows.

    Returns:
        A :class:`LimitCycle`.

    Raises:
        ValueError: bad ``max_period``/``repeats``/``tol``/``atol``, ``iterates`` not
            ``[T, B, ...]``.
        TypeError: ``iterates`` of another type.
    """
    integer("max_period", max_period, 1)
    integer("repeats", repeats, 1)
    tol, atol = real("tol", tol, 0.0), real("atol", atol, 0.0)
    if isinstance(iterates, Trajectory):
        iterates = iterates.iterates
    flat = flatten_rows(iterates)
    if not flat.is_floating_point():
        raise TypeError(f"iterates must be floating point, got dtype {flat.dtype}")
    T, B = flat.shape[:2]
    norm = torch.linalg.vector_norm(flat, dim=2)
    eps = torch.finfo(flat.dtype).tiny ** 0.5
    distance = flat.new_full((max_period, B), torch.nan)
    period = torch.zeros(B, dtype=torch.long, device=flat.device)
    amplitude = flat.new_full((B,), torch.nan)
    for p in range(1, max_period + 1):
        window = repeats * p
        if T < window + p:
            break
        now, before = flat[T - window :], flat[T - window - p : T - p]
        gap = torch.linalg.vector_norm(now - before, dim=2)
        ok = (gap <= atol + tol * norm[T - window :]).all(dim=0)
        distance[p - 1] = (gap / (norm[T - window :] + eps)).amax(dim=0)
        new = ok & (period == 0)
        step = torch.linalg.vector_norm(now - flat[T - window - 1 : T - 1], dim=2)
        spread = (step / (norm[T - window :] + eps)).amax(dim=0)
        period = torch.where(new, p, period)
        amplitude = torch.where(new, spread, amplitude)
    return LimitCycle(period=period, distance=distance, amplitude=amplitude, tol=float(tol))


def _parts(state: State) -> tuple[Tensor, ...]:
    parts = state if isinstance(state, tuple) else (state,)
    if not parts or not all(isinstance(t, Tensor) for t in parts):
        raise TypeError("reference must be a tensor or a tuple of tensors")
    return parts
