"""The field's recipes for training DEQs, as one composable object used step by step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._validate import assign, choice, flag, integer, real
from ._gradients import Gradient, Unrolled, make_gradient
from ._norms import apply_weight_norm
from ._regularizers import jacobian_frobenius, mixed_init
from ._state import State

__all__ = ["INITS", "Recipe", "StepPlan"]

INITS = ("zeros", "random", "mixed")


@dataclass(frozen=True)
class Recipe:
    r"""Stabilisers and training aids for a DEQ, composable, applied per training step.

    Each is off by default; a plain PyTorch loop uses it like this (``deqkit train`` does
    the same from the config fields of the same names)::

        recipe = deqkit.nn.Recipe(pretrain_steps=200, jac_weight=0.4, jac_every=10)
        recipe.prepare(cell)                        # weight norm, if asked for
        for step, (x, y) in enumerate(batches):
            plan = recipe.plan(step, deq)           # this step's settings
            z0 = plan.initial_state(deq.initial_state(x))
            z, info = deq(x, z0, **plan.overrides)
            loss = loss_fn(head(z), y)
            loss = loss + plan.correction_loss(info, lambda z: loss_fn(head(z), y))
            loss = loss + plan.jacobian_penalty(lambda z: cell(z, x), info.forward.z)

    Recipes (with the papers that use them):

    * **Pretraining** (MDEQ, Bai et al. 2020; Anil et al. 2022): for the first
      ``pretrain_steps`` steps the layer is a weight-tied stack of ``pretrain_iters`` plain
      steps (``pretrain_solver``) trained with ``pretrain_gradient`` (default
      :class:`Unrolled`), then the DEQ's own solver and gradient take over. With
      ``pretrain_solver=None`` and ``pretrain_iters=None`` the DEQ keeps its solver and
      budget and only the gradient changes (e.g. :class:`Phantom` first, then the exact
      implicit gradient). While pretraining, the layer's ``backward_*`` settings are left
      out (the pretraining gradient is an object with its own), and so are its
      ``solver_options`` when ``pretrain_solver`` replaces its solver.
    * **Jacobian regularisation** (Bai, Koltun & Kolter 2021): add
      ``jac_weight * mean(||J||_F^2 / n)`` (Hutchinson, ``jac_samples`` probes) on every
      ``jac_every``-th step from step ``jac_start`` on, before step ``jac_stop``.
    * **Fixed-point correction** (Bai et al. 2022): ``correction`` intermediate iterates of
      the forward solve are read out too, with loss weights
      :math:`\gamma^{n + 1 - i}`, ``i = 1..n`` (later iterates weigh more; the fixed point
      itself has weight 1 in the main loss), :math:`\gamma` = ``correction_gamma``.
    * **Initial states** (Anil et al. 2022): ``init="zeros"`` keeps the model's start,
      ``"random"`` starts every sample from Gaussian noise of std ``init_scale``,
      ``"mixed"`` a fraction ``init_p`` of them.
    * **Budget jitter**: each step's forward budget is drawn uniformly from
      ``[max_iter - max_iter_jitter, max_iter + max_iter_jitter]`` (at least 1), so the
      model cannot depend on one exact iteration count (as recurrent-depth models sample
      theirs, Geiping et al. 2025). While pretraining, the budget jittered is that of the
      pretraining (``pretrain_iters``, or the DEQ's when that is ``None``).
    * **Weight norm** on the cell (MDEQ, torchdeq): :meth:`prepare` applies
      :func:`deqkit.nn.apply_weight_norm`.

    Args: the fields above. Defaults: ``pretrain_steps=0``, ``pretrain_iters=10``,
    ``pretrain_solver="picard"``, ``pretrain_gradient=Unrolled()``, ``jac_weight=0``,
    ``jac_every=1``, ``jac_start=0``, ``jac_stop=None`` (never), ``jac_samples=1``,
    ``correction=0``, ``correction_gamma=0.8`` (torchdeq's), ``init="zeros"``, ``init_p=0.5``,
    ``init_scale=1.0``, ``max_iter_jitter=0``, ``weight_norm=False``.

    Raises:
        ValueError: a field of the wrong kind or out of range, naming it
            (``Invalid jac_every: 0 (expected an integer >= 1)``).
        TypeError: ``pretrain_solver`` not a name; ``pretrain_gradient`` not a gradient.
    """

    pretrain_steps: int = 0
    pretrain_iters: int | None = 10
    pretrain_solver: str | None = "picard"
    pretrain_gradient: Gradient | str | dict = field(default_factory=Unrolled)
    jac_weight: float = 0.0
    jac_every: int = 1
    jac_start: int = 0
    jac_stop: int | None = None
    jac_samples: int = 1
    correction: int = 0
    correction_gamma: float = 0.8
    init: str = "zeros"
    init_p: float = 0.5
    init_scale: float = 1.0
    max_iter_jitter: int = 0
    weight_norm: bool = False

    def __post_init__(self) -> None:
        if self.pretrain_solver is not None and not isinstance(self.pretrain_solver, str):
            raise TypeError(
                f"Recipe pretrain_solver must be a name or None, got {self.pretrain_solver!r}"
            )
        assign(
            self,
            pretrain_steps=integer("pretrain_steps", self.pretrain_steps, 0),
            pretrain_iters=integer("pretrain_iters", self.pretrain_iters, 1, optional=True),
            pretrain_gradient=make_gradient(self.pretrain_gradient),
            jac_weight=real("jac_weight", self.jac_weight, 0.0),
            jac_every=integer("jac_every", self.jac_every, 1),
            jac_start=integer("jac_start", self.jac_start, 0),
            jac_stop=integer("jac_stop", self.jac_stop, 0, optional=True),
            jac_samples=integer("jac_samples", self.jac_samples, 1),
            correction=integer("correction", self.correction, 0),
            correction_gamma=real("correction_gamma", self.correction_gamma, 0, 1, low_open=True),
            init=choice("init", self.init, INITS),
            init_p=real("init_p", self.init_p, 0.0, 1.0),
            init_scale=real("init_scale", self.init_scale, 0.0, low_open=True),
            max_iter_jitter=integer("max_iter_jitter", self.max_iter_jitter, 0),
            weight_norm=flag("weight_norm", self.weight_norm),
        )

    def prepare(self, cell: nn.Module) -> nn.Module:
        """Apply the structural recipes (weight norm) to ``cell`` in place; returns it."""
        if self.weight_norm:
            apply_weight_norm(cell)
        return cell

    def plan(
        self,
        step: int,
        deq: Any = None,
        *,
        max_iter: int | None = None,
        overrides: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> StepPlan:
        """This step's settings.

        Args:
            step: Optimiser steps completed before this one (0 for the first).
            deq: The :class:`~deqkit.DEQ` (its ``max_iter`` is the jitter's centre), or
                ``None`` when ``max_iter`` is given or jitter is off.
            max_iter: The forward budget to jitter around. Default ``deq``'s (after
                ``overrides``).
            overrides: DEQ settings the caller passes every call anyway; the plan's
                overrides start from them. Default ``None`` (``deqkit train`` builds the
                model with its config's settings and passes none).
            generator: Random generator for the budget jitter and the initial states.

        Returns:
            A :class:`StepPlan`.
        """
        step = integer("step", step, 0)
        out = dict(overrides or {})
        pretraining = step < self.pretrain_steps
        if pretraining:
            # The pretraining gradient and solver come with their own defaults: the layer's
            # adjoint settings and solver hyperparameters belong to its own gradient/solver.
            out["backward"] = self.pretrain_gradient
            for key in ("backward_solver", "backward_tol", "backward_max_iter", "backward_options"):
                out[key] = None
            if self.pretrain_solver is not None:
                out["solver"] = self.pretrain_solver
                out["solver_options"] = None
            if self.pretrain_iters is not None:
                out["max_iter"] = self.pretrain_iters
        if self.max_iter_jitter:
            centre = out.get("max_iter", max_iter)
            if centre is None:
                if deq is None:
                    raise ValueError("Recipe.plan needs deq or max_iter for max_iter_jitter")
                centre = deq.settings.max_iter
            lo = max(1, centre - self.max_iter_jitter)
            hi = centre + self.max_iter_jitter
            out["max_iter"] = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        if self.correction:
            out["correction"] = self.correction
        jac_on = (
            self.jac_weight > 0
            and step >= self.jac_start
            and (step - self.jac_start) % self.jac_every == 0
            and (self.jac_stop is None or step < self.jac_stop)
        )
        return StepPlan(self, step, pretraining, out, self.jac_weight if jac_on else 0.0, generator)


@dataclass(frozen=True)
class StepPlan:
    """What a :class:`Recipe` asks of one training step.

    Attributes:
        recipe: The recipe.
        step: The step number.
        pretraining: Whether this step is a pretraining step.
        overrides: DEQ settings for this step's call (``deq(x, z0, **plan.overrides)``).
        jac_weight: The Jacobian penalty's weight this step (0 when off).
        generator: The generator given to :meth:`Recipe.plan`.
    """

    recipe: Recipe
    step: int
    pretraining: bool
    overrides: dict[str, Any]
    jac_weight: float
    generator: torch.Generator | None

    def initial_state(self, z0: State) -> State:
        """``z0`` (``init="zeros"``), or noise for every sample (``"random"``) or some."""
        r = self.recipe
        if r.init == "zeros":
            return z0
        p = 1.0 if r.init == "random" else r.init_p
        return mixed_init(z0, p, r.init_scale, generator=self.generator)

    def correction_loss(self, info: Any, loss_of_state: Callable[[State], Tensor]) -> Tensor:
        r""":math:`\sum_i \gamma^{n + 1 - i}\, \ell(z_i)` over ``info.corrections`` (0 if none).

        ``loss_of_state(z)`` is the task loss of a state (readout and criterion).
        """
        states = list(getattr(info, "corrections", []) or [])
        if not states:
            if self.recipe.correction and not self.pretraining and torch.is_grad_enabled():
                raise ValueError(
                    "Recipe correction > 0 but info.corrections is empty: pass "
                    "**plan.overrides to the DEQ call (it sets correction=n)"
                )
            return torch.zeros(())
        n, gamma = len(states), self.recipe.correction_gamma
        total = sum(gamma ** (n - i) * loss_of_state(z) for i, z in enumerate(states))
        return total

    def jacobian_estimate(self, f: Callable[[State], State], z: State) -> Tensor:
        """``mean(jacobian_frobenius(f, z))`` with the recipe's probes (unweighted)."""
        est = jacobian_frobenius(f, z, self.recipe.jac_samples, generator=self.generator)
        return est.mean()

    def jacobian_penalty(self, f: Callable[[State], State], z: State) -> Tensor:
        """``jac_weight * jacobian_estimate(f, z)`` this step, else a zero scalar."""
        if self.jac_weight == 0.0:
            return torch.zeros(())
        return self.jac_weight * self.jacobian_estimate(f, z)
