"""How a DEQ's output is differentiated: gradient objects, orthogonal to the solvers.

A :class:`Gradient` says how ``dL/dtheta`` reaches the parameters of ``f`` through a fixed
point ``z* = f(z*, x)``; the forward solver only finds ``z*``. One implementation each:

* :class:`Implicit`: the implicit function theorem, an adjoint fixed point solved in
  backward, optionally with a per-sample :class:`Phantom` fallback;
* :class:`Phantom`: backprop through ``k`` damped steps from ``z*`` (JFB for ``k=1, tau=1``);
* :class:`Unrolled`: backprop through the solver's own iterations.

The strings ``"implicit"``, ``"phantom"``, ``"unrolled"`` of :class:`~deqkit.DEQ` are
aliases of these objects with their defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validate import assign, integer, real
from ..solvers import Solver, SolveResult, all_finite, check_budget, resolve, run

__all__ = [
    "GRADIENTS",
    "Gradient",
    "Implicit",
    "Phantom",
    "Unrolled",
    "available_gradients",
    "make_gradient",
]


class Gradient:
    """Base class of the gradient objects. Subclasses are frozen dataclasses.

    Attributes (class level):
        name: The alias string (``"implicit"``, ``"phantom"``, ``"unrolled"``).
        unrolls: Whether the gradient is backprop through the solver's iterations, so the
            forward solve itself must run under autograd.
    """

    name: ClassVar[str] = ""
    unrolls: ClassVar[bool] = False

    def bind(
        self, solver: Solver, solver_options: dict | None, tol: float, stop: str, max_iter: int
    ) -> Any:
        """What the gradient needs of the forward settings (resolved once per settings)."""
        return None

    def attach(
        self, fx: Callable[[Tensor], Tensor], forward: SolveResult, bound: Any, info: Any
    ) -> Tensor:
        """The DEQ's output ``z`` (value ``z*`` or ``f(z*)``) with this gradient attached.

        ``fx`` is ``z -> f(z, x)`` on flat ``[B, n]`` states, ``forward`` the forward solve,
        ``bound`` what :meth:`bind` returned, ``info`` the call's :class:`~deqkit.DEQInfo`.
        """
        raise NotImplementedError

    def to_spec(self) -> dict[str, Any]:
        """A JSON-ready dict that :func:`make_gradient` turns back into this object."""
        raise NotImplementedError


@dataclass(frozen=True)
class Phantom(Gradient):
    r"""Phantom gradient: backprop through ``k`` damped steps taken from ``z*``.

    .. math:: z_0 = \mathrm{sg}(z^*), \qquad z_{i+1} = (1 - \tau) z_i + \tau f(z_i, x),
              \qquad \text{output } z_k

    At a fixed point this gives :math:`dL/d\theta = u^\top \partial f/\partial\theta` with
    the truncated, damped Neumann series :math:`u = \tau \sum_{j<k} ((1-\tau) I + \tau
    J^\top)^j\, dL/dz^*`, an approximation of the implicit adjoint
    :math:`(I - J^\top)^{-1} dL/dz^*` that stays finite where ``J`` is expansive (Geng et
    al. 2021, "On Training Implicit Models"). ``k=1, tau=1`` is the Jacobian-free gradient
    (Fung et al. 2022). Costs ``k`` evaluations of ``f`` with autograd; supports double
    backward and ``torch.func``.

    Args:
        k: Number of damped steps, >= 1. Default ``5`` (Geng et al.'s CIFAR-10 setting;
            torchdeq's MDEQ recipe uses 5).
        tau: Damping in ``(0, 1]``. Default ``0.5``.

    Raises:
        ValueError: ``k`` not an integer >= 1, ``tau`` outside ``(0, 1]``.
    """

    k: int = 5
    tau: float = 0.5
    name: ClassVar[str] = "phantom"

    def __post_init__(self) -> None:
        assign(
            self,
            k=integer("k", self.k, 1, of="Phantom"),
            tau=real("tau", self.tau, 0.0, 1.0, low_open=True, of="Phantom"),
        )

    def attach(
        self, fx: Callable[[Tensor], Tensor], forward: SolveResult, bound: Any, info: Any
    ) -> Tensor:
        """``z_k`` of the damped steps from the detached ``z*``, with autograd."""
        z = forward.z.detach()
        for _ in range(self.k):
            z = (1.0 - self.tau) * z + self.tau * fx(z) if self.tau < 1.0 else fx(z)
        return z

    def adjoint(self, vjp: Callable[[Tensor], Tensor], v: Tensor) -> Tensor:
        """The phantom adjoint at a point: ``tau * sum_{j<k} A^j v``, ``A = (1-tau) I + tau J^T``.

        Equal to what backprop through :meth:`attach` sends into ``df/dtheta`` when the
        steps start at a fixed point; ``k - 1`` vector-Jacobian products.
        """
        w, acc = v, v
        for _ in range(self.k - 1):
            w = (1.0 - self.tau) * w + self.tau * vjp(w)
            acc = acc + w
        return self.tau * acc

    def to_spec(self) -> dict[str, Any]:
        return {"name": "phantom", "k": self.k, "tau": self.tau}


@dataclass(frozen=True)
class Unrolled(Gradient):
    """Backprop through every iteration of the forward solver (memory grows with them).

    The baseline the other gradients approximate (for a converged solve, with enough
    iterations, it approaches the implicit gradient). Supports solvers whose steps are
    differentiable (picard, anderson, broyden; not newton), double backward and
    ``torch.func``.
    """

    name: ClassVar[str] = "unrolled"
    unrolls: ClassVar[bool] = True

    def attach(
        self, fx: Callable[[Tensor], Tensor], forward: SolveResult, bound: Any, info: Any
    ) -> Tensor:
        """The forward's own ``z``: its graph through the iterations is the gradient."""
        return forward.z

    def to_spec(self) -> dict[str, Any]:
        return {"name": "unrolled"}


@dataclass(frozen=True, init=False)
class Implicit(Gradient):
    r"""The implicit-function-theorem gradient, with an optional per-sample fallback.

    Backward solves the adjoint fixed point

    .. math:: u = J^\top u + \frac{\partial L}{\partial z^*}, \qquad J = \frac{\partial f}
              {\partial z}\Big|_{z^*}, \qquad \frac{dL}{d\theta} = u^\top
              \frac{\partial f}{\partial \theta}\Big|_{z^*}

    with ``solver`` (one vector-Jacobian product per evaluation; memory does not grow with
    the iterations). It is exact only where ``z*`` is a fixed point and the adjoint solve
    converged. With ``fallback=Phantom(k, tau)``, each sample whose forward solve did not
    converge, or whose adjoint solve did not converge (or went non-finite), gets the
    phantom adjoint :meth:`Phantom.adjoint` at its returned state instead: exact where the
    solves converged, a bounded approximation where they did not, chosen per sample inside
    one batch. ``info.fallback`` records which samples used it.

    Double backward (``create_graph=True``) is refused with a ``RuntimeError``: the adjoint
    solve is not differentiated. Use :class:`Phantom` or :class:`Unrolled` for second order.

    Training with it (``docs/results.md`` section 0): alone it trained none of the prefix-sum
    networks (0% on 3 of 3 seeds: the fixed points turn into trivial contractions). What
    trains at 32 bits, 5 of 5 seeds at 100% up to 128 bits, is a
    :class:`~deqkit.nn.Recipe`: :class:`Phantom` for the first half with the forward budget
    jittered, then ``Implicit(fallback=Phantom())`` with the Jacobian penalty from the switch
    on (``jac_start``); without the penalty the switch took a model at 100% to the trivial
    fixed point within 125 steps, because near a learned fixed point ``I - J`` is nearly
    singular and ``(I - J)^{-T}`` amplifies one direction.

    Args:
        solver: Adjoint solver name or :class:`~deqkit.solvers.Solver`. Default ``None``:
            the forward solver (with the forward ``solver_options`` unless ``options`` are
            given).
        tol: Adjoint tolerance (same ``stop`` criterion as the forward). Default ``None``:
            the forward tolerance / 10.
        max_iter: Adjoint budget of vector-Jacobian products. Default ``None``: twice the
            forward budget.
        fallback: ``None`` (default) or a :class:`Phantom`.
        **options: Hyperparameters of the adjoint solver (``m=8``, ...).

    Raises:
        ValueError: a bad tolerance or budget (``Invalid max_iter for Implicit: ...``), an
            unknown solver name.
        TypeError: an unknown solver option, a fallback that is not a :class:`Phantom`.
    """

    solver: str | Solver | None
    tol: float | None
    max_iter: int | None
    fallback: Phantom | None
    options: dict[str, Any] = field(default_factory=dict)
    name: ClassVar[str] = "implicit"

    def __init__(
        self,
        solver: str | Solver | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        *,
        fallback: Phantom | None = None,
        **options: Any,
    ):
        tol = real("tol", tol, 0.0, low_open=True, optional=True, of="Implicit")
        max_iter = integer("max_iter", max_iter, 1, optional=True, of="Implicit")
        if solver is not None:
            resolve(solver, options)
        if fallback is not None and not isinstance(fallback, Phantom):
            raise TypeError(
                f"Implicit fallback must be None or a deqkit.Phantom(k, tau), got {fallback!r}"
            )
        set_ = object.__setattr__
        set_(self, "solver", solver)
        set_(self, "tol", tol)
        set_(self, "max_iter", max_iter)
        set_(self, "fallback", fallback)
        set_(self, "options", dict(options))

    def bind(
        self, solver: Solver, solver_options: dict | None, tol: float, stop: str, max_iter: int
    ) -> _Adjoint:
        """The concrete adjoint solve for a forward solve with these settings."""
        if self.solver is None:
            method = solver
            options = self.options if self.options else dict(solver_options or {})
        else:
            method, options = self.solver, self.options
        adj_tol = tol / 10 if self.tol is None else self.tol
        adj_iter = 2 * max_iter if self.max_iter is None else self.max_iter
        check_budget(adj_tol, stop, adj_iter)
        return _Adjoint(resolve(method, options), float(adj_tol), stop, adj_iter, self.fallback)

    def attach(
        self, fx: Callable[[Tensor], Tensor], forward: SolveResult, bound: Any, info: Any
    ) -> Tensor:
        """``f(z*)``, whose backward solves the adjoint system (see :class:`ImplicitGrad`)."""
        if _functorch_active():
            raise RuntimeError(
                "the implicit gradient does not support torch.func transforms (grad, jacrev, "
                "vjp, ...): its backward solves the adjoint system with torch.autograd; under "
                "torch.func use backward=deqkit.Phantom(...) or deqkit.Unrolled(), or take the "
                "implicit gradient with loss.backward() / torch.autograd.grad"
            )
        z_leaf = forward.z.detach().requires_grad_()
        fz = fx(z_leaf)
        return ImplicitGrad.apply(fz, z_leaf, bound, info, forward.converged)

    def to_spec(self) -> dict[str, Any]:
        if self.solver is not None and not isinstance(self.solver, str):
            raise ValueError(
                "an Implicit gradient with a Solver object has no config spec; name the "
                "solver (solver='anderson', m=...) to save it in a config"
            )
        spec: dict[str, Any] = {"name": "implicit"}
        for key in ("solver", "tol", "max_iter"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        if self.fallback is not None:
            spec["fallback"] = self.fallback.to_spec()
        spec.update(self.options)
        return spec


GRADIENTS: dict[str, type[Gradient]] = {
    "implicit": Implicit,
    "phantom": Phantom,
    "unrolled": Unrolled,
}
"""The gradient classes by alias name."""


def available_gradients() -> list[str]:
    """The alias names :func:`make_gradient` and :class:`~deqkit.DEQ`'s ``backward`` accept,
    sorted: ``["implicit", "phantom", "unrolled"]``."""
    return sorted(GRADIENTS)


@dataclass(frozen=True)
class _Adjoint:
    solver: Solver
    tol: float
    stop: str
    max_iter: int
    fallback: Phantom | None


def make_gradient(
    backward: str | Gradient | dict[str, Any],
    *,
    backward_solver: str | Solver | None = None,
    backward_tol: float | None = None,
    backward_max_iter: int | None = None,
    backward_options: dict[str, Any] | None = None,
) -> Gradient:
    """A :class:`Gradient` from :class:`~deqkit.DEQ`'s ``backward*`` arguments or a spec.

    ``backward`` is a gradient object (then the ``backward_*`` arguments must be ``None``),
    an alias name (``backward_options`` are then Phantom's ``k``/``tau`` or the implicit
    adjoint solver's hyperparameters), or a spec dict ``{"name": "implicit", "tol": 1e-4,
    "fallback": {"name": "phantom", "k": 5}}`` as written in configs.

    Raises:
        ValueError: an unknown name, or an option that does not apply to the gradient.
        TypeError: ``backward`` of another type, or an unknown option.
    """
    extra = {
        "backward_solver": backward_solver,
        "backward_tol": backward_tol,
        "backward_max_iter": backward_max_iter,
    }
    given = [k for k, v in extra.items() if v is not None]
    if backward_options is not None and not isinstance(backward_options, dict):
        raise TypeError(f"backward_options must be a dict or None, got {backward_options!r}")
    if isinstance(backward, Gradient):
        if given or backward_options:
            names = ", ".join(given + (["backward_options"] if backward_options else []))
            raise ValueError(
                f"{names} cannot be combined with a gradient object "
                f"({type(backward).__name__}); give them to the object itself"
            )
        return backward
    if isinstance(backward, dict):
        if given or backward_options:
            raise ValueError("a gradient spec dict carries its own options; drop backward_*")
        spec = dict(backward)
        name = spec.pop("name", None)
        if name == "implicit" and "fallback" in spec:
            fb = spec["fallback"]
            spec["fallback"] = make_gradient(fb) if isinstance(fb, dict | str) else fb
        _check_name(name)
        if name != "implicit":
            extra_keys = sorted(set(spec) - _fields(GRADIENTS[name]))
            if extra_keys:
                raise ValueError(
                    f"{', '.join(extra_keys)} do(es) not apply to the {name} gradient; valid: "
                    f"{', '.join(sorted(_fields(GRADIENTS[name]))) or 'none'}"
                )
        return GRADIENTS[name](**spec)
    if not isinstance(backward, str):
        raise TypeError(
            f"backward must be one of {', '.join(map(repr, GRADIENTS))} or a gradient object "
            f"(deqkit.Implicit, deqkit.Phantom, deqkit.Unrolled), got {type(backward).__name__}"
        )
    _check_name(backward)
    options = dict(backward_options or {})
    if backward == "implicit":
        return Implicit(backward_solver, backward_tol, backward_max_iter, **options)
    if given:
        raise ValueError(f"{', '.join(given)} apply to backward='implicit' only")
    if backward == "phantom":
        unknown = sorted(set(options) - {"k", "tau"})
        if unknown:
            raise TypeError(
                f"unknown backward_options {', '.join(unknown)} for backward='phantom'; "
                "valid: k, tau"
            )
        return Phantom(**options)
    if options:
        raise TypeError("backward='unrolled' takes no backward_options")
    return Unrolled()


def _fields(cls: type) -> set[str]:
    return set(getattr(cls, "__dataclass_fields__", {})) - {"name"}


def _check_name(name: Any) -> None:
    if name not in GRADIENTS:
        raise ValueError(
            f"unknown backward (gradient) {name!r}; valid: {', '.join(map(repr, GRADIENTS))}, or a "
            "gradient object (deqkit.Implicit, deqkit.Phantom, deqkit.Unrolled)"
        )


class ImplicitGrad(torch.autograd.Function):
    """Identity on ``f(z*)`` whose backward solves the adjoint fixed point.

    Forward gets ``fz = f(z*, x)`` (with its graph to the parameters and ``x``) and the leaf
    ``z*``. Backward receives ``v = dL/dz*`` and solves ``u = J^T u + v``; autograd then
    carries ``u`` into ``fz``'s graph, giving ``dL/dtheta = u^T df/dtheta``.
    """

    @staticmethod
    def forward(ctx, fz: Tensor, z: Tensor, adj: _Adjoint, info: Any, ok: Tensor) -> Tensor:
        ctx.save_for_backward(fz, z, ok)
        ctx.adj = adj
        ctx.info = info
        return fz.view_as(fz)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the implicit gradient does not support double backward (create_graph=True): "
                "its adjoint solve is not differentiated, so second derivatives would be "
                "wrong; use backward=deqkit.Phantom(...) or deqkit.Unrolled() for "
                "higher-order derivatives"
            )
        fz, z, ok = ctx.saved_tensors
        adj: _Adjoint = ctx.adj

        def vjp(u: Tensor) -> Tensor:
            return torch.autograd.grad(fz, z, u, retain_graph=True)[0]

        with torch.enable_grad():
            # The adjoint settings were checked and its solver resolved once (bind), so
            # the loop runs directly; only the incoming gradient is checked.
            if not all_finite(grad):
                raise ValueError("z0 must be finite; it contains NaN or inf")
            with torch.no_grad():
                res = run(
                    lambda u: vjp(u) + grad, grad, adj.solver, adj.tol, adj.stop, adj.max_iter
                )
            u = res.z
            fell_back = None
            if adj.fallback is not None:
                fell_back = ~(ok & res.converged)
                if bool(fell_back.any()):
                    phantom = adj.fallback.adjoint(vjp, grad)
                    u = torch.where(fell_back.view(-1, *([1] * (u.dim() - 1))), phantom, u)
        ctx.info.backward = res
        ctx.info.fallback = fell_back
        return u, None, None, None, None


def _functorch_active() -> bool:
    """Whether a torch.func transform (grad, vjp, jacrev, vmap, ...) is running."""
    return torch._C._functorch.peek_interpreter_stack() is not None
