"""Small shared helpers: a command-line parser that errs in one line, and file writers.

The writers are thin wrappers kept for scripts that import them from here; the
implementation (temporary file, flush, ``fsync``, rename, ``fsync`` of the folder) is
:mod:`deqkit._io`, which deqkit itself uses.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from . import _io

__all__ = [
    "OneLineArgumentParser",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_figure",
]


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports a bad command line in one line (``deqkit: error: ...``)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"deqkit: error: {message} (see {self.prog} --help)\n")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write through ``write(fh)`` to ``path`` atomically (:func:`deqkit._io.write_atomic`).

    A reader never sees a half-written file, and a crash or Ctrl-C mid-write leaves the
    previous file intact. The folder is created if missing. Returns the path.
    """
    return _io.write_atomic(path, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """:func:`atomic_write` of ``data``; returns the path as a string."""
    return str(_io.write_bytes_atomic(path, data))


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """:func:`atomic_write` of UTF-8 ``text``; returns the path as a string."""
    return str(_io.write_text_atomic(path, text))


def save_figure(fig, path: str | os.PathLike, **kwargs) -> str:
    """Save a matplotlib figure as PNG atomically and close it. Returns the path.

    A figure made by pyplot (``plt.subplots()``) is closed in pyplot afterwards, as this
    function always did; a :class:`matplotlib.figure.Figure` made directly (the way deqkit
    draws, :func:`deqkit._io.new_figure`) has nothing to close, and pyplot is not imported.
    """
    out = _io.save_figure(fig, path, **kwargs)
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:  # only a figure pyplot manages can be open there
        plt.close(fig)
    return str(out)
