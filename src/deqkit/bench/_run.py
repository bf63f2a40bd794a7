"""The solver benchmark's runner: every solver on every problem, timed side by side."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._validate import choice, integer, real
from ..solvers import Anderson, Graphed, available, solve
from ..testing import TanhProblem as Problem
from ..testing import TanhSpec as ProblemSpec
from ..testing import benchmark_problems as default_problems
from ..testing import build_tanh as build_problem
from ._timing import CLOCKS, calls_per_burst, clock, sync, time_f

# BenchConfig.history -> Anderson(history_dtype=...)
HISTORIES = {"state": None, "bfloat16": torch.bfloat16}

__all__ = [
    "BenchConfig",
    "Problem",
    "ProblemSpec",
    "Row",
    "build_problem",
    "default_problems",
    "run_solver_benchmark",
    "torchdeq_available",
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
        clock: ``"wall"`` (elapsed time, default) or ``"cpu"`` (this process's CPU time,
            steadier on a machine shared with other work; CPU device only). Every time of
            the run, ``f`` alone included, is taken with it.
        native: Run deqkit's ``"anderson"`` as ``Anderson(native=True)`` (its bookkeeping
            in the C++ extension; CPU only). Its rows keep the name ``anderson``, so every
            target measures it. Default ``False``.
        history: With ``native``, the dtype of Anderson's history rings: ``"state"`` (the
            state's, float32) or ``"bfloat16"`` (``Anderson(history_dtype=torch.bfloat16)``).
            Default ``"state"``.
        graph: Run deqkit's ``"anderson"`` and ``"picard"`` as
            ``Graphed(method, steps=graph)``: chunks of ``graph`` steps with no host read
            inside, each chunk one CUDA graph replay on a GPU (on the CPU the chunks run
            eagerly). Its rows keep the solvers' names. ``None`` (default): the loop.

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
    clock: str = "wall"
    native: bool = False
    history: str = "state"
    graph: int | None = None

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
            device = torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"Invalid device: {self.device!r} ({err})") from None
        choice("clock", self.clock, CLOCKS)
        if not isinstance(self.native, bool):
            raise ValueError(f"Invalid native: {self.native!r} (expected True or False)")
        if self.native and device.type != "cpu":
            raise ValueError(f"Invalid native: True with device {self.device!r} (CPU only)")
        choice("history", self.history, tuple(HISTORIES))
        if self.history != "state" and not self.native:
            raise ValueError(
                f"Invalid history: {self.history!r} without native (the eager step keeps its "
                "history in the state's dtype; expected native=True or history='state')"
            )
        integer("graph", self.graph, 1, optional=True)
        if self.graph is not None and self.native:
            raise ValueError(
                f"Invalid graph: {self.graph!r} with native=True (the native solve is CPU "
                "code of its own; expected one of them)"
            )
        if self.clock == "cpu" and device.type != "cpu":
            raise ValueError(
                f"Invalid clock: 'cpu' with device {self.device!r} (expected clock='wall' on "
                "an accelerator: the host's CPU time does not measure queued device work)"
            )

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
        time_ms: Median time of one solve (on ``BenchConfig.clock``), milliseconds.
        times_ms: Every timed run, milliseconds.
        f_ms: Median time of one evaluation of ``f`` alone on this problem, milliseconds.
        overhead: deqkit only: time per iteration beyond evaluating ``f``, as a fraction of
            one evaluation, ``(time_ms - calls * f_ms) / (calls * f_ms)``; else ``None``.
        limit_ms: The evaluation-only limit ``calls * f_ms``: no solve that calls ``f``
            this often can be faster.
        overhead_share: The share of the solve's time not spent evaluating ``f``,
            ``1 - limit_ms / time_ms`` (negative when the solve beat the limit, i.e. within
            the timing noise).
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
    limit_ms: float | None = None
    overhead_share: float | None = None
    pair: str | None = None
    evals_ratio: float | None = None
    time_ratio: float | None = None
    converged_mask: tuple[bool, ...] = field(default=(), repr=False)
    checked_mask: tuple[bool, ...] = field(default=(), repr=False)
    trace: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def limit_ratio(self) -> float | None:
        """``time_ms / limit_ms``: how many times its evaluation-only limit the solve took."""
        return None if self.limit_ms is None else self.time_ms / self.limit_ms

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


def _ours(
    method: str,
    tol: float,
    max_iter: int,
    native: bool = False,
    history: str = "state",
    graph: int | None = None,
) -> _Runner:
    if native and method == "anderson":
        method = Anderson(native=True, history_dtype=HISTORIES[history])
    if graph is not None and method in ("anderson", "picard"):
        method = Graphed(method, steps=graph)

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


def _evals_to_tol(trace: Tensor, tol: float) -> float | None:
    hit = trace <= tol  # [calls, B]
    first = torch.where(hit.any(0), hit.int().argmax(0).double() + 1, math.inf)
    median = float(first.sort().values[(first.numel() - 1) // 2])
    return median if math.isfinite(median) else None


def run_solver_benchmark(config: BenchConfig) -> list[Row]:
    """Run every solver of ``config`` on every problem, side by side, and measure.

    Per problem: build it, run each solver once instrumented (residual of every call
    recorded; also the warm-up), then ``config.repeats`` interleaved rounds, each timing a
    burst of evaluations of ``f`` alone and a burst of back-to-back runs of every solver
    (about 20 ms each, at least one run: a 2 ms solve timed once per round moved by 10%
    with what ran before it, while ``f``, timed in bursts, did not).

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
        (
            OURS,
            m,
            _ours(m, config.tol, config.max_iter, config.native, config.history, config.graph),
        )
        for m in config.ours
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
    burst = calls_per_burst(prob.f, fz0, device)
    now = clock(config.clock)
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
    # Runs per burst as calls of f per burst: about 20 ms each (at least one).
    runs = [
        calls_per_burst(lambda z, run=run: run(prob.f, z), prob.z0, device) for *_, run in entrants
    ]
    times: list[list[float]] = [[] for _ in entrants]
    calls: list[int] = [0 for _ in entrants]
    f_times: list[float] = []
    for _ in range(config.repeats):
        # f is timed alone in every round too, so the overhead compares like with like;
        # both f and each solver in bursts, so that each is timed in the cache state it
        # leaves itself.
        f_times.append(time_f(prob.f, fz0, device, burst, now))
        for i, (_, _, run) in enumerate(entrants):
            counted = _Counted(prob.f, record=False)
            sync(device)
            t0 = now()
            for _ in range(runs[i]):
                run(counted, prob.z0)
            sync(device)
            times[i].append((now() - t0) / runs[i])
            calls[i] = counted.calls // runs[i]
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
                limit_ms=n_calls * f_s * 1e3,
                overhead_share=1.0 - n_calls * f_s / t_med,
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
