"""Recall networks for algorithmic tasks (DeepThinking, Bansal et al. 2022), DEQ or recurrent."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import choice, flag, integer, real
from ..nn import DEQSettings, apply_norm_bound
from ._base import (
    EquilibriumModel,
    State,
    check_groups,
    spectral_normalise,
)

__all__ = ["AveragedBlock", "RecallCell", "RecallNet", "ResidualBlock", "progressive_loss"]


def _conv(dim: int, cin: int, cout: int) -> nn.Module:
    conv = nn.Conv1d if dim == 1 else nn.Conv2d
    return conv(cin, cout, kernel_size=3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    r"""``relu(x + norm(conv(relu(norm(conv(x))))))``: two 3-wide convolutions, no bias.

    Args:
        dim: 1 (sequences ``[N, C, L]``) or 2 (images ``[N, C, H, W]``).
        width: Channels in and out.
        norm_groups: Groups of a parameter-free :class:`~torch.nn.GroupNorm` after each
            convolution (as in DeepThinking's option), or ``None`` (default) for none.
    """

    def __init__(self, dim: int, width: int, norm_groups: int | None = None):
        super().__init__()
        self.conv1 = _conv(dim, width, width)
        self.conv2 = _conv(dim, width, width)
        if norm_groups is None:
            self.norm1, self.norm2 = nn.Identity(), nn.Identity()
        else:
            self.norm1 = nn.GroupNorm(norm_groups, width, affine=False)
            self.norm2 = nn.GroupNorm(norm_groups, width, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(out)))


class AveragedBlock(nn.Module):
    r"""``relu((1 - a) x + a conv2(relu(conv1(x))))``, ``a = sigmoid(theta)`` learned.

    The residual block of a contractive recall cell: with both convolutions bounded to
    operator norm 1 (:func:`deqkit.nn.apply_norm_bound`) it is 1-Lipschitz, since
    ``(1 - a) + a * 1 * 1 = 1`` and ReLU is 1-Lipschitz (the plain :class:`ResidualBlock`,
    ``x + conv(...)``, can double a distance). ``theta`` starts at 0 (``a = 1/2``).

    Args:
        dim: 1 or 2.
        width: Channels in and out.
    """

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.conv1 = _conv(dim, width, width)
        self.conv2 = _conv(dim, width, width)
        self.theta = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        a = torch.sigmoid(self.theta)
        return F.relu((1 - a) * x + a * self.conv2(F.relu(self.conv1(x))))


class RecallCell(nn.Module):
    r"""The recurrent block of a recall network.

    .. math:: f(z, u) = \mathrm{blocks}(\mathrm{relu}(\mathrm{conv}([z; u])))
              \quad (\mathrm{recall}), \qquad f(z, u) = \mathrm{blocks}(z)
              \quad (\text{no recall})

    ``[z; u]`` is the channel concatenation (``2 * width -> width`` convolution) and
    ``blocks`` are ``num_blocks`` :class:`ResidualBlock`\ s. Without recall the cell ignores
    ``u``: the input enters only through the starting state, ``initial_state(u) = u``.

    **A contraction by construction** (``lipschitz=L``): the blocks are
    :class:`AveragedBlock`\ s, every convolution is bounded to operator norm 1 by
    :func:`deqkit.nn.apply_norm_bound` (a guaranteed bound, not spectral normalisation's
    estimate of the reshaped kernel), there is no normalisation layer, and

    .. math:: f(z, u) = L \cdot \mathrm{blocks}(\mathrm{relu}(\mathrm{conv}([z; u])))

    is ``L``-Lipschitz in ``z`` for every input and every value of the weights: the recall
    convolution restricted to ``z`` has norm <= 1, ReLU and each block are 1-Lipschitz.
    With ``L < 1`` the fixed point is unique and plain iteration converges to it at rate
    ``L`` from any start (Banach); the memory of a far-away input fades like ``L`` per
    application, the question ``experiments/`` asks of it.

    Args:
        dim: 1 or 2.
        width: State channels.
        num_blocks: Residual blocks, >= 1.
        recall: Re-inject ``u`` at every step. Default ``True``.
        norm_groups: Group-norm groups in the blocks, or ``None`` (default).
        lipschitz: ``L > 0`` for the contractive cell above, or ``None`` (default) for the
            unconstrained one.
        averaged: :class:`AveragedBlock`\ s without the norm bound and the factor ``L``: the
            contractive cell's architecture, unconstrained (the control of ``lipschitz``).
            Implied by ``lipschitz``. Default ``False``.
    """

    def __init__(
        self,
        dim: int,
        width: int,
        num_blocks: int,
        *,
        recall: bool = True,
        norm_groups: int | None = None,
        lipschitz: float | None = None,
        averaged: bool = False,
    ):
        super().__init__()
        self.recall = bool(recall)
        self.lipschitz = lipschitz
        self.recall_conv = _conv(dim, 2 * width, width) if self.recall else None
        if lipschitz is None and not averaged:
            blocks = [ResidualBlock(dim, width, norm_groups) for _ in range(num_blocks)]
        else:
            if norm_groups is not None:
                raise ValueError(
                    f"{'lipschitz' if lipschitz is not None else 'averaged'} and norm_groups "
                    "cannot be combined: the averaged blocks have no normalisation (group "
                    "norm divides by a standard deviation, which no constant bounds)"
                )
            blocks = [AveragedBlock(dim, width) for _ in range(num_blocks)]
        self.blocks = nn.Sequential(*blocks)
        if lipschitz is not None:
            apply_norm_bound(self)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        if self.recall_conv is not None:
            z = F.relu(self.recall_conv(torch.cat([z, u], dim=1)))
        z = self.blocks(z)
        return z if self.lipschitz is None else self.lipschitz * z

    def initial_state(self, u: Tensor) -> Tensor:
        """Zeros like ``u`` with recall; ``u`` itself (the projected input) without."""
        return torch.zeros_like(u) if self.recall else u


class RecallInjection(nn.Module):
    """``u = relu(conv(x))``, ``in_channels -> width``, checking the input shape."""

    def __init__(self, dim: int, in_channels: int, width: int):
        super().__init__()
        self.dim = dim
        self.in_channels = in_channels
        self.conv = _conv(dim, in_channels, width)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[N, in_channels, *spatial]``."""
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            want = "[N, C, L]" if self.dim == 1 else "[N, C, H, W]"
            raise ValueError(
                f"x must be {want} with C = in_channels = {self.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return F.relu(self.conv(x))


class RecallNet(EquilibriumModel):
    r"""Fully convolutional recall network, as a DEQ or as a weight-tied recurrent net.

    The "dt_net_recall" shape of DeepThinking (Schwarzschild et al. 2021; Bansal et al.
    2022, arXiv 2202.05826), with the input re-injected at every iteration:

    .. math:: u = \mathrm{relu}(\mathrm{conv}(x)), \quad
              z_{k+1} = \mathrm{blocks}(\mathrm{relu}(\mathrm{conv}([z_k; u]))), \quad
              \mathrm{logits} = \mathrm{head}(z)

    ``head`` is ``conv(width -> 32) relu conv(32 -> 8) relu conv(8 -> out_channels)`` by
    default; every convolution is 3 wide with padding 1 and no bias, so a model trained on
    16-bit strings runs on 512-bit ones and 9x9 mazes on 59x59 ones.

    Two ways to run the same weights, to compare on the same task:

    * ``model(x)``: the DEQ, solved to a fixed point, implicit gradient (settings through
      ``deq_settings``/keywords, per call through ``model(x, max_iter=500)``).
    * ``model.iterate(x, n)``: ``n`` plain steps with backprop through time, a readout at
      every iterate; train it with :func:`progressive_loss`.

    Differences from DeepThinking: the recall convolution concatenates the projected input
    ``u`` (``2 * width`` channels) rather than the raw ``x``; with recall the recurrence
    starts from zeros (a DEQ's usual start) rather than from ``u``; and the 1-D head of
    DeepThinking is ``width -> width -> width/2 -> 2`` (pass
    ``head_channels=(width, width // 2)`` for it).

    Args:
        dim: 1 (prefix sums: ``x [N, 1, L]`` -> logits ``[N, 2, L]``) or 2 (mazes:
            ``x [N, 3, H, W]`` -> logits ``[N, 2, H, W]``).
        in_channels: Input channels, >= 1.
        width: State channels, >= 1. Default ``64``.
        num_blocks: Residual blocks in the cell, >= 1. Default ``2``.
        out_channels: Output classes per position. Default ``2``.
        recall: Re-inject the input at every iteration. ``False`` is the "no input
            injection" ablation: ``z0 = inject(x)`` and the cell ignores ``u``. As a DEQ the
            start is detached, so then the injection gets no gradient. Default ``True``.
        norm_groups: Groups of a parameter-free group norm after every block convolution, or
            ``None`` (default) for no normalisation.
        head_channels: Hidden channels of the head. Default ``(32, 8)``.
        spectral_norm: Spectral-normalise every convolution of the cell
            (:func:`deqkit.nn.apply_spectral_norm`). Bounds each layer, but the residual
            blocks can still expand, so a contraction is not guaranteed. Default ``False``.
        lipschitz: ``L > 0``: the cell is ``L``-Lipschitz in ``z`` by construction (a
            contraction for ``L < 1``; see :class:`RecallCell`), without group norm or
            spectral normalisation. Default ``None``: unconstrained.
        averaged: The cell of ``lipschitz`` (averaged blocks, no group norm) without its
            bound: the control that separates the constraint from the architecture.
            Default ``False``.
        deq_settings: DEQ settings, a :class:`~deqkit.DEQSettings` or a dict of some.
            Default ``None``: ``tol=1e-3``, else the :class:`~deqkit.DEQSettings` defaults.
        deq_kwargs: Older alias of ``deq_settings`` (a dict).
        **deq_keywords: The same settings as keywords (``solver``, ``tol``, ``max_iter``,
            ``backward``, ...).

    Raises:
        ValueError: a bad argument, named in the message.
    """

    # Every measured recall configuration solves to a relative residual of 1e-3
    # (docs/results.md, experiments/training); 1e-4 buys no accuracy and costs evaluations.
    _deq_defaults = {"tol": 1e-3}

    def __init__(
        self,
        dim: int,
        in_channels: int,
        width: int = 64,
        num_blocks: int = 2,
        *,
        out_channels: int = 2,
        recall: bool = True,
        norm_groups: int | None = None,
        head_channels: Sequence[int] = (32, 8),
        spectral_norm: bool = False,
        lipschitz: float | None = None,
        averaged: bool = False,
        deq_settings: DEQSettings | Mapping[str, Any] | None = None,
        deq_kwargs: Mapping[str, Any] | None = None,
        **deq_keywords: Any,
    ):
        choice("dim", dim, (1, 2))
        if lipschitz is not None:
            lipschitz = real("lipschitz", lipschitz, 0.0, low_open=True)
            if spectral_norm:
                raise ValueError(
                    "lipschitz and spectral_norm cannot be combined: lipschitz bounds every "
                    "convolution of the cell already (exactly, where spectral_norm estimates)"
                )
        integer("in_channels", in_channels, 1)
        integer("width", width, 1)
        integer("num_blocks", num_blocks, 1)
        integer("out_channels", out_channels, 1)
        flag("recall", recall)
        flag("averaged", averaged)
        if norm_groups is not None:
            check_groups(norm_groups, width, "norm_groups")
        head_channels = tuple(head_channels)
        for c in head_channels:
            integer("head_channels entries", c, 1)
        cell = RecallCell(
            dim,
            width,
            num_blocks,
            recall=recall,
            norm_groups=norm_groups,
            lipschitz=lipschitz,
            averaged=averaged,
        )
        if spectral_norm:
            spectral_normalise(cell)
        sizes = (width, *head_channels, out_channels)
        layers: list[nn.Module] = []
        for cin, cout in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [_conv(dim, cin, cout), nn.ReLU()]
        super().__init__(
            RecallInjection(dim, in_channels, width),
            cell,
            nn.Sequential(*layers[:-1]),
            deq_settings=deq_settings,
            deq_kwargs=deq_kwargs,
            **deq_keywords,
        )
        self.dim = dim
        self.width = width
        self.recall = bool(recall)
        self.lipschitz = lipschitz

    @classmethod
    def for_prefix_sums(
        cls,
        width: int = 64,
        num_blocks: int = 2,
        *,
        in_channels: int = 1,
        out_channels: int = 2,
        **kwargs: Any,
    ) -> RecallNet:
        """1-D recall net for prefix-sum parity: ``x [N, 1, L]`` -> logits ``[N, 2, L]``.

        Bansal et al. used width 400 (3.1 M parameters with their head); 64-120 fits a CPU.
        ``in_channels`` and ``out_channels`` are named so that a training config fills them
        from the task (:func:`deqkit.train.model_from_config`); ``kwargs`` go to
        :class:`RecallNet`.
        """
        return cls(1, in_channels, width, num_blocks, out_channels=out_channels, **kwargs)

    @classmethod
    def for_mazes(
        cls,
        width: int = 64,
        num_blocks: int = 2,
        *,
        in_channels: int = 3,
        out_channels: int = 2,
        **kwargs: Any,
    ) -> RecallNet:
        """2-D recall net for mazes: ``x [N, 3, H, W]`` -> logits ``[N, 2, H, W]``; any
        other grid task through ``in_channels``/``out_channels`` (Sudoku: 10 in, 9 out,
        filled from the task by a training config).

        Bansal et al. used width 128. ``kwargs`` go to :class:`RecallNet`.
        """
        return cls(2, in_channels, width, num_blocks, out_channels=out_channels, **kwargs)

    def initial_state(self, x: Tensor) -> Tensor:
        """Zeros ``[N, width, *spatial]`` with recall (no projection computed); ``inject(x)``
        without recall."""
        if not self.recall:
            return self.inject(x)
        self.injection.check_input(x)
        return x.new_zeros(x.shape[0], self.width, *x.shape[2:])


def progressive_loss(
    model: EquilibriumModel,
    x: Tensor,
    y: Tensor,
    max_iters: int,
    alpha: float,
    generator: torch.Generator | None = None,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    r"""The progressive loss of Bansal et al. (2022) for a weight-tied recurrent run.

    Draw :math:`n \sim U\{0, \dots, \mathrm{max\_iters} - 1\}` and
    :math:`k \sim U\{1, \dots, \mathrm{max\_iters} - n\}`; run ``n`` steps without gradient,
    detach, then ``k`` steps with gradient, so the network must improve a state whatever
    iteration produced it rather than learn iteration-specific behaviour. Then

    .. math:: \mathcal{L} = (1 - \alpha)\, \ell(\mathrm{out}_{\mathrm{max\_iters}}, y)
              + \alpha\, \ell(\mathrm{out}_{n + k}, y).

    The part with weight 0 is not computed (``alpha=0``: plain backprop through
    ``max_iters`` steps; ``alpha=1``: progressive part only).

    Args:
        model: An :class:`EquilibriumModel` (its ``iterate`` and ``unroll`` are used).
        x: Input batch.
        y: Targets for ``loss_fn`` (long ``[N, L]``, ``[N, H, W]`` or ``[N]``).
        max_iters: Iterations of a full training run, >= 1.
        alpha: Weight of the progressive part, in ``[0, 1]``.
        generator: Random generator for ``n`` and ``k``. Default: the global one.
        loss_fn: ``loss_fn(logits, y) -> scalar``. Default
            :func:`~torch.nn.functional.cross_entropy` (mean over samples and positions).

    Returns:
        The scalar loss, differentiable with respect to the model's parameters.

    Raises:
        ValueError: ``max_iters`` or ``alpha`` out of range.
    """
    integer("max_iters", max_iters, 1)
    alpha = real("alpha", alpha, 0.0, 1.0)
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    terms: list[Tensor] = []
    if alpha < 1.0:
        out = model.iterate(x, max_iters, every=False)[-1]
        terms.append((1.0 - alpha) * loss_fn(out, y))
    if alpha > 0.0:
        n = int(torch.randint(0, max_iters, (1,), generator=generator))
        k = int(torch.randint(1, max_iters - n + 1, (1,), generator=generator))
        z0: State | None = None
        if n > 0:
            with torch.no_grad():
                z = model.unroll(x, n)
            z0 = tuple(t.detach() for t in z) if isinstance(z, tuple) else z.detach()
        out = model.iterate(x, k, z0, every=False)[-1]
        terms.append(alpha * loss_fn(out, y))
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]
