"""One entry point that loads any classification data set by name."""

from __future__ import annotations

from pathlib import Path

from .._validate import invalid
from ._common import ClassificationData
from ._digits import load_digits_dataset, load_mnist1d, load_mnist_subset
from ._files import load_cifar10, load_idx_dataset

BUILTIN = ("digits", "mnist_subset", "mnist1d")
LOCAL = ("mnist", "fashion_mnist", "cifar10")


def load_dataset(
    name: str, *, root: str | Path | None = None, seed: int | None = None
) -> ClassificationData:
    """Load a classification data set by name, with each loader's defaults.

    ``"digits"``, ``"mnist_subset"`` and ``"mnist1d"`` come from installed packages
    (:func:`load_digits_dataset`, :func:`load_mnist_subset`, :func:`load_mnist1d`);
    ``"mnist"``, ``"fashion_mnist"`` and ``"cifar10"`` are read from files under ``root``
    (:func:`load_idx_dataset`, :func:`load_cifar10`) and keep their standard split.

    Args:
        name: One of ``"digits"``, ``"mnist_subset"``, ``"mnist1d"``, ``"mnist"``,
            ``"fashion_mnist"``, ``"cifar10"``.
        root: Folder with the files; required for the last three, rejected for the others.
            Default ``None``.
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
    if name in BUILTIN:
        if root is not None:
            raise ValueError(f"Invalid root: {root!r} ({name!r} is built in and reads no files)")
        loader = {
            "digits": load_digits_dataset,
            "mnist_subset": load_mnist_subset,
            "mnist1d": load_mnist1d,
        }[name]
        return loader() if seed is None else loader(seed=seed)
    if name in LOCAL:
        if root is None:
            raise ValueError(f"Invalid root: None ({name!r} is read from local files)")
        if seed is not None:
            raise ValueError(f"Invalid seed: {seed!r} ({name!r} has a fixed standard split)")
        if name == "cifar10":
            return load_cifar10(root)
        return load_idx_dataset(root, name=name)
    raise invalid("dataset name", name, f"one of {', '.join(map(repr, (*BUILTIN, *LOCAL)))}")
