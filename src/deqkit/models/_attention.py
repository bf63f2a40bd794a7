"""A transformer-block cell over the positions of a sequence or grid, as a DEQ or recurrent net."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import choice, integer, real
from ..nn import DEQSettings
from ._base import EquilibriumModel, ExplicitModel

__all__ = ["AttentionCell", "DEQAttention", "ExplicitAttention", "sinusoidal_positions"]


def sinusoidal_positions(
    shape: tuple[int, ...], d_model: int, *, device=None, dtype=None
) -> Tensor:
    r"""Fixed position features ``[prod(shape), d_model]`` for a grid of ``shape``.

    Each of the ``len(shape)`` axes gets ``2 * (d_model // (2 len(shape)))`` channels,
    :math:`\sin(p\,\omega_k), \cos(p\,\omega_k)` with :math:`\omega_k = 10000^{-k / K}`
    for ``k = 0 .. K-1`` (Vaswani et al. 2017); channels left over are zero. They are a
    function of the index alone, so a model trained on 32 positions runs on 512.
    """
    per_axis = d_model // (2 * len(shape))
    if per_axis < 1:
        raise ValueError(
            f"d_model={d_model} is too small for positions on {len(shape)} axes "
            f"(needs >= {2 * len(shape)})"
        )
    omega = 10000.0 ** (-torch.arange(per_axis, device=device, dtype=torch.float64) / per_axis)
    grids = torch.meshgrid(
        *[torch.arange(n, device=device, dtype=torch.float64) for n in shape], indexing="ij"
    )
    parts = []
    for grid in grids:
        angle = grid.reshape(-1, 1) * omega
        parts += [angle.sin(), angle.cos()]
    pos = torch.cat(parts, dim=1)
    pos = F.pad(pos, (0, d_model - pos.shape[1]))
    return pos.to(dtype or torch.get_default_dtype())


class TokenInjection(nn.Module):
    """``x [B, C, *S]`` -> tokens ``u [B, T, d]``: a per-position linear map plus positions."""

    def __init__(self, in_channels: int, d_model: int, spatial_dims: int):
        super().__init__()
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.d_model = d_model
        self.embed = nn.Linear(in_channels, d_model)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[B, in_channels, *spatial]``."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            want = "[B, C, L]" if self.spatial_dims == 1 else "[B, C, H, W]"
            raise ValueError(
                f"x must be {want} with C = in_channels = {self.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        tokens = x.flatten(2).transpose(1, 2)  # [B, T, C]
        pos = sinusoidal_positions(tuple(x.shape[2:]), self.d_model, device=x.device, dtype=x.dtype)
        return self.embed(tokens) + pos


class AttentionCell(nn.Module):
    r"""A pre-norm transformer block with the input injected at every application.

    .. math:: h = z + u, \quad h \leftarrow h + \mathrm{MHA}(\mathrm{LN}_1(h)), \quad
              h \leftarrow h + \mathrm{MLP}(\mathrm{LN}_2(h)), \quad
              f(z, u) = \mathrm{LN}_{\mathrm{out}}(h)

    ``z`` and ``u`` are ``[B, T, d_model]`` (``u`` carries the positions). Self-attention
    is full (every position sees every other) and computed explicitly, softmax of
    :math:`QK^\top/\sqrt{d_h}` times ``V``, so every autograd mode works through it
    (double backward, ``torch.func`` forward mode for the spectral instruments). Every
    normalisation is per token, so a sample's output never depends on the rest of the batch.
    The closing layer norm keeps the state bounded (each token within a ball of radius
    ``sqrt(d_model)`` times its gain, plus its bias): a continuous map of a ball into itself
    has a fixed point (Brouwer), which a residual block ending in ``h`` (``f(z) = z + g``,
    fixed only where ``g = 0``) would not promise. As a recurrent net this is a
    weight-tied, input-injected transformer (the cell of HRM/TRM-style models).

    Args:
        d_model: Channels per token, >= 1, divisible by ``heads``.
        heads: Attention heads, >= 1. Default ``4``.
        mlp_ratio: Hidden width of the MLP over ``d_model``, > 0. Default ``2.0``.
    """

    def __init__(self, d_model: int, heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        self.d_model, self.heads = d_model, heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        hidden = max(1, round(mlp_ratio * d_model))
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.norm_out = nn.LayerNorm(d_model)

    def attention(self, h: Tensor) -> Tensor:
        """Multi-head self-attention of ``h [B, T, d]``, returning ``[B, T, d]``."""
        b, t, d = h.shape
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (s.transpose(1, 2) for s in (q, k, v))  # [B, H, T, d_h]
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        h = z + u
        h = h + self.attention(self.norm1(h))
        h = h + self.mlp(self.norm2(h))
        return self.norm_out(h)

    def initial_state(self, u: Tensor) -> Tensor:
        """Zeros like ``u``: the start of every solve and recurrence."""
        return torch.zeros_like(u)


class TokenReadout(nn.Module):
    """Tokens ``[B, T, d]`` -> logits ``[B, out_channels, *S]`` (the spatial shape of the
    last input, which the model records)."""

    def __init__(self, d_model: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.linear = nn.Linear(d_model, out_channels)
        self.shape: tuple[int, ...] | None = None

    def forward(self, z: Tensor) -> Tensor:
        logits = self.linear(self.norm(z)).transpose(1, 2)  # [B, C, T]
        shape = self.shape
        if shape is None or math.prod(shape) != z.shape[1]:
            shape = (z.shape[1],)
        return logits.reshape(z.shape[0], -1, *shape)


def _check(in_channels, out_channels, spatial_dims, d_model, heads, mlp_ratio) -> None:
    integer("in_channels", in_channels, 1)
    integer("out_channels", out_channels, 1)
    choice("spatial_dims", spatial_dims, (1, 2))
    integer("d_model", d_model, 1)
    integer("heads", heads, 1)
    real("mlp_ratio", mlp_ratio, 0.0, low_open=True)
    if d_model % heads:
        raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")


class _Shaped:
    """``inject`` that records the input's spatial shape for the readout (tokens carry no
    shape), shared by the DEQ and its explicit twin."""

    head: TokenReadout
    injection: TokenInjection

    def inject(self, x: Tensor) -> Tensor:
        """Tokens ``u [B, T, d_model]`` of ``x``, positions included."""
        self.head.shape = tuple(x.shape[2:])
        return self.injection(x)


class DEQAttention(_Shaped, EquilibriumModel):
    r"""A transformer-block DEQ over the positions of ``x``, or its weight-tied recurrence.

    .. math:: u = W x_t + p_t, \quad z^* = f(z^*, u), \quad
              \mathrm{logits}_t = W_o \mathrm{LN}(z^*_t)

    per position ``t`` of a sequence ``x [B, C, L]`` (``spatial_dims=1``, prefix sums) or a
    grid ``x [B, C, H, W]`` (``2``, Sudoku); ``f`` is :class:`AttentionCell`, ``p_t`` the
    :func:`sinusoidal_positions`, so lengths other than the training one run unchanged.
    ``model(x)`` solves the DEQ (any gradient of :mod:`deqkit.nn`), ``model.iterate(x, n)``
    runs ``n`` weight-tied blocks; :class:`ExplicitAttention` is the untied twin.

    Args:
        in_channels: Input channels per position, >= 1. Default ``1`` (prefix sums;
            ``deqkit train`` passes the task's).
        out_channels: Classes per position. Default ``2``.
        spatial_dims: 1 or 2. Default ``1``.
        d_model: Channels per token. Default ``64``.
        heads: Attention heads (dividing ``d_model``). Default ``4``.
        mlp_ratio: MLP width over ``d_model``. Default ``2.0``.
        deq_settings: As :class:`EquilibriumModel`. Default: the
            :class:`~deqkit.DEQSettings` defaults but ``tol=1e-3``, as the recall nets.
        deq_kwargs: Older alias of ``deq_settings`` (a dict).
        **deq_keywords: The same settings as keywords.

    Raises:
        ValueError: a bad argument, named.
    """

    _deq_defaults = {"tol": 1e-3}

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        *,
        spatial_dims: int = 1,
        d_model: int = 64,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        deq_settings: DEQSettings | Mapping[str, Any] | None = None,
        deq_kwargs: Mapping[str, Any] | None = None,
        **deq_keywords: Any,
    ):
        _check(in_channels, out_channels, spatial_dims, d_model, heads, mlp_ratio)
        super().__init__(
            TokenInjection(in_channels, d_model, spatial_dims),
            AttentionCell(d_model, heads, mlp_ratio),
            TokenReadout(d_model, out_channels),
            deq_settings=deq_settings,
            deq_kwargs=deq_kwargs,
            **deq_keywords,
        )


class ExplicitAttention(_Shaped, ExplicitModel):
    """The untied twin of :class:`DEQAttention`: ``depth`` transformer blocks, each with its
    own weights, the input injected into each, the same injection and readout.

    Args:
        in_channels: Input channels per position, >= 1. Default ``1`` (prefix sums;
            ``deqkit train`` passes the task's).
        out_channels: Classes per position. Default ``2``.
        spatial_dims: 1 or 2. Default ``1``.
        d_model: Channels per token. Default ``64``.
        heads: Attention heads (dividing ``d_model``). Default ``4``.
        mlp_ratio: MLP width over ``d_model``. Default ``2.0``.
        depth: Blocks, >= 1. Default ``4``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        *,
        spatial_dims: int = 1,
        d_model: int = 64,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        depth: int = 4,
    ):
        _check(in_channels, out_channels, spatial_dims, d_model, heads, mlp_ratio)
        integer("depth", depth, 1)
        super().__init__(
            TokenInjection(in_channels, d_model, spatial_dims),
            [AttentionCell(d_model, heads, mlp_ratio) for _ in range(depth)],
            TokenReadout(d_model, out_channels),
        )
