"""Ctrl-C and SIGTERM during a run: finish the step, save, stop."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["is_tty", "stop_requests"]


def is_tty() -> bool:
    """Whether stderr is a terminal (where a progress bar is shown)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def stop_requests(announce: bool) -> Iterator[dict[str, bool]]:
    """A flag ``{"stop": bool}`` set by SIGINT / SIGTERM while the block runs; a second
    SIGINT raises ``KeyboardInterrupt`` at once. The old handlers are restored on exit.

    Signals reach only the main thread: elsewhere the flag is never set (Ctrl-C then
    interrupts as Python does). ``announce`` prints what will happen on stderr.
    """
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True
        if announce:
            print(
                f"\n{signal.Signals(signum).name}: finishing this step, then saving a "
                "checkpoint (Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)
