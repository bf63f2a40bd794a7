"""Small shared helpers: atomic file writes, a command-line parser that errs in one line."""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write through ``write(fh)`` to a temporary file in ``path``'s folder, fsync, rename.

    A reader never sees a half-written file, and a crash or Ctrl-C mid-write leaves the
    previous file intact (``os.replace`` is atomic within one file system). The file gets
    the usual permissions (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.
    The folder is created if missing. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """:func:`atomic_write` of ``data``; returns the path as a string."""
    return str(atomic_write(path, lambda fh: fh.write(data)))


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """:func:`atomic_write` of UTF-8 ``text``; returns the path as a string."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path: str | os.PathLike, **kwargs) -> str:
    """Save a matplotlib figure as PNG atomically and close it. Returns the path."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=kwargs.pop("dpi", 120), **kwargs)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
