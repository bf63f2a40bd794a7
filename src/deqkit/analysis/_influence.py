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
    function theorem, :class:`deqkit.Implicit` to a tight tolerance). Positions of a 2-D
    input (``[B, C_in, H, W]``) are its pixels in row-major order, ``j = row * W + col``.

    Attributes:
        matrix: ``[P, P]``, output position by input position (``P = L``, or ``H * W``).
        offsets: The offsets ``by_offset`` is indexed by. 1-D: ``j - i``, ``-(L - 1) ..
            L - 1`` (positive: an input earlier in the sequence than the output). 2-D: the
            Chebyshev distance ``max(|row_j - row_i|, |col_j - col_i|)``, ``0 ..
            max(H, W) - 1``, the number of 3 x 3 convolutions it takes to cross it.
        by_offset: Mean of ``matrix`` over the pairs at each offset.
        decay: Fitted decay of the influence per position of offset, from a least-squares
            line through ``log by_offset`` at offsets ``fit_offsets`` (``by_offset`` falls
            like ``decay ** offset``); ``nan`` where it cannot be fitted.
        fit_offsets: The ``(low, high)`` offsets of that fit.
        converged: Fraction of samples whose forward solve met ``tol``; where it is below
            1 the derivative is that of an iterate, not of the fixed point.
        iterations: Mean forward evaluations per sample.
        metric: ``"offset"`` (1-D) or ``"chebyshev"`` (2-D): what ``offsets`` measure.
    """

    matrix: Tensor
    offsets: Tensor
    by_offset: Tensor
    decay: float
    fit_offsets: tuple[int, int]
    converged: float
    iterations: float
    metric: str = "offset"

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
            "metric": self.metric,
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

    For an equilibrium model on sequences (``x [B, C_in, L]`` -> logits ``[B, C, L]``, e.g.
    a :class:`~deqkit.models.RecallNet` on prefix sums) or on images (``x [B, C_in, H, W]``
    -> logits ``[B, C, H, W]``, mazes) it solves ``z*`` to ``tol`` and takes one exact
    backward pass per output position, so it costs ``L`` (or ``H * W``) adjoint solves. The
    influence against the offset ``j - i`` (on images, the Chebyshev distance between the
    pixels) is what a contraction bounds: for a cell that is ``L_f``-Lipschitz in ``z`` and
    reaches ``r`` positions per application, an input ``d`` positions away enters ``z*``
    only after ``d / r`` applications, so its influence falls at least like
    :math:`L_f^{d / r}` (fading memory); a prefix-sum parity, which every earlier bit
    decides, or a maze path, which a wall far away can reroute, needs it not to fall.

    Args:
        model: An :class:`~deqkit.analysis.EquilibriumLike` model with 1-D or 2-D
            inputs and outputs of the same length (or height and width).
        x: ``[B, C_in, L]`` or ``[B, C_in, H, W]`` inputs.
        tol: Forward and adjoint tolerance. Default ``1e-6``.
        max_iter: Forward budget; the adjoint gets twice it. Default ``1000``.
        solver: Forward and adjoint solver; default the model's own.
        fit_offsets: ``(low, high)`` offsets (``>= 0``) of the decay fit. Default
            ``(1, L // 2)`` (``(1, max(H, W) // 2)`` on images).

    Returns:
        An :class:`Influence`.

    Raises:
        ValueError: ``x`` not ``[B, C_in, L]`` or ``[B, C_in, H, W]``, logits not of the
            input's length (height and width), bad arguments.
        TypeError: ``model`` is not an equilibrium model.
    """
    require_equilibrium(model, "influence")
    tol = real("tol", tol, 0.0, low_open=True)
    max_iter = integer("max_iter", max_iter, 1)
    if not isinstance(x, Tensor) or x.dim() not in (3, 4):
        raise ValueError(
            f"x must be a [B, C_in, L] or [B, C_in, H, W] tensor, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    grid = tuple(x.shape[2:])
    span = max(grid)  # offsets run to span - 1 (1-D: in both directions)
    low, high = fit_offsets if fit_offsets is not None else (1, max(1, span // 2))
    low, high = integer("fit_offsets low", low, 0), integer("fit_offsets high", high, 0)
    if not low < high < span:
        what = f"L = {span}" if len(grid) == 1 else f"max(H, W) = {span}"
        raise ValueError(f"fit_offsets must satisfy 0 <= low < high < {what}")
    solver = solver or model.deq.settings.solver
    backward = Implicit(solver=solver, tol=tol, max_iter=2 * max_iter)
    x = x.detach().clone().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits, info = model(x, solver=solver, tol=tol, max_iter=max_iter, backward=backward)
            if logits.dim() != x.dim() or tuple(logits.shape[2:]) != grid:
                want = "[B, C, L = {}]" if len(grid) == 1 else "[B, C, H = {}, W = {}]"
                raise ValueError(
                    f"influence needs logits {want.format(*grid)}, got {tuple(logits.shape)}"
                )
            if logits.shape[1] == 2:
                score = logits[:, 1] - logits[:, 0]
            else:
                pick = logits.detach().argmax(1, keepdim=True)
                score = logits.gather(1, pick)[:, 0]
            score = score.flatten(1)  # [B, P]
            rows = []
            positions = score.shape[1]
            for j in range(positions):
                (grad,) = torch.autograd.grad(score[:, j].sum(), x, retain_graph=j < positions - 1)
                rows.append(grad.abs().sum(1).mean(0).flatten())
    finally:
        model.train(was_training)
    matrix = torch.stack(rows).detach().double().cpu()  # [j, i]
    if len(grid) == 1:
        offsets = torch.arange(-(span - 1), span)
        j_idx, i_idx = torch.meshgrid(torch.arange(span), torch.arange(span), indexing="ij")
        off = (j_idx - i_idx).flatten() + (span - 1)
        origin, metric = span - 1, "offset"  # by_offset[origin] is offset 0
    else:
        offsets = torch.arange(span)
        rc = torch.cartesian_prod(torch.arange(grid[0]), torch.arange(grid[1]))  # [P, 2]
        off = (rc[:, None, :] - rc[None, :, :]).abs().amax(-1).flatten()
        origin, metric = 0, "chebyshev"
    sums = torch.zeros(len(offsets), dtype=torch.float64).index_add_(0, off, matrix.flatten())
    counts = torch.bincount(off, minlength=len(offsets)).double()
    by_offset = sums / counts
    ys = by_offset[origin + low : origin + high + 1]
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
        metric=metric,
    )
