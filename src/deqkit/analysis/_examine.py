"""``examine``: the questions behind a DEQ, asked of one trained model, per test sample."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._io import write_json_atomic, write_text_atomic
from .._validate import integer, real
from ..solvers import Solver, solve
from ._common import csv_text
from ._model import (
    EquilibriumLike,
    device_of,
    fixed_point_map,
    require_equilibrium,
    run_data,
    study_difficulties,
)
from ._path import path_independence
from ._plots import plot_readout
from ._spectral import spectral_norm, spectral_radius
from ._summary import ExamineSummary
from ._trajectory import limit_cycle, trajectory

if TYPE_CHECKING:
    from ..train import TrainConfig

__all__ = ["EXAMPLE_COLUMNS", "ExamineResult", "examine"]

#: Columns of ``examples.csv`` written by :func:`examine`, one row per test sample.
EXAMPLE_COLUMNS = (
    "difficulty",
    "sample",
    "correct",
    "position_accuracy",
    "converged",
    "iterations",
    "picard_converged",
    "picard_iterations",
    "picard_growth",
    "backward_converged",
    "backward_iterations",
    "backward_picard_converged",
    "backward_picard_iterations",
    "radius",
    "norm",
    "path_score",
    "best_readout_iterate",
    "best_readout_accuracy",
    "ever_correct",
    "period",
)


@dataclass(frozen=True)
class ExamineResult:
    """What :func:`examine` returns: its settings and one summary per difficulty.

    Attributes:
        method: The solver of ``z*`` and of the backward solve (a name, or the model's
            :class:`~deqkit.solvers.Solver` object).
        tol: Relative tolerance of every solve.
        max_iter: Budget of every solve.
        readout_iters: Iterates read out per solver.
        difficulties: ``{difficulty: ExamineSummary}`` in the order examined (difficulty
            ``None`` for a data set's test split).
        files: Paths written (``examples.csv``, ``examine.json``, ``readout.png``); empty
            when no folder was given.
    """

    method: str | Solver
    tol: float
    max_iter: int
    readout_iters: int
    difficulties: dict[int | None, ExamineSummary]
    files: tuple[Path, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """What ``examine.json`` holds: ``{"method", "tol", "max_iter", "readout_iters",
        "difficulties": {str(difficulty): summary.to_dict()}}`` (no ``files``)."""
        return {
            "method": self.method,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "readout_iters": self.readout_iters,
            "difficulties": {str(d): s.to_dict() for d, s in self.difficulties.items()},
        }


def _position_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """``[B]`` float: fraction of positions (or 1/0 for one label per sample) right."""
    pred = logits.argmax(dim=1)
    if pred.shape != targets.shape:
        raise ValueError(
            f"readout argmax has shape {tuple(pred.shape)} but targets {tuple(targets.shape)}"
        )
    return (pred == targets).reshape(targets.shape[0], -1).double().mean(dim=1)


def adjoint_map(
    model: EquilibriumLike, f: Callable[[Tensor], Tensor], z: Tensor, y: Tensor
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    r"""The adjoint map of the cross-entropy loss at ``z``, and its constant term ``g``.

    .. math:: u \mapsto J(z)^\top u + g, \qquad J = \partial f / \partial z, \qquad
              g = \partial L / \partial z, \quad L = \sum_b \mathrm{CE}(\mathrm{readout}(z)_b, y_b)

    Its fixed point ``u* = (I - J^T)^{-1} g`` is what the implicit gradient solves for
    (:class:`deqkit.Implicit`); ``examine`` solves it with the model's solver and with plain
    iteration. ``z`` and ``g`` are ``[B, ...]``; each sample's ``J`` is its own block.
    """
    zz = z.detach().requires_grad_(True)
    with torch.enable_grad():
        fz = f(zz)
        logits = model.readout(zz)
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        (g,) = torch.autograd.grad(loss, zz, retain_graph=True)

    def adj(u: Tensor) -> Tensor:
        with torch.enable_grad():
            (v,) = torch.autograd.grad(fz, zz, u, retain_graph=True)
        return v + g

    return adj, g


def _examine_batch(model, x, y, *, method, tol, max_iter, readout_iters, generator):
    """Per-sample measurements of one batch (dict of ``[B]`` tensors) and per-iterate curves."""
    f, z0 = fixed_point_map(model, x)
    if not isinstance(z0, Tensor):
        raise TypeError("examine needs a model whose state is one tensor")
    B = z0.shape[0]
    ref = solve(f, z0, method, tol=tol, max_iter=max_iter)
    plain = solve(f, z0, "picard", tol=tol, max_iter=max_iter, record_trace=True)
    acc = _position_accuracy(model.readout(ref.z), y)
    # Growth of the plain iteration's residual: last over first (> 1: it moved away).
    trace = plain.trace
    last = torch.stack([trace[: int(k), b][-1] for b, k in enumerate(plain.iterations)])
    growth = last / trace[0].clamp_min(torch.finfo(trace.dtype).tiny)
    adj, g = adjoint_map(model, f, ref.z, y)
    back = solve(adj, g, method, tol=tol, max_iter=max_iter)
    back_plain = solve(adj, g, "picard", tol=tol, max_iter=max_iter)
    radius = spectral_radius(f, ref.z, generator=generator)
    norm = spectral_norm(f, ref.z, generator=generator)
    path = path_independence(f, z0, method=method, tol=tol, max_iter=max_iter, generator=generator)
    # Readout at every iterate of the model's solver and of plain iteration (the recurrent
    # view), each sample's latest iterate after t evaluations.
    curves = {}
    for name, m in (("solver", method), ("picard", "picard")):
        traj = trajectory(f, z0, m, max_iter=readout_iters, tol=1e-12)
        rows = torch.stack([_position_accuracy(model.readout(z), y) for z in traj.iterates])
        curves[name] = rows.cpu()  # [T, B]
        if name == "picard":
            cycle = limit_cycle(traj, max_period=8, tol=1e-3)
    rows = curves["solver"]
    best_it = rows.argmax(dim=0) + 1  # first iterate (in evaluations) with the best readout
    return (
        {
            "correct": (acc == 1).cpu(),
            "position_accuracy": acc.cpu(),
            "converged": ref.converged.cpu(),
            "iterations": ref.iterations.cpu(),
            "picard_converged": plain.converged.cpu(),
            "picard_iterations": plain.iterations.cpu(),
            "picard_growth": growth.cpu(),
            "backward_converged": back.converged.cpu(),
            "backward_iterations": back.iterations.cpu(),
            "backward_picard_converged": back_plain.converged.cpu(),
            "backward_picard_iterations": back_plain.iterations.cpu(),
            "radius": radius.value.cpu(),
            "norm": norm.value.cpu(),
            "path_score": path.score.cpu(),
            "best_readout_iterate": best_it,
            "best_readout_accuracy": rows.max(dim=0).values,
            "ever_correct": (rows == 1).any(dim=0),
            "period": cycle.period.cpu(),
        },
        curves,
        B,
    )


def examine(
    model: EquilibriumLike,
    config: TrainConfig,
    difficulties: Sequence[int] | None = None,
    *,
    n: int = 100,
    tol: float = 1e-4,
    max_iter: int = 300,
    readout_iters: int = 200,
    batch_size: int = 50,
    method: str | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> ExamineResult:
    """The questions behind a DEQ, asked of one trained model, per test sample.

    At each difficulty, for ``n`` held-out samples, measures at the fixed point ``z*`` found
    by the model's solver (or ``method``):

    * **forward solvers**: whether the solver and plain iteration each reach ``tol`` within
      ``max_iter`` evaluations, their evaluation counts, and whether plain iteration's
      residual grew (moved away from ``z*``);
    * **backward solvers**: the same for the adjoint system ``u = J^T u + g`` of the
      cross-entropy loss at ``z*`` (what the implicit gradient solves);
    * **contraction**: spectral radius and spectral norm of ``J = df/dz`` at ``z*``;
    * **path independence**: the asymptotic-alignment score from several starts;
    * **intermediate iterates**: the readout at every one of the first ``readout_iters``
      iterates of the solver and of plain iteration, the best-scoring iterate of each sample
      against its fixed point, and limit cycles of plain iteration (period up to 8).

    Accuracy is exact match (every position right); "position accuracy" is the fraction of
    positions right, which orders readouts that are all wrong.

    Args:
        model: An equilibrium model (:class:`EquilibriumLike`) whose state is one tensor.
        config: The :class:`~deqkit.train.TrainConfig` it was trained with.
        difficulties: Test difficulties. Default: the config's ``eval_difficulties``, else
            its training difficulty (the task's default when unset).
        n: Samples per difficulty, >= 1. Default ``100``.
        tol: Relative tolerance of every solve. Default ``1e-4``.
        max_iter: Budget of every solve. Default ``300``.
        readout_iters: Iterates read out per solver. Default ``200``.
        batch_size: Samples per batch (memory grows as ``readout_iters * batch * state``).
            Default ``50``.
        method: Solver for ``z*`` and the backward solve; default the model's.
        seed: Seeds the random probes and starts. Default ``0``.
        out_dir: Folder for ``examine.json`` (summaries), ``examples.csv`` (one row per
            sample, columns :data:`EXAMPLE_COLUMNS`) and ``readout.png``; ``None`` writes
            nothing.

    Returns:
        An :class:`ExamineResult`: one :class:`ExamineSummary` per difficulty (the
        fractions and medians named above and the accuracy curves against the iterate).

    Raises:
        TypeError: ``model`` is not an equilibrium model with a tensor state.
        ValueError: bad ``n``, ``tol``, ``max_iter``, ``readout_iters`` or ``batch_size``.
    """
    require_equilibrium(model, "examine")
    n = integer("n", n, 1)
    max_iter = integer("max_iter", max_iter, 1)
    readout_iters = integer("readout_iters", readout_iters, 1)
    batch_size = integer("batch_size", batch_size, 1)
    tol = real("tol", tol, 0.0, low_open=True)
    method = method or model.deq.settings.solver
    data = run_data(config)
    diffs = study_difficulties(config, difficulties)
    device = device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    summaries, rows, curves_by_d = {}, [], {}
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), parametrize.cached():
            for d in diffs:
                x, y = data.eval_set(d, n)
                parts, curves = [], {"solver": [], "picard": []}
                for lo in range(0, x.shape[0], batch_size):
                    s, c, _ = _examine_batch(
                        model,
                        x[lo : lo + batch_size].to(device),
                        y[lo : lo + batch_size].to(device),
                        method=method,
                        tol=tol,
                        max_iter=max_iter,
                        readout_iters=readout_iters,
                        generator=generator,
                    )
                    parts.append(s)
                    for k in curves:
                        curves[k].append(c[k])
                s = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
                c = {k: _pad_cat(v) for k, v in curves.items()}
                summaries[d] = ExamineSummary.of(s, c)
                curves_by_d[d] = c
                for i in range(s["correct"].shape[0]):
                    rows.append([d, i] + [_scalar(s[k][i]) for k in EXAMPLE_COLUMNS[2:]])
    finally:
        model.train(was)
    result = ExamineResult(method, tol, max_iter, readout_iters, summaries)
    if out_dir is not None:
        out = Path(out_dir)
        files = (
            write_text_atomic(out / "examples.csv", csv_text(EXAMPLE_COLUMNS, rows)),
            write_json_atomic(out / "examine.json", result.to_dict()),
            plot_readout(curves_by_d, out / "readout.png"),
        )
        result = dataclasses.replace(result, files=files)
    return result


def _pad_cat(parts: list[Tensor]) -> Tensor:
    """Concatenate ``[T_i, B_i]`` blocks along samples; shorter ones repeat their last row."""
    T = max(p.shape[0] for p in parts)
    full = [
        torch.cat([p, p[-1:].expand(T - p.shape[0], -1)]) if p.shape[0] < T else p for p in parts
    ]
    return torch.cat(full, dim=1)


def _scalar(v: Tensor) -> float | int | bool:
    item = v.item()
    return round(item, 6) if isinstance(item, float) else item
