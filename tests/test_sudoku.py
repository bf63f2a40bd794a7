"""deqkit.tasks.sudoku: unique, valid puzzles at every level, a checker that owes nothing to
the generator, the reference search's grade, and bad input named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deqkit.tasks import (
    SUDOKU_LEVELS,
    sudoku,
    sudoku_augment,
    sudoku_exact_match,
    sudoku_search,
    sudoku_valid,
)

# Arto Inkala's 2012 "hardest sudoku" and its published solution, typed in by hand: a puzzle
# and answer the generator never saw.
INKALA = [
    "800000000",
    "003600000",
    "070090200",
    "050007000",
    "000045700",
    "000100030",
    "001000068",
    "008500010",
    "090000400",
]
INKALA_SOLUTION = [
    "812753649",
    "943682175",
    "675491283",
    "154237896",
    "369845721",
    "287169534",
    "521974368",
    "438526917",
    "796318452",
]


def board(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[int(c) for c in r] for r in rows])[None]


@pytest.mark.parametrize("level", SUDOKU_LEVELS)
def test_every_puzzle_has_exactly_one_solution_and_it_is_valid(level):
    n = 6 if level == SUDOKU_LEVELS[-1] else 12
    puzzles, solutions = sudoku(n, level, seed=level)
    assert puzzles.shape == solutions.shape == (n, 9, 9)
    assert puzzles.dtype == solutions.dtype == torch.int64
    assert ((puzzles == 0).sum((1, 2)) == level).all()
    assert ((solutions >= 1) & (solutions <= 9)).all()
    assert sudoku_valid(solutions, puzzles).all()
    counts, _ = sudoku_search(puzzles)
    assert (counts == 1).all()


def test_levels_run_easiest_first_and_the_search_branches_more_on_harder_ones():
    assert list(SUDOKU_LEVELS) == sorted(SUDOKU_LEVELS)
    easy, _ = sudoku(20, SUDOKU_LEVELS[0], seed=1)
    hard, _ = sudoku(20, 54, seed=1)
    _, b_easy = sudoku_search(easy)
    _, b_hard = sudoku_search(hard)
    assert (b_easy == 0).all()  # singles alone finish 20 blanks
    assert b_hard.float().mean() > 5


def test_same_seed_same_puzzles_and_a_prefix_does_not_depend_on_n():
    a, sa = sudoku(5, 40, seed=3)
    b, sb = sudoku(3, 40, seed=3)
    assert torch.equal(a[:3], b) and torch.equal(sa[:3], sb)
    c, _ = sudoku(5, 40, seed=4)
    assert not torch.equal(a, c)
    d, _ = sudoku(5, 45, seed=3)  # the level is part of the stream
    assert not torch.equal(a, d)
    e, se = sudoku(2, 30)  # no seed: OS entropy, still unique and valid
    assert sudoku_valid(se, e).all() and (sudoku_search(e)[0] == 1).all()


def test_the_checker_and_the_search_on_a_puzzle_from_outside():
    puzzle, solution = board(INKALA), board(INKALA_SOLUTION)
    assert sudoku_valid(solution, puzzle).tolist() == [True]
    counts, branchings = sudoku_search(puzzle)
    assert counts.tolist() == [1] and branchings.item() > 50  # a hard one
    assert sudoku_search(torch.zeros(1, 9, 9, dtype=torch.int64))[0].tolist() == [2]


def test_the_checker_rejects_each_way_a_board_can_be_wrong():
    good = board(INKALA_SOLUTION)[0]
    swapped_in_row = good.clone()
    swapped_in_row[0, [0, 1]] = swapped_in_row[0, [1, 0]]  # rows stay fine, columns break
    swapped_band_rows = good.clone()
    swapped_band_rows[[0, 1]] = swapped_band_rows[[1, 0]]  # rows, columns, boxes all fine
    shifted = torch.roll(good, 1, dims=1)  # rows and columns stay fine, boxes break
    latin = (torch.arange(9)[:, None] + torch.arange(9)[None]) % 9 + 1  # rows, columns, not boxes
    with_zero = good.clone()
    with_zero[4, 4] = 0
    boards = torch.stack([good, swapped_in_row, swapped_band_rows, shifted, latin, with_zero])
    assert sudoku_valid(boards).tolist() == [True, False, True, False, False, False]
    # swapped_band_rows is a valid board, but not the one that keeps the puzzle's givens
    puzzle = board(INKALA)[0]
    got = sudoku_valid(torch.stack([good, swapped_band_rows]), torch.stack([puzzle, puzzle]))
    assert got.tolist() == [True, False]


def test_exact_match_on_boards_and_logits():
    _, solutions = sudoku(4, 30, seed=0)
    pred = solutions.clone()
    pred[1, 8, 8] = pred[1, 8, 8] % 9 + 1
    assert sudoku_exact_match(pred, solutions).tolist() == [True, False, True, True]
    logits = torch.nn.functional.one_hot(pred - 1, 9).permute(0, 3, 1, 2).float()
    assert sudoku_exact_match(logits, solutions).tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match=r"Invalid pred shape: \(4, 10, 9, 9\)"):
        sudoku_exact_match(torch.zeros(4, 10, 9, 9), solutions)
    with pytest.raises(ValueError, match=r"Invalid solutions shape"):
        sudoku_exact_match(pred, solutions[:, :8])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"Invalid difficulty: 33 \(expected one of 20, 30"):
        sudoku(2, 33, seed=0)
    with pytest.raises(ValueError, match=r"Invalid n: 0"):
        sudoku(0, 30, seed=0)
    with pytest.raises(ValueError, match=r"Invalid seed: -1"):
        sudoku(1, 30, seed=-1)
    with pytest.raises(ValueError, match=r"Invalid difficulty: 30.0 \(expected an integer"):
        sudoku(1, 30.0, seed=0)
    clash = torch.zeros(1, 9, 9, dtype=torch.int64)
    clash[0, 0, 0] = clash[0, 0, 5] = 7
    with pytest.raises(ValueError, match="digit 7 repeats at cell 5"):
        sudoku_search(clash)
    with pytest.raises(ValueError, match=r"Invalid boards shape: \(2, 9, 8\)"):
        sudoku_valid(torch.ones(2, 9, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="Invalid boards: expected integers 0-9"):
        sudoku_valid(np.full((1, 9, 9), 10))
    with pytest.raises(ValueError, match="Invalid puzzles shape"):
        sudoku_valid(torch.ones(2, 9, 9, dtype=torch.int64), torch.ones(1, 9, 9, dtype=torch.int64))


def test_augmented_boards_stay_valid_unique_and_as_blank_and_differ():
    puzzles, solutions = sudoku(16, 50, seed=5)
    g = torch.Generator().manual_seed(0)
    p2, s2 = sudoku_augment(puzzles, solutions, generator=g)
    assert sudoku_valid(s2, p2).all()
    assert (sudoku_search(p2)[0] == 1).all()
    assert torch.equal((p2 == 0).sum((1, 2)), (puzzles == 0).sum((1, 2)))
    assert (p2 != puzzles).flatten(1).any(1).all()
    # The same map on puzzle and solution: the givens of p2 are s2's digits there.
    assert ((p2 == 0) | (p2 == s2)).all()
    again = sudoku_augment(puzzles, solutions, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], p2) and torch.equal(again[1], s2)
    with pytest.raises(ValueError, match="Invalid solutions shape"):
        sudoku_augment(puzzles, solutions[:3])


def test_the_sudoku_task_trains_through_the_config_and_names_a_bad_level(tmp_path):
    from deqkit.tasks import get_task
    from deqkit.train import TrainConfig, train

    x, y = get_task("sudoku").generate(3, 30, seed=0)
    puzzles, solutions = sudoku(3, 30, seed=0)
    assert x.shape == (3, 10, 9, 9) and x.dtype == torch.float32
    assert torch.equal(x.argmax(1), puzzles) and torch.equal(y, solutions - 1)
    config = dict(
        task="sudoku",
        difficulty=20,
        eval_difficulties=[20, 30],
        model_kwargs={"d_model": 16, "heads": 2},
        steps=2,
        batch_size=4,
        eval_size=4,
        max_iter=5,
    )
    result = train(TrainConfig(**config, out_dir=str(tmp_path / "run")), progress=False)
    assert [e["difficulty"] for e in result.eval] == [20, 30]
    logits, _ = result.model(x)
    assert logits.shape == (3, 9, 9, 9)
    with pytest.raises(ValueError, match=r"Invalid difficulty: 33 \(expected one of 20, 30"):
        train(TrainConfig(**{**config, "difficulty": 33}, out_dir=str(tmp_path / "bad")))


def test_a_training_pool_draws_augmented_pool_boards_split_invariantly():
    """train_pool: every training board is a pool board under a Sudoku symmetry (valid,
    uniquely solvable, as blank), sample i of a step does not depend on the batch split, and
    the pool is the same for the same seed."""
    from deqkit.train import Data, TrainConfig

    config = TrainConfig(task="sudoku", difficulty=30, train_pool=6, batch_size=8, seed=3)
    data = Data(config)
    x_pool, y_pool = data.pool()
    assert x_pool.shape == (6, 10, 9, 9) and y_pool.shape == (6, 9, 9)
    x, y = data.batch(4, 0, 8)
    puzzles, solutions = x.argmax(1), y + 1
    assert sudoku_valid(solutions, puzzles).all()
    assert (sudoku_search(puzzles)[0] == 1).all()
    assert ((puzzles == 0).sum((1, 2)) == 30).all()

    # Symmetries keep how many times each digit count pattern occurs: sorted digit counts of
    # the givens match one pool board's (a relabelling permutes the counts).
    def counts(boards):
        c = torch.stack([(boards == d).sum((1, 2)) for d in range(1, 10)], 1)
        return c.sort(1).values

    pool_counts = counts(x_pool.argmax(1))
    assert all((pool_counts == row).all(1).any() for row in counts(puzzles))
    assert not torch.equal(x, data.batch(5, 0, 8)[0])  # steps differ
    again = Data(config)
    assert torch.equal(again.batch(4, 2, 5)[0], x[2:5])  # another rank's share, same boards
    assert torch.equal(again.batch(4, 2, 5)[1], y[2:5])


def test_a_pool_without_augmentation_repeats_its_samples_and_is_for_procedural_tasks():
    from deqkit.train import Data, TrainConfig

    data = Data(TrainConfig(task="prefix_sums", difficulty=8, train_pool=3, batch_size=16))
    x, y = data.batch(0, 0, 16)
    distinct = {tuple(row.flatten().tolist()) for row in x}
    pool = {tuple(row.flatten().tolist()) for row in data.pool()[0]}
    assert distinct <= pool and len(pool) == 3
    with pytest.raises(ValueError, match="train_pool applies to procedural tasks only"):
        TrainConfig(task="digits", train_pool=10)
    with pytest.raises(ValueError, match=r"Invalid train_pool: 0 \(expected an integer >= 1\)"):
        TrainConfig(task="sudoku", train_pool=0)
    with pytest.raises(ValueError, match="no training pool"):
        Data(TrainConfig(task="sudoku")).pool()
