"""The task registry: one entry per task, read by the config, the data stream, the CLI and
the studies, so that adding a task is one entry here (and its generator or loader)."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .._validate import choice, integer, invalid
from ._common import ClassificationData
from ._digits import load_digits_dataset, load_mnist1d, load_mnist_subset
from ._files import load_cifar10, load_idx_dataset
from ._maze import mazes
from ._metrics import exact_match
from ._prefix_sum import prefix_sums
from ._sudoku import SUDOKU_LEVELS, cells_exact_match, sudoku_task, sudoku_task_augment

__all__ = [
    "Task",
    "available_tasks",
    "describe_difficulties",
    "get_task",
    "register_task",
    "top1",
]


def top1(logits: Tensor, targets: Tensor) -> Tensor:
    """Classification accuracy per sample: ``[n]`` bool, ``logits.argmax(dim=1) == targets``
    for ``logits [n, C]`` and integer ``targets [n]``."""
    return logits.argmax(dim=1) == targets


@dataclass(frozen=True)
class Task:
    """One task deqkit trains on and studies: where its samples come from, the model that
    fits it by default, and how a prediction is scored.

    A *procedural* task has a generator and a difficulty knob: a fresh batch every training
    step, evaluation at any difficulty. A *data set* has a loader and a fixed test split.

    Attributes:
        name: The name a config and the command line use (``TrainConfig(task=name)``).
        default_model: Name in :func:`deqkit.models.build_model` a config uses when it names
            no model.
        metric: ``metric(logits, targets) -> [n]`` bool, the per-sample score: accuracy is
            its mean (:func:`exact_match` for per-position targets, :func:`top1` for labels).
        generate: Procedural tasks: ``generate(n, difficulty, *, seed) -> (x, y)``, the same
            samples for the same seed (``x [n, ...]`` float, ``y [n, ...]`` int64). ``None``
            for a data set.
        load: Data sets: the loader returning :class:`ClassificationData`, called as
            ``load()`` / ``load(seed=seed)``, or ``load(root)`` when ``reads_files``. ``None``
            for a procedural task.
        reads_files: Whether ``load`` reads files under a folder (``TrainConfig.data_root``)
            rather than an installed package. Default ``False``.
        difficulty: What the difficulty is, for help texts (``"string length"``). Procedural
            tasks only.
        difficulty_label: Short name of a difficulty in plot legends (``"length"``).
        default_difficulty: Training difficulty when a config gives none.
        min_difficulty: The smallest difficulty the generator takes.
        num_classes: Classes of the per-position targets of a procedural task (a data set's
            own ``num_classes`` comes with it).
        default_model_kwargs: Arguments of the default model unless a config gives them
            (the recall networks: ``norm_groups=4``, as in every measured configuration).
        augment: Procedural tasks, optional: ``augment(x, y, generator) -> (x, y)``, the same
            samples under random symmetries of the task that keep them valid and of the same
            difficulty (Sudoku's digit relabelling, band and line permutations,
            transposition). A run that trains on a fixed pool of samples
            (``TrainConfig.train_pool``) draws each sample through it. Default ``None``.
        description: One line for help texts.

    Raises:
        ValueError: A bad field: no name, both or neither of ``generate`` and ``load``, a
            procedural task without its difficulty fields, a non-callable metric.
    """

    name: str
    default_model: str
    metric: Callable[[Tensor, Tensor], Tensor]
    generate: Callable[..., tuple[Tensor, Tensor]] | None = None
    load: Callable[..., ClassificationData] | None = None
    reads_files: bool = False
    difficulty: str | None = None
    difficulty_label: str | None = None
    default_difficulty: int | None = None
    min_difficulty: int | None = None
    num_classes: int | None = None
    default_model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    augment: Callable[..., tuple[Tensor, Tensor]] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise invalid("name", self.name, "a non-empty string", of="Task")
        if not isinstance(self.default_model, str) or not self.default_model:
            raise invalid("default_model", self.default_model, "a model name", of=self.name)
        if not callable(self.metric):
            raise TypeError(f"metric of task {self.name!r} must be callable")
        if (self.generate is None) == (self.load is None):
            raise ValueError(f"task {self.name!r} needs either generate or load, not both")
        for name in ("generate", "load", "augment"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} of task {self.name!r} must be callable")
        if self.procedural:
            low = integer("min_difficulty", self.min_difficulty, 1, of=self.name)
            integer("default_difficulty", self.default_difficulty, low, of=self.name)
            integer("num_classes", self.num_classes, 2, of=self.name)
            for name in ("difficulty", "difficulty_label"):
                if not isinstance(getattr(self, name), str):
                    raise invalid(name, getattr(self, name), "a string", of=self.name)
        else:
            given = [
                n
                for n in (
                    "difficulty",
                    "default_difficulty",
                    "min_difficulty",
                    "num_classes",
                    "augment",
                )
                if getattr(self, n) is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} of task {self.name!r} apply to procedural tasks "
                    "(with generate) only"
                )
        object.__setattr__(
            self, "default_model_kwargs", types.MappingProxyType(dict(self.default_model_kwargs))
        )

    @property
    def procedural(self) -> bool:
        """Whether samples are generated (a difficulty knob, a fresh batch every step)."""
        return self.generate is not None


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry under ``task.name``; returns it.

    Register before building a :class:`~deqkit.train.TrainConfig` for it, in every process
    that builds one (a checkpoint of such a run loads where the task is registered).

    Raises:
        TypeError: ``task`` is not a :class:`Task`.
        ValueError: The name is taken.
    """
    if not isinstance(task, Task):
        raise TypeError(f"register_task takes a Task, got {type(task).__name__}")
    if task.name in _TASKS:
        raise ValueError(f"a task named {task.name!r} is registered already")
    _TASKS[task.name] = task
    return task


def available_tasks(*, procedural: bool | None = None) -> list[str]:
    """The registered task names, in registration order (procedural ones first among the
    built-in ones); ``procedural=True``/``False`` keeps only those with/without a generator."""
    return [n for n, t in _TASKS.items() if procedural is None or t.procedural == procedural]


def describe_difficulties() -> str:
    """What the difficulty of each procedural task is, for help texts:
    ``"string length (prefix_sums), cells per side k (mazes)"``."""
    return ", ".join(f"{t.difficulty} ({t.name})" for t in _TASKS.values() if t.procedural)


def get_task(name: str) -> Task:
    """The registered :class:`Task` named ``name``.

    Raises:
        ValueError: ``Invalid task: 'x' (expected one of 'prefix_sums', ...)``.
    """
    return _TASKS[choice("task", name, list(_TASKS))]


_RECALL = {"norm_groups": 4}  # every measured recall-network configuration (docs/results.md)
for _task in (
    Task(
        "prefix_sums",
        "recall1d",
        exact_match,
        generate=prefix_sums,
        difficulty="string length",
        difficulty_label="length",
        default_difficulty=16,
        min_difficulty=1,
        num_classes=2,
        default_model_kwargs=_RECALL,
        description="prefix-sum parity of bit strings",
    ),
    Task(
        "mazes",
        "recall2d",
        exact_match,
        generate=mazes,
        difficulty="cells per side k",
        difficulty_label="size",
        default_difficulty=9,
        min_difficulty=2,
        num_classes=2,
        default_model_kwargs=_RECALL,
        description="the start-goal path of perfect mazes",
    ),
    Task(
        "sudoku",
        "deq_attention",
        cells_exact_match,
        generate=sudoku_task,
        difficulty=f"blank cells ({'/'.join(map(str, SUDOKU_LEVELS))})",
        difficulty_label="blanks",
        default_difficulty=30,
        min_difficulty=SUDOKU_LEVELS[0],
        num_classes=9,
        augment=sudoku_task_augment,
        description="Sudoku boards with one solution (tasks.sudoku)",
    ),
    Task("digits", "deq_conv", top1, load=load_digits_dataset, description="8x8 digits"),
    Task("mnist_subset", "deq_conv", top1, load=load_mnist_subset, description="5,000 MNIST"),
    Task("mnist1d", "deq_mlp", top1, load=load_mnist1d, description="MNIST-1D"),
    Task(
        "mnist",
        "deq_conv",
        top1,
        load=functools.partial(load_idx_dataset, name="mnist"),
        reads_files=True,
        description="MNIST from IDX files",
    ),
    Task(
        "fashion_mnist",
        "deq_conv",
        top1,
        load=functools.partial(load_idx_dataset, name="fashion_mnist"),
        reads_files=True,
        description="Fashion-MNIST from IDX files",
    ),
    Task(
        "cifar10",
        "deq_conv",
        top1,
        load=load_cifar10,
        reads_files=True,
        description="CIFAR-10 from its Python batches",
    ),
):
    register_task(_task)
del _task
