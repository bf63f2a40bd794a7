"""Models by name, for the command line and experiment configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ._attention import DEQAttention, ExplicitAttention
from ._conv import DEQConv, ExplicitConv
from ._mlp import DEQMLP, ExplicitMLP
from ._monotone import MonotoneMLP
from ._recall import RecallNet

__all__ = ["available_models", "build_model", "model_factory"]

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "recall1d": RecallNet.for_prefix_sums,
    "recall2d": RecallNet.for_mazes,
    "deq_mlp": DEQMLP,
    "deq_conv": DEQConv,
    "monotone_mlp": MonotoneMLP,
    "explicit_mlp": ExplicitMLP,
    "explicit_conv": ExplicitConv,
    "deq_attention": DEQAttention,
    "explicit_attention": ExplicitAttention,
}


def available_models() -> list[str]:
    """The names :func:`build_model` accepts, sorted."""
    return sorted(_MODELS)


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The callable :func:`build_model` calls for ``name``: the model's class, or the
    constructor classmethod (``"recall1d"``: :meth:`RecallNet.for_prefix_sums`, ``"recall2d"``:
    :meth:`RecallNet.for_mazes`). Its signature says which arguments the model takes.

    Args:
        name: One of :func:`available_models`.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(available_models())}")
    return _MODELS[name]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name.

    ========================  ==================================================
    name                      builds
    ========================  ==================================================
    ``"recall1d"``            :meth:`RecallNet.for_prefix_sums` (1-D, 1 channel)
    ``"recall2d"``            :meth:`RecallNet.for_mazes` (2-D, 3 channels)
    ``"deq_mlp"``             :class:`DEQMLP`
    ``"deq_conv"``            :class:`DEQConv`
    ``"monotone_mlp"``        :class:`MonotoneMLP`
    ``"explicit_mlp"``        :class:`ExplicitMLP`
    ``"explicit_conv"``       :class:`ExplicitConv`
    ``"deq_attention"``       :class:`DEQAttention` (transformer-block cell)
    ``"explicit_attention"``  :class:`ExplicitAttention`
    ========================  ==================================================

    Args:
        name: One of :func:`available_models`.
        **kwargs: Constructor arguments of that model (e.g. ``width=96``,
            ``in_features=64``, ``max_iter=50``).

    Returns:
        The model (an :class:`EquilibriumModel` or an :class:`ExplicitModel`).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones), or a bad argument.
        TypeError: an argument the model does not take.
    """
    return model_factory(name)(**kwargs)
