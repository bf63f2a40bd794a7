"""The optimiser and the learning-rate schedule a config names."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ._config import TrainConfig

__all__ = ["lr_factor", "make_optimizer"]


def make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """``config.optimizer`` (Adam, AdamW or SGD with momentum) over ``params``, at peak
    ``config.lr`` with ``config.weight_decay``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig, total: int) -> Callable[[int], float]:
    r"""The multiplier of the peak learning rate at each step, for ``LambdaLR``.

    With ``w = config.warmup_steps`` and ``T = total`` steps, step ``s`` (from 0) gets

    .. math:: \frac{s + 1}{w} \;\; (s < w), \qquad
              \tfrac12 \Bigl(1 + \cos \frac{\pi \min(s - w, T - w)}{T - w}\Bigr) \;\; (s \ge w)

    for ``schedule="cosine"`` (down to 0 at the last step; ``T - w`` at least 1), and 1
    after the warm-up for ``schedule="constant"``.
    """
    warm = config.warmup_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.schedule == "constant":
            return 1.0
        span = max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))

    return factor
