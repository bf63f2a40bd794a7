"""Prefix-sum parity (Schwarzschild et al. 2021): the running parity of a bit string."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validate import integer
from ._common import make_generator


def prefix_parity(bits: Tensor) -> Tensor:
    """The running parity of bit strings: ``y_i = (x_1 + ... + x_i) mod 2``.

    Args:
        bits: Bits ``[n, length]`` or ``[n, 1, length]``, any dtype, values 0/1.

    Returns:
        Int64 tensor ``[n, length]`` on ``bits``' device; ``[1, 0, 1, 1]`` gives
        ``[1, 1, 0, 1]``.

    Raises:
        ValueError: If ``bits`` has another shape or values other than 0 and 1.
    """
    if bits.ndim == 3 and bits.shape[1] == 1:
        bits = bits[:, 0]
    if bits.ndim != 2:
        raise ValueError(
            f"Invalid bits shape: {tuple(bits.shape)} (expected [n, length] or [n, 1, length])"
        )
    if not ((bits == 0) | (bits == 1)).all():
        raise ValueError("Invalid bits: values other than 0 and 1")
    return bits.long().cumsum(dim=1).remainder_(2)


def prefix_sums(
    n: int,
    length: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    r"""Random bit strings and their prefix-sum parities.

    Bits are i.i.d. Bernoulli(1/2) and the target is the running parity

    .. math:: y_i = \Big(\sum_{j \le i} x_j\Big) \bmod 2,

    so ``x = [1, 0, 1, 1]`` gives ``y = [1, 1, 0, 1]``. Generation is one ``randint`` and one
    ``cumsum``, cheap enough to draw a fresh batch every step. Harder instances are longer
    strings (Bansal et al. 2022 train on 32 bits and test on 512).

    Args:
        n: Number of strings, >= 1.
        length: Bits per string (the difficulty knob), >= 1.
        seed: Seed for a fresh generator; the same seed gives the same data on every device.
            Default ``None``.
        generator: A ``torch.Generator`` to draw from (and advance), for a stream of fresh
            batches; bits are drawn on its device. Default ``None``. Passing neither ``seed``
            nor ``generator`` draws from OS entropy; torch's global generator is never used.
        device: Device of the returned tensors. Default ``None``: the generator's device.
        dtype: Floating dtype of ``x``. Default ``torch.float32``.

    Returns:
        ``(x, y)``: ``x`` of ``dtype``, shape ``[n, 1, length]`` (channels first, ready for
        ``nn.Conv1d``), values 0.0/1.0; ``y`` int64 ``[n, length]``, values 0/1. Models should
        output logits ``[n, 2, length]`` (class 1 = parity 1), scored by
        :func:`exact_match` and :func:`bit_accuracy`.

    Raises:
        ValueError: If ``n`` or ``length`` is not an integer >= 1 or ``seed`` not one >= 0
            (``Invalid n: 2.5 (expected an integer >= 1)``), both ``seed`` and
            ``generator`` are given, or ``dtype`` is not floating point.
        TypeError: If ``generator`` is not a ``torch.Generator``.
    """
    n = integer("n", n, 1)
    length = integer("length", length, 1)
    if not dtype.is_floating_point:
        raise ValueError(f"Invalid dtype: {dtype} (expected a floating point dtype)")
    g = make_generator(seed, generator)
    bits = torch.randint(0, 2, (n, length), generator=g, device=g.device)
    y = bits.cumsum(dim=1).remainder_(2)  # prefix_parity, without its checks
    x = bits.to(dtype).unsqueeze(1)
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y
