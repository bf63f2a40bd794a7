"""The whole zoo, in a fixed order, and by name."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from ._maps import (
    affine_scalar,
    cos_map,
    cyclic_shift,
    linear,
    nan_map,
    non_normal_linear,
    pressure_network,
    sqrt2_map,
)
from ._problem import ACCELERATED, Problem
from ._tanh import expansive_tanh, hard_tanh, mixed_tanh, tanh_at_fixed_point, tanh_contraction

__all__ = ["all_problems", "by_name"]


def all_problems() -> list[Problem]:
    """Every problem of the zoo, in a fixed order."""
    return [
        linear(-0.99, 0.99, name="linear_slow", max_iter=3000),
        linear(
            -1.5,
            0.5,
            name="linear_plain_diverges",
            converges=ACCELERATED,
            fails={"picard"},
        ),
        non_normal_linear(),
        cos_map(),
        sqrt2_map(),
        affine_scalar(),
        tanh_contraction(),
        hard_tanh(0.95),
        hard_tanh(0.99),
        mixed_tanh(),
        expansive_tanh(),
        tanh_at_fixed_point(),
        cyclic_shift(),
        nan_map(),
        pressure_network(),
    ]


@functools.cache
def _by_name() -> Mapping[str, Problem]:
    return {p.name: p for p in all_problems()}


def by_name(name: str) -> Problem:
    """The zoo problem called ``name`` (built once; problems are immutable)."""
    return _by_name()[name]
