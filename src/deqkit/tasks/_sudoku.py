"""Sudoku puzzles with a unique solution, generated offline, graded by blanks and by search.

The generator fills a grid by randomised depth-first search, then blanks cells in random
order, keeping a blank only when the puzzle stays uniquely solvable, until the level's number
of blanks is reached (a grid whose greedy removal stops short is redrawn). The reference
solver is a depth-first search that fills the blank with the fewest candidates first (so
forced cells are filled without branching); its branching count is the search grade.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._validate import choice, integer
from ._common import make_generator

SUDOKU_LEVELS: tuple[int, ...] = (20, 30, 40, 45, 50, 54, 58)
"""The valid ``difficulty`` values of :func:`sudoku`: blank cells per 81-cell board, easiest
(fewest blanks) first. 58 (23 givens) is about the most that greedy removal reaches: of 300
random grids, 24% stopped at 58 or more blanks, none below 53 (a grid that stops short is
redrawn). More blanks also means more branching for the reference search
(:func:`sudoku_search`: median 0 up to 45 blanks, about 14 at 54 and 72 at 58)."""

_ALL = 0x1FF  # digits 1..9 as bits 0..8
_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
_BITS = [[d + 1 for d in range(9) if m >> d & 1] for m in range(512)]
_MAX_REDRAWS = 200


class _Board:
    """A board with row/column/box digit masks, for the search."""

    __slots__ = ("cells", "rows", "cols", "boxes")

    def __init__(self, cells: list[int]):
        self.cells = list(cells)
        self.rows = [0] * 9
        self.cols = [0] * 9
        self.boxes = [0] * 9
        for i, v in enumerate(self.cells):
            if v:
                bit = 1 << (v - 1)
                if (self.rows[_ROW[i]] | self.cols[_COL[i]] | self.boxes[_BOX[i]]) & bit:
                    raise ValueError(f"Invalid puzzle: digit {v} repeats at cell {i}")
                self.set(i, v)

    def set(self, i: int, v: int) -> None:
        bit = 1 << (v - 1)
        self.cells[i] = v
        self.rows[_ROW[i]] |= bit
        self.cols[_COL[i]] |= bit
        self.boxes[_BOX[i]] |= bit

    def clear(self, i: int) -> None:
        bit = ~(1 << (self.cells[i] - 1))
        self.cells[i] = 0
        self.rows[_ROW[i]] &= bit
        self.cols[_COL[i]] &= bit
        self.boxes[_BOX[i]] &= bit

    def free(self, i: int) -> int:
        return _ALL & ~(self.rows[_ROW[i]] | self.cols[_COL[i]] | self.boxes[_BOX[i]])


def _search(
    board: _Board,
    limit: int,
    order: np.random.Generator | None = None,
    stats: list[int] | None = None,
) -> list[list[int]]:
    """Up to ``limit`` solutions of ``board`` (restored on return), fewest-candidates first.

    ``order`` shuffles the digits tried at each cell (to fill a random grid); ``stats[0]``
    counts the branchings (cells tried with two or more candidates).
    """
    found: list[list[int]] = []
    blanks = [i for i, v in enumerate(board.cells) if not v]

    def step(todo: list[int]) -> None:
        if not todo:
            found.append(list(board.cells))
            return
        best, best_mask, best_n = -1, 0, 10
        for j, i in enumerate(todo):
            mask = board.free(i)
            n = len(_BITS[mask])
            if n < best_n:
                best, best_mask, best_n = j, mask, n
                if n <= 1:
                    break
        if best_n == 0:
            return
        i = todo[best]
        rest = todo[:best] + todo[best + 1 :]
        digits = _BITS[best_mask]
        if order is not None and best_n > 1:
            digits = [digits[k] for k in order.permutation(best_n)]
        if stats is not None and best_n > 1:
            stats[0] += 1
        for v in digits:
            board.set(i, v)
            step(rest)
            board.clear(i)
            if len(found) >= limit:
                return

    step(blanks)
    return found


def _has_other_solution(board: _Board, cell: int, digit: int) -> bool:
    """Whether ``board`` (with ``cell`` blank) has a solution with ``cell`` != ``digit``."""
    for v in _BITS[board.free(cell)]:
        if v == digit:
            continue
        board.set(cell, v)
        other = _search(board, 1)
        board.clear(cell)
        if other:
            return True
    return False


def _one(blanks: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """One puzzle with exactly ``blanks`` blanks and a unique solution, and that solution."""
    for _ in range(_MAX_REDRAWS):
        empty = _Board([0] * 81)
        (solution,) = _search(empty, 1, order=rng)
        board = _Board(solution)
        removed = 0
        for cell in rng.permutation(81).tolist():
            digit = board.cells[cell]
            board.clear(cell)
            if _has_other_solution(board, cell, digit):
                board.set(cell, digit)
                continue
            removed += 1
            if removed == blanks:
                return board.cells, solution
    raise RuntimeError(
        f"sudoku: no puzzle with {blanks} blanks after {_MAX_REDRAWS} grids (use a lower level)"
    )


def sudoku(n: int, difficulty: int, *, seed: int | None = None) -> tuple[Tensor, Tensor]:
    """Random Sudoku puzzles with exactly one solution, and their solutions.

    Each puzzle is drawn independently: a full grid filled by randomised depth-first search,
    then cells blanked in a random order, a blank kept only if the puzzle still has exactly
    one solution (checked by the reference solver, :func:`sudoku_search`), until
    ``difficulty`` cells are blank; a grid whose greedy removal stops short of that is
    redrawn. Puzzle ``i`` depends on ``(seed, difficulty, i)`` only, so the first ``m`` of
    ``n`` puzzles do not depend on ``n``, and every machine draws the same ones.

    Args:
        n: Number of puzzles, >= 1.
        difficulty: Blank cells per puzzle, one of :data:`SUDOKU_LEVELS` (20 to 58; more
            blanks is harder: fewer givens, and more branching for a search).
        seed: Seed, >= 0; ``None`` (default) draws from OS entropy.

    Returns:
        ``(puzzles, solutions)``: int64 ``[n, 9, 9]`` tensors, digits 1-9, ``0`` for a blank
        in ``puzzles``; each solution agrees with its puzzle's givens and is a valid board
        (:func:`sudoku_valid`).

    Raises:
        ValueError: ``n`` not an integer >= 1, ``difficulty`` not a level, ``seed`` not an
            integer >= 0.
    """
    n = integer("n", n, 1)
    difficulty = choice("difficulty", integer("difficulty", difficulty, 1), SUDOKU_LEVELS)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**63)
    seed = integer("seed", seed, 0)
    puzzles = np.zeros((n, 81), dtype=np.int64)
    solutions = np.zeros((n, 81), dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, difficulty, i])
        puzzles[i], solutions[i] = _one(difficulty, rng)
    return (
        torch.from_numpy(puzzles).view(n, 9, 9),
        torch.from_numpy(solutions).view(n, 9, 9),
    )


def sudoku_task(n: int, difficulty: int, *, seed: int | None = None) -> tuple[Tensor, Tensor]:
    """:func:`sudoku` as a model's input and target, the ``generate`` of the ``sudoku`` task.

    Returns:
        ``(x, y)``: ``x`` float32 ``[n, 10, 9, 9]``, one-hot per cell (channel 0 = blank,
        channel ``d`` = given digit ``d``); ``y`` int64 ``[n, 9, 9]``, the solution's digit
        minus one (classes 0-8). Models output logits ``[n, 9, 9, 9]`` (classes first),
        scored per board by :func:`deqkit.tasks.exact_match` (all 81 cells).
    """
    puzzles, solutions = sudoku(n, difficulty, seed=seed)
    return _one_hot(puzzles), solutions - 1


def _one_hot(puzzles: Tensor) -> Tensor:
    """``[n, 9, 9]`` boards (0 = blank) as the task's float32 input ``[n, 10, 9, 9]``."""
    return torch.nn.functional.one_hot(puzzles, 10).permute(0, 3, 1, 2).float()


def sudoku_task_augment(
    x: Tensor, y: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`sudoku_augment` on the ``sudoku`` task's encoding, its ``augment``.

    Args:
        x: ``[n, 10, 9, 9]`` one-hot puzzles, as :func:`sudoku_task` returns them.
        y: ``[n, 9, 9]`` their solutions' digits minus one.
        generator: Draws the symmetries (see :func:`sudoku_augment`).

    Returns:
        ``(x, y)`` in the same encoding, each pair under its own symmetry.
    """
    puzzles, solutions = sudoku_augment(x.argmax(1), y + 1, generator=generator)
    return _one_hot(puzzles).to(x.dtype), solutions - 1


def _line_permutations(n: int, g: torch.Generator) -> Tensor:
    """``[n, 9]`` permutations of rows (or columns) that keep the bands: a random order of
    the three bands, and of the three lines inside each."""
    bands = torch.rand(n, 3, generator=g).argsort(1)  # which band goes where
    inner = torch.rand(n, 3, 3, generator=g).argsort(2)  # line order within each band
    return (3 * bands[:, :, None] + inner).reshape(n, 9)


def sudoku_augment(
    puzzles: Tensor, solutions: Tensor, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The same boards under random symmetries of Sudoku, one draw per board.

    Each pair gets its own relabelling of the digits 1-9, order of the row bands and of the
    rows inside each band, the same for column stacks and columns, and a transposition with
    probability 1/2; puzzle and solution get the same one. These maps send valid boards to
    valid boards and unique puzzles to unique puzzles with the same number of blanks (about
    1.2e12 variants of a board; the search grade of :func:`sudoku_search` can change, as it
    breaks ties by cell order): the augmentation HRM and TRM train their 1,000 puzzles with.

    Args:
        puzzles: ``[n, 9, 9]`` integers, ``0`` for a blank.
        solutions: ``[n, 9, 9]``, their solutions.
        generator: Draws the maps; default a generator seeded from OS entropy.

    Returns:
        ``(puzzles, solutions)``, new int64 tensors of the same shape.

    Raises:
        ValueError: Malformed boards or shapes that differ.
    """
    p = torch.from_numpy(_boards(puzzles, "puzzles"))
    s = torch.from_numpy(_boards(solutions, "solutions"))
    if p.shape != s.shape:
        raise ValueError(
            f"Invalid solutions shape: {tuple(s.shape)} (expected {tuple(p.shape)}, as puzzles)"
        )
    g = make_generator(None, generator)
    n = p.shape[0]
    digits = torch.cat(
        [torch.zeros(n, 1, dtype=torch.int64), torch.rand(n, 9, generator=g).argsort(1) + 1], 1
    )
    rows, cols = _line_permutations(n, g), _line_permutations(n, g)
    flip = torch.rand(n, generator=g) < 0.5
    out = []
    for board in (p, s):
        board = digits.gather(1, board.reshape(n, 81)).reshape(n, 9, 9)
        board = board.gather(1, rows[:, :, None].expand(n, 9, 9))
        board = board.gather(2, cols[:, None, :].expand(n, 9, 9))
        out.append(torch.where(flip[:, None, None], board.transpose(1, 2), board))
    return out[0], out[1]


def _boards(boards: Tensor | np.ndarray, name: str) -> np.ndarray:
    a = boards.detach().cpu().numpy() if isinstance(boards, Tensor) else np.asarray(boards)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (9, 9):
        raise ValueError(f"Invalid {name} shape: {tuple(a.shape)} (expected [n, 9, 9])")
    if not np.issubdtype(a.dtype, np.integer) or a.min(initial=0) < 0 or a.max(initial=0) > 9:
        raise ValueError(f"Invalid {name}: expected integers 0-9 (0 = blank)")
    return a.astype(np.int64)


def sudoku_search(puzzles: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """The reference solver's verdict on each puzzle: its solution count and branching.

    A depth-first search that always fills the blank with the fewest candidates (forced
    cells first, without branching), counting solutions up to two. The branching count
    (cells where it had to try two or more digits) is the search grade of a puzzle: 0 for
    one a solver of singles alone finishes, tens to hundreds for hard ones.

    Args:
        puzzles: ``[n, 9, 9]`` (or one ``[9, 9]``) integers, ``0`` for a blank.

    Returns:
        ``(solutions, branchings)``: int64 ``[n]``, the number of solutions found (0, 1, or
        2 meaning "two or more") and the branchings of the search.

    Raises:
        ValueError: A malformed board, or a given digit that repeats in a row, column or box.
    """
    a = _boards(puzzles, "puzzles")
    counts, branchings = [], []
    for p in a.reshape(len(a), 81).tolist():
        stats = [0]
        counts.append(len(_search(_Board(p), 2, stats=stats)))
        branchings.append(stats[0])
    return torch.tensor(counts), torch.tensor(branchings)


def sudoku_valid(boards: Tensor | np.ndarray, puzzles: Tensor | np.ndarray | None = None) -> Tensor:
    """Whether each board is a solved Sudoku (and keeps its puzzle's givens).

    Checked directly, independently of the generator and the solver: every row, column and
    3x3 box holds each digit 1-9 exactly once, and where ``puzzles`` is given every given
    (non-zero) cell is unchanged.

    Args:
        boards: ``[n, 9, 9]`` (or ``[9, 9]``) integers.
        puzzles: Optional ``[n, 9, 9]`` puzzles the boards should solve.

    Returns:
        Bool tensor ``[n]``.

    Raises:
        ValueError: Malformed boards, or ``puzzles`` of another shape.
    """
    b = _boards(boards, "boards")
    digits = np.arange(1, 10)
    rows = (np.sort(b, axis=2) == digits).all(axis=(1, 2))
    cols = (np.sort(b, axis=1) == digits[:, None]).all(axis=(1, 2))
    boxes = b.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    boxes_ok = (np.sort(boxes, axis=2) == digits).all(axis=(1, 2))
    ok = rows & cols & boxes_ok
    if puzzles is not None:
        p = _boards(puzzles, "puzzles")
        if p.shape != b.shape:
            raise ValueError(
                f"Invalid puzzles shape: {tuple(p.shape)} (expected {tuple(b.shape)}, as boards)"
            )
        ok &= ((p == 0) | (p == b)).all(axis=(1, 2))
    return torch.from_numpy(ok)


def sudoku_exact_match(pred: Tensor, solutions: Tensor) -> Tensor:
    """Whether each predicted board equals its solution in all 81 cells.

    Args:
        pred: Digit logits ``[n, 9, 9, 9]``, classes first as every deqkit model outputs
            them (class ``c`` = digit ``c + 1``), or boards ``[n, 9, 9]`` of digits 1-9.
        solutions: ``[n, 9, 9]`` digits 1-9, as :func:`sudoku` returns them.

    Returns:
        Bool tensor ``[n]``.

    Raises:
        ValueError: Shapes that do not match.
    """
    if solutions.ndim != 3 or tuple(solutions.shape[1:]) != (9, 9):
        raise ValueError(f"Invalid solutions shape: {tuple(solutions.shape)} (expected [n, 9, 9])")
    if pred.ndim == 4 and tuple(pred.shape) == (len(solutions), 9, 9, 9):
        pred = pred.argmax(1) + 1
    elif pred.shape != solutions.shape:
        raise ValueError(
            f"Invalid pred shape: {tuple(pred.shape)} (expected {tuple(solutions.shape)} "
            "boards or [n, 9, 9, 9] digit logits, classes first)"
        )
    return (pred == solutions).flatten(1).all(1)


def cells_exact_match(logits: Tensor, target: Tensor) -> Tensor:
    """The ``sudoku`` task's metric: ``logits [n, C, *S]``, ``target [n, *S]`` class
    indices; a sample counts if the argmax is right at every position."""
    if logits.ndim != target.ndim + 1 or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(
            f"Invalid logits shape: {tuple(logits.shape)} (expected [n, C, ...] matching "
            f"target {tuple(target.shape)})"
        )
    return (logits.argmax(1) == target).flatten(1).all(1)
