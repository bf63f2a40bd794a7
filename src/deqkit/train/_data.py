"""Training and evaluation data as pure functions of (seed, step): resumable, shardable.

Sample ``i`` of the global batch at step ``s`` depends only on ``(seed, s, i)``, never on
the number of processes or on how often the run was interrupted. A data-parallel rank takes
the contiguous slice ``[rank * b, (rank + 1) * b)`` of the global batch (``b`` the
per-rank batch), so the union of the shards is exactly the batch a single process would see.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import tasks
from ._choices import DEFAULT_EVAL_SIZE, DEFAULT_STEPS
from ._config import TrainConfig

__all__ = ["Data", "mix_seed"]

TRAIN_STREAM, EVAL_STREAM, STEP_STREAM, PERM_STREAM, LOSS_STREAM, AUGMENT_STREAM = 1, 2, 3, 4, 5, 6
POOL_STREAM = 7
_MASK = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Hash integers into one 63-bit seed (splitmix64 chained); stable across platforms."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h >> 1


class Data:
    """The batches, evaluation sets and scoring of one task, as set by a :class:`TrainConfig`.

    What :func:`train` feeds a run, for code that needs the same samples (sweeps, studies of
    a trained model): ``Data(config).batch(step, lo, hi)`` is samples ``lo .. hi - 1`` of the
    global batch of step ``step``, :meth:`eval_set` the fixed evaluation set, :meth:`correct`
    the per-sample score. Everything is on the CPU.

    What the task is comes from its registry entry (:attr:`TrainConfig.task_spec`).
    Procedural tasks (``prefix_sums``, ``mazes``) draw sample ``i`` of step ``s`` from their
    generator seeded with ``(seed, s, i)`` (with ``train_pool``, from a fixed pool, see
    :meth:`pool`): inputs ``x [n, 1, L]`` / ``[n, 3, H, W]``,
    targets ``y [n, L]`` / ``[n, H, W]``, ``num_classes == 2``. Data sets (``digits``, ...)
    load once, shuffle their training split once per epoch with a generator seeded with
    ``(seed, epoch)`` and walk through it in global batches of ``config.batch_size`` (the
    last partial batch of an epoch is dropped): ``x [n, C, ...]`` float, ``y [n]`` int64.

    Args:
        config: The run's config: its task, seed, batch size, steps or epochs,
            difficulties, data root, evaluation size and ``augment_shift``.

    Attributes:
        config: That config.
        task: ``config.task``.
        spec: Its :class:`~deqkit.tasks.Task`.
        dataset: The loaded :class:`~deqkit.tasks.ClassificationData`, ``None`` for a
            procedural task.
        num_classes: Classes of the targets (the task's, 2 for prefix sums and mazes: bit /
            on the path).

    Raises:
        ValueError: ``config.batch_size`` exceeds the training split of a data set.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.task = config.task
        self._perm: tuple[int, Tensor] | None = None
        self._pool: tuple[Tensor, Tensor] | None = None
        self._eval_cache: dict[tuple[int | None, int], tuple[Tensor, Tensor]] = {}
        self.spec = config.task_spec
        if self.spec.procedural:
            self.dataset = None
            self.num_classes = self.spec.num_classes
        else:
            self.dataset = tasks.load_dataset(config.task, root=config.data_root)
            self.num_classes = self.dataset.num_classes
            if len(self.dataset.y_train) < config.batch_size:
                raise ValueError(
                    f"batch_size={config.batch_size} exceeds the {len(self.dataset.y_train)} "
                    f"training samples of {config.task!r}"
                )

    @property
    def steps_per_epoch(self) -> int | None:
        """Global batches per pass over a data set (``None`` for procedural tasks)."""
        if self.dataset is None:
            return None
        return len(self.dataset.y_train) // self.config.batch_size

    def total_steps(self, config: TrainConfig | None = None) -> int:
        """``steps``, else ``epochs * steps_per_epoch``, else 1000, of ``config`` (default:
        this data's own; another must have the same task and batch size, e.g. the config
        of the checkpoint a run resumes)."""
        c = self.config if config is None else config
        if c.steps is not None:
            return c.steps
        if c.epochs is not None:
            return c.epochs * self.steps_per_epoch
        return DEFAULT_STEPS

    def epoch(self, step: int) -> int | None:
        """The epoch (from 0) that step ``step`` (from 0) belongs to; ``None`` if procedural."""
        spe = self.steps_per_epoch
        return None if spe is None else step // spe

    def example_input(self) -> Tensor:
        """One training input ``[1, ...]`` (for model shapes)."""
        return self.batch(0, 0, 1)[0]

    def batch(self, step: int, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Samples ``lo .. hi - 1`` of the global batch of step ``step`` (from 0), on CPU."""
        c = self.config
        if self.dataset is None and c.train_pool is not None:
            return self._from_pool(step, lo, hi)
        if self.dataset is None:
            make = self.spec.generate
            diff = c.train_difficulty
            parts = [
                make(1, diff, seed=mix_seed(c.seed, TRAIN_STREAM, step, i)) for i in range(lo, hi)
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(mix_seed(c.seed, PERM_STREAM, epoch))
            self._perm = (epoch, torch.randperm(len(self.dataset.y_train), generator=g))
        start = offset * c.batch_size
        idx = self._perm[1][start + lo : start + hi]
        x = self.dataset.x_train[idx]
        if c.augment_shift:
            x = self._shift(x, step, lo)
        return x, self.dataset.y_train[idx]

    def pool(self) -> tuple[Tensor, Tensor]:
        """The training pool of ``config.train_pool`` samples (generated on first use, from
        ``(seed, difficulty)``, the same on every rank and on resuming)."""
        c = self.config
        if c.train_pool is None:
            raise ValueError(f"this run has no training pool (train_pool=None, task {c.task!r})")
        if self._pool is None:
            seed = mix_seed(c.seed, POOL_STREAM, c.train_difficulty)
            self._pool = self.spec.generate(c.train_pool, c.train_difficulty, seed=seed)
        return self._pool

    def _from_pool(self, step: int, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Samples ``lo .. hi - 1`` of step ``step`` drawn from the pool: each its own pool
        member and symmetry, from ``(seed, step, index)``, so that a sample does not depend
        on how the batch is split between ranks."""
        x_pool, y_pool = self.pool()
        xs, ys = [], []
        for i in range(lo, hi):
            g = torch.Generator().manual_seed(mix_seed(self.config.seed, TRAIN_STREAM, step, i))
            j = int(torch.randint(len(x_pool), (1,), generator=g))
            x, y = x_pool[j : j + 1], y_pool[j : j + 1]
            if self.spec.augment is not None:
                x, y = self.spec.augment(x, y, g)
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    def _shift(self, x: Tensor, step: int, lo: int) -> Tensor:
        """Shift sample ``lo + j`` of step ``step`` by its own random offsets (edges replicated)."""
        s = self.config.augment_shift
        spatial = x.dim() - 2  # [n, C, *spatial]
        if spatial not in (1, 2):
            raise ValueError(
                f"augment_shift needs inputs [n, C, L] or [n, C, H, W], got {tuple(x.shape)}"
            )
        padded = torch.nn.functional.pad(x, (s, s) * spatial, mode="replicate")
        out = torch.empty_like(x)
        sizes = x.shape[2:]
        for j in range(len(x)):
            g = torch.Generator().manual_seed(
                mix_seed(self.config.seed, AUGMENT_STREAM, step, lo + j)
            )
            offsets = torch.randint(0, 2 * s + 1, (spatial,), generator=g).tolist()
            window = tuple(slice(o, o + n) for o, n in zip(offsets, sizes, strict=True))
            out[j] = padded[(j, slice(None), *window)]
        return out

    def eval_set(self, difficulty: int | None, n: int | None) -> tuple[Tensor, Tensor]:
        """The fixed evaluation set at ``difficulty`` (the test split for data sets), on CPU.

        Procedural sets are drawn once from a generator seeded with ``(seed, difficulty)``, so
        every evaluation of a run (and of its checkpoints) sees the same samples.
        """
        c = self.config
        if self.dataset is None:
            if difficulty is None:
                raise ValueError(f"task {self.task!r} needs an evaluation difficulty")
            n = n if n is not None else (c.eval_size or DEFAULT_EVAL_SIZE)
            key = (difficulty, n)
            if key not in self._eval_cache:
                seed = mix_seed(c.seed, EVAL_STREAM, difficulty)
                self._eval_cache[key] = self.spec.generate(n, difficulty, seed=seed)
            return self._eval_cache[key]
        if difficulty is not None:
            raise ValueError(
                f"task {self.task!r} has no difficulty knob (got difficulty={difficulty!r}); "
                "it is evaluated on its test split"
            )
        total = len(self.dataset.y_test)
        n = n if n is not None else (c.eval_size or total)
        return self.dataset.x_test[:n], self.dataset.y_test[:n]

    def correct(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-sample correctness ``[n]`` (bool), the task's metric: exact match per string /
        maze, top-1 for data sets."""
        return self.spec.metric(logits, y)

    def model_hints(self) -> dict[str, Any]:
        """Shape facts a model builder may take: channels, features, classes, image size,
        spatial axes; for a procedural task also ``out_channels``, its classes per position."""
        x = self.example_input()
        hints: dict[str, Any] = {
            "in_channels": int(x.shape[1]),
            "in_features": int(math.prod(x.shape[1:])),
            "num_classes": self.num_classes,
            "input_shape": tuple(int(s) for s in x.shape[1:]),
            "spatial_dims": x.dim() - 2,
        }
        if self.dataset is None:  # per-position classes: the output channels
            hints["out_channels"] = self.num_classes
        return hints
