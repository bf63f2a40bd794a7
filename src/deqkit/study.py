"""Studies of a trained equilibrium model: compute curves, solver comparison, contraction.

These put the instruments of :mod:`deqkit.analysis` together for one model and one task, the
way the demo, ``deqkit sweep`` and the experiments use them. Each returns plain data (and
writes files a person can open when given a folder).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import analysis
from .solvers import solve
from .train._data import Data
from .utils import atomic_write_text

__all__ = ["SweepResult", "compare_solvers", "contraction", "sweep"]


@dataclass
class SweepResult:
    """Accuracy against solver budget at several difficulties.

    Attributes:
        curves: ``{difficulty: CurveResult}`` (difficulty ``None`` for data sets).
        table: Markdown table, one row per difficulty, one column per budget.
        files: Paths written (CSV, JSON, PNG), empty when no folder was given.
    """

    curves: dict[int | None, analysis.CurveResult]
    table: str
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {str(k): v.to_dict() for k, v in self.curves.items()}


def _device_of(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def sweep(
    model: nn.Module,
    config: Any,
    difficulties: Sequence[int] | None = None,
    iterations: Sequence[int] = (1, 2, 5, 10, 20, 50, 100),
    *,
    n: int = 500,
    out_dir: str | Path | None = None,
    method: str | None = None,
    batch_size: int = 100,
) -> SweepResult:
    """The test-time compute curve of ``model`` at each difficulty of its task.

    One solve per batch and difficulty with the largest budget; every budget is read off its
    trajectory (:func:`deqkit.analysis.compute_curve`). Accuracy is exact match per string or
    maze, top-1 for classification.

    Args:
        model: An equilibrium model (``deqkit.models`` protocol).
        config: The :class:`~deqkit.train.TrainConfig` it was trained with (task, seed).
        difficulties: Test difficulties (e.g. string lengths). Default: the config's
            ``eval_difficulties``; ignored for data sets.
        iterations: Solver budgets (evaluations of ``f``). Default up to 100.
        n: Samples per difficulty. Default ``500``.
        out_dir: Folder for ``sweep.csv``, ``sweep.json`` and ``sweep.png``; ``None`` writes
            nothing.
        method: Solver; default the model's own.
        batch_size: Samples per solve (memory grows as budget x batch x state). Default ``100``.

    Returns:
        A :class:`SweepResult`.
    """
    if not hasattr(model, "cell"):
        raise TypeError(f"sweep needs an equilibrium model, got {type(model).__name__}")
    data = Data(config)
    if config.procedural:
        diffs = list(difficulties or config.eval_difficulties or (config.difficulty,))
    else:
        diffs = [None]
    device = _device_of(model)
    curves = {}
    for d in diffs:
        x, y = data.eval_set(d, n)
        curves[d] = analysis.compute_curve(
            model,
            x.to(device),
            y.to(device),
            iterations,
            method=method,
            batch_size=batch_size,
        )
    budgets = list(next(iter(curves.values())).iterations)
    head = "| difficulty | " + " | ".join(f"{b} it" for b in budgets) + " | residual at max |"
    lines = [head, "|---" * (len(budgets) + 2) + "|"]
    for d, c in curves.items():
        accs = " | ".join(f"{100 * float(a):.1f}%" for a in c.metric)
        lines.append(
            f"| {d if d is not None else config.task} | {accs} | {float(c.residual[-1]):.1e} |"
        )
    result = SweepResult(curves, "\n".join(lines))
    if out_dir is not None:
        out = Path(out_dir)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["difficulty", "iterations", "accuracy", "median_residual"])
        for d, c in curves.items():
            for b, a, r in zip(c.iterations, c.metric, c.residual, strict=True):
                writer.writerow([d, int(b), float(a), float(r)])
        result.files = [
            Path(atomic_write_text(out / "sweep.csv", buf.getvalue())),
            Path(atomic_write_text(out / "sweep.json", json.dumps(result.to_dict(), indent=2))),
            analysis.plot_compute_curves(
                {
                    f"{'length' if config.task == 'prefix_sums' else 'size'} {d}": c
                    for d, c in curves.items()
                },
                out / "sweep.png",
                ylabel="exact-match accuracy",
            ),
        ]
    return result


def _fixed_point_map(model: nn.Module, x: Tensor):
    u = model.inject(x)
    return (lambda z: model.cell(z, u)), model.initial_state(x)


def compare_solvers(
    model: nn.Module,
    x: Tensor,
    methods: Sequence[str] = ("picard", "anderson", "broyden"),
    *,
    tol: float = 1e-4,
    max_iter: int = 300,
    repeats: int = 3,
) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Iterations and time to tolerance of several solvers at the model's fixed points.

    Args:
        model: An equilibrium model.
        x: ``[B, ...]`` inputs.
        methods: Solver names. Default picard, anderson, broyden.
        tol: Relative tolerance. Default ``1e-4``.
        max_iter: Budget. Default ``300``.
        repeats: Timed repeats (median). Default ``3``.

    Returns:
        ``(rows, traces)``: one dict per method (median and max evaluations, converged
        fraction, median wall time in ms) and the ``[steps, B]`` residual traces.
    """
    rows, traces = [], {}
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), parametrize.cached():
            f, z0 = _fixed_point_map(model, x)
            for m in methods:
                times = []
                for _ in range(max(1, repeats)):
                    t0 = time.perf_counter()
                    res = solve(f, z0, m, tol=tol, max_iter=max_iter, record_trace=True)
                    times.append(1e3 * (time.perf_counter() - t0))
                traces[m] = res.trace
                its = res.iterations.float()
                rows.append(
                    {
                        "method": m,
                        "median_evals": float(its.median()),
                        "max_evals": int(res.iterations.max()),
                        "converged": float(res.converged.float().mean()),
                        "median_residual": float(res.residual.median()),
                        "time_ms": sorted(times)[len(times) // 2],
                    }
                )
    finally:
        model.train(was)
    return rows, traces


def contraction(
    model: nn.Module,
    x: Tensor,
    *,
    tol: float = 1e-5,
    max_iter: int = 300,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Spectral radius and norm of ``J = df/dz`` at the fixed points, and path independence.

    Args:
        model: An equilibrium model.
        x: ``[B, ...]`` inputs.
        tol: Tolerance of the fixed-point solves. Default ``1e-5``.
        max_iter: Budget of the solves. Default ``300``.
        generator: For the random probes and restarts.

    Returns:
        A dict of per-sample tensors (``radius``, ``norm``, ``path_score``) and summaries
        (medians, fraction with radius < 1, with norm < 1, with path score > 0.99).
    """
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), parametrize.cached():
            f, z0 = _fixed_point_map(model, x)
            method = model.deq.settings.solver
            res = solve(f, z0, method, tol=tol, max_iter=max_iter)
            radius = analysis.spectral_radius(f, res.z, generator=generator)
            norm = analysis.spectral_norm(f, res.z, generator=generator)
            path = analysis.path_independence(
                f, z0, method=method, tol=tol, max_iter=max_iter, generator=generator
            )
    finally:
        model.train(was)
    return {
        "converged": float(res.converged.float().mean()),
        "radius": radius.value,
        "norm": norm.value,
        "path_score": path.score,
        "median_radius": float(radius.value.median()),
        "median_norm": float(norm.value.median()),
        "frac_radius_below_1": float((radius.value < 1).float().mean()),
        "frac_norm_below_1": float((norm.value < 1).float().mean()),
        "median_path_score": float(path.score.median()),
        "frac_path_independent": float((path.score > 0.99).float().mean()),
    }
