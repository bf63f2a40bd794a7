"""Files deqkit writes: atomically and durably, and figures without pyplot's global state.

Every writer goes through :func:`write_atomic`: the bytes go to a temporary file in the
target's own folder (``.<name>.<random>.tmp``), which is flushed and ``fsync``-ed, then
renamed over the target with :func:`os.replace` (atomic within one file system), and the
folder is ``fsync``-ed so that the rename itself survives a power cut (where the platform
allows opening a folder; elsewhere that step is skipped). A reader therefore sees the old
file or the new one, never half of one, and a crash, an exception or Ctrl-C part-way leaves
the old file intact and no temporary file behind. Files get the usual permissions
(``0o666`` less the umask), not ``mkstemp``'s private ``0o600``. Missing parent folders
are created.

Figures: :func:`new_figure` makes a :class:`matplotlib.figure.Figure` directly (no
``pyplot``: no figure manager, no global list of figures, no GUI backend, nothing to close),
and :func:`save_figure` renders one to PNG through the same atomic write. matplotlib is
imported only when a figure is made or saved.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "new_figure",
    "save_figure",
    "save_torch_atomic",
    "write_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """``fsync`` a folder so that a rename in it is durable; skipped where unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:  # Windows cannot open a folder; some file systems refuse
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write through ``write(fh)`` (a binary file) to ``path`` atomically; returns the path.

    See the module docstring: temporary file in the same folder, flush, ``fsync``,
    :func:`os.replace`, ``fsync`` of the folder. If ``write`` or any later step raises,
    the temporary file is removed, ``path`` keeps its old content, and the error propagates.
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
    _fsync_folder(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`write_atomic` of ``data``."""
    return write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_atomic` of ``text`` encoded as UTF-8 (newlines written as given)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, **kw) -> Path:
    """:func:`write_text_atomic` of ``json.dumps(obj, indent=indent, **kw)`` plus a newline.

    The object is serialised before the file is touched: one that ``json`` cannot encode
    raises with ``path`` unchanged.
    """
    return write_text_atomic(path, json.dumps(obj, indent=indent, **kw) + "\n")


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` by :func:`write_atomic`."""
    import torch

    return write_atomic(path, lambda fh: torch.save(obj, fh))


def new_figure(*, figsize: tuple[float, float] = (6.4, 4.8), **kwargs: Any):
    """A :class:`matplotlib.figure.Figure` made without pyplot (``kwargs`` go to it).

    Draw with ``fig.subplots()`` / ``fig.add_subplot()``; nothing needs closing, the figure
    is freed like any object.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, **kwargs)


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: float = 120, **kwargs: Any) -> Path:
    """Render ``fig`` to PNG at ``path`` by :func:`write_atomic`; returns the path.

    ``fig`` is a :class:`matplotlib.figure.Figure`, best one from :func:`new_figure`;
    ``kwargs`` go to ``fig.savefig``. Touches no pyplot state: a figure made by pyplot
    stays open there (close it with ``plt.close(fig)``, or use :func:`new_figure`).
    """
    return write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, **kwargs))
