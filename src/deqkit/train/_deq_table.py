"""The DEQ settings of a training config: the ``deq`` table and the older top-level keys.

A :class:`~deqkit.train.TrainConfig` holds the :class:`~deqkit.DEQSettings` a user gave in
one field, ``deq`` (a dict by setting name, JSON- and TOML-ready). Configs, checkpoints and
scripts written before it give the same settings as top-level keys and keywords
(``solver = "anderson"``, ``TrainConfig(tol=1e-3)``); this module reads those into the
table, in every way a config is made (:meth:`TrainConfig.from_dict`, the constructor,
``dataclasses.replace``, flags), and gives ``config.tol`` and the like as views of it.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

from ._choices import DEQ_KEYS

__all__ = ["add_views", "flat_keywords", "normalise", "read_flat", "set_key"]


def normalise(deq: dict[str, Any]) -> dict[str, Any]:
    """``deq`` in the order of the settings, unknown names refused, ``None`` values dropped
    (not given: the model's own), whole-number tolerances as floats, nested tables copied.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    unknown = sorted(set(deq) - set(DEQ_KEYS))
    if unknown:
        extra = (
            " (correction is a recipe field: a top-level key)" if "correction" in unknown else ""
        )
        raise ValueError(
            f"unknown deq setting(s): {', '.join(unknown)}; valid: {', '.join(DEQ_KEYS)}{extra}"
        )
    out = {}
    for key in DEQ_KEYS:
        value = deq.get(key)
        if value is None:
            continue
        if key in ("tol", "backward_tol") and _is_int(value):
            value = float(value)
        out[key] = dict(value) if isinstance(value, dict) else value
    return out


def read_flat(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dict ``data`` with its top-level DEQ settings moved into
    ``data["deq"]``; a top-level ``None`` (every checkpoint written before the table has
    one for each setting not given) is not given.

    Raises:
        ValueError: a setting given both in the table and at the top level.
    """
    data = dict(data)
    flat = {k: data.pop(k) for k in DEQ_KEYS if k in data}
    deq = data.get("deq", {})
    if not isinstance(deq, dict):
        return data  # TrainConfig refuses it, naming the field
    both = sorted(k for k, v in flat.items() if v is not None and deq.get(k) is not None)
    if both:
        raise ValueError(
            f"{', '.join(both)} given both in the deq table and as top-level key(s); give "
            f"each once (deq.{both[0]} or {both[0]})"
        )
    data["deq"] = {**deq, **{k: v for k, v in flat.items() if v is not None}}
    return data


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` of a config dict (as :meth:`TrainConfig.to_dict` gives) to ``value``; a
    DEQ setting by name (``"tol"``) sets that entry of ``data["deq"]`` (``None`` removes it).
    ``"deq.tol"`` is the same entry by its place in the table. For flags and overrides given
    on top of a config file: the later value wins.

    Raises:
        ValueError: ``"deq.NAME"`` with a ``NAME`` that is not a DEQ setting.
    """
    if key.startswith("deq."):
        key = key[len("deq.") :]
        if key not in DEQ_KEYS:
            raise ValueError(
                f"unknown deq setting {key!r} (in deq.{key}); valid: {', '.join(DEQ_KEYS)}"
            )
    if key in DEQ_KEYS:
        deq = dict(data.get("deq") or {})
        deq[key] = value
        data["deq"] = {k: v for k, v in deq.items() if v is not None}
    else:
        data[key] = value


def flat_keywords(init: Any) -> Any:
    """The dataclass ``__init__`` of a config, also taking the DEQ settings as keywords
    (``TrainConfig(tol=1e-3)``, ``dataclasses.replace(config, max_iter=50)``): each sets
    that entry of ``deq`` (``None`` removes it)."""

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        flat = {k: kwargs.pop(k) for k in DEQ_KEYS if k in kwargs}
        deq = kwargs.get("deq", {})
        if flat and isinstance(deq, dict):
            merged = {**deq, **flat}
            kwargs["deq"] = {k: v for k, v in merged.items() if v is not None}
        init(self, *args, **kwargs)

    return __init__


def add_views(cls: type) -> None:
    """Give ``cls`` a read-only attribute per DEQ setting: ``config.tol`` is
    ``config.deq.get("tol")`` (``None`` when not given)."""
    for name in DEQ_KEYS:
        view = property(
            lambda self, name=name: self.deq.get(name),
            doc=f"``deq['{name}']``, or ``None`` when not given (the model's own).",
        )
        setattr(cls, name, view)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
