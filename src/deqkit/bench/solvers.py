r"""Solver benchmark: deqkit's fixed-point solvers against torchdeq's, side by side.

Every solver runs on the same problems in the same process: a tanh layer

.. math:: f(z)_b = \tanh(g_b\, W z_b + \sigma\, U x_b)

with ``W`` scaled to a given spectral norm or spectral radius (see :class:`ProblemSpec`). Per
problem and solver the benchmark reports the evaluations of ``f`` to the tolerance, the
fraction of samples that converged (as the solver claims it, and as checked by recomputing the
residual of the returned ``z``), the median wall time over repeats, the ratios deqkit/torchdeq,
and for deqkit the overhead per iteration beyond evaluating ``f``.

How it measures:

* Evaluations are counted by wrapping ``f``: ``calls`` is the number of batched calls of one
  solve. deqkit charges evaluations per sample (``SolveResult.iterations``); its ``evals`` is
  the maximum over samples. torchdeq evaluates every sample on every call, so its ``evals`` is
  ``calls``.
* Convergence is judged with one formula for both libraries,
  ``||f(z) - z|| / (||f(z)|| + 1e-12) <= tol`` at the returned ``z``, next to what each solver
  claims (deqkit ``converged``; torchdeq ``info["rel_lowest"] < tol``).
* A first, instrumented run of each solver records every call's per-sample residual (the
  convergence trace and "evaluations to tolerance"), and warms the code paths up. The timed
  runs that follow are interleaved (every solver once per round, ``repeats`` rounds), so slow
  drift of the machine hits all solvers alike; the median is reported.
* Overhead per iteration: ``(median solve time - calls * t_f) / calls``, as a fraction of
  ``t_f``, the time of one evaluation of ``f`` timed alone (a ~20 ms burst of calls in every
  round, median over rounds).

torchdeq (``pip install deqkit[bench]``) is optional; without it, run with
``include_torchdeq=False``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import new_figure, save_figure, write_json_atomic, write_text_atomic
from .._validate import integer, invalid, real
from ..solvers import available, solve

__all__ = [
    "BenchConfig",
    "Problem",
    "ProblemSpec",
    "Row",
    "build_problem",
    "check_targets",
    "default_problems",
    "format_table",
    "plot_convergence",
    "run_solver_benchmark",
    "torchdeq_available",
    "write_report",
]

OURS = "deqkit"
THEIRS = "torchdeq"
TORCHDEQ_SOLVERS = ("anderson", "broyden", "fixed_point_iter")
# Which torchdeq solver each of ours is compared with in the ratio columns.
_PAIRS = {
    "anderson": "anderson",
    "broyden": "broyden",
    "picard": "fixed_point_iter",
    "fixed_point": "fixed_point_iter",
}
_EPS = 1e-12


@dataclass(frozen=True)
class ProblemSpec:
    r"""A tanh-layer fixed-point problem, described by its hyperparameters.

    .. math:: f(z)_b = \tanh(g_b\, W z_b + \sigma\, U x_b), \qquad b = 1..B

    ``W`` (``[width, width]``) has i.i.d. Gaussian entries scaled to spectral norm ``norm``
    (``||W||_2``) or to spectral radius ``radius`` (``max |eig(W)|``); ``U`` is Gaussian with
    variance ``1 / width`` and ``x_b ~ N(0, I)``, so ``U x_b`` has unit-variance entries and
    ``sigma = inject`` sets the scale of the input. The gains ``g_b`` are evenly spaced over
    ``gain`` across the batch. A small ``inject`` keeps pre-activations where ``tanh`` is nearly
    linear, so the rate of plain iteration approaches ``g * radius``: a hard problem.

    Attributes:
        name: Short unique name, used in tables and file names.
        width: Size ``n`` of each sample's state, >= 1. Default ``256``.
        batch: Batch size ``B``, >= 1. Default ``64``.
        norm: Spectral norm of ``W``; exactly one of ``norm`` and ``radius`` is set.
        radius: Spectral radius of ``W``.
        gain: ``(lo, hi)``, both > 0: ``g_b`` evenly spaced from ``lo`` (first sample) to
            ``hi`` (last). Default ``(1.0, 1.0)``.
        inject: Scale ``sigma`` >= 0 of the input injection. Default ``1.0``.

    Raises:
        ValueError: on an invalid field (the message names it).
    """

    name: str
    width: int = 256
    batch: int = 64
    norm: float | None = None
    radius: float | None = None
    gain: tuple[float, float] = (1.0, 1.0)
    inject: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"Invalid name: {self.name!r} (expected a non-empty string, no '/')")
        integer("width", self.width, 1)
        integer("batch", self.batch, 1)
        if (self.norm is None) == (self.radius is None):
            raise ValueError(
                f"Set exactly one of norm and radius, got norm={self.norm!r}, "
                f"radius={self.radius!r}"
            )
        scale = self.norm if self.norm is not None else self.radius
        real("norm" if self.norm is not None else "radius", scale, 0.0, low_open=True)
        if len(self.gain) != 2 or not all(0.0 < g < math.inf for g in self.gain):
            raise invalid("gain", self.gain, "(lo, hi), both finite and > 0")
        real("inject", self.inject, 0.0)

    def describe(self) -> str:
        """One line: what the problem is."""
        scale = f"||W||_2 = {self.norm:g}" if self.norm is not None else f"rho(W) = {self.radius:g}"
        lo, hi = self.gain
        gain = f"g = {lo:g}" if lo == hi else f"g_b evenly in [{lo:g}, {hi:g}]"
        return (
            f"tanh(g W z + {self.inject:g} U x), {scale}, {gain}, "
            f"width {self.width}, batch {self.batch}"
        )


@dataclass(frozen=True, eq=False)
class Problem:
    """A built problem: the map, the starting point, and the weight it uses.

    Attributes:
        spec: The :class:`ProblemSpec` it was built from.
        f: The map, ``[batch, width] -> [batch, width]``; it keeps no autograd graph (its
            tensors do not require grad).
        z0: ``[batch, width]`` zeros, the starting point.
        weight: ``[width, width]`` ``W`` before the gains, in the problem's dtype and device.
    """

    spec: ProblemSpec
    f: Callable[[Tensor], Tensor]
    z0: Tensor
    weight: Tensor


def build_problem(
    spec: ProblemSpec,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Problem:
    """Build the map of ``spec`` from a seeded generator (same seed, same problem).

    ``W``, ``U`` and ``x`` are drawn in float64 on the CPU from ``torch.Generator`` seeded with
    ``seed``, scaled there (``torch.linalg.matrix_norm(W, 2)`` or ``torch.linalg.eigvals``),
    then moved to ``device`` and ``dtype``; problems that share ``width`` share the direction
    of ``W``.

    Args:
        spec: What to build.
        seed: Seed of the generator. Default ``0``.
        device: Where ``f`` runs. Default ``"cpu"``.
        dtype: Floating dtype of ``f`` and ``z0``. Default ``torch.float32``.

    Returns:
        A :class:`Problem`.
    """
    n, B = spec.width, spec.batch
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=gen, dtype=torch.float64)
    if spec.norm is not None:
        W *= spec.norm / torch.linalg.matrix_norm(W, ord=2)
    else:
        W *= spec.radius / torch.linalg.eigvals(W).abs().max()
    U = torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    x = torch.randn(B, n, generator=gen, dtype=torch.float64)
    drive = (spec.inject * x @ U.T).to(device, dtype)
    weight = W.to(device, dtype)
    lo, hi = spec.gain
    if lo == hi:
        Wt = (lo * W.T).to(device, dtype).contiguous()

        def f(z: Tensor) -> Tensor:
            return torch.tanh(torch.addmm(drive, z, Wt))

    else:
        Wt = W.T.to(device, dtype).contiguous()
        g = torch.linspace(lo, hi, B, dtype=torch.float64).to(device, dtype)[:, None]

        def f(z: Tensor) -> Tensor:
            return torch.tanh(torch.addcmul(drive, g, z @ Wt))

    z0 = torch.zeros(B, n, device=device, dtype=dtype)
    return Problem(spec=spec, f=f, z0=z0, weight=weight)


def default_problems(*, quick: bool = False) -> tuple[ProblemSpec, ...]:
    """The benchmark's problems.

    * ``tanh-0.9`` / ``tanh-2.0``: the tanh layer of REFERENCE.md section 1 at
      ``||W||_2 = 0.9`` and ``2.0`` (width 256, batch 64, unit input).
    * ``near-linear-0.99``: ``rho(W) = 1``, ``g = 0.99``, input scale 0.1: nearly linear,
      plain iteration converges at a rate close to 0.99.
    * ``mixed-0.5-0.99``: the same ``W`` and input with ``g_b`` evenly in ``[0.5, 0.99]``, so
      samples finish at very different times.
    * ``wide-tanh-0.9`` / ``wide-tanh-2.0``: width 1024, batch 128, where the per-iteration
      overhead is measured.

    Args:
        quick: The same problems at a fraction of the size (width 32 and 128, batch 8 and 16),
            to check the pipeline in seconds; the targets are stated for the full sizes.

    Returns:
        A tuple of :class:`ProblemSpec`.
    """
    n, B, wide_n, wide_B = (32, 8, 128, 16) if quick else (256, 64, 1024, 128)
    return (
        ProblemSpec("tanh-0.9", n, B, norm=0.9),
        ProblemSpec("tanh-2.0", n, B, norm=2.0),
        ProblemSpec("near-linear-0.99", n, B, radius=1.0, gain=(0.99, 0.99), inject=0.1),
        ProblemSpec("mixed-0.5-0.99", n, B, radius=1.0, gain=(0.5, 0.99), inject=0.1),
        ProblemSpec("wide-tanh-0.9", wide_n, wide_B, norm=0.9),
        ProblemSpec("wide-tanh-2.0", wide_n, wide_B, norm=2.0),
    )


@dataclass(frozen=True)
class BenchConfig:
    """What :func:`run_solver_benchmark` runs.

    Attributes:
        problems: The problems. Default :func:`default_problems`.
        repeats: Timed runs per solver and problem, >= 1 (median reported). Default ``7``.
        include_torchdeq: Also run torchdeq's solvers (must be installed). Default ``True``.
        max_iter: Evaluation budget per solve, >= 2. Default ``300``.
        tol: Relative tolerance, ``||f(z) - z|| / ||f(z)||``. Default ``1e-5``.
        seed: Seed of the problems. Default ``0``.
        device: ``"cpu"`` or ``"cuda"`` (or ``"cuda:1"``...). Default ``"cpu"``.
        ours: deqkit methods to run. Default ``("anderson", "broyden", "picard")``.
        theirs: torchdeq solvers to run, from ``"anderson"``, ``"broyden"``,
            ``"fixed_point_iter"`` (each with torchdeq's defaults). Default all three.
        threads: ``torch.set_num_threads`` for the run (restored afterwards), or ``None`` to
            leave it. One thread makes CPU timings far less sensitive to other processes on
            the machine. Default ``None``.
        progress: Show a progress bar on stderr. Default ``False``.

    Raises:
        ValueError: on an invalid field (the message names it and the valid values).
    """

    problems: tuple[ProblemSpec, ...] = field(default_factory=default_problems)
    repeats: int = 7
    include_torchdeq: bool = True
    max_iter: int = 300
    tol: float = 1e-5
    seed: int = 0
    device: str = "cpu"
    ours: tuple[str, ...] = ("anderson", "broyden", "picard")
    theirs: tuple[str, ...] = TORCHDEQ_SOLVERS
    threads: int | None = None
    progress: bool = False

    def __post_init__(self):
        if not self.problems or not all(isinstance(p, ProblemSpec) for p in self.problems):
            raise ValueError(f"Invalid problems: {self.problems!r} (expected ProblemSpecs)")
        names = [p.name for p in self.problems]
        if len(set(names)) != len(names):
            raise ValueError(f"Invalid problems: duplicate names in {names}")
        integer("repeats", self.repeats, 1)
        integer("max_iter", self.max_iter, 2)
        real("tol", self.tol, 0.0, low_open=True)
        unknown = [m for m in self.ours if m not in available()]
        if unknown or not self.ours:
            raise ValueError(
                f"Invalid ours: {self.ours!r} (valid methods: {', '.join(available())})"
            )
        unknown = [m for m in self.theirs if m not in TORCHDEQ_SOLVERS]
        if unknown:
            raise ValueError(
                f"Invalid theirs: {self.theirs!r} (valid: {', '.join(TORCHDEQ_SOLVERS)})"
            )
        integer("threads", self.threads, 1, optional=True)
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"Invalid device: {self.device!r} ({err})") from None

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Row:
    """One solver on one problem: counts, convergence, times.

    Attributes:
        problem: Problem name.
        impl: ``"deqkit"`` or ``"torchdeq"``.
        solver: Method name in that library.
        width: Problem width ``n``.
        batch: Problem batch ``B``.
        evals: Evaluations of ``f`` per sample until the solve stopped: deqkit the maximum of
            ``SolveResult.iterations`` over samples, torchdeq ``calls`` (it evaluates every
            sample on every call).
        calls: Batched calls of ``f`` in one solve.
        evals_to_tol: Median over samples of the first evaluation whose input met the
            tolerance, or ``None`` when fewer than half the samples ever met it.
        converged: Fraction of samples the solver reports converged.
        checked: Fraction whose returned ``z`` meets the tolerance when its residual is
            recomputed (same formula for both libraries).
        time_ms: Median wall time of one solve, milliseconds.
        times_ms: Every timed run, milliseconds.
        f_ms: Median time of one evaluation of ``f`` alone on this problem, milliseconds.
        overhead: deqkit only: time per iteration beyond evaluating ``f``, as a fraction of
            one evaluation, ``(time_ms - calls * f_ms) / (calls * f_ms)``; else ``None``.
        pair: deqkit only: the torchdeq solver the ratios compare with, or ``None``.
        evals_ratio: ``evals`` ours / theirs against ``pair``, or ``None``.
        time_ratio: ``time_ms`` ours / theirs against ``pair``, or ``None``.
        converged_mask: ``B`` bools, per sample, what the solver reports.
        checked_mask: ``B`` bools, per sample, the recomputed check.
        trace: ``[calls, B]`` float64 CPU tensor: relative residual of the input of every call
            of ``f``, per sample (from the instrumented first run). Not written to JSON.
    """

    problem: str
    impl: str
    solver: str
    width: int
    batch: int
    evals: int
    calls: int
    evals_to_tol: float | None
    converged: float
    checked: float
    time_ms: float
    times_ms: tuple[float, ...]
    f_ms: float
    overhead: float | None = None
    pair: str | None = None
    evals_ratio: float | None = None
    time_ratio: float | None = None
    converged_mask: tuple[bool, ...] = field(default=(), repr=False)
    checked_mask: tuple[bool, ...] = field(default=(), repr=False)
    trace: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``"<impl> <solver>"``, e.g. ``"deqkit anderson"``."""
        return f"{self.impl} {self.solver}"

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values (the trace left out)."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "trace"
        }


def torchdeq_available() -> bool:
    """True when torchdeq's solvers can be imported."""
    try:
        import torchdeq.solver  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet_torchdeq() -> Iterator[None]:
    # Only warnings raised from torchdeq's own modules (including PyTorch warnings that its
    # calls trigger, which are attributed to the calling torchdeq line) are silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torchdeq(\.|$)")
        yield


def _rel_residual(z: Tensor, fz: Tensor) -> Tensor:
    """``[B]`` float64 ``||f(z) - z|| / (||f(z)|| + 1e-12)`` over all non-batch dims."""
    z, fz = z.reshape(z.shape[0], -1).double(), fz.reshape(fz.shape[0], -1).double()
    return torch.linalg.vector_norm(fz - z, dim=1) / (torch.linalg.vector_norm(fz, dim=1) + _EPS)


class _Counted:
    """``f`` that counts its batched calls and, if asked, records each call's residual."""

    def __init__(self, f: Callable[[Tensor], Tensor], record: bool):
        self._f = f
        self.calls = 0
        self.residuals: list[Tensor] | None = [] if record else None

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        fz = self._f(z)
        if self.residuals is not None:
            self.residuals.append(_rel_residual(z, fz).cpu())
        return fz


# A runner takes (f, z0) and returns (z, converged per the solver [B], iterations [B] or None).
_Runner = Callable[[Callable[[Tensor], Tensor], Tensor], tuple[Tensor, Tensor, Tensor | None]]


def _ours(method: str, tol: float, max_iter: int) -> _Runner:
    def run(f: Callable[[Tensor], Tensor], z0: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        r = solve(f, z0, method, tol=tol, stop="rel", max_iter=max_iter)
        return r.z, r.converged, r.iterations

    return run


def _theirs(name: str, tol: float, max_iter: int) -> _Runner:
    from torchdeq.solver import get_solver

    solver = get_solver(name)

    def run(f: Callable[[Tensor], Tensor], z0: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        # torchdeq's own DEQ layer calls its solvers under no_grad, as deqkit.solve does.
        with _quiet_torchdeq(), torch.no_grad():
            z, _, info = solver(f, z0, max_iter=max_iter, tol=tol, stop_mode="rel")
        return z, info["rel_lowest"] < tol, None

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _calls_per_burst(f: Callable[[Tensor], Tensor], z: Tensor, device: torch.device) -> int:
    """How many calls of ``f(z)`` take about 20 ms (after a warm-up)."""
    with torch.no_grad():
        for _ in range(3):
            f(z)
        _sync(device)
        t0 = time.perf_counter()
        f(z)
        _sync(device)
    return max(1, min(1000, int(0.02 / max(time.perf_counter() - t0, 1e-7))))


def _time_f(f: Callable[[Tensor], Tensor], z: Tensor, device: torch.device, calls: int) -> float:
    """Mean seconds per call of ``f(z)`` over a burst of ``calls`` calls."""
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            f(z)
        _sync(device)
    return (time.perf_counter() - t0) / calls


def _evals_to_tol(trace: Tensor, tol: float) -> float | None:
    hit = trace <= tol  # [calls, B]
    first = torch.where(hit.any(0), hit.int().argmax(0).double() + 1, math.inf)
    median = float(first.sort().values[(first.numel() - 1) // 2])
    return median if math.isfinite(median) else None


def run_solver_benchmark(config: BenchConfig) -> list[Row]:
    """Run every solver of ``config`` on every problem, side by side, and measure.

    Per problem: build it, run each solver once instrumented (residual of every call
    recorded; also the warm-up), then ``config.repeats`` interleaved rounds, each timing a
    burst of evaluations of ``f`` alone and one run of every solver.

    Args:
        config: What to run.

    Returns:
        One :class:`Row` per problem and solver, problems in ``config`` order, deqkit's
        solvers first.

    Raises:
        ModuleNotFoundError: ``include_torchdeq`` is set but torchdeq is not installed.
        ValueError: ``config.device`` is a CUDA device but CUDA is not available.
    """
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Invalid device: {config.device!r} (CUDA is not available)")
    entrants: list[tuple[str, str, _Runner]] = [
        (OURS, m, _ours(m, config.tol, config.max_iter)) for m in config.ours
    ]
    if config.include_torchdeq:
        if not torchdeq_available():
            raise ModuleNotFoundError(
                "torchdeq is not installed: pip install 'deqkit[bench]' (torchdeq==0.1.0), "
                "or run with include_torchdeq=False"
            )
        entrants += [(THEIRS, s, _theirs(s, config.tol, config.max_iter)) for s in config.theirs]

    from tqdm.auto import tqdm

    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        problems = tqdm(config.problems, desc="solver bench", disable=not config.progress)
        return [row for spec in problems for row in _run_problem(spec, entrants, config, device)]
    finally:
        torch.set_num_threads(threads)


def _run_problem(
    spec: ProblemSpec,
    entrants: Sequence[tuple[str, str, _Runner]],
    config: BenchConfig,
    device: torch.device,
) -> list[Row]:
    """Build one problem, run every entrant once instrumented, then the timed rounds."""
    prob = build_problem(spec, seed=config.seed, device=device)
    fz0 = prob.f(prob.z0)
    burst = _calls_per_burst(prob.f, fz0, device)
    first: list[dict[str, Any]] = []
    for _, _, run in entrants:
        counted = _Counted(prob.f, record=True)
        z, claimed, iterations = run(counted, prob.z0)
        with torch.no_grad():
            checked = _rel_residual(z, prob.f(z)) <= config.tol
        first.append(
            {
                "trace": torch.stack(counted.residuals),
                "claimed": claimed.cpu(),
                "checked": checked.cpu(),
                "evals": counted.calls if iterations is None else int(iterations.max()),
            }
        )
    times: list[list[float]] = [[] for _ in entrants]
    calls: list[int] = [0 for _ in entrants]
    f_times: list[float] = []
    for _ in range(config.repeats):
        # f is timed alone in every round too, so the overhead compares like with like.
        f_times.append(_time_f(prob.f, fz0, device, burst))
        for i, (_, _, run) in enumerate(entrants):
            counted = _Counted(prob.f, record=False)
            _sync(device)
            t0 = time.perf_counter()
            run(counted, prob.z0)
            _sync(device)
            times[i].append(time.perf_counter() - t0)
            calls[i] = counted.calls
    f_s = statistics.median(f_times)
    rows: list[Row] = []
    for (impl, name, _), rec, ts, n_calls in zip(entrants, first, times, calls, strict=True):
        t_med = statistics.median(ts)
        overhead = (t_med - n_calls * f_s) / (n_calls * f_s) if impl == OURS else None
        rows.append(
            Row(
                problem=spec.name,
                impl=impl,
                solver=name,
                width=spec.width,
                batch=spec.batch,
                evals=rec["evals"],
                calls=n_calls,
                evals_to_tol=_evals_to_tol(rec["trace"], config.tol),
                converged=float(rec["claimed"].double().mean()),
                checked=float(rec["checked"].double().mean()),
                time_ms=t_med * 1e3,
                times_ms=tuple(t * 1e3 for t in ts),
                f_ms=f_s * 1e3,
                overhead=overhead,
                converged_mask=tuple(bool(c) for c in rec["claimed"]),
                checked_mask=tuple(bool(c) for c in rec["checked"]),
                trace=rec["trace"],
            )
        )
    theirs = {r.solver: r for r in rows if r.impl == THEIRS}
    for i, r in enumerate(rows):
        ref = theirs.get(_PAIRS.get(r.solver, "")) if r.impl == OURS else None
        if ref is not None:
            rows[i] = dataclasses.replace(
                r,
                pair=ref.solver,
                evals_ratio=r.evals / ref.evals,
                time_ratio=r.time_ms / ref.time_ms,
            )
    return rows


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of ``rows``, one line per problem and solver.

    Columns: problem, library, solver, f-evals per sample (deqkit: maximum over samples),
    batched calls, median f-evals to tolerance over samples, converged as claimed and as
    checked, median wall time, the ratios deqkit/torchdeq against the paired solver (named in
    brackets), and deqkit's overhead per iteration in units of one evaluation of ``f``.

    Args:
        rows: From :func:`run_solver_benchmark`.

    Returns:
        The table, lines joined by ``\\n``, no trailing newline.
    """
    head = (
        "| problem | library | solver | f-evals | calls | median f-evals to tol "
        "| converged | checked | time ms | evals ours/theirs | time ours/theirs "
        "| overhead/iter |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        ratio = f" ({r.pair})" if r.pair else ""
        lines.append(
            f"| {r.problem} | {r.impl} | {r.solver} | {r.evals} | {r.calls} "
            f"| {_fmt(r.evals_to_tol, '.0f') or 'not reached'} "
            f"| {sum(r.converged_mask)}/{r.batch} | {sum(r.checked_mask)}/{r.batch} "
            f"| {r.time_ms:.1f} | {_fmt(r.evals_ratio, '.2f', ratio)} "
            f"| {_fmt(r.time_ratio, '.2f', ratio)} | {_fmt(r.overhead, '.2f', ' f')} |"
        )
    return "\n".join(lines)


def _mask(r: Row, generous: bool) -> Tensor:
    claimed, checked = torch.tensor(r.converged_mask), torch.tensor(r.checked_mask)
    return claimed | checked if generous else claimed & checked


def _best(rows: Sequence[Row], generous: bool) -> Row:
    """Most samples converged, then fewest evaluations."""
    return min(rows, key=lambda r: (-int(_mask(r, generous).sum()), r.evals))


def _dominates(what: str, ours: Row, refs: Sequence[Row]) -> str:
    # Strict for deqkit (claimed and checked), generous for torchdeq (claimed or checked).
    mine = _mask(ours, generous=False)
    theirs = torch.stack([_mask(r, generous=True) for r in refs]).any(0)
    missed = int((theirs & ~mine).sum())
    need = min(r.evals for r in refs)
    ok = missed == 0 and ours.evals <= need
    names = "/".join(r.solver for r in refs)
    return (
        f"{'PASS' if ok else 'FAIL'}  {what} on {ours.problem}: {ours.label} converges "
        f"{int(mine.sum())}/{ours.batch} ({missed} of torchdeq {names}'s {int(theirs.sum())} "
        f"missed) in {ours.evals} f-evals, need <= {need} "
        f"({', '.join(f'{r.solver} {r.evals}' for r in refs)})"
    )


def check_targets(
    rows: Sequence[Row],
    *,
    time_ratio: float = 0.4,
    overhead: float = 0.25,
    overhead_shape: tuple[int, int] = (1024, 128),
) -> list[str]:
    """Check the benchmark's targets; one readable ``PASS``/``FAIL``/``SKIP`` line each.

    Per problem:

    1. deqkit Anderson converges every sample that torchdeq's Anderson or fixed-point
       iteration converges, with no more f-evaluations than the fewer of the two.
    2. deqkit's best of Anderson and Broyden does the same against torchdeq's best solver
       ("best": most samples converged, then fewest evaluations).
    3. deqkit Anderson's median wall time is at most ``time_ratio`` of torchdeq Anderson's.
       The line also gives the floor set by the evaluations alone,
       ``calls * f_ms / torchdeq time``: no cut in overhead goes below it.

    And on every problem of width and batch ``overhead_shape``:

    4. deqkit Anderson's overhead per iteration beyond evaluating ``f`` is at most
       ``overhead`` of one evaluation.

    A sample counts as converged for deqkit when it both claims and passes the recomputed
    check, for torchdeq when it claims or passes it (the strict reading for deqkit).

    Args:
        rows: From :func:`run_solver_benchmark`.
        time_ratio: Target 3's bound. Default ``0.4``.
        overhead: Target 4's bound. Default ``0.25``.
        overhead_shape: ``(width, batch)`` where target 4 applies. Default ``(1024, 128)``.

    Returns:
        Lines starting with ``PASS``, ``FAIL`` or ``SKIP`` (target not measurable from
        ``rows``, e.g. torchdeq not run).
    """
    lines: list[str] = []
    problems = list(dict.fromkeys(r.problem for r in rows))
    for problem in problems:
        ours = {r.solver: r for r in rows if r.problem == problem and r.impl == OURS}
        theirs = {r.solver: r for r in rows if r.problem == problem and r.impl == THEIRS}
        anderson = ours.get("anderson")
        refs = [theirs[s] for s in ("anderson", "fixed_point_iter") if s in theirs]
        if anderson is None or not refs:
            lines.append(f"SKIP  anderson vs torchdeq on {problem}: needs both libraries' runs")
        else:
            lines.append(_dominates("anderson vs torchdeq anderson|fixed_point", anderson, refs))
        mine = [ours[s] for s in ("anderson", "broyden") if s in ours]
        if not mine or not theirs:
            lines.append(f"SKIP  best vs best on {problem}: needs both libraries' runs")
        else:
            best = _best(mine, generous=False)
            lines.append(_dominates("best vs best", best, [_best(list(theirs.values()), True)]))
        if anderson is None or "anderson" not in theirs:
            lines.append(f"SKIP  wall time on {problem}: needs both libraries' anderson")
        else:
            ref = theirs["anderson"]
            ratio = anderson.time_ms / ref.time_ms
            floor = anderson.calls * anderson.f_ms / ref.time_ms
            lines.append(
                f"{'PASS' if ratio <= time_ratio else 'FAIL'}  wall time on {problem}: "
                f"deqkit anderson {anderson.time_ms:.1f} ms / torchdeq anderson "
                f"{ref.time_ms:.1f} ms = {ratio:.2f}, need <= {time_ratio:g} (f-evaluations "
                f"alone: {anderson.calls} x {anderson.f_ms:.3f} ms = {floor:.2f} of theirs)"
            )
    wide = [
        r
        for r in rows
        if r.impl == OURS
        and r.solver == "anderson"
        and (r.width, r.batch) == tuple(overhead_shape)
        and r.overhead is not None
    ]
    for r in wide:
        lines.append(
            f"{'PASS' if r.overhead <= overhead else 'FAIL'}  overhead per iteration on "
            f"{r.problem} (width {r.width}, batch {r.batch}): {r.overhead:.3f} of one "
            f"f-evaluation ({r.f_ms:.2f} ms), need <= {overhead:g}; "
            f"{r.calls} calls in {r.time_ms:.1f} ms"
        )
    if not wide:
        lines.append(
            f"SKIP  overhead per iteration: no deqkit anderson run at width "
            f"{overhead_shape[0]}, batch {overhead_shape[1]}"
        )
    return lines


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
        targets: From :func:`check_targets`.
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
        + f"; rel. tol {config.tol:g}, max_iter {config.max_iter}, median of "
        f"{config.repeats} interleaved timed runs after an instrumented warm-up run.",
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
        "residual of the returned z recomputed, same formula for both. overhead/iter: time "
        "per iteration beyond evaluating f, in evaluations of f.",
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
