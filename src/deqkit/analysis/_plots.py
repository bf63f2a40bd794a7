"""PNG plots of residual traces, compute curves and spectral-radius histograms."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import new_figure, save_figure
from .._validate import integer, invalid
from ..solvers import SolveResult
from ._curve import CurveResult
from ._spectral import SpectralEstimate
from ._trajectory import Trajectory

__all__ = ["plot_compute_curves", "plot_residuals", "plot_spectral_histogram"]

FLOOR = 1e-16  # residuals below this (0 included) are drawn at it on log axes


def plot_residuals(
    traces: Mapping[str, Tensor | SolveResult | Trajectory],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    band: tuple[float, float] | None = (0.25, 0.75),
) -> Path:
    """Residual against solver step, one line per solver (median over samples).

    A sample's trace ends where it stopped (NaN after); it is carried forward at its last
    value, which is the residual of the state the solver holds for it, so the median is over
    every sample at every step.

    Args:
        traces: Label to a ``[steps, B]`` (or ``[steps]``) residual trace, or a
            :class:`~deqkit.SolveResult`/:class:`Trajectory` solved with a trace.
        path: Output file, ``.png``; written atomically (temporary file, then rename); its
            folder is created if needed.
        title: Figure title. Default none.
        band: Quantiles of the shaded band, or ``None`` for none. Default ``(0.25, 0.75)``.

    Returns:
        The path written.

    Raises:
        ValueError: empty ``traces``, a result without a trace, a trace of another rank, a
            path not ending in ``.png``, a bad ``band``.
    """
    path = _check_path(path)
    _check_mapping("traces", traces)
    if band is not None and not (0.0 <= band[0] <= band[1] <= 1.0):
        raise invalid("band", band, "two quantiles 0 <= lo <= hi <= 1, or None")
    fig, ax = _figure()
    for label, trace in traces.items():
        tr = _as_trace(label, trace)
        steps = np.arange(tr.shape[0])
        median = tr.nanmedian(dim=1).values.numpy()
        (line,) = ax.plot(steps, _floor(median), label=label)
        if band is not None and tr.shape[1] > 1:
            q = torch.tensor(band, dtype=tr.dtype)
            lo, hi = torch.nanquantile(tr, q, dim=1).numpy()
            ax.fill_between(steps, _floor(lo), _floor(hi), color=line.get_color(), alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("solver step (= evaluations - 1 for picard / anderson / broyden)")
    ax.set_ylabel("residual (median over samples)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_compute_curves(
    curves: Mapping[str, CurveResult],
    path: str | os.PathLike,
    *,
    ylabel: str = "accuracy",
    title: str | None = None,
    residual: bool = True,
) -> Path:
    """Metric against evaluation budget, one line per curve (e.g. per test difficulty).

    Args:
        curves: Label (e.g. ``"length 64"``) to a :class:`CurveResult`.
        path: Output file, ``.png``, written atomically.
        ylabel: Label of the metric axis. Default ``"accuracy"``.
        title: Figure title. Default none.
        residual: Add a second panel with the median residual per budget. Default ``True``.

    Returns:
        The path written.

    Raises:
        ValueError: empty ``curves``, a value that is not a :class:`CurveResult`, a path not
            ending in ``.png``.
    """
    path = _check_path(path)
    _check_mapping("curves", curves)
    for label, curve in curves.items():
        if not isinstance(curve, CurveResult):
            raise ValueError(f"curves[{label!r}] must be a CurveResult, got {type(curve).__name__}")
    fig, axes = _figure(2 if residual else 1)
    axes = list(np.atleast_1d(axes))
    for label, curve in curves.items():
        x = np.asarray(curve.iterations)
        axes[0].plot(x, curve.metric.numpy(), marker="o", label=label)
        if residual:
            axes[1].plot(x, _floor(curve.residual.numpy()), marker="o", label=label)
    axes[0].set_ylabel(ylabel)
    if residual:
        axes[1].set_ylabel("median residual")
        axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("evaluation budget (solver iterations)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_spectral_histogram(
    values: Mapping[str, Tensor | SpectralEstimate],
    path: str | os.PathLike,
    *,
    bins: int = 30,
    xlabel: str = "spectral radius of df/dz",
    title: str | None = None,
) -> Path:
    """Histograms of per-sample spectral radii (or norms), with a vertical line at 1.

    Args:
        values: Label to ``[B]`` values or a :class:`SpectralEstimate` (non-finite values
            are dropped).
        path: Output file, ``.png``, written atomically.
        bins: Number of bins, >= 1, shared by all histograms. Default ``30``.
        xlabel: Label of the value axis. Default ``"spectral radius of df/dz"``.
        title: Figure title. Default none.

    Returns:
        The path written.

    Raises:
        ValueError: empty ``values``, bad ``bins``, a path not ending in ``.png``.
    """
    path = _check_path(path)
    _check_mapping("values", values)
    bins = integer("bins", bins, 1)
    data = {}
    for label, v in values.items():
        v = v.value if isinstance(v, SpectralEstimate) else v
        if not isinstance(v, Tensor):
            raise ValueError(f"values[{label!r}] must be a tensor or SpectralEstimate")
        arr = v.detach().double().cpu().reshape(-1).numpy()
        data[label] = arr[np.isfinite(arr)]
    every = np.concatenate([*data.values(), [1.0]])
    edges = np.linspace(every.min(), every.max(), bins + 1) if np.ptp(every) > 0 else bins
    fig, ax = _figure()
    for label, arr in data.items():
        ax.hist(arr, bins=edges, histtype="step", linewidth=1.5, label=f"{label} (n={arr.size})")
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="1")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    return path


def _check_mapping(name: str, value: object) -> None:
    if not isinstance(value, Mapping) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty mapping of label to data")


def _as_trace(label: str, trace: Tensor | SolveResult | Trajectory) -> Tensor:
    if isinstance(trace, Trajectory):
        trace = trace.result
    if isinstance(trace, SolveResult):
        if trace.trace is None:
            raise ValueError(f"traces[{label!r}] was solved without record_trace=True")
        trace = trace.trace
    if not isinstance(trace, Tensor) or trace.dim() not in (1, 2) or trace.shape[0] == 0:
        raise ValueError(f"traces[{label!r}] must be a non-empty [steps, B] or [steps] tensor")
    tr = trace.detach().double().cpu().reshape(trace.shape[0], -1)
    rows = [tr[0]]
    for t in range(1, tr.shape[0]):
        rows.append(torch.where(torch.isnan(tr[t]), rows[-1], tr[t]))
    return torch.stack(rows)


def _floor(y: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(y), np.nan, np.maximum(y, FLOOR))


def _figure(panels: int = 1):
    fig = new_figure(figsize=(6.4 * panels, 4.4), layout="constrained")  # no pyplot
    axes = fig.subplots(1, panels)
    return fig, axes


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=120)


def plot_readout(curves_by_d: Mapping[Any, Mapping[str, Tensor]], path: Path) -> Path:
    """Exact-match accuracy of the readout at every iterate, per difficulty: the model's
    solver (solid) and plain iteration (dotted); ``curves_by_d[d][name]`` is ``[T, B]``
    per-sample position accuracy (1 = every position right), ``name`` ``"solver"`` or
    ``"picard"``. Written atomically as PNG; returns ``path``."""
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
