"""The test-time compute curve: a metric as a function of the solver's evaluation budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._validate import choice, integer, invalid, real
from ..nn import Packer
from ..solvers import Solver, check_budget, resolve, run, solve
from ._common import (
    check_callable,
    one_evaluation_per_step,
    row_residuals,
)

__all__ = ["CurveResult", "compute_curve", "exact_argmax"]

PICKS = ("best", "last")
PROTOCOL = ("cell", "inject", "initial_state", "readout")


@dataclass(frozen=True)
class CurveResult:
    """A metric and the residual at each evaluation budget, averaged and per sample.

    ``K`` budgets, ``N`` samples; tensors live on the CPU.

    Attributes:
        iterations: The ``K`` budgets (evaluations of ``f`` per sample), ascending.
        metric: ``[K]`` float64 mean of the metric over the samples at each budget.
        residual: ``[K]`` float64 median residual (NaN-aware) of the states read out.
        per_sample_metric: ``[K, N]`` float64 metric of each sample at each budget.
        per_sample_residual: ``[K, N]`` residual of each sample's state at each budget.
        evaluations: ``[K, N]`` long, evaluations each sample actually spent (at most the
            budget; less where it met ``tol`` earlier).
        method: Name of the solver.
        one_pass: True when every budget was read off one solve per batch; False when each
            budget was solved anew (solvers that spend several evaluations per step).
        pick: ``"best"`` or ``"last"``, which state each budget read out.
    """

    iterations: tuple[int, ...]
    metric: Tensor
    residual: Tensor
    per_sample_metric: Tensor
    per_sample_residual: Tensor
    evaluations: Tensor
    method: str
    one_pass: bool
    pick: str

    def to_dict(self) -> dict[str, Any]:
        """The curve as plain Python lists (JSON-ready), without the per-sample matrices."""
        return {
            "iterations": list(self.iterations),
            "metric": self.metric.tolist(),
            "residual": self.residual.tolist(),
            "mean_evaluations": self.evaluations.double().mean(dim=1).tolist(),
            "method": self.method,
            "one_pass": self.one_pass,
            "pick": self.pick,
        }


def exact_argmax(logits: Tensor, targets: Tensor) -> Tensor:
    """Default metric: ``[B]`` bool, ``logits.argmax(dim=1)`` equals ``targets`` everywhere.

    Classification (``logits [B, C]``, ``targets [B]``) gives accuracy; per-position tasks
    (``logits [B, C, *S]``, ``targets [B, *S]``) give exact match (every position right).

    Raises:
        ValueError: the prediction and ``targets`` shapes differ.
    """
    pred = logits.argmax(dim=1)
    if pred.shape != targets.shape:
        raise ValueError(
            f"logits.argmax(dim=1) has shape {tuple(pred.shape)} but targets has shape "
            f"{tuple(targets.shape)}; pass a metric for this task"
        )
    return (pred == targets).reshape(targets.shape[0], -1).all(dim=1)


def compute_curve(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    iterations: Sequence[int] = (1, 2, 5, 10, 20, 50),
    metric: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    method: str | Solver | None = None,
    tol: float = 1e-12,
    stop: str | None = None,
    pick: str = "best",
    batch_size: int = 256,
    **options,
) -> CurveResult:
    """The metric (e.g. accuracy) as a function of the solver budget: test-time compute.

    The state at budget ``b`` is what ``deqkit.solve(f, z0, method, max_iter=b, tol=tol)``
    returns, ``f = lambda z: model.cell(z, model.inject(x))`` and
    ``z0 = model.initial_state(x)``: each sample's lowest-residual iterate among the first
    ``b`` it evaluated (``pick="best"``), or its current iterate after ``b`` evaluations
    (``pick="last"``, the state a recurrent network would hold). Budgets count evaluations
    of ``f``, the first one at ``z0`` included, so budget 1 reads out ``z0``.

    For Picard, Anderson and Broyden, where each step costs one evaluation, one solve per
    batch with ``max_iter = max(iterations)`` reads every budget out as it passes (the
    iterate after ``b`` evaluations, or the best one so far), storing no iterates; the
    states equal those of fresh solves up to rounding. Other solvers (Newton-Krylov spends
    several evaluations per step) are solved anew for each budget. The default ``tol`` is
    tiny so that each budget is spent; pass the model's tolerance to also let samples stop
    early.

    The model runs in eval mode under ``torch.no_grad()``; its modules' training flags are
    restored afterwards. Memory does not grow with the budget in one pass; solved anew, it is
    that of one solve.

    Args:
        model: An equilibrium model: ``cell(z, u)``, ``inject(x)``, ``initial_state(x)``,
            ``readout(z)``, and ``deq.settings`` (solver, options, stop) for the defaults.
        inputs: ``[N, ...]`` inputs.
        targets: ``[N, ...]`` targets.
        iterations: Budgets, integers >= 1 (sorted, duplicates dropped). Default
            ``(1, 2, 5, 10, 20, 50)``.
        metric: ``metric(logits, targets) -> [B]`` per-sample score (bool or float). Default
            :func:`exact_argmax` (accuracy, or exact match for per-position targets).
        method: Solver name or :class:`~deqkit.solvers.Solver`. Default: the model's
            ``deq.settings.solver`` with its ``solver_options``.
        tol: Solver tolerance, > 0. Default ``1e-12``.
        stop: ``"rel"`` or ``"abs"``. Default: the model's, else ``"rel"``.
        pick: ``"best"`` (default) or ``"last"``, see above.
        batch_size: Samples per solve, >= 1. Default ``256``.
        **options: Solver hyperparameters (added to the model's ``solver_options`` when
            ``method`` is ``None``).

    Returns:
        A :class:`CurveResult`.

    Raises:
        ValueError: empty ``iterations``, a budget that is not an integer >= 1, ``inputs``
            and ``targets`` with different numbers of samples, bad ``tol``/``pick``/
            ``batch_size``, a metric that does not return ``[B]``.
        TypeError: ``model`` missing part of the protocol, ``metric`` not callable,
            ``inputs``/``targets`` not tensors.
    """
    budgets = _check_iterations(iterations)
    missing = [name for name in PROTOCOL if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(f"model must define {', '.join(PROTOCOL)}; missing {', '.join(missing)}")
    for name, value in (("inputs", inputs), ("targets", targets)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() < 1 or value.shape[0] < 1:
            raise ValueError(f"{name} must be batch-first and non-empty, got {tuple(value.shape)}")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs and targets must have the same number of samples, got inputs "
            f"{tuple(inputs.shape)} and targets {tuple(targets.shape)}"
        )
    metric = exact_argmax if metric is None else metric
    check_callable("metric", metric)
    real("tol", tol, 0.0, low_open=True)
    integer("batch_size", batch_size, 1)
    choice("pick", pick, PICKS)
    settings = getattr(getattr(model, "deq", None), "settings", None)
    if method is None:
        if settings is None:
            raise ValueError("model has no deq.settings: pass method=...")
        solver = resolve(settings.solver, {**(settings.solver_options or {}), **options})
    else:
        solver = resolve(method, options)
    if stop is None:
        stop = getattr(settings, "stop", "rel")
    one_pass = one_evaluation_per_step(solver)

    scores, resid, evals = [], [], []
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), parametrize.cached():
            for lo in range(0, inputs.shape[0], batch_size):
                x, y = inputs[lo : lo + batch_size], targets[lo : lo + batch_size]
                s, r, e = _batch(model, x, y, budgets, metric, solver, tol, stop, pick, one_pass)
                scores.append(s)
                resid.append(r)
                evals.append(e)
    finally:
        for m, mode in modes:
            m.training = mode
    per_metric = torch.cat(scores, dim=1)
    per_resid = torch.cat(resid, dim=1)
    return CurveResult(
        iterations=tuple(budgets),
        metric=per_metric.mean(dim=1),
        residual=per_resid.double().nanmedian(dim=1).values,
        per_sample_metric=per_metric,
        per_sample_residual=per_resid,
        evaluations=torch.cat(evals, dim=1),
        method=solver.name,
        one_pass=one_pass,
        pick=pick,
    )


def _check_iterations(iterations: Sequence[int]) -> list[int]:
    if (
        isinstance(iterations, (str, bytes))
        or not isinstance(iterations, Sequence)
        or len(iterations) == 0
    ):
        raise invalid("iterations", iterations, "a non-empty sequence of integers >= 1")
    return sorted({integer("iterations entry (an evaluation budget)", b, 1) for b in iterations})


def _batch(model, x, y, budgets, metric, solver, tol, stop, pick, one_pass):
    """Per-budget metric ``[K, B]``, residual ``[K, B]`` and evaluations ``[K, B]`` (CPU)."""
    u = model.inject(x)
    z0 = model.initial_state(x)
    packer = Packer.of(z0, "model.initial_state(x)")
    start = packer.pack(z0, "model.initial_state(x)")
    B = start.shape[0]
    if B != y.shape[0]:
        raise ValueError(
            f"model.initial_state(x) has batch {B} but the batch of targets has {y.shape[0]}"
        )

    def f(z: Tensor) -> Tensor:
        return packer.pack(model.cell(packer.unpack(z), u), "model.cell(z, u)").to(z.dtype)

    def score(z: Tensor) -> Tensor:
        out = metric(model.readout(packer.unpack(z.view(start.shape).to(start.dtype))), y)
        if not isinstance(out, Tensor) or out.shape != (B,):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"metric must return a per-sample tensor of shape [{B}], got {got}")
        return out.detach().to("cpu", torch.float64)

    kw = dict(tol=tol, stop=stop)
    states, resid, evals = [], [], []
    if one_pass:
        # Read each budget out as the solve passes it: row t (after t + 1 evaluations) is
        # budget t + 1. Budgets past the last step taken (every sample stopped) read the end.
        wanted = {b - 1 for b in budgets}
        seen: dict[int, tuple[Tensor, Tensor]] = {}
        end: tuple[Tensor, Tensor] | None = None

        def on_step(t, z, res, best_z, best_res):
            nonlocal end
            end = (z, res) if pick == "last" else (best_z, best_res)
            if t in wanted:
                seen[t] = (score(end[0]), end[1].detach().cpu().clone())

        check_budget(tol, stop, budgets[-1])
        res = run(f, start, solver, float(tol), stop, budgets[-1], on_step=on_step)
        for b in budgets:
            if b - 1 not in seen:
                seen[b - 1] = (score(end[0]), end[1].detach().cpu().clone())
            s, r = seen[b - 1]
            states.append(s)
            resid.append(r)
            evals.append(res.iterations.clamp(max=b))
        return torch.stack(states), torch.stack(resid), torch.stack([e.cpu() for e in evals])
    else:
        last = pick == "last"
        for b in budgets:
            res = solve(f, start, solver, max_iter=b, **kw, record_trace=last, record_iterates=last)
            states.append(res.iterates[-1] if last else res.z)
            resid.append(row_residuals(res)[-1] if last else res.residual)
            evals.append(res.iterations)
    return (
        torch.stack([score(z) for z in states]),
        torch.stack([r.detach().cpu() for r in resid]),
        torch.stack([e.cpu() for e in evals]),
    )
