"""The test-time compute curve of a trained model at each difficulty of its task."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import write_json_atomic, write_text_atomic
from ._common import csv_text
from ._curve import CurveResult, compute_curve
from ._model import (
    EquilibriumLike,
    device_of,
    require_equilibrium,
    run_data,
    study_difficulties,
)
from ._plots import plot_compute_curves

if TYPE_CHECKING:
    from ..train import TrainConfig

__all__ = ["SweepResult", "sweep"]


@dataclass(frozen=True)
class SweepResult:
    """Accuracy against solver budget at several difficulties.

    Attributes:
        curves: ``{difficulty: CurveResult}`` (difficulty ``None`` for data sets).
        table: Markdown table, one row per difficulty, one column per budget.
        files: Paths written (CSV, JSON, PNG), empty when no folder was given.
    """

    curves: dict[int | None, CurveResult]
    table: str
    files: tuple[Path, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """``{str(difficulty): curve.to_dict()}``, what ``sweep.json`` holds."""
        return {str(k): v.to_dict() for k, v in self.curves.items()}


def sweep(
    model: EquilibriumLike,
    config: TrainConfig,
    difficulties: Sequence[int] | None = None,
    iterations: Sequence[int] = (1, 2, 5, 10, 20, 50, 100),
    *,
    n: int = 500,
    out_dir: str | Path | None = None,
    method: str | None = None,
    batch_size: int = 100,
    pick: str = "best",
) -> SweepResult:
    """The test-time compute curve of ``model`` at each difficulty of its task.

    One solve per batch and difficulty with the largest budget; every budget is read off its
    trajectory (:func:`compute_curve`). Accuracy is the task's metric
    (:attr:`deqkit.tasks.Task.metric`): exact match per string or maze, top-1 for
    classification. The samples are the run's evaluation sets
    (:meth:`deqkit.train.Data.eval_set`).

    Args:
        model: An equilibrium model (:class:`EquilibriumLike`).
        config: The :class:`~deqkit.train.TrainConfig` it was trained with (task, seed).
        difficulties: Test difficulties (e.g. string lengths). Default: the config's
            ``eval_difficulties``, else its training difficulty (the task's default when
            unset); ignored for data sets.
        iterations: Solver budgets (evaluations of ``f``). Default up to 100.
        n: Samples per difficulty. Default ``500``.
        out_dir: Folder for ``sweep.csv`` (columns difficulty, iterations, accuracy,
            median_residual), ``sweep.json`` (:meth:`SweepResult.to_dict`) and ``sweep.png``;
            ``None`` writes nothing.
        method: Solver; default the model's own.
        batch_size: Samples per solve. Default ``100``.
        pick: ``"best"`` (default): each sample's lowest-residual iterate within the budget,
            as a solve returns; ``"last"``: its latest iterate, as a recurrent net holds.

    Returns:
        A :class:`SweepResult`.

    Raises:
        TypeError: ``model`` is not an equilibrium model.
        ValueError: bad ``iterations``, ``batch_size`` or ``pick`` (see :func:`compute_curve`).
    """
    require_equilibrium(model, "sweep")
    task = config.task_spec
    data = run_data(config)
    device = device_of(model)
    curves = {}
    for d in study_difficulties(config, difficulties):
        x, y = data.eval_set(d, n)
        curves[d] = compute_curve(
            model,
            x.to(device),
            y.to(device),
            iterations,
            task.metric,
            method=method,
            batch_size=batch_size,
            pick=pick,
        )
    result = SweepResult(curves, _table(curves, config.task))
    if out_dir is not None:
        out = Path(out_dir)
        rows = [
            [d, int(b), float(a), float(r)]
            for d, c in curves.items()
            for b, a, r in zip(c.iterations, c.metric, c.residual, strict=True)
        ]
        header = ["difficulty", "iterations", "accuracy", "median_residual"]
        labels = [f"{task.difficulty_label} {d}" if task.procedural else task.name for d in curves]
        files = (
            write_text_atomic(out / "sweep.csv", csv_text(header, rows)),
            write_json_atomic(out / "sweep.json", result.to_dict()),
            plot_compute_curves(
                dict(zip(labels, curves.values(), strict=True)),
                out / "sweep.png",
                ylabel="exact-match accuracy",
            ),
        )
        result = dataclasses.replace(result, files=files)
    return result


def _table(curves: dict[int | None, CurveResult], task: str) -> str:
    budgets = list(next(iter(curves.values())).iterations)
    head = "| difficulty | " + " | ".join(f"{b} it" for b in budgets) + " | residual at max |"
    lines = [head, "|---" * (len(budgets) + 2) + "|"]
    for d, c in curves.items():
        accs = " | ".join(f"{100 * float(a):.1f}%" for a in c.metric)
        lines.append(f"| {d if d is not None else task} | {accs} | {float(c.residual[-1]):.1e} |")
    return "\n".join(lines)
