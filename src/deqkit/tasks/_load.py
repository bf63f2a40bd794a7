"""One entry point that loads any classification data set by name."""

from __future__ import annotations

from pathlib import Path

from .._validate import invalid
from ._common import ClassificationData
from ._registry import _TASKS, available_tasks


def load_dataset(
    name: str, *, root: str | Path | None = None, seed: int | None = None
) -> ClassificationData:
    """Load a classification data set by name, with each loader's defaults.

    The data sets are the registered tasks with a loader (:func:`available_tasks` with
    ``procedural=False``): built in, ``"digits"``, ``"mnist_subset"`` and ``"mnist1d"`` come
    from installed packages (:func:`load_digits_dataset`, :func:`load_mnist_subset`,
    :func:`load_mnist1d`); ``"mnist"``, ``"fashion_mnist"`` and ``"cifar10"`` are read from
    files under ``root`` (:func:`load_idx_dataset`, :func:`load_cifar10`) and keep their
    standard split.

    Args:
        name: A data set's name, e.g. ``"digits"`` or ``"cifar10"``.
        root: Folder with the files; required for a data set read from files
            (:attr:`Task.reads_files`), rejected for the others. Default ``None``.
        seed: Seed of the split (digits, mnist_subset) or of the generator (mnist1d); the
            loader's own default if ``None``; rejected for the file data sets, whose split is
            fixed. Default ``None``.

    Returns:
        :class:`ClassificationData`, as the named loader returns it.

    Raises:
        ValueError: If ``name`` is unknown, or ``root`` or ``seed`` does not apply to it.
        ImportError: If the loader's optional package is missing.
        FileNotFoundError: If a file data set is not under ``root``.
    """
    task = _TASKS.get(name) if isinstance(name, str) else None
    if task is None or task.load is None:
        names = available_tasks(procedural=False)
        raise invalid("dataset name", name, f"one of {', '.join(map(repr, names))}")
    if not task.reads_files:
        if root is not None:
            raise ValueError(f"Invalid root: {root!r} ({name!r} is built in and reads no files)")
        return task.load() if seed is None else task.load(seed=seed)
    if root is None:
        raise ValueError(f"Invalid root: None ({name!r} is read from local files)")
    if seed is not None:
        raise ValueError(f"Invalid seed: {seed!r} ({name!r} has a fixed standard split)")
    return task.load(root)
