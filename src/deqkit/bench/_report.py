"""The solver benchmark's report: the table, the convergence plots, the files."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import new_figure, save_figure, write_json_atomic, write_text_atomic
from ._run import BenchConfig, Row

__all__ = ["format_table", "plot_convergence", "write_report"]


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of ``rows``, one line per problem and solver.

    Columns: problem, library, solver, f-evals per sample (deqkit: maximum over samples),
    batched calls, median f-evals to tolerance over samples, converged as claimed and as
    checked, median time, the evaluation-only limit (``calls`` times one evaluation of ``f``
    alone) and the time as a multiple of it, the share of the time spent beyond the limit,
    the ratios deqkit/torchdeq against the paired solver (named in brackets), and deqkit's
    overhead per iteration in units of one evaluation of ``f``.

    Args:
        rows: From :func:`run_solver_benchmark`.

    Returns:
        The table, lines joined by ``\\n``, no trailing newline.
    """
    head = (
        "| problem | library | solver | f-evals | calls | median f-evals to tol "
        "| converged | checked | time ms | limit ms | time/limit | overhead share "
        "| evals ours/theirs | time ours/theirs | overhead/iter |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        ratio = f" ({r.pair})" if r.pair else ""
        lines.append(
            f"| {r.problem} | {r.impl} | {r.solver} | {r.evals} | {r.calls} "
            f"| {_fmt(r.evals_to_tol, '.0f') or 'not reached'} "
            f"| {sum(r.converged_mask)}/{r.batch} | {sum(r.checked_mask)}/{r.batch} "
            f"| {r.time_ms:.1f} | {_fmt(r.limit_ms, '.1f')} | {_fmt(r.limit_ratio, '.2f', 'x')} "
            f"| {_fmt(None if r.overhead_share is None else 100 * r.overhead_share, '.0f', '%')} "
            f"| {_fmt(r.evals_ratio, '.2f', ratio)} "
            f"| {_fmt(r.time_ratio, '.2f', ratio)} | {_fmt(r.overhead, '.2f', ' f')} |"
        )
    return "\n".join(lines)


def plot_convergence(
    traces: Mapping[str, Tensor],
    path: str | os.PathLike[str],
    *,
    tol: float | None = None,
    title: str | None = None,
    xlabel: str = "f-evaluations",
) -> Path:
    """Plot residual against iteration, one line per solver, and write a PNG atomically.

    Each line is the median over samples of the residual at each iteration, with the 10-90 %
    band across samples shaded; the y axis is logarithmic. NaN entries (samples that had
    stopped, as in :attr:`deqkit.SolveResult.trace`) are left out of the statistics; values
    below ``1e-16`` are drawn at ``1e-16``. Draws on a matplotlib ``Figure`` made directly
    (no pyplot, no global backend change); the PNG is written atomically (a temporary file
    in the same folder renamed over ``path``, by :func:`deqkit._io.save_figure`).

    Args:
        traces: Label -> ``[steps, B]`` (or ``[steps]``) residuals, e.g.
            ``SolveResult.trace`` or :attr:`Row.trace`.
        path: Where the PNG goes; parent folders are created.
        tol: Draw the tolerance as a horizontal line. Default ``None`` (no line).
        title: Axes title. Default ``None``.
        xlabel: X-axis label; row ``i`` of a trace is drawn at ``x = i + 1`` (row 0 is the
            first evaluation, at ``z0``). Default ``"f-evaluations"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``traces`` is empty or a trace is not 1-D or 2-D.
    """
    if not traces:
        raise ValueError("Invalid traces: empty (expected at least one label -> tensor)")
    fig = new_figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    probs = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for label, trace in traces.items():
        t = torch.as_tensor(trace).detach().to("cpu", torch.float64)
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2:
            raise ValueError(
                f"Invalid trace for {label!r}: shape {tuple(t.shape)} (expected [steps, B])"
            )
        t = t.where(torch.isfinite(t), torch.nan)
        alive = (~torch.isnan(t)).any(1).nonzero()
        if alive.numel() == 0:
            continue
        t = t[: int(alive.max()) + 1]
        lo, mid, hi = torch.nanquantile(t, probs, dim=1).clamp_min(1e-16).numpy()
        x = range(1, t.shape[0] + 1)
        (line,) = ax.plot(x, mid, label=label, linewidth=1.5)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    if tol is not None:
        ax.axhline(tol, color="0.4", linestyle="--", linewidth=1, label=f"tol = {tol:g}")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("relative residual ||f(z) - z|| / ||f(z)||")
    if title:
        ax.set_title(title, fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path, dpi=120)


def _environment(config: BenchConfig) -> dict[str, Any]:
    try:
        torchdeq_version = importlib.metadata.version("torchdeq")
    except importlib.metadata.PackageNotFoundError:
        torchdeq_version = None
    device = torch.device(config.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    return {
        "torch": torch.__version__,
        "torchdeq": torchdeq_version,
        "device": f"{config.device} ({name})",
        "threads": config.threads or torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
    }


def _variant(config: BenchConfig) -> str:
    """How deqkit's solvers ran, where not as the defaults."""
    if config.native:
        return f"; deqkit anderson native=True, history {config.history}"
    if config.graph is not None:
        return f"; deqkit anderson and picard as Graphed(steps={config.graph})"
    return ""


def write_report(
    rows: Sequence[Row],
    targets: Sequence[str],
    config: BenchConfig,
    folder: str | os.PathLike[str],
    *,
    stem: str = "solver_bench",
) -> list[Path]:
    """Write the benchmark's results as files a person can open, each atomically.

    Writes ``<stem>.md`` (environment, problems, table, targets, plots), ``<stem>.json``
    (config, environment, rows without traces, targets) and one convergence plot per problem,
    ``<stem>-<problem>.png``.

    Args:
        rows: From :func:`run_solver_benchmark`.
        targets: The target lines, e.g. :func:`check_targets` followed by
            :func:`check_limit_targets`.
        config: The configuration that produced ``rows``.
        folder: Output folder, created if missing.
        stem: File name stem. Default ``"solver_bench"``.

    Returns:
        The paths written, the Markdown report first.
    """
    folder = Path(folder)
    env = _environment(config)
    pngs: list[Path] = []
    for spec in config.problems:
        traces = {r.label: r.trace for r in rows if r.problem == spec.name and r.trace is not None}
        if traces:
            pngs.append(
                plot_convergence(
                    traces,
                    folder / f"{stem}-{spec.name}.png",
                    tol=config.tol,
                    title=f"{spec.name}\n{spec.describe()}",
                )
            )
    md = [
        "# Fixed-point solver benchmark: deqkit against torchdeq",
        "",
        ", ".join(f"{k} {v}" for k, v in env.items())
        + f"; rel. tol {config.tol:g}, max_iter {config.max_iter}, {config.clock} clock, "
        f"median of {config.repeats} interleaved timed rounds (each a ~20 ms burst of runs) "
        "after an instrumented warm-up run" + _variant(config) + ".",
        "",
        "## Problems",
        "",
        *(f"- `{p.name}`: {p.describe()}" for p in config.problems),
        "",
        "## Results",
        "",
        format_table(rows),
        "",
        "f-evals: per sample until the solve stopped (deqkit: max over samples; torchdeq "
        "evaluates the whole batch every call). converged: as the solver reports it; checked: "
        "residual of the returned z recomputed, same formula for both. limit: the "
        "evaluation-only limit, calls x one evaluation of f timed alone in the same run; "
        "overhead share: 1 - limit / time. overhead/iter: time per iteration beyond "
        "evaluating f, in evaluations of f.",
        "",
        "## Targets",
        "",
        *(f"- {line}" for line in targets),
        "",
        "## Convergence",
        "",
        *(f"![{p.stem}]({p.name})" for p in pngs),
        "",
    ]
    md_path, json_path = folder / f"{stem}.md", folder / f"{stem}.json"
    payload = {
        "config": config.to_dict(),
        "environment": env,
        "rows": [r.to_dict() for r in rows],
        "targets": list(targets),
    }
    write_text_atomic(md_path, "\n".join(md))
    write_json_atomic(json_path, payload, indent=1)
    return [md_path, json_path, *pngs]
