"""The settings of a DEQ layer: one frozen, validated object, defined once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._validate import assign, integer, real
from ..solvers import Solver, check_budget, resolve
from ._gradients import Gradient, make_gradient

__all__ = ["SETTINGS", "DEQSettings", "check_setting_names", "equal"]


@dataclass(frozen=True, repr=False)
class DEQSettings:
    r"""The settings of a :class:`~deqkit.DEQ`: forward solve, gradient, budget, stopping.

    A call ``deq(x)`` solves :math:`z^* = f(z^*, x)` with ``solver`` until every sample's
    residual :math:`\|f(z) - z\|` is below ``tol`` (``stop="abs"``) or ``tol`` times
    :math:`\|f(z)\|` (``stop="rel"``), or ``max_iter`` evaluations of ``f`` are spent, then
    attaches the gradient ``backward`` names (see :class:`~deqkit.DEQ` for the maths of each).

    Frozen and validated once, at construction: a bad value raises where it is given, and
    a call with these settings does no checking. :meth:`replace` makes a changed copy
    (validated again); ``DEQ(f, settings=s)`` builds a layer with them, ``deq.settings`` is
    a layer's, and models take them as ``deq_settings`` (:class:`deqkit.models.EquilibriumModel`).
    Two settings objects are equal when all their fields are.

    Args:
        solver: Forward method name (:func:`deqkit.solvers.available`) or
            :class:`~deqkit.solvers.Solver` object. Default ``"anderson"``.
        tol: Forward tolerance, > 0. Default ``1e-4``.
        max_iter: Forward budget, evaluations of ``f`` per sample, >= 1. Default ``30``.
        stop: ``"rel"`` (default) or ``"abs"``.
        backward: The gradient: a :class:`~deqkit.Implicit`, :class:`~deqkit.Phantom` or
            :class:`~deqkit.Unrolled` object, its alias ``"implicit"``, ``"phantom"``
            (default: ``Phantom(k=5, tau=0.5)``) or ``"unrolled"``, or a spec dict
            (``{"name": "phantom", "k": 3}``).
        backward_solver: Adjoint method (implicit alias only). Default ``None``: the forward
            solver and its ``solver_options``.
        backward_tol: Adjoint tolerance (implicit alias only). Default ``None``: ``tol / 10``.
        backward_max_iter: Adjoint budget (implicit alias only). Default ``None``:
            ``2 * max_iter``.
        solver_options: Hyperparameters of the forward solver, e.g. ``{"m": 6}``. Default
            ``None`` (the solver's defaults).
        backward_options: Phantom ``k`` and ``tau``, or the adjoint solver's hyperparameters
            (alias strings only). Default ``None``.
        correction: Number of intermediate-iterate states a call returns in
            ``info.corrections`` for a fixed-point correction loss, >= 0. Default ``0``.

    Attributes:
        solver_obj: The forward :class:`~deqkit.solvers.Solver` that ``solver`` and
            ``solver_options`` resolve to.
        gradient: The :class:`~deqkit.nn.Gradient` that ``backward`` and the ``backward_*``
            settings resolve to.
        bound: What the gradient needs of the forward settings (an implicit gradient: its
            adjoint solve, resolved), or ``None``.

    Raises:
        ValueError: a bad value, named (``Invalid max_iter: 2.5 (expected an integer >= 1)``),
            or settings that do not go together (``backward_tol`` with ``backward="phantom"``;
            ``backward="unrolled"`` with a solver whose steps are not differentiable).
        TypeError: an object of the wrong kind (``backward`` neither a name, a dict nor a
            gradient), or an unknown solver or gradient option.

    Example::

        s = deqkit.DEQSettings(solver="picard", max_iter=100, backward="implicit")
        deq = deqkit.DEQ(f, settings=s)
        deq.settings.replace(max_iter=200)   # a new, validated object; s is unchanged
    """

    solver: str | Solver = "anderson"
    tol: float = 1e-4
    max_iter: int = 30
    stop: str = "rel"
    backward: str | Gradient | dict = "phantom"
    backward_solver: str | Solver | None = None
    backward_tol: float | None = None
    backward_max_iter: int | None = None
    solver_options: dict | None = None
    backward_options: dict | None = None
    correction: int = 0

    def __post_init__(self) -> None:
        tol, stop, max_iter = check_budget(self.tol, self.stop, self.max_iter)
        assign(self, tol=tol, stop=stop, max_iter=max_iter)
        assign(
            self,
            correction=integer("correction", self.correction, 0),
            backward_tol=real("backward_tol", self.backward_tol, 0.0, low_open=True, optional=True),
            backward_max_iter=integer(
                "backward_max_iter", self.backward_max_iter, 1, optional=True
            ),
        )
        for name in ("solver_options", "backward_options"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(f"{name} must be a dict or None, got {type(value).__name__}")
        for name in ("solver_options", "backward_options", "backward"):
            value = getattr(self, name)
            if isinstance(value, Mapping):  # a copy: the caller's dict may change later
                assign(self, **{name: dict(value)})
        set_ = object.__setattr__
        set_(self, "solver_obj", resolve(self.solver, self.solver_options))
        gradient = make_gradient(
            self.backward,
            backward_solver=self.backward_solver,
            backward_tol=self.backward_tol,
            backward_max_iter=self.backward_max_iter,
            backward_options=self.backward_options,
        )
        set_(self, "gradient", gradient)
        bound = gradient.bind(self.solver, self.solver_options, self.tol, self.stop, self.max_iter)
        if gradient.unrolls and not self.solver_obj.differentiable_steps:
            raise ValueError(
                f"backward='unrolled' needs a solver whose steps are differentiable (picard, "
                f"anderson, broyden); {self.solver_obj.name!r} is not one"
            )
        set_(self, "bound", bound)

    def replace(self, **changes: Any) -> DEQSettings:
        """A copy with ``changes`` (setting names and values), validated again.

        Raises:
            TypeError: an unknown setting name (the message lists the valid ones).
            ValueError / TypeError: a bad value, as at construction.
        """
        check_setting_names(changes)
        return dataclasses.replace(self, **changes) if changes else self

    def _changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults, by name (``{}`` for ``DEQSettings()``)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not equal(getattr(self, f.name), f.default)
        }

    def __repr__(self) -> str:
        """``DEQSettings(solver='anderson', tol=0.0001, max_iter=30, stop='rel',
        backward='phantom')``, followed by the other settings that are not at their default."""
        main = ("solver", "tol", "max_iter", "stop", "backward")
        shown = {name: getattr(self, name) for name in main}
        shown.update({k: v for k, v in self._changed().items() if k not in main})
        return f"DEQSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DEQSettings))
"""The names of the DEQ settings, in order: the fields of :class:`DEQSettings`."""


def check_setting_names(names: Any, what: str = "DEQ setting") -> None:
    """Raise ``TypeError`` naming the ``names`` that are not DEQ settings, and the valid ones."""
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        raise TypeError(f"unknown {what}(s) {', '.join(unknown)}; valid: {', '.join(SETTINGS)}")


def equal(a: Any, b: Any) -> bool:
    """``a == b`` for setting values, of the same type (``1`` is not ``1.0``, nor ``True``)."""
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an object whose == does not give one bool
        return False
