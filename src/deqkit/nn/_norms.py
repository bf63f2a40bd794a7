"""Spectral and weight normalisation of every linear/conv layer of a cell."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations

from .._validate import integer

__all__ = ["apply_spectral_norm", "apply_weight_norm"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _targets(module: nn.Module, types: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    return [m for m in module.modules() if isinstance(m, types) and m.weight is not None]


def apply_spectral_norm(
    module: nn.Module,
    *,
    n_power_iterations: int = 1,
    warmup: int = 100,
    types: tuple[type[nn.Module], ...] = _LAYERS,
) -> nn.Module:
    """Spectral-normalise the ``weight`` of every layer of ``types`` in ``module``, in place.

    Uses :func:`torch.nn.utils.parametrizations.spectral_norm`: the weight becomes
    ``W / sigma(W)`` with ``sigma`` estimated by power iteration, so each linear layer has
    ``||W||_2 <= 1`` (up to the power-iteration error) without any state the user must reset.
    For a convolution ``sigma`` is the norm of the reshaped ``[out, in * k]`` kernel, which
    bounds but does not equal the operator norm. :class:`deqkit.DEQ` computes the weights
    once per call, so the map is the same at every solver iteration.

    PyTorch runs 15 power iterations at registration; for a random matrix, whose top singular
    values are close, that leaves ``sigma`` underestimated by up to a few percent (norms up to
    1.037 were seen), so ``warmup`` more iterations are run once here.

    Args:
        module: The cell (e.g. ``f`` of a DEQ).
        n_power_iterations: Power iterations per forward pass (training mode). Default ``1``.
        warmup: Power iterations run once after registration, >= 0. Default ``100``.
        types: Layer classes to normalise. Default linear and 1/2/3-d convolutions.

    Returns:
        ``module`` itself.
    """
    warmup = integer("warmup", warmup, 0)
    layers = _targets(module, types)
    for m in layers:
        parametrizations.spectral_norm(m, n_power_iterations=n_power_iterations)
    was_training = module.training
    module.train()
    with torch.no_grad():
        for m in layers:
            for _ in range(-(-warmup // n_power_iterations)):
                m.weight  # noqa: B018 (each access in training mode is a power iteration)
    module.train(was_training)
    return module


def apply_weight_norm(
    module: nn.Module, *, types: tuple[type[nn.Module], ...] = _LAYERS
) -> nn.Module:
    """Weight-normalise (``W = g v / ||v||``, Salimans & Kingma 2016) every layer, in place.

    Uses :func:`torch.nn.utils.parametrizations.weight_norm`. Returns ``module``.
    """
    for m in _targets(module, types):
        parametrizations.weight_norm(m)
    return module
