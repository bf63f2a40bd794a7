"""Spectral, weight and operator-norm-bounded normalisation of every linear/conv layer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from .._validate import integer

__all__ = ["apply_norm_bound", "apply_spectral_norm", "apply_weight_norm", "operator_norm_bound"]

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


def operator_norm_bound(weight: Tensor) -> Tensor:
    r"""A guaranteed upper bound on the operator 2-norm of a linear layer or stride-1 conv.

    For a linear weight ``[out, in]`` it is the spectral norm itself. For a convolution
    kernel ``[out, in, k_1, ..., k_d]`` with ``T = k_1 \cdots k_d`` taps (any zero padding,
    stride 1) it is the smaller of two bounds, each exact to prove:

    .. math:: \|\mathrm{conv}\|_2 \le \min\Big(\sum_t \|K_t\|_2,\;
              \sqrt{T}\,\|K_{\mathrm{mat}}\|_2\Big)

    where ``K_t [out, in]`` is tap ``t`` (the convolution is the sum over taps of ``K_t``
    applied to a shifted, zero-padded input, and a shift has norm <= 1) and ``K_mat`` the
    ``[out, in * T]`` reshaped kernel (each input entry appears in at most ``T`` columns of
    the unfolded input). The reshaped norm alone, what spectral normalisation divides by, is
    not a bound on a convolution. Computed with exact singular values
    (:func:`torch.linalg.matrix_norm`), differentiable.

    Args:
        weight: ``[out, in]`` or ``[out, in, *kernel]``.

    Returns:
        A scalar tensor, the bound.
    """
    if not isinstance(weight, Tensor) or weight.dim() < 2:
        raise ValueError(
            f"weight must be a tensor [out, in] or [out, in, *kernel], got "
            f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}"
        )
    if weight.dim() == 2:
        return torch.linalg.matrix_norm(weight, ord=2)
    taps = weight.flatten(2).permute(2, 0, 1)  # [T, out, in]
    tap_sum = torch.linalg.matrix_norm(taps, ord=2).sum()
    reshaped = math.sqrt(taps.shape[0]) * torch.linalg.matrix_norm(weight.flatten(1), ord=2)
    return torch.minimum(tap_sum, reshaped)


class _NormBound(nn.Module):
    """Parametrization ``W -> W / max(1, operator_norm_bound(W))``."""

    def forward(self, weight: Tensor) -> Tensor:
        return weight / operator_norm_bound(weight).clamp(min=1.0)


def apply_norm_bound(
    module: nn.Module, *, types: tuple[type[nn.Module], ...] = _LAYERS
) -> nn.Module:
    r"""Bound the operator norm of every layer of ``types`` in ``module`` by 1, in place.

    Each weight becomes ``W / max(1, b(W))`` with ``b`` the guaranteed bound of
    :func:`operator_norm_bound` (:mod:`torch.nn.utils.parametrize`; the raw weight is the
    trained parameter). Unlike :func:`apply_spectral_norm` the result holds exactly and for
    convolutions too: every such layer is 1-Lipschitz, so a cell built from them and
    1-Lipschitz activations has a Lipschitz constant it can state (``ContractiveCell``s of
    the recall networks). Strided convolutions are refused (the bound assumes stride 1).

    Args:
        module: The module whose layers to bound.
        types: Layer classes. Default linear and 1/2/3-d convolutions.

    Returns:
        ``module`` itself.

    Raises:
        ValueError: A convolution with a stride other than 1, or dilation.
    """
    for m in _targets(module, types):
        if isinstance(m, nn.modules.conv._ConvNd) and (
            any(s != 1 for s in m.stride) or any(d != 1 for d in m.dilation)
        ):
            raise ValueError(
                f"apply_norm_bound: {type(m).__name__} with stride {m.stride} and dilation "
                f"{m.dilation}; the bound holds for stride 1, dilation 1 only"
            )
        parametrize.register_parametrization(m, "weight", _NormBound())
    return module
