"""Offline tasks and data sets for deep equilibrium models; nothing here touches the network.

Algorithmic tasks with a difficulty knob, generated on the fly (Bansal et al. 2022):

* :func:`prefix_sums`: bit strings ``x [n, 1, length]`` and their running parity
  ``y [n, length]``; harder = longer.
* :func:`mazes`: perfect mazes ``x [n, 3, 2k+1, 2k+1]`` (channels open, start, goal) and the
  start-goal path mask ``y [n, 2k+1, 2k+1]``; harder = larger ``k``.
* :func:`sudoku`: puzzles ``[n, 9, 9]`` (0 = blank) with exactly one solution, and the
  solutions; harder = more blanks (:data:`SUDOKU_LEVELS`). :func:`sudoku_search` grades a
  puzzle by how much a reference search branches, :func:`sudoku_valid` checks boards
  independently, :func:`sudoku_exact_match` scores them, :func:`sudoku_augment` applies
  random symmetries (digits, bands, lines, transposition).

Models output two-class logits ``[n, 2, ...]`` (class 1 = bit 1 / on the path), scored per
sample by :func:`exact_match` (every position right), :func:`maze_exact_match` and
:func:`bit_accuracy`.

Classification data, returned as :class:`ClassificationData` (float32 ``x [n, C, ...]``,
int64 ``y [n]``): :func:`load_digits_dataset`, :func:`load_mnist_subset`,
:func:`load_mnist1d` from installed packages (``pip install 'deqkit[data]'``), and
:func:`load_idx_dataset`, :func:`load_cifar10` from local files; :func:`load_dataset` picks
one by name.

The registry: one :class:`Task` per task (its generator or loader, default model,
difficulty range and metric), which the training config, the data stream, the command line
and the studies read; :func:`get_task`, :func:`available_tasks`, :func:`register_task` to
add one, :func:`describe_difficulties` for help texts. :func:`top1` is the metric of the
data sets.
"""

from ._common import ClassificationData
from ._digits import load_digits_dataset, load_mnist1d, load_mnist_subset
from ._files import load_cifar10, load_idx_dataset, read_idx
from ._load import load_dataset
from ._maze import check_maze, maze_exact_match, mazes
from ._metrics import bit_accuracy, exact_match
from ._prefix_sum import prefix_parity, prefix_sums
from ._registry import (
    Task,
    available_tasks,
    describe_difficulties,
    get_task,
    register_task,
    top1,
)
from ._sudoku import (
    SUDOKU_LEVELS,
    sudoku,
    sudoku_augment,
    sudoku_exact_match,
    sudoku_search,
    sudoku_valid,
)

__all__ = [
    "SUDOKU_LEVELS",
    "ClassificationData",
    "Task",
    "available_tasks",
    "describe_difficulties",
    "bit_accuracy",
    "check_maze",
    "exact_match",
    "get_task",
    "load_cifar10",
    "load_dataset",
    "load_digits_dataset",
    "load_idx_dataset",
    "load_mnist1d",
    "load_mnist_subset",
    "mazes",
    "maze_exact_match",
    "prefix_parity",
    "prefix_sums",
    "read_idx",
    "register_task",
    "sudoku",
    "sudoku_augment",
    "sudoku_exact_match",
    "sudoku_search",
    "sudoku_valid",
    "top1",
]
