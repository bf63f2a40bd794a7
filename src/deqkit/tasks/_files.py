"""Loaders for standard data sets from files the user already has (nothing is downloaded)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from .._validate import choice
from ._common import ClassificationData, to_data

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# name -> (folder torchvision keeps the raw files in, where to get them)
_IDX_SETS = {
    "mnist": ("MNIST", "https://yann.lecun.com/exdb/mnist/ (or torchvision.datasets.MNIST)"),
    "fashion_mnist": (
        "FashionMNIST",
        "https://github.com/zalandoresearch/fashion-mnist (or torchvision.datasets.FashionMNIST)",
    ),
}
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), plain or gzip-compressed.

    Compression is detected from the file's first bytes, not its name.

    Args:
        path: The file, e.g. ``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``.

    Returns:
        The array, with the file's shape (``[n, 28, 28]`` for MNIST images, ``[n]`` for
        labels) and dtype (``uint8`` for MNIST) in native byte order.

    Raises:
        FileNotFoundError: If ``path`` does not exist (the message gives the full path).
        ValueError: If the file is not a valid IDX file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path.resolve()}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"Not an IDX file (bad magic number {raw[:4].hex()}): {path}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"Truncated IDX header in {path}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"IDX file {path} holds {len(raw) - header} data bytes, "
            f"but its header {shape} needs {count * dtype.itemsize}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str, subfolder: str) -> Path:
    folders = (root, root / subfolder / "raw")
    candidates = [folder / (stem + ext) for folder in folders for ext in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = "\n  ".join(str(c.resolve()) for c in candidates)
    raise FileNotFoundError(f"{stem} not found; looked for:\n  {tried}")


def load_idx_dataset(root: str | Path, *, name: str = "mnist") -> ClassificationData:
    """MNIST or Fashion-MNIST from the four standard IDX files in a local folder.

    Looks in ``root`` and in torchvision's layout ``root/MNIST/raw`` (``root/FashionMNIST/raw``)
    for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each plain or with ``.gz``. The standard split is kept
    (60,000 / 10,000 for the real files).

    Args:
        root: Folder holding the files.
        name: ``"mnist"`` or ``"fashion_mnist"``; the formats are the same, the name picks
            the torchvision subfolder and the data set's name. Default ``"mnist"``.

    Returns:
        :class:`ClassificationData` named ``name``: ``x`` float32 ``[n, 1, H, W]`` in
        ``[0, 1]`` (pixels divided by 255; 28 x 28 for the real files), ``y`` int64 ``[n]``.

    Raises:
        ValueError: If ``name`` is unknown or the files are malformed or inconsistent.
        FileNotFoundError: If a file is missing; the message lists every path tried.
    """
    choice("name", name, sorted(_IDX_SETS))
    subfolder, source = _IDX_SETS[name]
    root = Path(root)
    try:
        paths = [_find_idx(root, stem, subfolder) for stem in _IDX_FILES]
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{name}: {err}\nThe files are available from {source}") from err
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
            raise ValueError(
                f"{name} {split} files are inconsistent: images {x.shape} {x.dtype}, "
                f"labels {y.shape} (expected uint8 [n, H, W] and [n])"
            )
    return to_data(name, x_train[:, None], y_train, x_test[:, None], y_test, 255.0)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no 'data' and 'labels' entries)")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{path} has data {data.shape} and {len(labels)} labels (expected [n, 3072], n)"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str | Path) -> ClassificationData:
    """CIFAR-10 from the python version's pickled batches in a local folder.

    Expects ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``, either in ``root`` or in
    ``root/cifar-10-batches-py`` (what ``cifar-10-python.tar.gz`` extracts to). The files are
    pickles: load only files you trust.

    Args:
        root: The ``cifar-10-batches-py`` folder or its parent.

    Returns:
        :class:`ClassificationData` named ``"cifar10"``: ``x`` float32 ``[n, 3, 32, 32]``
        (channels red, green, blue) in ``[0, 1]``, ``y`` int64 ``[n]`` in ``0..9``; 50,000
        train / 10,000 test for the real files.

    Raises:
        FileNotFoundError: If a batch is missing; the message gives the paths tried.
        ValueError: If a batch is malformed.
    """
    root = Path(root)
    folder = root if (root / _CIFAR_TEST).is_file() else root / _CIFAR_FOLDER
    for stem in (*_CIFAR_TRAIN, _CIFAR_TEST):
        if not (folder / stem).is_file():
            raise FileNotFoundError(
                f"cifar10: {stem} not found; expected {(folder / stem).resolve()} "
                f"(or {(root / stem).resolve()}). Download and extract cifar-10-python.tar.gz "
                "from https://www.cs.toronto.edu/~kriz/cifar.html"
            )
    train = [_read_cifar_batch(folder / stem) for stem in _CIFAR_TRAIN]
    x_test, y_test = _read_cifar_batch(folder / _CIFAR_TEST)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return to_data("cifar10", x_train, y_train, x_test, y_test, 255.0)
