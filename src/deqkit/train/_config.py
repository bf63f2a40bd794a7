"""The training configuration: one frozen dataclass, validated where it is built."""

from __future__ import annotations

import dataclasses
import json
import numbers
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..nn import Recipe
from ..tasks import Task, get_task
from ._checks import validate
from ._choices import DEQ_KEYS, RECIPE_FIELDS, RESUMABLE_FIELDS
from ._deq_table import add_views, flat_keywords, normalise, read_flat, set_key

__all__ = ["RESUMABLE_FIELDS", "TrainConfig", "load_config"]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; ``train(config)`` is reproducible from it alone.

    Build it directly, with :meth:`from_dict`, or from a JSON or TOML file with
    :func:`load_config`. Every field is checked in ``__post_init__``; a bad value raises
    ``ValueError`` naming the field (``Invalid max_iter: 2.5 (expected an integer >= 1)``),
    a dict or list field given as something else ``TypeError``.
    ``dataclasses.replace(config, ...)`` re-validates.

    Task:
        task: ``"prefix_sums"`` or ``"mazes"`` (procedural: a fresh batch every step),
            ``"digits"``, ``"mnist_subset"``, ``"mnist1d"`` (installed data sets), or
            ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` (files under ``data_root``).
            Default ``"prefix_sums"``.
        difficulty: Training difficulty of a procedural task: string length for prefix sums
            (default 16), cells per side ``k`` for mazes (default 9). ``None`` for data sets.
        eval_difficulties: Difficulties to evaluate at (procedural tasks); default
            ``(difficulty,)``. Must be ``None`` for data sets, which use their test split.
        data_root: Folder of the file data sets; ``None`` otherwise.

    Model:
        model: Name for :func:`deqkit.models.build_model`, or ``"package.module:factory"``
            for a model of your own (called with ``model_kwargs``). Default per task:
            ``recall1d`` (prefix sums), ``recall2d`` (mazes), ``deq_conv`` (image data
            sets), ``deq_mlp`` (mnist1d).
        model_kwargs: Keyword arguments of the model builder (``width``, ...). Input
            channels and class counts are filled in from the task where the builder takes
            them and they are not given; the task's default model also gets its
            :attr:`~deqkit.tasks.Task.default_model_kwargs` (recall networks:
            ``norm_groups=4``, as in every measured configuration). Default ``{}``.
        dtype: ``"float32"`` (default) or ``"float64"``, for the parameters and inputs.

    DEQ settings:
        mode: ``"deq"`` (solve for the fixed point, implicit/phantom/unrolled gradient) or
            ``"recurrent"`` (a fixed number of weight-tied iterations trained with
            :func:`deqkit.models.progressive_loss`). Default ``"deq"``.
        deq: The :class:`deqkit.DEQSettings` given for the model's DEQ, by name: a TOML
            ``[deq]`` table or JSON object such as ``{"solver": "anderson", "tol": 1e-3,
            "max_iter": 30, "backward": "phantom"}``. The model is built with them
            (:func:`model_from_config`: its own defaults, then these); a setting left out
            keeps the model's own (``monotone_mlp`` solves with picard, 100 evaluations,
            implicit gradient; the recall networks with ``tol=1e-3``; the others with the
            :class:`~deqkit.DEQSettings` defaults: anderson, ``tol=1e-4``, 30 evaluations,
            ``Phantom(5, 0.5)``, except ``deq_conv``'s gradient, ``Phantom(8, 0.7)``). Only
            evaluation changes them per call (``max_iter``, ``tol``: :func:`evaluate`; the
            solver and budgets of the studies). Keys:
            ``solver`` (forward solver name), ``solver_options`` (its hyperparameters, e.g.
            ``{"m": 6}``), ``tol``, ``max_iter``, ``stop`` (``"rel"``/``"abs"``),
            ``backward`` (``"implicit"``, ``"phantom"``, ``"unrolled"``, or a spec table
            ``{ name = "implicit", fallback = { name = "phantom", k = 5 } }``, see
            :func:`deqkit.nn.make_gradient`), ``backward_options`` (phantom ``k``/``tau``
            or the adjoint solver's hyperparameters), ``backward_solver``, ``backward_tol``,
            ``backward_max_iter`` (the adjoint solve, implicit only); ``correction`` is the
            recipe field below. In recurrent mode only ``max_iter`` may be given: the
            number of iterations run at evaluation (default ``train_iters``). Default ``{}``.

        The same settings may be given as top-level keys and keywords, the older form
        (``solver = "anderson"``, ``TrainConfig(tol=1e-3)``); they are read into ``deq``
        (in a file or :meth:`from_dict`, giving one both ways is an error; a keyword of the
        constructor or of ``dataclasses.replace`` sets that entry, ``None`` removes it), and
        ``config.tol`` and the like read ``deq`` (``None`` where not given).

    Recipes (``mode="deq"``; the fields of :class:`deqkit.nn.Recipe`, all off by default):
        pretrain_steps, pretrain_iters, pretrain_solver, pretrain_backward: Train the first
            ``pretrain_steps`` steps as a weight-tied stack of ``pretrain_iters`` (default
            10) steps of ``pretrain_solver`` (default ``"picard"``) with the
            ``pretrain_backward`` gradient (default ``"unrolled"``); ``None`` keeps the
            model's solver or budget (only the gradient changes).
        jac_penalty: Weight ``gamma`` of the Jacobian penalty
            ``gamma * mean(jacobian_frobenius(f, z*))``; ``0`` (default) turns it off.
        jac_samples: Hutchinson probes per step for the penalty. Default ``1``.
        jac_every, jac_start, jac_stop: Apply the penalty every ``jac_every`` steps
            (default 1) from step ``jac_start`` (default 0) on, before step ``jac_stop``
            (default ``None``: always).
        correction, correction_gamma: Fixed-point correction loss over ``correction``
            intermediate iterates, weights ``correction_gamma ** (n + 1 - i)``.
        init, init_p, init_scale: Training initial states, ``"zeros"`` (default),
            ``"random"`` or ``"mixed"`` (a fraction ``init_p``), noise std ``init_scale``.
        max_iter_jitter: Draw each step's forward budget from ``max_iter +- jitter``.
        weight_norm: Weight-normalise every linear/conv layer of the cell.
        train_iters: Iterations of the recurrent run (recurrent mode). Default ``30``.
        progressive_alpha: Weight of the progressive term (recurrent mode), in ``[0, 1]``.
            Default ``0.5``.

    Optimisation:
        optimizer: ``"adam"``, ``"adamw"`` (default) or ``"sgd"``.
        lr: Peak learning rate, > 0. Default ``2e-3`` (every configuration of the training
            grid, ``experiments/training``).
        weight_decay: >= 0. Default ``0.0``.
        momentum: SGD momentum in ``[0, 1)``; must be ``0`` for Adam(W). Default ``0.0``.
        schedule: ``"cosine"`` (default; to 0 at the last step) or ``"constant"``, after a
            linear warm-up of ``warmup_steps`` steps (default ``50``). A cosine run past its
            warm-up cannot be resumed with another step count; a constant one can.
        grad_clip: Clip the global gradient norm to this value; ``None`` (default): no clip.
        steps: Optimiser steps; default 1000, or ``epochs`` times the steps per epoch for a
            data set. Giving both ``steps`` and ``epochs`` is an error.
        epochs: Passes over a data set's training split (data sets only). Default ``None``.
        batch_size: Global batch size (split evenly over data-parallel ranks). Default ``64``.
        augment_shift: Data sets only: shift every training input by a random whole number
            of pixels in ``[-augment_shift, augment_shift]`` along each spatial axis (edges
            replicated), drawn per sample from ``(seed, step, index)``. ``0`` (default): off.
        train_pool: Procedural tasks only: train on a fixed pool of this many samples at the
            training difficulty, generated once from ``seed``, instead of a fresh sample
            every time; sample ``i`` of step ``s`` is a pool member drawn from ``(seed, s,
            i)``, passed through the task's ``augment`` where it has one (the protocol of
            HRM and TRM on Sudoku: 1,000 boards under random symmetries). It also makes a
            costly generator (Sudoku at many blanks) cost once per run. ``None`` (default):
            fresh samples.

    Logging, evaluation, checkpoints:
        log_every: Write a metrics record every this many steps (and at the last). Default 1.
        eval_every: Evaluate every this many steps; ``None`` (default): at the end only.
        eval_size: Evaluation samples per difficulty; default 1000 for procedural tasks and
            the whole test split for data sets.
        eval_batch_size: Evaluation batch size; default ``batch_size``.
        eval_max_iter: Forward budget of the run's evaluations (deq mode): its ``eval``
            records, and :func:`evaluate` / ``deqkit eval`` when they are given none.
            ``None`` (default): the model's ``max_iter``, the training budget. The field
            solves longer at test time than in training (torchdeq's ``eval_f_max_iter``,
            locuslab/deq's ``TEST.F_THRES``): a budget that stops many training solves
            short of ``tol`` leaves the evaluated state short of the fixed point too
            (digits, ``experiments/training``: 45% of solves unconverged at 30, 1-2% at 100).
        checkpoint_every: Save ``checkpoint.pt`` every this many steps; ``None`` (default):
            at the end (and on Ctrl-C) only.

    Run:
        seed: Seeds the model initialisation, the data stream and every step's randomness.
            Default ``0``.
        out_dir: Run folder; it must not exist or be empty (unless resuming). Default
            ``runs/{task}-{model}-{mode}-seed{seed}``.
        device: ``"auto"`` (default: CUDA if available), ``"cpu"`` or ``"cuda"``.
        amp: ``"none"`` (default) or ``"bf16"`` (autocast the forward in bfloat16; solver
            state stays float32).
        compile: ``torch.compile`` the model's cell ``f`` in place. Default ``False``.
        dist_backend: Process-group backend under ``torchrun``: ``"auto"`` (default: nccl on
            CUDA, gloo on CPU), ``"gloo"`` or ``"nccl"``.
    """

    task: str = "prefix_sums"
    difficulty: int | None = None
    eval_difficulties: tuple[int, ...] | None = None
    data_root: str | None = None
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    mode: str = "deq"
    deq: dict[str, Any] = field(default_factory=dict)
    jac_penalty: float = 0.0
    jac_samples: int = 1
    jac_every: int = 1
    jac_start: int = 0
    jac_stop: int | None = None
    pretrain_steps: int = 0
    pretrain_iters: int | None = 10
    pretrain_solver: str | None = "picard"
    pretrain_backward: str | dict[str, Any] = "unrolled"
    correction: int = 0
    correction_gamma: float = 0.8
    init: str = "zeros"
    init_p: float = 0.5
    init_scale: float = 1.0
    max_iter_jitter: int = 0
    weight_norm: bool = False
    train_iters: int = 30
    progressive_alpha: float = 0.5
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 50
    grad_clip: float | None = None
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 64
    augment_shift: int = 0
    train_pool: int | None = None
    log_every: int = 1
    eval_every: int | None = None
    eval_size: int | None = None
    eval_batch_size: int | None = None
    eval_max_iter: int | None = None
    checkpoint_every: int | None = None
    seed: int = 0
    out_dir: str | None = None
    device: str = "auto"
    amp: str = "none"
    compile: bool = False
    dist_backend: str = "auto"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, here
        for name in ("model_kwargs", "deq"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise TypeError(f"{name} must be a dict with string keys, got {value!r}")
            set_(self, name, dict(value))
        set_(self, "deq", normalise(self.deq))
        if self.eval_difficulties is not None:
            if isinstance(self.eval_difficulties, str | bytes) or not hasattr(
                self.eval_difficulties, "__iter__"
            ):
                raise TypeError(
                    f"eval_difficulties must be a list of ints, got {self.eval_difficulties!r}"
                )
            set_(self, "eval_difficulties", tuple(self.eval_difficulties))
        if isinstance(self.pretrain_backward, dict):
            set_(self, "pretrain_backward", dict(self.pretrain_backward))
        for name in (
            "lr",
            "weight_decay",
            "momentum",
            "jac_penalty",
            "progressive_alpha",
            "correction_gamma",
            "init_p",
            "init_scale",
        ):
            if _is_int(getattr(self, name)):
                set_(self, name, float(getattr(self, name)))
        if _is_int(self.grad_clip):
            set_(self, "grad_clip", float(self.grad_clip))
        if self.out_dir is not None and isinstance(self.out_dir, Path):
            set_(self, "out_dir", str(self.out_dir))
        validate(self)

    def recipe_fields(self) -> list[str]:
        """The recipe fields set away from their defaults (they need an equilibrium model)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return [n for n in RECIPE_FIELDS if getattr(self, n) != defaults[n]]

    def recipe(self) -> Recipe:
        """The training recipes these fields describe, as a :class:`deqkit.nn.Recipe`."""
        return Recipe(**{field: getattr(self, name) for name, field in RECIPE_FIELDS.items()})

    def solver_overrides(self) -> dict[str, Any]:
        """The DEQ settings given, a copy of ``deq`` (what the model is built with in deq
        mode). The older name of ``dict(config.deq)``; nothing passes them per call."""
        return dict(self.deq)

    @property
    def task_spec(self) -> Task:
        """The registry entry of ``task`` (:func:`deqkit.tasks.get_task`): its generator or
        loader, default model, difficulty range and metric."""
        return get_task(self.task)

    @property
    def procedural(self) -> bool:
        """Whether the task draws a fresh batch every step (prefix sums, mazes)."""
        return self.task_spec.procedural

    @property
    def model_name(self) -> str:
        """``model``, or the task's default model."""
        return self.model if self.model is not None else self.task_spec.default_model

    @property
    def train_difficulty(self) -> int | None:
        """``difficulty``, or the task's default; ``None`` for data sets."""
        if not self.procedural:
            return None
        if self.difficulty is not None:
            return self.difficulty
        return self.task_spec.default_difficulty

    @property
    def eval_levels(self) -> tuple[int | None, ...]:
        """The difficulties evaluated: ``eval_difficulties`` or ``(train_difficulty,)``."""
        if self.eval_difficulties is not None:
            return self.eval_difficulties
        return (self.train_difficulty,)

    @property
    def run_dir(self) -> Path:
        """``out_dir``, or ``runs/{task}-{model}-{mode}-seed{seed}``."""
        if self.out_dir is not None:
            return Path(self.out_dir)
        name = self.model_name.replace(":", "-").replace(".", "-").replace("/", "-")
        return Path("runs") / f"{self.task}-{name}-{self.mode}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples as lists); :meth:`from_dict` inverts it."""
        out = dataclasses.asdict(self)
        if out["eval_difficulties"] is not None:
            out["eval_difficulties"] = list(out["eval_difficulties"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict; missing keys take their defaults.

        Raises:
            ValueError: If a key is not a field (all unknown keys are named), or a value is
                invalid.
        """
        if not isinstance(data, dict):
            raise TypeError(f"config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - set(DEQ_KEYS))
        if unknown:
            raise ValueError(
                f"unknown config key(s): {', '.join(unknown)}; valid keys: "
                f"{', '.join(sorted(names))} (and the deq settings as top-level keys: "
                f"{', '.join(DEQ_KEYS)})"
            )
        data = read_flat(data)
        return cls(**data)

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied and re-validated; unknown names raise ValueError.

        A DEQ setting given by name (``with_overrides(tol=1e-5)``) sets that entry of
        ``deq`` (``None`` removes it); ``deq={...}`` replaces the whole table.
        """
        data = self.to_dict()
        for key, value in changes.items():
            set_key(data, key, value)
        return TrainConfig.from_dict(data)


TrainConfig.__init__ = flat_keywords(TrainConfig.__init__)  # type: ignore[method-assign]
add_views(TrainConfig)


def load_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` from a ``.json`` or ``.toml`` file: a table of fields,
    the DEQ settings in a ``[deq]`` table or as top-level keys (not both for one setting).

    Raises:
        ValueError: Unknown suffix, unknown keys or invalid values.
        FileNotFoundError: If ``path`` does not exist.
    """
    path = Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".toml":
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    else:
        raise ValueError(f"config file must end in .json or .toml, got {str(path)!r}")
    return TrainConfig.from_dict(data)
