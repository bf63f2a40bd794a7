"""A training step's statistics: summed over samples and ranks, then one metrics record."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._dist import Dist

__all__ = ["StepOutput", "StepTotals", "postfix", "train_record"]

NAN = float("nan")


@dataclass(frozen=True)
class StepOutput:
    """What one rank's training step produced (tensors detached).

    Attributes:
        loss: Scalar mean loss of this rank's ``n`` samples (the Jacobian penalty included).
        logits: The model's logits, ``None`` in recurrent mode.
        y: ``[n, ...]`` targets.
        info: The :class:`~deqkit.DEQInfo` of the forward solve, ``None`` for explicit
            models and in recurrent mode.
        penalty: The unweighted Jacobian estimate on steps that use it, else ``None``.
        grad_norm: Global gradient norm before clipping.
        lr: Learning rate of this step.
    """

    loss: Tensor
    logits: Tensor | None
    y: Tensor
    info: Any
    penalty: Tensor | None
    grad_norm: Tensor
    lr: float


# Reduced by sum over ranks / by max over ranks, in this order.
_SUMMED = (
    "loss",
    "correct",
    "samples",
    "iterations",
    "residual",
    "converged",
    "backward_iterations",
    "penalty",
    "fallback",
)
_MAXED = ("max_iterations", "stop")


@dataclass(frozen=True)
class StepTotals:
    """Totals of a step over its samples: one rank's, or every rank's after :meth:`reduce`.

    A statistic the step does not have (no solve, no penalty, ...) is NaN here; the record
    (:func:`train_record`) turns it into ``None``.

    Attributes:
        loss: Sum of the per-sample loss (mean loss times samples).
        correct: Samples scored correct (:meth:`deqkit.train.Data.correct`).
        samples: Samples in the step.
        iterations: Forward evaluations of ``f``, summed over samples.
        residual: Final forward residuals, summed.
        converged: Samples whose forward solve met ``tol``.
        backward_iterations: Adjoint-solve iterations, summed (implicit gradient).
        penalty: Jacobian estimate times samples.
        fallback: Samples that fell back to the phantom gradient.
        max_iterations: The most forward evaluations any sample spent (reduced by max).
        stop: 1.0 when any rank was asked to stop (reduced by max), else 0.0.
    """

    loss: float
    correct: float
    samples: float
    iterations: float
    residual: float
    converged: float
    backward_iterations: float
    penalty: float
    fallback: float
    max_iterations: float
    stop: float

    @classmethod
    def of(cls, out: StepOutput, correct: Tensor | None, stop: bool) -> StepTotals:
        """This rank's totals of ``out``; ``correct`` the ``[n]`` per-sample scores (``None``
        without logits), ``stop`` whether this rank was asked to stop."""
        n = out.y.shape[0]
        info = out.info
        fwd = info.forward if info is not None else None
        bwd = info.backward if info is not None else None
        fell = getattr(info, "fallback", None)
        return cls(
            loss=out.loss.item() * n,
            correct=float(correct.sum()) if correct is not None else NAN,
            samples=n,
            iterations=fwd.iterations.sum().item() if fwd is not None else NAN,
            residual=fwd.residual.float().sum().item() if fwd is not None else NAN,
            converged=fwd.converged.sum().item() if fwd is not None else NAN,
            backward_iterations=bwd.iterations.float().sum().item() if bwd is not None else NAN,
            penalty=out.penalty.item() * n if out.penalty is not None else NAN,
            fallback=fell.float().sum().item() if fell is not None else NAN,
            max_iterations=fwd.iterations.max().item() if fwd is not None else NAN,
            stop=float(stop),
        )

    def reduce(self, dist: Dist) -> StepTotals:
        """The totals over every rank (one sum and one max all-reduce, in float64)."""
        sums = torch.tensor(
            [getattr(self, k) for k in _SUMMED], dtype=torch.float64, device=dist.device
        )
        maxes = torch.tensor(
            [getattr(self, k) for k in _MAXED], dtype=torch.float64, device=dist.device
        )
        dist.all_reduce(sums, "sum")
        dist.all_reduce(maxes, "max")
        values = dict(zip(_SUMMED, sums.tolist(), strict=True))
        values.update(zip(_MAXED, maxes.tolist(), strict=True))
        return dataclasses.replace(self, **values)


def train_record(
    out: StepOutput, totals: StepTotals, *, step: int, epoch: int | None, elapsed: float
) -> dict[str, Any]:
    """The ``"kind": "train"`` metrics record of a step: means over the global batch of
    ``totals`` (reduced), ``None`` for what the step does not have; ``grad_norm`` and ``lr``
    of this rank's ``out`` (the same on every rank); ``time`` the run's seconds so far."""
    info = out.info
    fwd = info.forward if info is not None else None
    bwd = info.backward if info is not None else None
    fell = getattr(info, "fallback", None)
    total = totals.samples

    def mean(v: float) -> float | None:
        return None if fwd is None else v / total

    return {
        "kind": "train",
        "step": step,
        "epoch": epoch,
        "loss": totals.loss / total,
        "penalty": None if out.penalty is None else totals.penalty / total,
        "accuracy": None if out.logits is None else totals.correct / total,
        "iters_mean": mean(totals.iterations),
        "iters_max": None if fwd is None else int(totals.max_iterations),
        "residual_mean": mean(totals.residual),
        "converged": mean(totals.converged),
        "backward_iters": None if bwd is None else totals.backward_iterations / total,
        "fallback": None if fell is None else totals.fallback / total,
        "grad_norm": out.grad_norm.item(),
        "lr": out.lr,
        "time": round(elapsed, 3),
    }


def postfix(record: dict[str, Any]) -> dict[str, str]:
    """The progress bar's summary of a train record: loss, accuracy, iterations, residual."""
    out = {"loss": f"{record['loss']:.4f}"}
    if record["accuracy"] is not None:
        out["acc"] = f"{record['accuracy']:.3f}"
    if record["iters_mean"] is not None:
        out["it"] = f"{record['iters_mean']:.1f}"
        out["res"] = f"{record['residual_mean']:.2e}"
    return out
