"""Dense equilibrium classifier ``z = act(norm(W z + U x + b))`` and its explicit twin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._validate import choice, integer, real
from ..nn import DEQSettings
from ._base import (
    EquilibriumModel,
    ExplicitModel,
    check_groups,
    spectral_normalise,
)

__all__ = ["DEQMLP", "DenseInjection", "ExplicitMLP", "MLPCell"]

NORMS = ("group", "layer", None)
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class DenseInjection(nn.Module):
    """``u = U flatten(x) + b``: ``[N, *features] -> [N, hidden]``.

    Raises (on call):
        ValueError: ``x`` without a batch dimension, or with another number of features
            per sample than ``in_features``.
    """

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        integer("in_features", in_features, 1)
        integer("hidden", hidden, 1)
        self.in_features = in_features
        self.linear = nn.Linear(in_features, hidden)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[N, ...]`` with ``in_features`` per sample."""
        if x.dim() < 2 or x.shape[1:].numel() != self.in_features:
            raise ValueError(
                f"x must be [N, ...] with in_features={self.in_features} values per sample, "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.linear(x.flatten(1))


class MLPCell(nn.Module):
    r"""Dense cell :math:`f(z, u) = \sigma(\mathrm{norm}(W z + u))`, ``u = U x + b``.

    Args:
        hidden: State width, >= 1.
        norm: ``"group"`` (default, :class:`~torch.nn.GroupNorm` with ``groups`` groups),
            ``"layer"`` (:class:`~torch.nn.LayerNorm`) or ``None``. Both normalise each
            sample on its own, as the solvers require.
        groups: Groups of the group norm; must divide ``hidden``. Default ``8``.
        activation: ``"relu"`` (default), ``"tanh"`` or ``"gelu"``.
        init_scale: Factor on PyTorch's default initialisation of ``W``, > 0. The default
            ``0.5`` lets the injection dominate at first, so Anderson reaches ``1e-5`` on
            every sample at initialisation (at ``1.0`` a few percent of samples do not).

    Raises:
        ValueError: a bad argument, named in the message.
    """

    def __init__(
        self,
        hidden: int,
        *,
        norm: str | None = "group",
        groups: int = 8,
        activation: str = "relu",
        init_scale: float = 0.5,
    ):
        super().__init__()
        integer("hidden", hidden, 1)
        choice("norm", norm, NORMS)
        choice("activation", activation, tuple(ACTIVATIONS))
        real("init_scale", init_scale, 0.0, low_open=True)
        self.linear = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.linear.weight.mul_(init_scale)
        if norm == "group":
            self.norm = nn.GroupNorm(check_groups(groups, hidden), hidden)
        elif norm == "layer":
            self.norm = nn.LayerNorm(hidden)
        else:
            self.norm = nn.Identity()
        self.act = ACTIVATIONS[activation]()

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        return self.act(self.norm(self.linear(z) + u))

    def initial_state(self, u: Tensor) -> Tensor:
        """Zeros ``[N, hidden]``."""
        return u.new_zeros(u.shape)


def _head(hidden: int, num_classes: int) -> nn.Linear:
    integer("num_classes", num_classes, 1)
    return nn.Linear(hidden, num_classes)


class DEQMLP(EquilibriumModel):
    r"""Dense deep equilibrium classifier.

    .. math:: z^* = \sigma(\mathrm{norm}(W z^* + U\,\mathrm{flatten}(x) + b)), \qquad
              \mathrm{logits} = V z^* + c

    Args:
        in_features: Values per input sample (``x`` of shape ``[N, D]`` or ``[N, C, H, W]``
            with ``C * H * W = in_features``; flattened inside).
        num_classes: Output classes. Default ``10``.
        hidden: State width. Default ``64``.
        norm: ``"group"`` (default), ``"layer"`` or ``None``; see :class:`MLPCell`.
        groups: Group-norm groups, dividing ``hidden``. Default ``8``.
        activation: ``"relu"`` (default), ``"tanh"`` or ``"gelu"``.
        spectral_norm: Spectral-normalise ``W`` (:func:`deqkit.nn.apply_spectral_norm`), so
            ``||W||_2 <= 1``. The norm layer can still expand, so this bounds but does not
            guarantee a contraction. Default ``False``.
        deq_settings: DEQ settings, a :class:`~deqkit.DEQSettings` or a dict of some.
            Default ``None``: the :class:`~deqkit.DEQSettings` defaults (Anderson,
            ``tol=1e-4``, ``max_iter=30``, phantom gradient).
        deq_kwargs: Older alias of ``deq_settings`` (a dict).
        **deq_keywords: The same settings as keywords (``solver="picard"``, ...).

    Call:
        ``logits [N, num_classes], info = model(x, z0=None, **overrides)``.

    Raises:
        ValueError: a bad argument, named in the message.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 10,
        *,
        hidden: int = 64,
        norm: str | None = "group",
        groups: int = 8,
        activation: str = "relu",
        spectral_norm: bool = False,
        deq_settings: DEQSettings | Mapping[str, Any] | None = None,
        deq_kwargs: Mapping[str, Any] | None = None,
        **deq_keywords: Any,
    ):
        integer("in_features", in_features, 1)
        cell = MLPCell(hidden, norm=norm, groups=groups, activation=activation)
        if spectral_norm:
            spectral_normalise(cell)
        super().__init__(
            DenseInjection(in_features, hidden),
            cell,
            _head(hidden, num_classes),
            deq_settings=deq_settings,
            deq_kwargs=deq_kwargs,
            **deq_keywords,
        )
        self.hidden = hidden

    def initial_state(self, x: Tensor) -> Tensor:
        """Zeros ``[N, hidden]`` (the input is checked, not projected)."""
        self.injection.check_input(x)
        return x.new_zeros(x.shape[0], self.hidden)


class ExplicitMLP(ExplicitModel):
    r"""Explicit twin of :class:`DEQMLP`: ``depth`` untied cells of the same size.

    .. math:: z_0 = 0, \quad z_{i+1} = \sigma(\mathrm{norm}_i(W_i z_i + U x + b)), \quad
              \mathrm{logits} = V z_{\mathrm{depth}} + c

    The input is injected into every layer, as in the DEQ; the first layer sees ``z_0 = 0``
    as the DEQ's first iterate does. Parameters: those of the DEQMLP plus ``depth - 1``
    further ``W_i`` and norms.

    Args:
        in_features: Values per input sample (flattened inside).
        num_classes: Output classes. Default ``10``.
        hidden: Layer width. Default ``64``.
        depth: Number of cell layers, >= 1. Default ``4``.
        norm: ``"group"`` (default), ``"layer"`` or ``None``.
        groups: Group-norm groups. Default ``8``.
        activation: ``"relu"`` (default), ``"tanh"`` or ``"gelu"``.

    Call:
        ``logits [N, num_classes], None = model(x)``.

    Raises:
        ValueError: a bad argument, named in the message.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 10,
        *,
        hidden: int = 64,
        depth: int = 4,
        norm: str | None = "group",
        groups: int = 8,
        activation: str = "relu",
    ):
        integer("in_features", in_features, 1)
        integer("depth", depth, 1)
        layers = [
            MLPCell(hidden, norm=norm, groups=groups, activation=activation) for _ in range(depth)
        ]
        super().__init__(DenseInjection(in_features, hidden), layers, _head(hidden, num_classes))
