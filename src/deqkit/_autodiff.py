"""Automatic differentiation shared by the packages (internal: not for users).

:func:`jvp` is ``torch.func.jvp`` without torch's first-use warning; the solvers (Newton's
Jacobian products through :class:`deqkit.solvers.Evaluator`) and the analysis instruments
(spectral radius and norm) both call it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["jvp"]


def jvp(f: Callable, primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...]):
    """``torch.func.jvp`` without torch's own first-use warning.

    torch builds its forward-AD decompositions with ``torch.jit.script`` the first time
    forward mode runs in a process and warns that it is deprecated: torch's concern, not the
    user's, and an error under ``-W error``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
        return torch.func.jvp(f, primals, tangents)
