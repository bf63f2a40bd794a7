"""Timing helpers shared by the benchmarks: device synchronisation, clocks, bursts of ``f``."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["CLOCKS", "calls_per_burst", "clock", "sync", "time_f"]

CLOCKS = ("wall", "cpu")
"""``"wall"``: elapsed time (``time.perf_counter``), what a user waits for. ``"cpu"``: CPU
time of this process (``time.process_time``), which leaves out the time other processes
had the core: steadier on a shared machine, and only meaningful on the CPU."""


def clock(kind: str) -> Callable[[], float]:
    """The clock named ``kind`` (one of :data:`CLOCKS`), in seconds."""
    return time.perf_counter if kind == "wall" else time.process_time


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_burst(
    f: Callable[[Tensor], Tensor], z: Tensor, device: torch.device, seconds: float = 0.02
) -> int:
    """How many calls of ``f(z)`` take about ``seconds`` (after a warm-up), 1 to 1000."""
    with torch.no_grad():
        for _ in range(3):
            f(z)
        sync(device)
        t0 = time.perf_counter()
        f(z)
        sync(device)
    return max(1, min(1000, int(seconds / max(time.perf_counter() - t0, 1e-7))))


def time_f(
    f: Callable[[Tensor], Tensor],
    z: Tensor,
    device: torch.device,
    calls: int,
    now: Callable[[], float] = time.perf_counter,
) -> float:
    """Mean seconds per call of ``f(z)`` over a burst of ``calls`` calls, timed by ``now``."""
    with torch.no_grad():
        sync(device)
        t0 = now()
        for _ in range(calls):
            f(z)
        sync(device)
    return (now() - t0) / calls
