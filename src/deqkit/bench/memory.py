"""Memory benchmark: one training step of a DEQ against unrolled and explicit networks.

Peak memory is measured exactly, on any device, as the peak of live tensor storage
allocated during the step (forward and backward), tracked by a ``TorchDispatchMode``: every
storage an operator creates is counted until it is freed. On CUDA the allocator's own
``max_memory_allocated`` is reported beside it.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from .._io import new_figure, save_figure, write_json_atomic
from .._validate import integer, invalid
from ..nn import DEQ, Implicit

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


class TanhCell(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` with ``||W||_2 = gain``: the benchmark's layer."""

    def __init__(self, width: int, gain: float = 0.9, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(width, width, generator=g) / width**0.5
        self.W = nn.Parameter(W * gain / torch.linalg.matrix_norm(W, 2))
        self.U = nn.Parameter(torch.randn(width, width, generator=g) / width**0.5)
        self.b = nn.Parameter(torch.zeros(width))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)

    def initial_state(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


@dataclass(frozen=True)
class MemoryConfig:
    """Settings of :func:`run_memory_benchmark`.

    Attributes:
        iterations: Forward iteration counts to sweep. Default ``(5, 10, 20, 40, 80)``.
        width: Layer width. Default ``256``.
        batch: Batch size. Default ``64``.
        repeats: Timed repeats per cell (median reported). Default ``5``.
        include_torchdeq: Also run torchdeq's DEQ when it is installed. Default ``True``.
        device: ``"cpu"`` or ``"cuda"``. Default ``"cpu"``.
        seed: Seed of the weights and data. Default ``0``.
    """

    iterations: Sequence[int] = (5, 10, 20, 40, 80)
    width: int = 256
    batch: int = 64
    repeats: int = 5
    include_torchdeq: bool = True
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.iterations, str | bytes) or not self.iterations:
            raise invalid("iterations", self.iterations, "a non-empty sequence of integers >= 1")
        for k in self.iterations:
            integer("iterations entry", k, 1)
        for name in ("width", "batch", "repeats"):
            integer(name, getattr(self, name), 1)


@dataclass
class MemoryRow:
    """One (method, iterations) cell: peak bytes and median step time."""

    method: str
    iterations: int
    peak_bytes: int
    time_ms: float
    cuda_peak_bytes: int | None = None
    note: str = field(default="")


def _methods(cfg: MemoryConfig, n: int) -> dict[str, Callable[[Tensor], Tensor]]:
    """Training-step closures ``x -> loss`` for every compared method at ``n`` iterations."""
    cell = TanhCell(cfg.width, seed=cfg.seed).to(cfg.device)
    tiny = 1e-30  # no early stop: every method runs exactly n forward iterations
    ours = DEQ(
        cell, solver="anderson", tol=tiny, max_iter=n, backward=Implicit(tol=tiny, max_iter=n)
    )
    layers = nn.ModuleList(TanhCell(cfg.width, seed=cfg.seed + i) for i in range(n))
    layers = layers.to(cfg.device)

    def deqkit_implicit(x):
        return ours(x)[0].square().mean()

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

    out = {
        "deqkit implicit": deqkit_implicit,
        "unrolled (tied)": unrolled,
        "explicit (untied)": explicit,
    }
    if cfg.include_torchdeq:
        try:
            from torchdeq import get_deq
        except ImportError:
            return out
        theirs = get_deq(
            ift=True,
            f_solver="anderson",
            f_max_iter=n,
            f_tol=tiny,
            b_solver="anderson",
            b_max_iter=n,
            b_tol=tiny,
        )

        def torchdeq_implicit(x):
            z, _ = theirs(lambda z: cell(z, x), torch.zeros_like(x))
            return z[-1].square().mean()

        out["torchdeq implicit"] = torchdeq_implicit
    return out


def _step(loss_fn: Callable[[Tensor], Tensor], x: Tensor, params: list[Tensor]) -> None:
    loss = loss_fn(x)
    torch.autograd.grad(loss, params, allow_unused=True)


def run_memory_benchmark(cfg: MemoryConfig | None = None) -> list[MemoryRow]:
    """Peak memory and median time of one training step (forward + backward) per method.

    Methods: deqkit's DEQ (Anderson forward, implicit backward), the same weight-tied layer
    unrolled with plain autograd, an explicit network of that depth with untied weights, and
    torchdeq's DEQ with implicit gradient (when installed), each at every iteration count.

    Args:
        cfg: Settings; default :class:`MemoryConfig()`.

    Returns:
        One :class:`MemoryRow` per method and iteration count.
    """
    cfg = cfg or MemoryConfig()
    rows = []
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch, cfg.width, generator=g).to(cfg.device).requires_grad_()
    for n in cfg.iterations:
        for name, fn in _methods(cfg, int(n)).items():
            params = [x]
            _step(fn, x, params)  # warm-up
            if cfg.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            with PeakMemory() as mem:
                _step(fn, x, params)
            cuda_peak = None
            if cfg.device == "cuda":
                cuda_peak = torch.cuda.max_memory_allocated() - base
            times = []
            for _ in range(cfg.repeats):
                t0 = time.perf_counter()
                _step(fn, x, params)
                if cfg.device == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e3)
            rows.append(MemoryRow(name, int(n), mem.peak, statistics.median(times), cuda_peak))
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


def check_memory_targets(rows: Sequence[MemoryRow]) -> list[str]:
    """PASS/FAIL lines for the targets: flat implicit memory (within 10%), no higher than
    torchdeq's, unrolled baselines growing with iterations."""
    by = {}
    for r in rows:
        by.setdefault(r.method, {})[r.iterations] = r.peak_bytes
    out = []
    ours = by.get("deqkit implicit", {})
    if ours:
        lo, hi = min(ours.values()), max(ours.values())
        ok = hi <= 1.10 * lo
        out.append(
            f"{'PASS' if ok else 'FAIL'}: deqkit implicit peak flat within 10% "
            f"({lo / 2**20:.2f}-{hi / 2**20:.2f} MiB)"
        )
    theirs = by.get("torchdeq implicit", {})
    if ours and theirs:
        worse = [n for n in ours if n in theirs and ours[n] > theirs[n]]
        out.append(
            f"{'PASS' if not worse else 'FAIL'}: deqkit implicit <= torchdeq implicit "
            f"at every iteration count{'' if not worse else f' (not at {worse})'}"
        )
    for name in ("unrolled (tied)", "explicit (untied)"):
        series = by.get(name, {})
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
