"""The DEQ layer: forward solve, then one of three gradients, one implementation each."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..solvers import Solver, SolveResult, all_finite, run
from ._gradients import Gradient
from ._settings import SETTINGS, DEQSettings, check_setting_names, equal
from ._state import Packer, State

__all__ = ["DEQ", "DEQInfo"]


class DEQInfo:
    """What a :class:`DEQ` call did.

    Attributes:
        forward: The forward :class:`~deqkit.SolveResult` (per-sample ``converged``,
            ``iterations``, ``residual``, ``status``; also reachable as attributes of the info
            itself: ``info.converged`` is ``info.forward.converged``).
        backward: The adjoint solve's :class:`~deqkit.SolveResult` once ``backward()`` has run
            through an implicit-mode call, else ``None``. Its ``iterations`` count
            vector-Jacobian products.
        fallback: With ``Implicit(fallback=Phantom(...))``, once ``backward()`` has run: a
            ``[B]`` bool tensor, ``True`` for the samples whose gradient came from the
            phantom fallback (forward or adjoint solve not converged); else ``None``.
        corrections: With ``correction=n > 0`` under autograd, ``n`` differentiable states
            ``f(z_i, x)`` at intermediate iterates ``z_i`` of the forward solve, for a
            fixed-point correction loss (Bai et al. 2022); else an empty list.
    """

    def __init__(self, forward: SolveResult, corrections: list[State] | None = None):
        self.forward = forward
        self.backward: SolveResult | None = None
        self.fallback: Tensor | None = None
        self.corrections: list[State] = corrections or []

    def __getattr__(self, name: str) -> Any:
        if name in ("z", "converged", "iterations", "residual", "status", "trace"):
            return getattr(self.forward, name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        back = self.backward.summary() if self.backward is not None else "not run"
        return f"DEQInfo(forward: {self.forward.summary()}; backward: {back})"


def _parametrized_tensors(module: Any) -> list[tuple[nn.Module, str]]:
    if not isinstance(module, nn.Module):
        return []
    return [
        (m, name)
        for m in module.modules()
        if parametrize.is_parametrized(m)
        for name in m.parametrizations
    ]


class DEQ(nn.Module):
    r"""A deep equilibrium layer: ``z* = f(z*, x)``, with a chosen gradient (phantom by default).

    ``deq(x)`` solves for the fixed point of ``z -> f(z, x)`` with a solver from
    :mod:`deqkit.solvers` (no autograd graph is kept of the iterations), then attaches the
    gradient ``backward`` names, a gradient object or its alias string:

    * :class:`~deqkit.Implicit` / ``"implicit"``: implicit function theorem. Backward solves
      ``u = J^T u + dL/dz*`` (``J = df/dz`` at ``z*``; one vector-Jacobian product per
      evaluation), then ``dL/dtheta = u^T df/dtheta``. Memory does not grow with iterations.
      ``Implicit(fallback=Phantom(...))`` uses the phantom adjoint for the samples whose
      forward or adjoint solve did not converge.
    * :class:`~deqkit.Phantom` / ``"phantom"``: backprop through ``k`` damped steps
      ``z <- (1 - tau) z + tau f(z, x)`` taken from ``z*`` (``k=5, tau=0.5`` by default);
      ``k=1, tau=1`` is the Jacobian-free (JFB) gradient (Fung et al. 2022; Geng et al. 2021).
    * :class:`~deqkit.Unrolled` / ``"unrolled"``: backprop through the solver's own iterations
      (memory grows with them): the baseline to compare against. Supports picard, anderson
      and broyden.

    The string aliases keep the ``backward_solver``, ``backward_tol``, ``backward_max_iter``
    and ``backward_options`` arguments (the same as ``Implicit(solver, tol, max_iter,
    **options)`` or ``Phantom(**options)``); with a gradient object they must be left out.
    All settings are validated and resolved once, at construction, and once per distinct
    set of call overrides.

    With ``implicit`` or ``phantom``, the returned state is ``f(z*, x)`` (one extra evaluation
    with autograd on, equal to ``z*`` at the fixed point) when autograd is recording, and
    ``z*`` itself otherwise (``torch.no_grad()``, no graph kept). Works in ``eval()`` mode with
    gradients enabled, under ``torch.autocast`` (``f`` in bfloat16, solver state in float32)
    and on any device. Parametrized weights of ``f`` (spectral or weight norm) are computed
    once per call, so ``f`` is the same map at every iteration.

    The settings are the fields of a :class:`~deqkit.DEQSettings`, given as keywords (below)
    or as one object, ``DEQ(f, settings=DEQSettings(...))``; either way they are validated
    and resolved once, and ``deq.settings`` holds them. Assigning a new object
    (``deq.settings = deq.settings.replace(max_iter=100)``) changes them for every later call.

    Args:
        f: ``nn.Module`` or callable, ``f(z, x) -> z``; ``z`` a tensor or tuple of tensors,
            batch first. If ``f.initial_state(x)`` exists it gives the default ``z0``.
        settings: All settings as one :class:`~deqkit.DEQSettings`. Default ``None``: the
            keywords below. With an object, leave the keywords at their defaults (a keyword
            that differs from both its default and the object's value is an error).
        solver: Forward method name or :class:`~deqkit.solvers.Solver`. Default
            ``"anderson"``.
        tol: Forward tolerance. Default ``1e-4``.
        max_iter: Forward evaluation budget. Default ``30``.
        stop: ``"rel"`` (default) or ``"abs"``.
        backward: A :class:`~deqkit.Implicit`, :class:`~deqkit.Phantom` or
            :class:`~deqkit.Unrolled` object, its alias ``"implicit"``, ``"phantom"``
            (default: ``Phantom(k=5, tau=0.5)``) or ``"unrolled"``, or a spec dict
            (``{"name": "phantom", "k": 3}``). Why phantom: in the training grid of
            ``docs/results.md`` (section 0, ``experiments/training``) it trained every
            model on every seed run, at the lowest time per step: prefix sums at 16 bits
            100% on 3 of 3 seeds, where the exact implicit gradient gave 0% on 3 of 3 and
            the implicit gradient with the phantom fallback 100% on 1 of 3; at 32 bits
            (with budget jitter) 100% up to 128 bits on 5 of 5; digits 96.5% against
            95.8% for the implicit gradient with fallback at twice the time per step.
            torchdeq's default is a phantom gradient too.
        backward_solver: Adjoint method (implicit only). Default: the forward solver and its
            ``solver_options``.
        backward_tol: Adjoint tolerance (implicit only). Default ``tol / 10``.
        backward_max_iter: Adjoint budget (implicit only). Default ``2 * max_iter``.
        solver_options: Hyperparameters of the forward solver, e.g. ``{"m": 6}``.
        backward_options: Phantom ``k`` and ``tau``, or the adjoint solver's hyperparameters.
        correction: Number of intermediate-iterate states returned in ``info.corrections``
            for a fixed-point correction loss. Default ``0``.

    Call:
        ``z, info = deq(x, z0=None, **overrides)``. ``overrides`` replace any constructor
        setting above for this call only (``deq(x, max_iter=200, tol=1e-6)``: test-time
        compute). Returns the state (same structure as ``z0``) and a :class:`DEQInfo`.

    Raises:
        ValueError / TypeError: invalid settings (at construction or in ``overrides``), no
            ``z0`` and no ``f.initial_state``, ``f`` returning another shape than ``z0``,
            ``settings`` together with keywords that disagree with it.
    """

    def __init__(
        self,
        f: Callable[..., State],
        *,
        settings: DEQSettings | None = None,
        solver: str | Solver = "anderson",
        tol: float = 1e-4,
        max_iter: int = 30,
        stop: str = "rel",
        backward: str | Gradient | dict = "phantom",
        backward_solver: str | Solver | None = None,
        backward_tol: float | None = None,
        backward_max_iter: int | None = None,
        solver_options: dict | None = None,
        backward_options: dict | None = None,
        correction: int = 0,
    ):
        given = {name: value for name, value in locals().items() if name in SETTINGS}
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be an nn.Module or callable f(z, x), got {type(f).__name__}")
        self.f = f
        if settings is None:
            settings = DEQSettings(**given)
        elif not isinstance(settings, DEQSettings):
            raise TypeError(
                f"settings must be a DEQSettings or None, got {type(settings).__name__}"
            )
        else:
            defaults = DEQSettings.__dataclass_fields__
            clash = [
                name
                for name, value in given.items()
                if not equal(value, defaults[name].default)
                and not equal(value, getattr(settings, name))
            ]
            if clash:
                shown = ", ".join(f"{name}={given[name]!r}" for name in clash)
                raise ValueError(
                    f"DEQ got settings={settings!r} and {shown}, which disagree: give each "
                    f"setting in one place, e.g. settings=settings.replace({shown})"
                )
        self.settings = settings

    @property
    def settings(self) -> DEQSettings:
        """The layer's :class:`~deqkit.DEQSettings`; assign a new object to change them."""
        return self._settings

    @settings.setter
    def settings(self, value: DEQSettings) -> None:
        if not isinstance(value, DEQSettings):
            raise TypeError(f"settings must be a DEQSettings, got {type(value).__name__}")
        self._settings = value
        self._resolved: dict[str, DEQSettings] = {}  # per override set, see resolved()

    def initial_state(self, x: Any) -> State:
        """``f.initial_state(x)``; raises ``ValueError`` if ``f`` does not define it."""
        init = getattr(self.f, "initial_state", None)
        if init is None:
            raise ValueError(
                "no z0 given and f has no initial_state(x) method: pass z0=... or define "
                "f.initial_state(x) (zeros are the usual choice)"
            )
        return init(x)

    @property
    def gradient(self) -> Gradient:
        """The gradient object the constructor settings resolve to."""
        return self.settings.gradient

    def extra_repr(self) -> str:
        """The settings ``print(deq)`` shows beside ``f``, resolved, e.g. ``solver=anderson,
        tol=0.0001, stop=rel, max_iter=30, backward=Phantom(k=5, tau=0.5)``.

        A solver shows the hyperparameters it was given away from their defaults
        (``anderson(m=8)``); an implicit gradient its adjoint solve as resolved (solver,
        ``tol``, ``max_iter``, fallback); ``correction`` appears when it is not 0.
        """

        def solver(obj: Any) -> str:
            if not dataclasses.is_dataclass(obj):
                return repr(obj)
            changed = []
            for fld in dataclasses.fields(obj):
                if fld.default is not dataclasses.MISSING:
                    default = fld.default
                elif fld.default_factory is not dataclasses.MISSING:
                    default = fld.default_factory()
                else:
                    default = dataclasses.MISSING
                value = getattr(obj, fld.name)
                if value != default:
                    changed.append(f"{fld.name}={value!r}")
            name = getattr(obj, "name", type(obj).__name__)
            return f"{name}({', '.join(changed)})" if changed else name

        s = self.settings
        gradient = s.gradient
        backward = repr(gradient)
        adjoint = s.bound
        if getattr(gradient, "name", None) == "implicit" and adjoint is not None:
            parts = [f"solver={solver(adjoint.solver)}", f"tol={adjoint.tol:g}"]
            parts.append(f"max_iter={adjoint.max_iter}")
            if adjoint.fallback is not None:
                parts.append(f"fallback={adjoint.fallback!r}")
            backward = f"{type(gradient).__name__}({', '.join(parts)})"
        out = (
            f"solver={solver(s.solver_obj)}, tol={float(s.tol):g}, stop={s.stop}, "
            f"max_iter={s.max_iter}, backward={backward}"
        )
        return out + (f", correction={s.correction}" if s.correction else "")

    def resolved(self, **overrides: Any) -> DEQSettings:
        """The settings of a call with ``overrides``, validated once per override set."""
        if not overrides:
            return self.settings
        check_setting_names(overrides)
        try:
            key = f"{id(self.settings)}:{sorted(overrides.items())!r}"
        except TypeError:  # unorderable values: resolve without the cache
            return dataclasses.replace(self.settings, **overrides)
        cache = self._resolved
        hit = cache.get(key)
        if hit is None:
            hit = dataclasses.replace(self.settings, **overrides)
            if len(cache) >= 64:  # a budget sweep makes many; keep the most recent
                cache.pop(next(iter(cache)))
            cache[key] = hit
        return hit

    def forward(self, x: Any, z0: State | None = None, **overrides) -> tuple[State, DEQInfo]:
        s = self.resolved(**overrides)
        if z0 is None:
            z0 = self.initial_state(x)
        packer = Packer.of(z0, "z0")
        z0_flat = packer.pack(z0, "z0").detach()

        def fx(z: Tensor) -> Tensor:
            out = packer.pack(self.f(packer.unpack(z), x))
            return out if out.dtype == z.dtype else out.to(z.dtype)

        params = _parametrized_tensors(self.f)
        cache = parametrize.cached() if params else contextlib.nullcontext()
        with cache:
            for module, name in params:  # fill the cache once, with the graph if recording
                getattr(module, name)
            try:
                z, info = self._solve(fx, z0_flat, s)
            except RuntimeError as err:
                _explain_batch_mismatch(x, z0_flat.shape[0], err)
                raise
        info.corrections = [packer.unpack(c) for c in info.corrections]
        return packer.unpack(z), info

    def _solve(self, fx, z0: Tensor, s: DEQSettings) -> tuple[Tensor, DEQInfo]:
        # The settings were validated and the solver resolved once (DEQSettings): the loop
        # runs directly, and only the per-call input z0 is checked.
        _check_start(z0)
        recording = torch.is_grad_enabled()
        gradient: Gradient = s.gradient
        if gradient.unrolls and recording:
            res = run(fx, z0, s.solver_obj, s.tol, s.stop, s.max_iter)
            info = DEQInfo(res)
            return gradient.attach(fx, res, s.bound, info), info
        want_iterates = recording and s.correction > 0
        with torch.no_grad():
            res = run(fx, z0, s.solver_obj, s.tol, s.stop, s.max_iter, False, want_iterates)
        if not recording:
            return res.z, DEQInfo(res)
        corrections = []
        if want_iterates:
            steps = res.iterates.shape[0]
            picks = torch.linspace(0, steps - 1, s.correction + 2)[1:-1].round().long().unique()
            corrections = [fx(res.iterates[i]) for i in picks.tolist()]
        info = DEQInfo(res, corrections)
        return gradient.attach(fx, res, s.bound, info), info


def _check_start(z0: Tensor) -> None:
    """Check a flat ``[B, N]`` start as :func:`deqkit.solve` does (settings aside).

    Raises:
        TypeError: ``z0`` is not floating point.
        ValueError: ``z0`` contains NaN or inf.
    """
    if not z0.is_floating_point():
        raise TypeError(f"z0 must be a floating-point tensor, got dtype {z0.dtype}")
    if not all_finite(z0):
        raise ValueError("z0 must be finite; it contains NaN or inf")


def _explain_batch_mismatch(x: Any, batch: int, err: RuntimeError) -> None:
    """Turn ``f``'s shape error into one naming both batch sizes, when that is the cause."""
    parts = x if isinstance(x, tuple | list) else (x,)
    for t in parts:
        if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] != batch:
            raise ValueError(
                f"x has batch size {t.shape[0]} but z0 has batch size {batch}: they must agree "
                f"(both batch first); f failed with: {err}"
            ) from err
