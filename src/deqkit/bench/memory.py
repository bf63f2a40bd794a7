"""Memory and step-time benchmark: one DEQ training step against torchdeq's, unrolled and
explicit networks, for a tanh layer or a transformer-block cell.

Peak memory is measured exactly, on any device, as the peak of live tensor storage
allocated during the step (forward and backward), tracked by a ``TorchDispatchMode``: every
storage an operator creates is counted until it is freed. On CUDA the allocator's own
``max_memory_allocated`` is reported beside it.
"""

from __future__ import annotations

import statistics
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from .._io import new_figure, save_figure, write_json_atomic
from .._validate import choice, integer, invalid
from ..models import AttentionCell
from ..nn import DEQ, Implicit, Phantom
from ..testing import TanhCell
from ._run import torchdeq_available
from ._timing import CLOCKS, clock, sync

__all__ = [
    "MemoryConfig",
    "MemoryRow",
    "PeakMemory",
    "check_memory_targets",
    "format_memory_table",
    "plot_memory",
    "run_memory_benchmark",
]


class PeakMemory(TorchDispatchMode):
    """Context manager tracking live and peak bytes of tensor storage created inside it.

    Attributes:
        live: Bytes currently alive among storages created inside the context.
        peak: Largest value ``live`` reached.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, int] = {}

    def _free(self, key: int, nbytes: int) -> None:
        if self._seen.pop(key, None) is not None:
            self.live -= nbytes

    def _track(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes and key not in self._seen:
            self._seen[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(Tensor, self._track, out)
        return out


CELLS = ("tanh", "attention")
"""The cells :class:`MemoryConfig` can benchmark."""
_HEADS = 4  # of the attention cell


@dataclass(frozen=True)
class MemoryConfig:
    """Settings of :func:`run_memory_benchmark`.

    Attributes:
        iterations: Forward iteration counts to sweep (the adjoint solve of the implicit
            gradients runs as many). Default ``(5, 10, 20, 40, 80)``.
        cell: The layer ``f(z, x)``: ``"tanh"`` (default; :class:`deqkit.testing.TanhCell`,
            ``||W|| = 0.9``, state ``[batch, width]``) or ``"attention"``
            (:class:`deqkit.models.AttentionCell`, the pre-norm transformer block of
            ``DEQAttention``, 4 heads, MLP ratio 2, state ``[batch, tokens, width]``).
        width: Layer width (``d_model`` of the attention cell, divisible by its 4 heads).
            Default ``256``.
        tokens: Sequence length of the attention cell (81: a Sudoku board). Default ``81``;
            ignored by the tanh cell.
        batch: Batch size. Default ``64``.
        repeats: Timed steps per method and iteration count, interleaved across methods
            (median reported). Default ``5``.
        include_torchdeq: Also run torchdeq's DEQ when it is installed. Default ``True``.
        device: ``"cpu"`` or ``"cuda"``. Default ``"cpu"``.
        seed: Seed of the weights and data. Default ``0``.
        clock: ``"wall"`` (elapsed time, default) or ``"cpu"`` (this process's CPU time,
            steadier on a shared machine; CPU device only).
        threads: ``torch.set_num_threads`` for the run (restored afterwards), or ``None`` to
            leave it. Default ``None``.
    """

    iterations: Sequence[int] = (5, 10, 20, 40, 80)
    cell: str = "tanh"
    width: int = 256
    tokens: int = 81
    batch: int = 64
    repeats: int = 5
    include_torchdeq: bool = True
    device: str = "cpu"
    seed: int = 0
    clock: str = "wall"
    threads: int | None = None

    def __post_init__(self):
        if isinstance(self.iterations, str | bytes) or not self.iterations:
            raise invalid("iterations", self.iterations, "a non-empty sequence of integers >= 1")
        for k in self.iterations:
            integer("iterations entry", k, 1)
        choice("cell", self.cell, CELLS)
        for name in ("width", "tokens", "batch", "repeats"):
            integer(name, getattr(self, name), 1)
        if self.cell == "attention" and self.width % _HEADS:
            raise invalid("width", self.width, f"a multiple of {_HEADS} (the attention heads)")
        integer("threads", self.threads, 1, optional=True)
        choice("clock", self.clock, CLOCKS)
        if self.clock == "cpu" and torch.device(self.device).type != "cpu":
            raise invalid("clock", self.clock, "'wall' on an accelerator")


@dataclass
class MemoryRow:
    """One (method, iterations) cell: peak bytes and median step time."""

    method: str
    iterations: int
    peak_bytes: int
    time_ms: float
    cuda_peak_bytes: int | None = None
    note: str = field(default="")


_Step = tuple[Callable[[Tensor], Tensor], list[Tensor]]


def _cell(cfg: MemoryConfig, seed: int) -> nn.Module:
    """The benchmarked layer, its weights drawn from ``seed``."""
    if cfg.cell == "tanh":
        return TanhCell(cfg.width, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AttentionCell(cfg.width, heads=_HEADS, mlp_ratio=2.0)


def _input(cfg: MemoryConfig) -> Tensor:
    """The batch ``x``: ``[batch, width]`` (tanh) or ``[batch, tokens, width]`` (attention)."""
    shape = (cfg.batch, cfg.width) if cfg.cell == "tanh" else (cfg.batch, cfg.tokens, cfg.width)
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.randn(*shape, generator=g).to(cfg.device)


def _methods(cfg: MemoryConfig, n: int, torchdeq: bool) -> dict[str, _Step]:
    """``name -> (x -> loss, parameters)`` for every compared method at ``n`` iterations.

    The DEQs (deqkit's and torchdeq's) share one layer; each runs exactly ``n`` forward
    iterations of Anderson (no early stop) and, with the implicit gradient, ``n`` adjoint
    iterations; the phantom gradients take 5 damped steps with ``tau = 0.5`` in both.
    """
    cell = _cell(cfg, cfg.seed).to(cfg.device)
    params = list(cell.parameters())
    tiny = 1e-30  # no early stop: every method runs exactly n forward iterations
    implicit = DEQ(
        cell, solver="anderson", tol=tiny, max_iter=n, backward=Implicit(tol=tiny, max_iter=n)
    )
    phantom = DEQ(cell, solver="anderson", tol=tiny, max_iter=n, backward=Phantom(k=5, tau=0.5))
    layers = nn.ModuleList(_cell(cfg, cfg.seed + i) for i in range(n))
    layers = layers.to(cfg.device)

    def unrolled(x):
        z = cell.initial_state(x)
        for _ in range(n):
            z = cell(z, x)
        return z.square().mean()

    def explicit(x):
        z = torch.zeros_like(x)
        for layer in layers:
            z = layer(z, x)
        return z.square().mean()

    out: dict[str, _Step] = {
        "deqkit implicit": (lambda x: implicit(x)[0].square().mean(), params),
        "deqkit phantom": (lambda x: phantom(x)[0].square().mean(), params),
        "unrolled (tied)": (unrolled, params),
        "explicit (untied)": (explicit, list(layers.parameters())),
    }
    if torchdeq:
        from torchdeq import get_deq

        budget = {"f_solver": "anderson", "f_max_iter": n, "f_tol": tiny}
        theirs = {
            "torchdeq implicit": get_deq(
                ift=True, b_solver="anderson", b_max_iter=n, b_tol=tiny, **budget
            ),
            "torchdeq phantom": get_deq(ift=False, grad=5, tau=0.5, **budget),
        }
        for name, deq in theirs.items():

            def loss(x, deq=deq):
                z, _ = deq(lambda z: cell(z, x), torch.zeros_like(x))
                return z[-1].square().mean()

            out[name] = (loss, params)
    return out


def _step(loss_fn: Callable[[Tensor], Tensor], x: Tensor, params: list[Tensor]) -> None:
    loss = loss_fn(x)
    torch.autograd.grad(loss, params, allow_unused=True)


def run_memory_benchmark(cfg: MemoryConfig | None = None) -> list[MemoryRow]:
    """Peak memory and median time of one training step (forward, loss, backward) per method.

    Methods, for the layer ``cfg.cell``: deqkit's DEQ (Anderson forward) with the implicit
    gradient (Anderson adjoint) and with the phantom gradient, the same weight-tied layer
    unrolled with plain autograd, an explicit network of that depth with untied weights,
    and torchdeq's DEQ with the same two gradients (when installed and
    ``cfg.include_torchdeq``), each at every iteration count. A step differentiates the
    loss with respect to the layer's parameters. Peak memory comes from one step under
    :class:`PeakMemory`; the timed steps are interleaved, every method once per round, so
    slow drift hits all methods alike.

    Args:
        cfg: Settings; default :class:`MemoryConfig()`.

    Returns:
        One :class:`MemoryRow` per method and iteration count.
    """
    cfg = cfg or MemoryConfig()
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_memory_benchmark(cfg)
    finally:
        torch.set_num_threads(threads)


def _run_memory_benchmark(cfg: MemoryConfig) -> list[MemoryRow]:
    torchdeq = cfg.include_torchdeq and torchdeq_available()
    device = torch.device(cfg.device)
    now = clock(cfg.clock)
    rows = []
    x = _input(cfg)
    for n in cfg.iterations:
        methods = _methods(cfg, int(n), torchdeq)
        peaks: dict[str, tuple[int, int | None]] = {}
        for name, (fn, params) in methods.items():
            _step(fn, x, params)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            with PeakMemory() as mem:
                _step(fn, x, params)
            cuda_peak = None
            if device.type == "cuda":
                cuda_peak = torch.cuda.max_memory_allocated() - base
            peaks[name] = (mem.peak, cuda_peak)
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(cfg.repeats):
            for name, (fn, params) in methods.items():
                sync(device)
                t0 = now()
                _step(fn, x, params)
                sync(device)
                times[name].append((now() - t0) * 1e3)
        for name in methods:
            peak, cuda_peak = peaks[name]
            rows.append(MemoryRow(name, int(n), peak, statistics.median(times[name]), cuda_peak))
    return rows


def format_memory_table(rows: Sequence[MemoryRow]) -> str:
    """A Markdown table: peak MiB and median ms per method (rows) and iterations (columns)."""
    its = sorted({r.iterations for r in rows})
    methods = list(dict.fromkeys(r.method for r in rows))
    cell = {(r.method, r.iterations): r for r in rows}
    head = "| method | " + " | ".join(f"{n} it: MiB / ms" for n in its) + " |"
    lines = [head, "|---" * (len(its) + 1) + "|"]
    for m in methods:
        vals = [cell.get((m, n)) for n in its]
        lines.append(
            f"| {m} | "
            + " | ".join(
                f"{r.peak_bytes / 2**20:.2f} / {r.time_ms:.1f}" if r else "-" for r in vals
            )
            + " |"
        )
    return "\n".join(lines)


def check_memory_targets(
    rows: Sequence[MemoryRow], *, time_ratio: float = 0.8, at: Sequence[int] = (20, 80)
) -> list[str]:
    """``PASS``/``FAIL``/``SKIP`` lines for the memory and step-time targets.

    1. Per gradient (implicit, phantom): deqkit's peak memory is flat in the iterations
       (largest within 10% of the smallest) and no higher than torchdeq's at every
       iteration count.
    2. Per gradient and per iteration count in ``at``: deqkit's median step time is at most
       ``time_ratio`` of torchdeq's (both measured in the same run, interleaved).
    3. The unrolled baselines grow linearly with the iterations (``R^2 >= 0.98``).

    Lines comparing with torchdeq are ``SKIP`` when it did not run.

    Args:
        rows: From :func:`run_memory_benchmark`.
        time_ratio: Target 2's bound. Default ``0.8``.
        at: Iteration counts of target 2. Default ``(20, 80)``.
    """
    peak: dict[str, dict[int, int]] = {}
    step: dict[str, dict[int, float]] = {}
    for r in rows:
        peak.setdefault(r.method, {})[r.iterations] = r.peak_bytes
        step.setdefault(r.method, {})[r.iterations] = r.time_ms
    out = []
    for grad in ("implicit", "phantom"):
        ours, theirs = peak.get(f"deqkit {grad}", {}), peak.get(f"torchdeq {grad}", {})
        if ours:
            lo, hi = min(ours.values()), max(ours.values())
            ok = hi <= 1.10 * lo
            out.append(
                f"{'PASS' if ok else 'FAIL'}: deqkit {grad} peak flat within 10% "
                f"({lo / 2**20:.2f}-{hi / 2**20:.2f} MiB)"
            )
        if ours and theirs:
            worse = [n for n in ours if n in theirs and ours[n] > theirs[n]]
            out.append(
                f"{'PASS' if not worse else 'FAIL'}: deqkit {grad} <= torchdeq {grad} peak "
                f"at every iteration count{'' if not worse else f' (not at {worse})'}"
            )
        elif ours:
            out.append(f"SKIP: deqkit {grad} vs torchdeq {grad} peak: torchdeq did not run")
        mine, ref = step.get(f"deqkit {grad}", {}), step.get(f"torchdeq {grad}", {})
        for n in at:
            if n not in mine:
                continue
            if n not in ref:
                out.append(f"SKIP: deqkit {grad} step time at {n} iterations: torchdeq did not run")
                continue
            ratio = mine[n] / ref[n]
            out.append(
                f"{'PASS' if ratio <= time_ratio else 'FAIL'}: deqkit {grad} step time at {n} "
                f"iterations: {mine[n]:.1f} ms / torchdeq {ref[n]:.1f} ms = {ratio:.2f}, "
                f"need <= {time_ratio:g}"
            )
    for name in ("unrolled (tied)", "explicit (untied)"):
        series = peak.get(name, {})
        if len(series) >= 3:
            ns = sorted(series)
            slope, r2 = _linear_fit(ns, [series[n] for n in ns])
            ok = slope > 0 and r2 >= 0.98
            out.append(
                f"{'PASS' if ok else 'FAIL'}: {name} grows linearly with iterations "
                f"({slope / 2**10:.1f} KiB per iteration, R^2 = {r2:.4f})"
            )
    return out


def _linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and coefficient of determination of ``ys`` against ``xs``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    ss_res = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1.0
    return slope, 1.0 - ss_res / ss_tot


def plot_memory(rows: Sequence[MemoryRow], path) -> str:
    """Peak memory (MiB) against forward iterations, one line per method; PNG, atomic."""
    fig = new_figure(figsize=(10, 4))  # no pyplot: no global state, no backend switch
    axes = fig.subplots(1, 2)
    for m in dict.fromkeys(r.method for r in rows):
        mine = sorted((r for r in rows if r.method == m), key=lambda r: r.iterations)
        its = [r.iterations for r in mine]
        axes[0].plot(its, [r.peak_bytes / 2**20 for r in mine], marker="o", label=m)
        axes[1].plot(its, [r.time_ms for r in mine], marker="o", label=m)
    axes[0].set(
        xlabel="forward iterations",
        ylabel="peak memory of one step (MiB)",
        xscale="log",
        yscale="log",
    )
    axes[1].set(
        xlabel="forward iterations",
        ylabel="median time of one step (ms)",
        xscale="log",
        yscale="log",
    )
    its = sorted({r.iterations for r in rows})
    for ax in axes:
        ax.set_xticks(its, [str(n) for n in its], minor=False)
        ax.set_xticks([], minor=True)
    axes[0].legend()
    fig.tight_layout()
    return str(save_figure(fig, path))


def rows_to_json(rows: Sequence[MemoryRow], path) -> str:
    """Write rows as JSON, atomically. Returns the path."""
    return str(write_json_atomic(path, [asdict(r) for r in rows]))
