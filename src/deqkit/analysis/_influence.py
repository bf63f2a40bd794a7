"""How far an input position reaches: the Jacobian of the fixed point's readout, by offset."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._validate import integer, real
from ..nn import Implicit
from ._model import require_equilibrium

__all__ = ["Influence", "influence"]


@dataclass(frozen=True)
class Influence:
    r"""The influence of each input position on each output position, at the fixed point.

    ``matrix[j, i]`` is the mean over samples of :math:`|\partial s_j / \partial x_i|`
    (summed over input channels), where :math:`s_j` is the decision score at output ``j``
    (for two classes the logit margin, class 1 minus class 0; otherwise the logit of the
    class predicted at ``z*``), differentiated through ``z*`` exactly (the implicit
    function theorem, :class:`deqkit.Implicit` to a tight tolerance).

    Attributes:
        matrix: ``[L, L]``, output position by input position.
        offsets: ``j - i`` for ``by_offset``: ``-(L - 1) .. L - 1`` (positive: an input
            earlier in the sequence than the output).
        by_offset: Mean of ``matrix`` over the pairs at each offset, ``[2L - 1]``.
        decay: Fitted decay of the influence per position of offset, from a least-squares
            line through ``log by_offset`` at offsets ``fit_offsets`` (``by_offset`` falls
            like ``decay ** offset``); ``nan`` where it cannot be fitted.
        fit_offsets: The ``(low, high)`` offsets of that fit.
        converged: Fraction of samples whose forward solve met ``tol``; where it is below
            1 the derivative is that of an iterate, not of the fixed point.
        iterations: Mean forward evaluations per sample.
    """

    matrix: Tensor
    offsets: Tensor
    by_offset: Tensor
    decay: float
    fit_offsets: tuple[int, int]
    converged: float
    iterations: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``by_offset`` as ``{offset: value}``, the scalars, no matrix."""
        return {
            "by_offset": {
                int(o): float(v) for o, v in zip(self.offsets, self.by_offset, strict=True)
            },
            "decay": self.decay,
            "fit_offsets": list(self.fit_offsets),
            "converged": self.converged,
            "iterations": self.iterations,
        }


def influence(
    model: Any,
    x: Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    solver: str | None = None,
    fit_offsets: tuple[int, int] | None = None,
) -> Influence:
    r"""Influence of input position ``i`` on output position ``j`` through the fixed point.

    For a 1-D equilibrium model (``x [B, C_in, L]`` -> logits ``[B, C, L]``, e.g. a
    :class:`~deqkit.models.RecallNet` on prefix sums) it solves ``z*`` to ``tol`` and takes
    one exact backward pass per output position, so it costs ``L`` adjoint solves. The
    influence against the offset ``j - i`` is what a contraction bounds: for a cell that is
    ``L_f``-Lipschitz in ``z`` and reaches ``r`` positions per application, an input ``d``
    positions away enters ``z*`` only after ``d / r`` applications, so its influence falls
    at least like :math:`L_f^{d / r}` (fading memory); a prefix-sum parity, which every
    earlier bit decides, needs it not to fall at all.

    Args:
        model: An :class:`~deqkit.analysis.EquilibriumLike` model with 1-D inputs/outputs.
        x: ``[B, C_in, L]`` inputs.
        tol: Forward and adjoint tolerance. Default ``1e-6``.
        max_iter: Forward budget; the adjoint gets twice it. Default ``1000``.
        solver: Forward and adjoint solver; default the model's own.
        fit_offsets: ``(low, high)`` offsets (``>= 0``) of the decay fit. Default
            ``(1, L // 2)``.

    Returns:
        An :class:`Influence`.

    Raises:
        ValueError: ``x`` not ``[B, C_in, L]``, logits not ``[B, C, L]``, bad arguments.
        TypeError: ``model`` is not an equilibrium model.
    """
    require_equilibrium(model, "influence")
    tol = real("tol", tol, 0.0, low_open=True)
    max_iter = integer("max_iter", max_iter, 1)
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(
            f"x must be a [B, C_in, L] tensor, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    length = x.shape[-1]
    low, high = fit_offsets if fit_offsets is not None else (1, max(1, length // 2))
    low, high = integer("fit_offsets low", low, 0), integer("fit_offsets high", high, 0)
    if not low < high < length:
        raise ValueError(f"fit_offsets must satisfy 0 <= low < high < L = {length}")
    solver = solver or model.deq.settings.solver
    backward = Implicit(solver=solver, tol=tol, max_iter=2 * max_iter)
    x = x.detach().clone().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits, info = model(x, solver=solver, tol=tol, max_iter=max_iter, backward=backward)
            if logits.dim() != 3 or logits.shape[-1] != length:
                raise ValueError(
                    f"influence needs logits [B, C, L = {length}], got {tuple(logits.shape)}"
                )
            if logits.shape[1] == 2:
                score = logits[:, 1] - logits[:, 0]
            else:
                pick = logits.detach().argmax(1, keepdim=True)
                score = logits.gather(1, pick)[:, 0]
            rows = []
            for j in range(length):
                (grad,) = torch.autograd.grad(score[:, j].sum(), x, retain_graph=j < length - 1)
                rows.append(grad.abs().sum(1).mean(0))
    finally:
        model.train(was_training)
    matrix = torch.stack(rows).detach().double().cpu()  # [j, i]
    offsets = torch.arange(-(length - 1), length)
    j_idx, i_idx = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    off = (j_idx - i_idx).flatten() + (length - 1)
    sums = torch.zeros(2 * length - 1, dtype=torch.float64).index_add_(0, off, matrix.flatten())
    counts = torch.bincount(off, minlength=2 * length - 1).double()
    by_offset = sums / counts
    ys = by_offset[length - 1 + low : length + high]
    ds = torch.arange(low, high + 1, dtype=torch.float64)
    decay = math.nan
    if (ys > 0).all():
        slope = torch.linalg.lstsq(
            torch.stack([ds, torch.ones_like(ds)], 1), ys.log()[:, None]
        ).solution[0, 0]
        decay = math.exp(slope.item())
    return Influence(
        matrix=matrix,
        offsets=offsets,
        by_offset=by_offset,
        decay=decay,
        fit_offsets=(low, high),
        converged=info.forward.converged.float().mean().item(),
        iterations=info.forward.iterations.float().mean().item(),
    )
