"""Compatibility module: the studies of a trained model now live in :mod:`deqkit.analysis`.

The functions here take the arguments of their :mod:`deqkit.analysis` namesakes and return
what they returned when they lived here, plain dicts, for scripts written against this
path; new code imports them from ``deqkit.analysis``, whose results are typed records.
``sweep``, ``SweepResult`` and ``EXAMPLE_COLUMNS`` are the analysis ones themselves.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from . import analysis
from .analysis import EXAMPLE_COLUMNS, SweepResult, sweep

__all__ = ["EXAMPLE_COLUMNS", "SweepResult", "compare_solvers", "contraction", "examine", "sweep"]


def compare_solvers(*args: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """:func:`deqkit.analysis.compare_solvers` with each row as a dict
    (:meth:`~deqkit.analysis.SolverTiming.to_dict`)."""
    rows, traces = analysis.compare_solvers(*args, **kwargs)
    return [r.to_dict() for r in rows], traces


def contraction(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`deqkit.analysis.contraction` as a dict of its fields, the ``[B]`` tensors
    ``radius``, ``norm`` and ``path_score`` included."""
    result = analysis.contraction(*args, **kwargs)
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}


def examine(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`deqkit.analysis.examine` as ``examine.json``'s dict
    (:meth:`~deqkit.analysis.ExamineResult.to_dict`) plus ``"files"``, the paths written as
    strings."""
    result = analysis.examine(*args, **kwargs)
    return {**result.to_dict(), "files": [str(p) for p in result.files]}
