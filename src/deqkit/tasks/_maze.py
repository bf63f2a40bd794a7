"""Perfect mazes by randomised depth-first search, with the start-goal path as target."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor

from .._validate import integer
from ._common import make_generator
from ._metrics import exact_match

OPEN, START, GOAL = 0, 1, 2


def _carve(k: int, u: list[float]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Randomised DFS (recursive backtracker) on a k x k grid; cell ``c`` is ``(c // k, c % k)``.

    ``u[0]`` picks the root, ``u[3:]`` the neighbour at each of the ``k*k - 1`` carving steps.
    An explicit stack instead of recursion, so k = 59 (3481 cells) is no problem.
    """
    cells = k * k
    visited = bytearray(cells)
    adj: list[list[int]] = [[] for _ in range(cells)]
    edges: list[tuple[int, int]] = []
    root = int(u[0] * cells)
    visited[root] = 1
    stack = [root]
    j = 3
    while stack:
        c = stack[-1]
        r, q = divmod(c, k)
        nbrs = []
        if r > 0 and not visited[c - k]:
            nbrs.append(c - k)
        if r < k - 1 and not visited[c + k]:
            nbrs.append(c + k)
        if q > 0 and not visited[c - 1]:
            nbrs.append(c - 1)
        if q < k - 1 and not visited[c + 1]:
            nbrs.append(c + 1)
        if not nbrs:
            stack.pop()
            continue
        nb = nbrs[int(u[j] * len(nbrs))]
        j += 1
        visited[nb] = 1
        adj[c].append(nb)
        adj[nb].append(c)
        edges.append((c, nb))
        stack.append(nb)
    return adj, edges


def _tree_path(adj: list[list[int]], start: int, goal: int) -> list[int]:
    """The unique path from ``start`` to ``goal`` in a tree, both ends included."""
    parent = [-1] * len(adj)
    parent[start] = start
    stack = [start]
    while stack:
        c = stack.pop()
        if c == goal:
            break
        for nb in adj[c]:
            if parent[nb] < 0:
                parent[nb] = c
                stack.append(nb)
    path = [goal]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return path[::-1]


def _pixels(k: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows and columns of the passage between cells ``a[i]`` and ``b[i]``."""
    return a // k + b // k + 1, a % k + b % k + 1


def mazes(
    n: int,
    k: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Random perfect mazes and the path from start to goal.

    Each maze is a spanning tree of the ``k x k`` cell grid carved by randomised depth-first
    search from a random root (the "recursive backtracker", as in Schwarzschild et al. 2021),
    so there is exactly one path between any two cells. Start and goal are distinct cells drawn
    uniformly at random. The image has ``(2k + 1) x (2k + 1)`` pixels: cell ``(r, c)`` is pixel
    ``(2r + 1, 2c + 1)``, the pixels between two cells are the wall or passage between them,
    and the border is wall; so 9 x 9 cells give a 19 x 19 image.

    Args:
        n: Number of mazes, >= 1.
        k: Cells per side (the difficulty knob), >= 2; e.g. 9 to train, 13 or 59 to test.
        seed: Seed for a fresh generator; the same seed gives the same mazes on every machine,
            and the first ``m`` of ``n`` mazes do not depend on ``n``. Default ``None``.
        generator: A ``torch.Generator`` to draw from (and advance). Default ``None``. Passing
            neither ``seed`` nor ``generator`` draws from OS entropy.
        device: Device of the returned tensors. Default ``None``: CPU.

    Returns:
        ``(x, y)``: ``x`` float32 ``[n, 3, 2k+1, 2k+1]`` with channel 0 = open (1 on cells and
        passages, 0 on walls), channel 1 = start (a single 1 at the start cell), channel 2 =
        goal (a single 1 at the goal cell); ``y`` int64 ``[n, 2k+1, 2k+1]``, 1 on the pixels
        of the start-goal path (its cells, start and goal included, and the passages between
        them), 0 elsewhere. Models should output logits ``[n, 2, 2k+1, 2k+1]`` (class 1 = on
        the path), scored by :func:`maze_exact_match`.

    Raises:
        ValueError: If ``n`` is not an integer >= 1, ``k`` not one >= 2 or ``seed`` not one
            >= 0, or both ``seed`` and ``generator`` are given.
        TypeError: If ``generator`` is not a ``torch.Generator``.
    """
    n = integer("n", n, 1)
    k = integer("k", k, 2)
    g = make_generator(seed, generator)
    cells = k * k
    size = 2 * k + 1
    # Per maze: root, start, goal, then one draw per carving step.
    uniforms = torch.rand(n, cells + 2, generator=g, device=g.device, dtype=torch.float64)
    x = np.zeros((n, 3, size, size), dtype=np.float32)
    y = np.zeros((n, size, size), dtype=np.int64)
    x[:, OPEN, 1::2, 1::2] = 1.0
    for i, u in enumerate(uniforms.cpu().tolist()):
        adj, edges = _carve(k, u)
        start = int(u[1] * cells)
        goal = int(u[2] * (cells - 1))
        if goal >= start:
            goal += 1
        e = np.asarray(edges)
        x[i, OPEN][_pixels(k, e[:, 0], e[:, 1])] = 1.0
        x[i, START, 2 * (start // k) + 1, 2 * (start % k) + 1] = 1.0
        x[i, GOAL, 2 * (goal // k) + 1, 2 * (goal % k) + 1] = 1.0
        path = np.asarray(_tree_path(adj, start, goal))
        y[i, 2 * (path // k) + 1, 2 * (path % k) + 1] = 1
        y[i][_pixels(k, path[:-1], path[1:])] = 1
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


def maze_exact_match(pred: Tensor, target: Tensor) -> Tensor:
    """Whether each maze's whole path mask is right, every pixel counted (walls included).

    Args:
        pred: Two-class logits ``[n, 2, H, W]`` (class 1 = on the path) or integer/bool masks
            ``[n, H, W]``.
        target: Integer or bool path masks ``[n, H, W]``, as returned by :func:`mazes`.

    Returns:
        Bool tensor ``[n]``.

    Raises:
        ValueError: If ``target`` is not ``[n, H, W]`` or ``pred`` does not match it.
        TypeError: As in :func:`exact_match`.
    """
    if target.ndim != 3:
        raise ValueError(f"Invalid target shape: {tuple(target.shape)} (expected [n, H, W])")
    return exact_match(pred, target)


def _as_array(a: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"Invalid {name}: values other than 0 and 1")
    return a.astype(np.int64)


def check_maze(image: Tensor | np.ndarray, path: Tensor | np.ndarray) -> None:
    """Check one maze and its path; raise ``ValueError`` saying what is wrong, if anything.

    Checks that the image is a perfect maze on the pixel layout of :func:`mazes` (walls on
    the border and at even-even pixels, every cell open, exactly ``k*k - 1`` passages and all
    cells connected, hence a spanning tree with a unique path between any two cells), that
    start and goal are single distinct cells, and that ``path`` is exactly the pixels of the
    shortest start-goal path, found by breadth-first search over open pixels.

    Args:
        image: One maze ``[3, H, W]`` (channels open, start, goal), values 0/1.
        path: Its path mask ``[H, W]``, values 0/1.

    Raises:
        ValueError: On the first violation found, with a message naming it.
    """
    img = _as_array(image, "image")
    mask = _as_array(path, "path")
    if img.ndim != 3 or img.shape[0] != 3 or img.shape[1] != img.shape[2]:
        raise ValueError(f"Invalid image shape: {img.shape} (expected [3, H, H])")
    size = img.shape[1]
    if size % 2 == 0 or size < 5:
        raise ValueError(f"Invalid image size: {size} (expected 2k + 1 with k >= 2)")
    if mask.shape != (size, size):
        raise ValueError(f"Invalid path shape: {mask.shape} (expected {(size, size)})")
    k = (size - 1) // 2
    open_ = img[OPEN]
    border = np.concatenate([open_[0], open_[-1], open_[:, 0], open_[:, -1]])
    if border.any() or open_[::2, ::2].any():
        raise ValueError("Wall pixels (border or even-even) are open")
    if not open_[1::2, 1::2].all():
        raise ValueError("Some cells are closed")
    right = open_[1::2, 2:-1:2].astype(bool)  # [k, k-1]: passage from (r, c) to (r, c+1)
    down = open_[2:-1:2, 1::2].astype(bool)  # [k-1, k]: passage from (r, c) to (r+1, c)
    passages = int(right.sum() + down.sum())
    if passages != k * k - 1:
        raise ValueError(f"Not a tree: {passages} passages for {k * k} cells (need {k * k - 1})")
    seen = np.zeros((k, k), dtype=bool)
    seen[0, 0] = True
    queue = deque([(0, 0)])
    while queue:
        r, c = queue.popleft()
        for rr, cc, ok in (
            (r, c + 1, c < k - 1 and right[r, c]),
            (r, c - 1, c > 0 and right[r, c - 1]),
            (r + 1, c, r < k - 1 and down[r, c]),
            (r - 1, c, r > 0 and down[r - 1, c]),
        ):
            if ok and not seen[rr, cc]:
                seen[rr, cc] = True
                queue.append((rr, cc))
    if not seen.all():
        raise ValueError(f"Not connected: {int((~seen).sum())} cells unreachable")
    ends = []
    for channel, name in ((START, "start"), (GOAL, "goal")):
        where = np.argwhere(img[channel])
        if len(where) != 1:
            raise ValueError(f"Expected one {name} pixel, found {len(where)}")
        r, c = where[0]
        if r % 2 == 0 or c % 2 == 0:
            raise ValueError(f"The {name} pixel {(int(r), int(c))} is not a cell")
        ends.append((int(r), int(c)))
    if ends[0] == ends[1]:
        raise ValueError(f"Start and goal are the same cell {ends[0]}")
    expected = _bfs_path(open_.astype(bool), ends[0], ends[1])
    if not np.array_equal(mask, expected):
        raise ValueError(
            f"Path mask differs from the shortest start-goal path at "
            f"{int((mask != expected).sum())} pixels"
        )


def _bfs_path(open_: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> np.ndarray:
    """Mask of a shortest 4-connected path over open pixels (all-zero if none)."""
    parent: dict[tuple[int, int], tuple[int, int]] = {start: start}
    queue = deque([start])
    while queue and goal not in parent:
        r, c = queue.popleft()
        for p in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if open_[p] and p not in parent:
                parent[p] = (r, c)
                queue.append(p)
    mask = np.zeros(open_.shape, dtype=np.int64)
    if goal in parent:
        p = goal
        mask[p] = 1
        while p != start:
            p = parent[p]
            mask[p] = 1
    return mask
