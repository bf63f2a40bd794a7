"""The DEQ layer: forward solve, then one of three gradients, one implementation each."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from ..solvers import NewtonKrylov, Solver, SolveResult, resolve
from ..solvers._loop import check_budget, run, solve
from ._state import Packer, State

__all__ = ["DEQ", "DEQInfo"]

BACKWARD_MODES = ("implicit", "phantom", "unrolled")


@dataclass(frozen=True)
class _Settings:
    solver: str | Solver = "anderson"
    tol: float = 1e-4
    max_iter: int = 30
    stop: str = "rel"
    backward: str = "implicit"
    backward_solver: str | Solver | None = None
    backward_tol: float | None = None
    backward_max_iter: int | None = None
    solver_options: dict | None = None
    backward_options: dict | None = None
    correction: int = 0

    def __post_init__(self):
        check_budget(self.tol, self.stop, self.max_iter)
        resolve(self.solver, self.solver_options)
        if self.backward not in BACKWARD_MODES:
            raise ValueError(
                f"backward must be one of {', '.join(BACKWARD_MODES)}, got {self.backward!r}"
            )
        if self.backward == "implicit":
            check_budget(self.adjoint_tol, self.stop, self.adjoint_max_iter)
            resolve(self.adjoint_solver, self.adjoint_options)
        else:
            for name in ("backward_solver", "backward_tol", "backward_max_iter"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to backward='implicit' only")
        if self.backward == "phantom":
            self.phantom_steps()  # validates k and tau
        elif self.backward == "unrolled" and self.backward_options:
            raise TypeError("backward='unrolled' takes no backward_options")
        if isinstance(self.correction, bool) or not isinstance(self.correction, int):
            raise ValueError(f"correction must be an integer >= 0, got {self.correction!r}")
        if self.correction < 0:
            raise ValueError(f"correction must be an integer >= 0, got {self.correction!r}")

    @property
    def adjoint_solver(self) -> str | Solver:
        return self.solver if self.backward_solver is None else self.backward_solver

    @property
    def adjoint_options(self) -> dict:
        if self.backward_options is not None:
            return self.backward_options
        return (self.solver_options or {}) if self.backward_solver is None else {}

    @property
    def adjoint_tol(self) -> float:
        return self.tol / 10 if self.backward_tol is None else self.backward_tol

    @property
    def adjoint_max_iter(self) -> int:
        return 2 * self.max_iter if self.backward_max_iter is None else self.backward_max_iter

    def phantom_steps(self) -> tuple[int, float]:
        """Phantom ``(k, tau)`` from ``backward_options``, validated."""
        opts = dict(self.backward_options or {})
        k, tau = opts.pop("k", 5), opts.pop("tau", 0.5)
        if opts:
            raise TypeError(
                f"unknown backward_options {', '.join(sorted(opts))} for backward='phantom'; "
                "valid: k, tau"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"phantom k must be an integer >= 1, got {k!r}")
        if not (0.0 < tau <= 1.0):
            raise ValueError(f"phantom tau must be in (0, 1], got {tau!r}")
        return k, float(tau)


class DEQInfo:
    """What a :class:`DEQ` call did.

    Attributes:
        forward: The forward :class:`~deqkit.SolveResult` (per-sample ``converged``,
            ``iterations``, ``residual``, ``status``; also reachable as attributes of the info
            itself: ``info.converged`` is ``info.forward.converged``).
        backward: The adjoint solve's :class:`~deqkit.SolveResult` once ``backward()`` has run
            through an implicit-mode call, else ``None``. Its ``iterations`` count
            vector-Jacobian products.
        corrections: With ``correction=n > 0`` under autograd, ``n`` differentiable states
            ``f(z_i, x)`` at intermediate iterates ``z_i`` of the forward solve, for a
            fixed-point correction loss (Bai et al. 2022); else an empty list.
    """

    def __init__(self, forward: SolveResult, corrections: list[State] | None = None):
        self.forward = forward
        self.backward: SolveResult | None = None
        self.corrections: list[State] = corrections or []

    def __getattr__(self, name: str) -> Any:
        if name in ("z", "converged", "iterations", "residual", "status", "trace"):
            return getattr(self.forward, name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        back = self.backward.summary() if self.backward is not None else "not run"
        return f"DEQInfo(forward: {self.forward.summary()}; backward: {back})"


@dataclass
class _Adjoint:
    solver: Solver
    tol: float
    stop: str
    max_iter: int
    info: DEQInfo


class _ImplicitGrad(torch.autograd.Function):
    """Identity on ``f(z*)`` whose backward solves the adjoint fixed point.

    Forward gets ``fz = f(z*, x)`` (with its graph to the parameters and ``x``) and the leaf
    ``z*``. Backward receives ``v = dL/dz*`` and solves ``u = J^T u + v``, ``J = df/dz`` at
    ``z*``, with one vector-Jacobian product per evaluation; autograd then carries ``u`` into
    ``fz``'s graph, giving ``dL/dtheta = u^T df/dtheta`` (implicit function theorem).
    """

    @staticmethod
    def forward(ctx, fz: Tensor, z: Tensor, adj: _Adjoint) -> Tensor:
        ctx.save_for_backward(fz, z)
        ctx.adj = adj
        return fz.view_as(fz)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        fz, z = ctx.saved_tensors
        adj: _Adjoint = ctx.adj

        def adjoint_map(u: Tensor) -> Tensor:
            return torch.autograd.grad(fz, z, u, retain_graph=True)[0] + grad

        with torch.enable_grad():
            res = solve(
                adjoint_map, grad, adj.solver, tol=adj.tol, stop=adj.stop, max_iter=adj.max_iter
            )
        adj.info.backward = res
        return res.z, None, None


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
    r"""A deep equilibrium layer: ``z* = f(z*, x)``, differentiated implicitly.

    ``deq(x)`` solves for the fixed point of ``z -> f(z, x)`` with a solver from
    :mod:`deqkit.solvers` (no autograd graph is kept of the iterations), then attaches a
    gradient chosen by ``backward``:

    * ``"implicit"``: implicit function theorem. Backward solves ``u = J^T u + dL/dz*``
      (``J = df/dz`` at ``z*``) with ``backward_solver`` (one vector-Jacobian product per
      evaluation), then ``dL/dtheta = u^T df/dtheta``. Memory does not grow with iterations.
    * ``"phantom"``: backprop through ``k`` damped steps ``z <- (1 - tau) z + tau f(z, x)``
      taken from ``z*`` (``backward_options={"k": 5, "tau": 0.5}`` by default); ``k=1, tau=1``
      is the Jacobian-free (JFB) gradient (Fung et al. 2022; Geng et al. 2021).
    * ``"unrolled"``: backprop through the solver's own iterations (memory grows with them):
      the baseline to compare against. Supports picard, anderson and broyden.

    With ``implicit`` or ``phantom``, the returned state is ``f(z*, x)`` (one extra evaluation
    with autograd on, equal to ``z*`` at the fixed point) when autograd is recording, and
    ``z*`` itself otherwise (``torch.no_grad()``, no graph kept). Works in ``eval()`` mode with
    gradients enabled, under ``torch.autocast`` (``f`` in bfloat16, solver state in float32)
    and on any device. Parametrized weights of ``f`` (spectral or weight norm) are computed
    once per call, so ``f`` is the same map at every iteration.

    Args:
        f: ``nn.Module`` or callable, ``f(z, x) -> z``; ``z`` a tensor or tuple of tensors,
            batch first. If ``f.initial_state(x)`` exists it gives the default ``z0``.
        solver: Forward method name or :class:`~deqkit.solvers.Solver`. Default
            ``"anderson"``.
        tol: Forward tolerance. Default ``1e-4``.
        max_iter: Forward evaluation budget. Default ``30``.
        stop: ``"rel"`` (default) or ``"abs"``.
        backward: ``"implicit"`` (default), ``"phantom"`` or ``"unrolled"``.
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
            ``z0`` and no ``f.initial_state``, ``f`` returning another shape than ``z0``.
    """

    def __init__(
        self,
        f: Callable[..., State],
        *,
        solver: str | Solver = "anderson",
        tol: float = 1e-4,
        max_iter: int = 30,
        stop: str = "rel",
        backward: str = "implicit",
        backward_solver: str | Solver | None = None,
        backward_tol: float | None = None,
        backward_max_iter: int | None = None,
        solver_options: dict | None = None,
        backward_options: dict | None = None,
        correction: int = 0,
    ):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be an nn.Module or callable f(z, x), got {type(f).__name__}")
        self.f = f
        self.settings = _Settings(
            solver,
            tol,
            max_iter,
            stop,
            backward,
            backward_solver,
            backward_tol,
            backward_max_iter,
            solver_options,
            backward_options,
            correction,
        )

    def initial_state(self, x: Any) -> State:
        """``f.initial_state(x)``; raises ``ValueError`` if ``f`` does not define it."""
        init = getattr(self.f, "initial_state", None)
        if init is None:
            raise ValueError(
                "no z0 given and f has no initial_state(x) method: pass z0=... or define "
                "f.initial_state(x) (zeros are the usual choice)"
            )
        return init(x)

    def forward(self, x: Any, z0: State | None = None, **overrides) -> tuple[State, DEQInfo]:
        valid = {f.name for f in dataclasses.fields(_Settings)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(
                f"unknown DEQ setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        s = dataclasses.replace(self.settings, **overrides) if overrides else self.settings
        if z0 is None:
            z0 = self.initial_state(x)
        packer = Packer.of(z0, "z0")
        z0_flat = packer.pack(z0, "z0").detach()

        def fx(z: Tensor) -> Tensor:
            return packer.pack(self.f(packer.unpack(z), x)).to(z.dtype)

        params = _parametrized_tensors(self.f)
        cache = parametrize.cached() if params else contextlib.nullcontext()
        with cache:
            for module, name in params:  # fill the cache once, with the graph if recording
                getattr(module, name)
            z, info = self._solve(fx, z0_flat, s)
        info.corrections = [packer.unpack(c) for c in info.corrections]
        return packer.unpack(z), info

    def _solve(self, fx, z0: Tensor, s: _Settings) -> tuple[Tensor, DEQInfo]:
        solver = resolve(s.solver, s.solver_options)
        recording = torch.is_grad_enabled()
        if s.backward == "unrolled" and recording:
            if isinstance(solver, NewtonKrylov):
                raise ValueError("backward='unrolled' supports picard, anderson and broyden")
            res = run(fx, z0, solver, float(s.tol), s.stop, s.max_iter)
            return res.z, DEQInfo(res)
        want_iterates = recording and s.correction > 0
        res = solve(
            fx,
            z0,
            solver,
            tol=s.tol,
            stop=s.stop,
            max_iter=s.max_iter,
            record_iterates=want_iterates,
        )
        z_star = res.z
        if not recording:
            return z_star, DEQInfo(res)
        corrections = []
        if want_iterates:
            steps = res.iterates.shape[0]
            picks = torch.linspace(0, steps - 1, s.correction + 2)[1:-1].round().long().unique()
            corrections = [fx(res.iterates[i]) for i in picks.tolist()]
        info = DEQInfo(res, corrections)
        if s.backward == "phantom":
            k, tau = s.phantom_steps()
            z = z_star
            for _ in range(k):
                z = (1.0 - tau) * z + tau * fx(z)
            return z, info
        z_leaf = z_star.detach().requires_grad_()
        fz = fx(z_leaf)
        adj = _Adjoint(
            resolve(s.adjoint_solver, s.adjoint_options),
            float(s.adjoint_tol),
            s.stop,
            s.adjoint_max_iter,
            info,
        )
        return _ImplicitGrad.apply(fz, z_leaf, adj), info
