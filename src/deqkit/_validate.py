"""Argument checks for every deqkit package: one rule for exceptions, one form of message.

The rule: **a setting with a bad value raises** ``ValueError``, whatever is wrong with it:
a number out of range, a number of the wrong kind (a float ``2.5`` or a bool where an
integer is needed, a string or a bool where a number is needed), NaN or infinity where a
finite number is needed, a name that is not among the choices, a non-bool flag. This is
what ``torch.optim`` does (``ValueError(f"Invalid learning rate: {lr}")``) and what
:func:`deqkit.solve` did from the start; it gives a caller one exception to catch for a bad
setting, however the setting was given (keyword, TOML, JSON, command line).

``TypeError`` stays for what is not a setting's value at all but an object of the wrong
kind, as in Python itself: a non-callable where a function is needed, a non-tensor where a
tensor is, a mapping or module expected, an unknown keyword option. Those checks are written
where they occur; this module holds the setting checks.

Every message has the form ``Invalid <name>: <value!r> (expected <what>)``::

    Invalid max_iter: 2.5 (expected an integer >= 1)
    Invalid beta for anderson: 3.0 (expected a number in (0, 2])
    Invalid stop: 'max' (expected one of 'abs', 'rel')

``of`` names the object a hyperparameter belongs to where the name alone is ambiguous
(solver and gradient hyperparameters such as ``m``, ``beta`` or ``k``). Each check returns
the value normalised (``int``/``float``/``bool``, or the matching option), so that a
NumPy integer or an ``int`` given for a float is stored in the usual type. With
``optional=True``, ``None`` is accepted and returned as is (the message does not change:
``None`` is the documented default of such an argument, not something to suggest).

:func:`invalid` builds the same message for checks that have no function here (a multiple
of 10, a divisor of the channel count), so that they read the same. :func:`assign` stores
checked values on a frozen dataclass from its ``__post_init__``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["assign", "choice", "flag", "integer", "invalid", "real"]


def invalid(name: str, value: Any, expected: str, *, of: str | None = None) -> ValueError:
    """The ``ValueError`` ``Invalid <name>[ for <of>]: <value!r> (expected <expected>)``.

    Returned, not raised: ``raise invalid("n_samples", n, "a multiple of 10")``.
    """
    where = f"{name} for {of}" if of else name
    return ValueError(f"Invalid {where}: {value!r} (expected {expected})")


def _num(x: float) -> str:
    if isinstance(x, numbers.Integral):
        return str(int(x))
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def _bounds(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_num(high)}"
    return ""


def _inside(value: Any, low: Any, high: Any, low_open: bool, high_open: bool) -> bool:
    if low is not None and not (value > low if low_open else value >= low):
        return False
    return high is None or (value < high if high_open else value <= high)


def integer(
    name: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    *,
    optional: bool = False,
    of: str | None = None,
) -> int | None:
    """``value`` as an ``int`` if it is an integer in ``[low, high]`` (either may be ``None``).

    Any :class:`numbers.Integral` but ``bool`` counts (Python and NumPy integers); a float
    such as ``2.0`` does not.

    Raises:
        ValueError: ``Invalid <name>: <value> (expected an integer >= <low>)`` and the like.
    """
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not _inside(value, low, high, False, False)
    ):
        raise invalid(name, value, "an integer" + _bounds(low, high, False, False), of=of)
    return int(value)


def real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    optional: bool = False,
    of: str | None = None,
) -> float | None:
    """``value`` as a ``float`` if it is a real number in the interval given.

    ``low``/``high`` bound it (``None``: unbounded on that side), ``low_open``/``high_open``
    exclude the bound itself. NaN is never accepted; infinity only with ``finite=False``.
    Any :class:`numbers.Real` but ``bool`` counts (``int``, ``float``, NumPy scalars).

    Raises:
        ValueError: ``Invalid <name>: <value> (expected a number in (0, 2])`` and the like.
    """
    if value is None and optional:
        return None
    bounded = low is not None and high is not None and math.isfinite(low) and math.isfinite(high)
    kind = "a finite number" if finite and not bounded else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or math.isnan(value)
        or (finite and math.isinf(value))
        or not _inside(value, low, high, low_open, high_open)
    ):
        raise invalid(name, value, kind + _bounds(low, high, low_open, high_open), of=of)
    return float(value)


def _same(value: Any, option: Any) -> bool:
    if isinstance(value, bool) != isinstance(option, bool):
        return False  # True is not the option 1, nor 1 the option True
    try:
        return bool(value == option)
    except Exception:  # an object whose == does not give one bool (a tensor, an array)
        return False


def choice(
    name: str,
    value: Any,
    options: Sequence[Any],
    *,
    optional: bool = False,
    of: str | None = None,
) -> Any:
    """The option equal to ``value`` (a bool only matches a bool).

    Raises:
        ValueError: ``Invalid <name>: <value> (expected one of 'a', 'b')``.
    """
    if value is None and optional:
        return None
    for option in options:
        if _same(value, option):
            return option
    raise invalid(name, value, f"one of {', '.join(map(repr, options))}", of=of)


def flag(name: str, value: Any, *, optional: bool = False, of: str | None = None) -> bool | None:
    """``value`` if it is a ``bool`` (``0``/``1`` and strings are not).

    Raises:
        ValueError: ``Invalid <name>: <value> (expected a bool)``.
    """
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise invalid(name, value, "a bool", of=of)
    return value


def assign(obj: Any, **values: Any) -> None:
    """Set attributes of a frozen dataclass (``object.__setattr__``), e.g. checked values.

    ``assign(self, m=integer("m", self.m, 1), beta=real("beta", self.beta, 0, 2))`` in a
    ``__post_init__`` checks each field and stores it normalised.
    """
    for key, value in values.items():
        object.__setattr__(obj, key, value)
