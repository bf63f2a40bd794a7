"""The checks of a :class:`~deqkit.train.TrainConfig`, run where it is built."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .._validate import choice, flag, integer, invalid, real
from ..nn import DEQSettings
from ..tasks import available_tasks, get_task
from ._choices import (
    AMP,
    DEQ_ONLY_FIELDS,
    DEVICES,
    DIST_BACKENDS,
    DTYPES,
    MODES,
    OPTIMIZERS,
    RECURRENT_ONLY_FIELDS,
    SCHEDULES,
)

if TYPE_CHECKING:
    from ._config import TrainConfig

__all__ = ["validate"]


def validate(config: TrainConfig) -> None:
    """Check every field of ``config`` and how they combine.

    Raises:
        ValueError: A bad value, named as the config names it (``Invalid max_iter: 2.5
            (expected an integer >= 1)``), or fields that do not go together (``epochs`` for
            a procedural task, recurrent fields in deq mode, ...).
        TypeError: Solver or recipe settings of the wrong kind (from the DEQ and Recipe).
    """
    choice("task", config.task, available_tasks())
    task = get_task(config.task)
    procedural = task.procedural
    if procedural:
        integer("difficulty", config.difficulty, task.min_difficulty, optional=True)
        for d in config.eval_difficulties or ():
            integer("eval_difficulties entry", d, task.min_difficulty, of=config.task)
        if config.eval_difficulties is not None and not config.eval_difficulties:
            raise ValueError("eval_difficulties must not be empty (None means (difficulty,))")
        if config.epochs is not None:
            raise ValueError(
                f"epochs applies to data sets only; {config.task!r} draws a fresh batch every "
                "step: set steps instead"
            )
    else:
        for name in ("difficulty", "eval_difficulties"):
            if getattr(config, name) is not None:
                raise ValueError(
                    f"{name} applies to {_procedural_names()} only, got {name}="
                    f"{getattr(config, name)!r} for task {config.task!r}"
                )
    if task.reads_files != (config.data_root is not None):
        need = "requires" if task.reads_files else "does not take"
        raise ValueError(f"task {config.task!r} {need} data_root (got {config.data_root!r})")
    if config.model is not None and (not isinstance(config.model, str) or not config.model):
        raise invalid("model", config.model, "a non-empty string or None")
    choice("dtype", config.dtype, DTYPES)
    choice("mode", config.mode, MODES)
    _check_mode(config)
    choice("optimizer", config.optimizer, OPTIMIZERS)
    real("lr", config.lr, low=0.0, low_open=True)
    real("weight_decay", config.weight_decay, low=0.0)
    real("momentum", config.momentum, low=0.0, high=1.0, high_open=True)
    if config.optimizer != "sgd" and config.momentum != 0.0:
        raise ValueError(f"momentum applies to optimizer='sgd' only, got {config.momentum!r}")
    choice("schedule", config.schedule, SCHEDULES)
    integer("warmup_steps", config.warmup_steps, 0)
    if config.grad_clip is not None:
        real("grad_clip", config.grad_clip, low=0.0, low_open=True)
    integer("steps", config.steps, 1, optional=True)
    integer("epochs", config.epochs, 1, optional=True)
    if config.steps is not None and config.epochs is not None:
        raise ValueError(
            f"give steps or epochs, not both (got steps={config.steps}, epochs={config.epochs})"
        )
    integer("batch_size", config.batch_size, 1)
    integer("augment_shift", config.augment_shift, 0)
    if procedural and config.augment_shift:
        raise ValueError(
            f"augment_shift applies to data sets only; {config.task!r} draws a fresh batch "
            f"every step (got augment_shift={config.augment_shift})"
        )
    integer("train_pool", config.train_pool, 1, optional=True)
    if not procedural and config.train_pool is not None:
        raise ValueError(
            f"train_pool applies to procedural tasks only; {config.task!r} is a data set "
            f"with its own training split (got train_pool={config.train_pool})"
        )
    integer("log_every", config.log_every, 1)
    for name in ("eval_every", "eval_size", "eval_batch_size", "eval_max_iter", "checkpoint_every"):
        integer(name, getattr(config, name), 1, optional=True)
    integer("seed", config.seed, 0)
    if config.out_dir is not None and (not isinstance(config.out_dir, str) or not config.out_dir):
        raise invalid("out_dir", config.out_dir, "a non-empty path or None")
    choice("device", config.device, DEVICES)
    choice("amp", config.amp, AMP)
    flag("compile", config.compile)
    choice("dist_backend", config.dist_backend, DIST_BACKENDS)
    if config.compile and config.jac_penalty > 0:
        raise ValueError(
            "compile=True cannot be combined with jac_penalty > 0: the penalty "
            "differentiates a vector-Jacobian product of f (double backward), which "
            "torch.compile's AOTAutograd does not support"
        )


def _check_mode(config: TrainConfig) -> None:
    """The DEQ settings (checked by :class:`~deqkit.DEQSettings`) and the recipe fields
    (deq mode, by the Recipe) or the recurrent ones, never the other mode's."""
    defaults = {f.name: f for f in dataclasses.fields(config)}

    def default(name: str) -> Any:
        f = defaults[name]
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    if config.mode == "recurrent":
        changed = [n for n in config.deq if n != "max_iter"]
        changed += [n for n in DEQ_ONLY_FIELDS if getattr(config, n) != default(n)]
        if config.eval_max_iter is not None:
            changed.append("eval_max_iter")
        if changed:
            raise ValueError(
                f"{', '.join(changed)} apply to mode='deq' only; mode='recurrent' runs "
                "train_iters weight-tied iterations (max_iter sets the evaluation count)"
            )
        _check_deq(config)
        integer("train_iters", config.train_iters, 1)
        real("progressive_alpha", config.progressive_alpha, low=0.0, high=1.0)
        return
    changed = [n for n in RECURRENT_ONLY_FIELDS if getattr(config, n) != default(n)]
    if changed:
        raise ValueError(f"{', '.join(changed)} apply to mode='recurrent' only")
    real("jac_penalty", config.jac_penalty, low=0.0)
    integer("jac_samples", config.jac_samples, 1)
    try:
        config.recipe()
    except (TypeError, ValueError) as err:
        message = str(err).replace("Recipe ", "").replace("jac_weight", "jac_penalty")
        raise type(err)(message.replace("pretrain_gradient", "pretrain_backward")) from err
    _check_deq(config)


def _check_deq(config: TrainConfig) -> None:
    """The DEQ settings given, checked where the config is built rather than at the first
    step, by :class:`~deqkit.DEQSettings` with its defaults for the settings left to the
    model. A message naming the setting (``Invalid max_iter: ...``) is passed on as it is."""
    try:
        DEQSettings(**config.deq)
    except (TypeError, ValueError) as err:
        if str(err).startswith("Invalid "):
            raise
        raise type(err)(f"invalid solver settings: {err}") from err


def _procedural_names() -> str:
    """``"prefix_sums and mazes"``: the procedural tasks, for messages."""
    names = available_tasks(procedural=True)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
