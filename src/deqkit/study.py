"""Studies of a trained equilibrium model: compute curves, solver comparison, contraction.

These put the instruments of :mod:`deqkit.analysis` together for one model and one task, the
way the demo, ``deqkit sweep`` and the experiments use them. Each returns plain data (and
writes files a person can open when given a folder).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import analysis
from ._io import new_figure, save_figure, write_json_atomic, write_text_atomic
from ._validate import integer, real
from .solvers import solve
from .train import Data

__all__ = ["SweepResult", "compare_solvers", "contraction", "examine", "sweep"]


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


def _difficulties(config: Any, difficulties: Sequence[int] | None) -> list[int | None]:
    """The test difficulties asked for, else the config's evaluation difficulties
    (``eval_difficulties``, else the training difficulty, else the task's default);
    ``[None]`` for data sets."""
    if not config.procedural:
        return [None]
    return list(difficulties or config.eval_levels)


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
    pick: str = "best",
) -> SweepResult:
    """The test-time compute curve of ``model`` at each difficulty of its task.

    One solve per batch and difficulty with the largest budget; every budget is read off its
    trajectory (:func:`deqkit.analysis.compute_curve`). Accuracy is exact match per string or
    maze, top-1 for classification.

    Args:
        model: An equilibrium model (``deqkit.models`` protocol).
        config: The :class:`~deqkit.train.TrainConfig` it was trained with (task, seed).
        difficulties: Test difficulties (e.g. string lengths). Default: the config's
            ``eval_difficulties``, else its training difficulty (the task's default when
            unset); ignored for data sets.
        iterations: Solver budgets (evaluations of ``f``). Default up to 100.
        n: Samples per difficulty. Default ``500``.
        out_dir: Folder for ``sweep.csv``, ``sweep.json`` and ``sweep.png``; ``None`` writes
            nothing.
        method: Solver; default the model's own.
        batch_size: Samples per solve. Default ``100``.
        pick: ``"best"`` (default): each sample's lowest-residual iterate within the budget,
            as a solve returns; ``"last"``: its latest iterate, as a recurrent net holds.

    Returns:
        A :class:`SweepResult`.
    """
    if not hasattr(model, "cell"):
        raise TypeError(f"sweep needs an equilibrium model, got {type(model).__name__}")
    data = Data(config)
    diffs = _difficulties(config, difficulties)
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
            pick=pick,
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
            write_text_atomic(out / "sweep.csv", buf.getvalue()),
            write_json_atomic(out / "sweep.json", result.to_dict()),
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


# ------------------------------------------------------------------------------- examine

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


def _position_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """``[B]`` float: fraction of positions (or 1/0 for one label per sample) right."""
    pred = logits.argmax(dim=1)
    if pred.shape != targets.shape:
        raise ValueError(
            f"readout argmax has shape {tuple(pred.shape)} but targets {tuple(targets.shape)}"
        )
    return (pred == targets).reshape(targets.shape[0], -1).double().mean(dim=1)


def _adjoint(model: nn.Module, f, z: Tensor, y: Tensor):
    """The adjoint map ``u -> J(z)^T u + g`` of the cross-entropy loss at ``z``, and ``g``."""
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
    f, z0 = _fixed_point_map(model, x)
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
    adj, g = _adjoint(model, f, ref.z, y)
    back = solve(adj, g, method, tol=tol, max_iter=max_iter)
    back_plain = solve(adj, g, "picard", tol=tol, max_iter=max_iter)
    radius = analysis.spectral_radius(f, ref.z, generator=generator)
    norm = analysis.spectral_norm(f, ref.z, generator=generator)
    path = analysis.path_independence(
        f, z0, method=method, tol=tol, max_iter=max_iter, generator=generator
    )
    # Readout at every iterate of the model's solver and of plain iteration (the recurrent
    # view), each sample's latest iterate after t evaluations.
    curves = {}
    for name, m in (("solver", method), ("picard", "picard")):
        traj = analysis.trajectory(f, z0, m, max_iter=readout_iters, tol=1e-12)
        rows = torch.stack([_position_accuracy(model.readout(z), y) for z in traj.iterates])
        curves[name] = rows.cpu()  # [T, B]
        if name == "picard":
            cycle = analysis.limit_cycle(traj, max_period=8, tol=1e-3)
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


def _frac(mask: Tensor) -> float:
    return float(mask.double().mean()) if mask.numel() else float("nan")


def _summarise(s: dict[str, Tensor], curves: dict[str, Tensor]) -> dict[str, Any]:
    """Headline numbers of one difficulty from the per-sample measurements."""
    fp = s["position_accuracy"]
    best = s["best_readout_accuracy"]
    plain_fail = ~s["picard_converged"]
    conv = s["converged"]
    period = s["period"]
    return {
        "n": int(fp.numel()),
        "accuracy": _frac(s["correct"]),
        "position_accuracy": float(fp.mean()),
        # Forward: the model's solver (e.g. Anderson) against plain iteration.
        "converged": _frac(conv),
        "median_iterations": float(s["iterations"].double().median()),
        "picard_converged": _frac(s["picard_converged"]),
        "picard_median_iterations": float(s["picard_iterations"].double().median()),
        "picard_fails_solver_converges": _frac(plain_fail & conv),
        "solver_fails_picard_converges": _frac(~conv & s["picard_converged"]),
        "picard_residual_grows": _frac(s["picard_growth"] > 1),
        # Backward (adjoint) solves at z*.
        "backward_converged": _frac(s["backward_converged"]),
        "backward_median_iterations": float(s["backward_iterations"].double().median()),
        "backward_picard_converged": _frac(s["backward_picard_converged"]),
        "backward_picard_fails_solver_converges": _frac(
            ~s["backward_picard_converged"] & s["backward_converged"]
        ),
        # Contraction and path independence at z*.
        "median_radius": float(s["radius"].median()),
        "median_norm": float(s["norm"].median()),
        "frac_radius_below_1": _frac(s["radius"] < 1),
        "frac_norm_below_1": _frac(s["norm"] < 1),
        "median_path_score": float(s["path_score"].median()),
        "frac_path_independent": _frac(s["path_score"] > 0.99),
        "accuracy_path_independent": _frac(s["correct"][s["path_score"] > 0.99]),
        "accuracy_path_dependent": _frac(s["correct"][s["path_score"] <= 0.99]),
        "accuracy_radius_below_1": _frac(s["correct"][s["radius"] < 1]),
        "accuracy_radius_above_1": _frac(s["correct"][s["radius"] >= 1]),
        # Intermediate iterates against the fixed point.
        "best_readout_beats_fixed_point": _frac(best > fp + 1e-12),
        "ever_correct_not_at_fixed_point": _frac(s["ever_correct"] & ~s["correct"]),
        "oracle_accuracy": _frac(s["ever_correct"] | s["correct"]),
        "picard_fixed_point": _frac(period == 1),
        "picard_cycle": _frac(period > 1),
        "picard_neither": _frac(period == 0),
        "readout_curve_solver": curves["solver"].eq(1).double().mean(dim=1).tolist(),
        "readout_curve_picard": curves["picard"].eq(1).double().mean(dim=1).tolist(),
    }


def examine(
    model: nn.Module,
    config: Any,
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
) -> dict[str, Any]:
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
        model: An equilibrium model (``deqkit.models`` protocol) whose state is one tensor.
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
        ``{"difficulties": {d: summary}, "files": [...]}``; each summary holds the fractions
        and medians named above and the accuracy curves against the iterate.

    Raises:
        TypeError: ``model`` is not an equilibrium model with a tensor state.
        ValueError: bad ``n``, ``tol``, ``max_iter``, ``readout_iters`` or ``batch_size``.
    """
    if not hasattr(model, "cell") or getattr(model, "deq", None) is None:
        raise TypeError(f"examine needs an equilibrium model, got {type(model).__name__}")
    n = integer("n", n, 1)
    max_iter = integer("max_iter", max_iter, 1)
    readout_iters = integer("readout_iters", readout_iters, 1)
    batch_size = integer("batch_size", batch_size, 1)
    tol = real("tol", tol, 0.0, low_open=True)
    method = method or model.deq.settings.solver
    data = Data(config)
    diffs = _difficulties(config, difficulties)
    device = _device_of(model)
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
                summaries[str(d)] = _summarise(s, c)
                curves_by_d[d] = c
                for i in range(s["correct"].shape[0]):
                    rows.append([d, i] + [_scalar(s[k][i]) for k in EXAMPLE_COLUMNS[2:]])
    finally:
        model.train(was)
    result: dict[str, Any] = {
        "method": method,
        "tol": tol,
        "max_iter": max_iter,
        "readout_iters": readout_iters,
        "difficulties": summaries,
        "files": [],
    }
    if out_dir is not None:
        out = Path(out_dir)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(EXAMPLE_COLUMNS)
        writer.writerows(rows)
        files = [
            write_text_atomic(out / "examples.csv", buf.getvalue()),
            write_json_atomic(
                out / "examine.json", {k: v for k, v in result.items() if k != "files"}
            ),
            _plot_readout(curves_by_d, out / "readout.png"),
        ]
        result["files"] = [str(p) for p in files]
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


def _plot_readout(curves_by_d: dict, path: Path) -> Path:
    fig = new_figure(figsize=(6.5, 4))  # no pyplot: no global state, no backend switch
    ax = fig.subplots()
    for d, c in curves_by_d.items():
        for name, style in (("solver", "-"), ("picard", ":")):
            acc = c[name].eq(1).double().mean(dim=1)
            t = torch.arange(1, acc.shape[0] + 1)
            ax.plot(t, 100 * acc, style, label=f"{d} ({'solver' if name == 'solver' else 'plain'})")
    ax.set_xlabel("iterate (evaluations of f)")
    ax.set_ylabel("exact-match accuracy of the readout (%)")
    ax.set_title("readout at every iterate: solver (solid), plain iteration (dotted)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
