"""Shared pieces of the tasks: argument checks, random generators, the data container."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .._validate import integer

INSTALL_HINT = "pip install 'deqkit[data]'"


def make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """The generator a task draws from; never torch's global one.

    ``seed`` gives a fresh CPU generator seeded with it, ``generator`` is used as is (and
    advanced), neither gives a CPU generator seeded from OS entropy.
    """
    if seed is not None and generator is not None:
        raise ValueError("Pass either seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Invalid generator: {generator!r} (expected a torch.Generator)")
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(integer("seed", seed, 0))
    return g


def require(module: str, package: str, caller: str) -> ModuleType:
    """Import an optional dependency, or raise an ImportError that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{caller} needs the optional package {package!r}, which could not be imported "
            f"({err}): run `pip install {package}` (or `{INSTALL_HINT}` for all data extras)"
        ) from err


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train and test indices with each class split in proportion.

    The test set has ``ceil(test_fraction * n)`` samples, as in scikit-learn's
    ``train_test_split``; each class gives ``floor(test_fraction * n_c)`` of them and the rest
    go, one each, to the classes with the largest fractional parts (largest remainder).
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # Rounded to 9 places first so that float noise (0.7 * 10 = 7.000000000000001) cannot
    # move a count by one.
    quota = np.round(test_fraction * counts, 9)
    n_test_c = np.floor(quota).astype(np.int64)
    remainder = math.ceil(round(test_fraction * len(labels), 9)) - int(n_test_c.sum())
    n_test_c[np.argsort(-(quota - n_test_c), kind="stable")[:remainder]] += 1
    train, test = [], []
    for c, n_c in zip(classes, n_test_c, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:n_c])
        train.append(idx[n_c:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


@dataclass(frozen=True, eq=False)
class ClassificationData:
    """A classification data set, split into train and test tensors.

    Every loader in :mod:`deqkit.tasks` returns one. Unpack it with
    ``x_train, y_train, x_test, y_test = data.tensors()``.

    Attributes:
        name: Data set name, e.g. ``"digits"`` or ``"mnist1d"``.
        x_train: Float32 inputs ``[n_train, C, *spatial]`` (channels first).
        y_train: Int64 class labels ``[n_train]`` in ``0 .. num_classes - 1``.
        x_test: Float32 inputs ``[n_test, C, *spatial]``.
        y_test: Int64 class labels ``[n_test]``.
        num_classes: Number of classes.
    """

    name: str
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    num_classes: int

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return ``(x_train, y_train, x_test, y_test)``."""
        return self.x_train, self.y_train, self.x_test, self.y_test

    def __repr__(self) -> str:
        return (
            f"ClassificationData(name={self.name!r}, x_train={list(self.x_train.shape)}, "
            f"x_test={list(self.x_test.shape)}, num_classes={self.num_classes})"
        )


def to_data(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    scale: float,
    num_classes: int = 10,
) -> ClassificationData:
    """Copy numpy arrays into float32 / int64 tensors, inputs divided by ``scale``."""

    def x(a: np.ndarray) -> Tensor:
        # torch.tensor always copies, so cached source arrays are never aliased.
        return torch.tensor(a, dtype=torch.float32).div_(scale)

    def y(a: np.ndarray) -> Tensor:
        return torch.tensor(np.asarray(a), dtype=torch.int64)

    return ClassificationData(name, x(x_train), y(y_train), x(x_test), y(y_test), num_classes)
