"""The argument types and help texts the commands share: one form of message for a bad
value, :mod:`deqkit._validate`'s."""

from __future__ import annotations

import argparse

from .._validate import integer, invalid

__all__ = ["ints", "positive_int", "solver_help"]


def ints(text: str) -> list[int]:
    """Comma-separated integers >= 1 (``"1,2,5"``); a bad list is one error in
    :mod:`deqkit._validate`'s form: ``Invalid value: '1,x' (expected comma-separated
    integers >= 1)``."""
    try:
        values = [integer("value", int(v), 1) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(
            str(invalid("value", text, "comma-separated integers >= 1"))
        )
    return values


def positive_int(text: str) -> int:
    """An integer >= 1, checked by :func:`deqkit._validate.integer`: ``Invalid value: 0
    (expected an integer >= 1)`` (argparse names the flag before it)."""
    try:
        value: object = int(text)
    except ValueError:
        value = text
    try:
        return integer("value", value, 1)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def solver_help(what: str) -> str:
    from ..solvers import available

    return (
        f"{what}: {', '.join(available())}, or a name registered with "
        "deqkit.solvers.register (default: the model's own)"
    )
