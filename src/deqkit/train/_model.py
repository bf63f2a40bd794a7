"""Building the model a config names, and the training objective."""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import models
from ..nn import Packer
from ._config import TrainConfig
from ._data import Data

__all__ = [
    "Objective",
    "autocast",
    "build",
    "check_amp",
    "check_recipes",
    "compile_cell",
    "full_precision",
    "is_equilibrium",
    "model_from_config",
]

_EQUILIBRIUM_API = ("deq", "cell", "inject", "initial_state", "readout", "iterate")


def is_equilibrium(model: nn.Module) -> bool:
    """Whether ``model`` follows the equilibrium-model protocol (a DEQ plus its parts)."""
    return all(hasattr(model, name) for name in _EQUILIBRIUM_API)


def _factory(name: str) -> tuple[Callable[..., nn.Module], Callable[..., Any]]:
    """The builder for ``name`` and the callable whose signature says what it accepts."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"model {name!r}: cannot import {module_name!r} ({err})") from err
        try:
            factory = getattr(module, attr)
        except AttributeError:
            raise ValueError(f"model {name!r}: {module_name!r} has no {attr!r}") from None
        return factory, factory
    if name not in models.available_models():
        raise ValueError(
            f"unknown model {name!r}; valid: {', '.join(models.available_models())}, or "
            "'package.module:factory' for a model of your own"
        )

    def build(**kwargs: Any) -> nn.Module:
        return models.build_model(name, **kwargs)

    # the registered constructor, whose parameters say which task facts (``in_features``,
    # ``num_classes``, ...) it takes
    return build, models.model_factory(name)


def model_from_config(config: TrainConfig) -> nn.Module:
    """The model ``config`` names, in ``config.dtype``, on the CPU, in training mode.

    In deq mode its DEQ is built with ``config.deq`` over the model's own settings
    (``model.deq.settings``); an explicit model, which has no DEQ, ignores them.
    Shape facts of the task (``in_channels``, ``in_features``, ``num_classes``,
    ``input_shape``, ``spatial_dims``, and for procedural tasks ``out_channels``) are
    passed when the builder names them as parameters and
    ``config.model_kwargs`` does not already give them. Seed torch before calling for a
    reproducible initialisation (:func:`train` seeds with ``config.seed``).

    Raises:
        ValueError: If the model cannot be found or built with these arguments.
    """
    return build(config, Data(config))


def build(config: TrainConfig, data: Data) -> nn.Module:
    """:func:`model_from_config` with the task's :class:`Data` already loaded."""
    factory, target = _factory(config.model_name)
    kwargs = dict(config.model_kwargs)
    if config.model is None:  # the task's default model: its measured default arguments
        kwargs = {**config.task_spec.default_model_kwargs, **kwargs}
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in data.model_hints().items():
        if key in params and key not in kwargs:
            kwargs[key] = value
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"cannot build model {config.model_name!r} with model_kwargs {kwargs}: {err}"
        ) from err
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model {config.model_name!r} built a {type(model).__name__}, not a Module"
        )
    if config.mode == "recurrent" and not is_equilibrium(model):
        raise ValueError(
            f"mode='recurrent' needs an equilibrium model with iterate(); "
            f"{config.model_name!r} is not one"
        )
    if config.mode == "deq" and config.deq and is_equilibrium(model):
        # The config's DEQ settings over the model's own (its defaults and any setting in
        # model_kwargs): the model holds them, no call passes them again.
        try:
            model.deq.settings = model.deq.settings.replace(**config.deq)
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"model {config.model_name!r} with the deq settings {config.deq}: {err}"
            ) from err
    if config.weight_norm:
        if not is_equilibrium(model):
            raise ValueError(
                f"weight_norm needs an equilibrium model (a DEQ); {config.model_name!r} is not one"
            )
        config.recipe().prepare(model.cell)
    return model.to(getattr(torch, config.dtype))


def autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 when ``config.amp == "bf16"``, else nothing."""
    if config.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_amp(config: TrainConfig, device: torch.device) -> None:
    """Raise ``ValueError`` when ``config.amp`` cannot run on ``device`` in ``config.dtype``."""
    if config.amp == "none":
        return
    if config.dtype != "float32":
        raise ValueError(f"amp='bf16' needs dtype='float32', got dtype={config.dtype!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp='bf16': {torch.cuda.get_device_name(device)} lacks bfloat16")


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 if autocast left it in a half type; float32/64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class Objective(nn.Module):
    """The loss of one batch, as a module, so ``DistributedDataParallel`` can wrap all of it.

    DDP synchronises gradients only for computation run inside its own ``forward``; the
    recurrent progressive loss and the Jacobian penalty call the model's parts directly, so
    the whole objective is the module DDP wraps.

    The training recipes of the config (:meth:`TrainConfig.recipe`: pretraining, Jacobian
    penalty, fixed-point correction, initial states, budget jitter) act here, step by step.

    Call: ``objective(x, y, generator, step=0) -> (loss, logits or None, info or None,
    penalty)``, ``x``/``y`` a batch on ``device`` (``x`` in ``config.dtype``), ``generator``
    the ``torch.Generator`` of the step's random choices (budget jitter, mixed initial
    states, the Jacobian estimate's probes, the recurrent loss's ``n`` and ``k``), ``step``
    the training step (from 0) the recipes schedule by. ``loss`` is a scalar (float32 under
    ``amp="bf16"``); ``logits`` and ``info`` (a :class:`~deqkit.DEQInfo`, ``None`` for an
    explicit model) are the model's outputs, both ``None`` in ``mode="recurrent"``;
    ``penalty`` is the Jacobian estimate (unweighted, scalar) on steps that use it, else
    ``None``.

    Args:
        model: The model, as :func:`model_from_config` builds it.
        config: The run's config (mode, recipes, ``amp``; the DEQ settings are the
            model's, built with ``config.deq``).
        device: Where the batches are (for autocast).
        num_classes: The task's classes (per position for a procedural task); logits with
            another count along dim 1 raise ``ValueError`` naming both. Default ``None``:
            not checked.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        device: torch.device,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.model = model
        self.config = config
        self.device = device
        self.num_classes = num_classes
        self.equilibrium = is_equilibrium(model)
        self.recipe = config.recipe()

    def forward(
        self, x: Tensor, y: Tensor, generator: torch.Generator, step: int = 0
    ) -> tuple[Tensor, Tensor | None, Any, Tensor | None]:
        c = self.config
        model = self.model
        with autocast(c, self.device):
            if c.mode == "recurrent":
                loss = models.progressive_loss(
                    model, x, y, c.train_iters, c.progressive_alpha, generator=generator
                )
                return full_precision(loss), None, None, None
            if not self.equilibrium:
                logits, info = model(x)
                self._check_classes(logits)
                return F.cross_entropy(full_precision(logits), y), logits, info, None
            plan = self.recipe.plan(step, model.deq, generator=generator)
            z0 = None
            if self.recipe.init != "zeros":
                z0 = plan.initial_state(model.initial_state(x))
            logits, info = model(x, z0, **plan.overrides)
            self._check_classes(logits)
            loss = F.cross_entropy(full_precision(logits), y)
            if plan.overrides.get("correction"):
                loss = loss + plan.correction_loss(
                    info, lambda z: F.cross_entropy(full_precision(model.readout(z)), y)
                )
            penalty = None
            if plan.jac_weight > 0:
                penalty = _jacobian_penalty(model, x, info.forward.z, plan)
                loss = loss + plan.jac_weight * penalty
        return loss, logits, info, penalty

    def _check_classes(self, logits: Tensor) -> None:
        # a shape read, no synchronisation; without it a model with too few classes fails
        # inside cross_entropy ("Target 5 is out of bounds") and one with too many trains
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(
                f"model {self.config.model_name!r} gives {logits.shape[1]} classes along dim 1 "
                f"(logits {tuple(logits.shape)}), the task {self.config.task!r} has "
                f"{self.num_classes}; set the model's output size (out_channels, num_classes) "
                f"to {self.num_classes} or leave it out of model_kwargs to have it filled in"
            )


def _jacobian_penalty(model: nn.Module, x: Tensor, z_flat: Tensor, plan: Any) -> Tensor:
    u = model.inject(x)
    packer = Packer.of(model.initial_state(x), "initial_state(x)")

    def f(z: Tensor) -> Tensor:
        return packer.pack(model.cell(packer.unpack(z), u)).to(z.dtype)

    return full_precision(plan.jacobian_estimate(f, z_flat))


def check_recipes(config: TrainConfig, model: nn.Module) -> None:
    """Raise ``ValueError`` when ``config`` sets a training recipe (or ``eval_max_iter``)
    and ``model`` is not an equilibrium model (the recipes act on its DEQ)."""
    recipe_fields = config.recipe_fields()
    if config.eval_max_iter is not None:
        recipe_fields.append("eval_max_iter")
    if recipe_fields and not is_equilibrium(model):
        raise ValueError(
            f"{', '.join(recipe_fields)} {'needs' if len(recipe_fields) == 1 else 'need'} "
            "an equilibrium model (a DEQ); "
            f"{config.model_name!r} is not one"
        )


def compile_cell(model: nn.Module) -> None:
    """``torch.compile`` the cell ``f`` of an equilibrium model in place (``compile=True``)."""
    if not is_equilibrium(model):
        raise ValueError("compile=True compiles the cell f of an equilibrium model; this has none")
    model.cell.compile()
