"""Scoring a model on its task's evaluation set, with the solver budget as a knob."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import integer, real
from ._config import TrainConfig
from ._data import Data
from ._model import autocast, full_precision, is_equilibrium

__all__ = ["Evaluation", "evaluate", "evaluate_on"]


@dataclass(frozen=True)
class Evaluation:
    """The score of a model on one evaluation set, as :func:`evaluate` returns it.

    Solver statistics are ``None`` where they do not apply (explicit models; residuals and
    convergence in recurrent mode, where ``iters_mean == iters_max == max_iter``).

    Attributes:
        difficulty: The test difficulty (string length, maze size ``k``); ``None`` for a
            data set's test split.
        n: Samples scored.
        loss: Mean cross-entropy per position (per sample for classification).
        accuracy: Fraction right: exact match per string / maze, top-1 for data sets.
        iters_mean: Mean forward evaluations of ``f`` per sample (recurrent: iterations).
        iters_max: The most any sample spent.
        residual_mean: Mean final residual of the forward solves.
        converged: Fraction of samples whose solve met ``tol``.
        max_iter: The forward budget used (recurrent: the iteration count).
        tol: The forward tolerance used (``None`` in recurrent mode and for explicit models).
    """

    difficulty: int | None
    n: int
    loss: float
    accuracy: float
    iters_mean: float | None
    iters_max: int | None
    residual_mean: float | None
    converged: float | None
    max_iter: int | None
    tol: float | None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, in field order (``deqkit eval`` prints it, the
        run's ``eval`` records and ``eval.csv`` hold it)."""
        return asdict(self)


@torch.no_grad()
def evaluate_on(
    model: nn.Module,
    config: TrainConfig,
    data: Data,
    difficulty: int | None,
    n: int | None = None,
    *,
    max_iter: int | None = None,
    tol: float | None = None,
    batch_size: int | None = None,
) -> Evaluation:
    """:func:`evaluate` with a ready :class:`Data` (the training loop keeps one)."""
    max_iter = integer("max_iter", max_iter, 1, optional=True)
    if max_iter is None and config.mode == "deq" and is_equilibrium(model):
        max_iter = config.eval_max_iter
    tol = real("tol", tol, 0.0, low_open=True, optional=True)
    if (max_iter is not None or tol is not None) and not is_equilibrium(model):
        raise ValueError(
            f"max_iter and tol apply to equilibrium models, not {type(model).__name__}"
        )
    if tol is not None and config.mode == "recurrent":
        raise ValueError("tol applies to mode='deq' only (recurrent models run max_iter steps)")
    bs = batch_size or config.eval_batch_size or config.batch_size
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x_all, y_all = data.eval_set(difficulty, n)
    equilibrium = is_equilibrium(model)
    overrides: dict[str, Any] = {}  # what this evaluation changes; the rest is the model's
    if max_iter is not None:
        overrides["max_iter"] = max_iter
    if tol is not None:
        overrides["tol"] = tol
    settings = getattr(getattr(model, "deq", None), "settings", None)
    if config.mode == "recurrent":
        budget = max_iter or config.deq.get("max_iter") or config.train_iters
        used_tol = None
    elif equilibrium:
        budget = overrides.get("max_iter", getattr(settings, "max_iter", None))
        used_tol = overrides.get("tol", getattr(settings, "tol", None))
    else:
        budget = used_tol = None
    was_training = model.training
    model.eval()
    loss_sum = correct = 0.0
    iters: list[Tensor] = []
    residual: list[Tensor] = []
    converged: list[Tensor] = []
    try:
        for lo in range(0, len(y_all), bs):
            x = x_all[lo : lo + bs].to(device, dtype)
            y = y_all[lo : lo + bs].to(device)
            with autocast(config, device):
                if config.mode == "recurrent":
                    logits = model.iterate(x, budget, every=False)[-1]
                    info = None
                elif equilibrium:
                    logits, info = model(x, **overrides)
                else:
                    logits, info = model(x)
            logits = full_precision(logits)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item() / math.prod(y.shape[1:])
            correct += data.correct(logits, y).sum().item()
            if info is not None:
                iters.append(info.forward.iterations.cpu())
                residual.append(info.forward.residual.float().cpu())
                converged.append(info.forward.converged.cpu())
    finally:
        model.train(was_training)
    count = len(y_all)
    iters_mean = iters_max = residual_mean = converged_frac = None
    if config.mode == "recurrent":
        iters_mean = iters_max = budget
    elif iters:
        it = torch.cat(iters).float()
        iters_mean = it.mean().item()
        iters_max = int(it.max().item())
        residual_mean = torch.cat(residual).mean().item()
        converged_frac = torch.cat(converged).float().mean().item()
    return Evaluation(
        difficulty=difficulty,
        n=count,
        loss=loss_sum / count,
        accuracy=correct / count,
        iters_mean=iters_mean,
        iters_max=iters_max,
        residual_mean=residual_mean,
        converged=converged_frac,
        max_iter=budget,
        tol=used_tol,
    )


def evaluate(
    model: nn.Module,
    config: TrainConfig,
    difficulty: int | None = None,
    n: int | None = None,
    *,
    max_iter: int | None = None,
    tol: float | None = None,
    batch_size: int | None = None,
) -> Evaluation:
    """Score ``model`` on the task of ``config``, with the solver budget as a knob.

    Procedural tasks are scored on a fixed set of ``n`` samples at ``difficulty`` (drawn
    from a generator seeded with ``(config.seed, difficulty)``, so every call and every
    checkpoint of a run sees the same samples); data sets on (the first ``n`` samples of)
    their test split. Runs under ``torch.no_grad()`` in eval mode, on the model's device and
    dtype, with ``config.amp``.

    Args:
        model: A model built for ``config`` (e.g. from :func:`load_checkpoint`).
        config: The run's :class:`TrainConfig`.
        difficulty: String length (prefix sums) or maze size ``k``; default the training
            difficulty. Must be ``None`` for data sets.
        n: Number of samples; default ``config.eval_size`` (or 1000 / the whole test split).
        max_iter: Forward budget for this evaluation (test-time compute); in recurrent mode
            the number of iterations. Default: ``config.eval_max_iter``, else the model's
            (``model.deq.settings``, built with ``config.deq``); in recurrent mode
            ``config.deq["max_iter"]``, else ``train_iters``.
        tol: Forward tolerance (deq mode). Default: the model's.
        batch_size: Default ``config.eval_batch_size`` or ``config.batch_size``.

    Returns:
        An :class:`Evaluation` (``difficulty``, ``n``, ``loss``, ``accuracy``,
        ``iters_mean``, ``iters_max``, ``residual_mean``, ``converged``, ``max_iter``,
        ``tol``); :meth:`Evaluation.to_dict` gives them as a dict with those keys.

    Raises:
        ValueError: Invalid ``max_iter``/``tol``, or a difficulty the task does not take.
    """
    if difficulty is None and config.procedural:
        difficulty = config.train_difficulty
    return evaluate_on(
        model,
        config,
        Data(config),
        difficulty,
        n,
        max_iter=max_iter,
        tol=tol,
        batch_size=batch_size,
    )
