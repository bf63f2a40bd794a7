"""The one loop every solver runs in, and :func:`solve`, the public entry point."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._validate import choice, integer, real
from ._core import Evaluator, Point, Solver, SolveResult, Status, all_finite, where_active

__all__ = ["available", "check_budget", "register", "resolve", "run", "run_steps", "solve"]

_REGISTRY: dict[str, type[Solver]] = {}


def register(name: str, cls: type[Solver]) -> None:
    """Make a :class:`Solver` subclass available to :func:`solve` under ``name``.

    Raises:
        TypeError: ``cls`` is not a :class:`Solver` subclass.
        ValueError: ``name`` is empty or already taken.
    """
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"cls must be a subclass of deqkit.solvers.Solver, got {cls!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"a solver named {name!r} is already registered")
    _REGISTRY[name] = cls


def available() -> list[str]:
    """The names :func:`solve` accepts as ``method``."""
    return sorted(_REGISTRY)


def resolve(method: str | Solver, options: dict | None = None) -> Solver:
    """Turn a method name or solver object plus hyperparameter ``options`` into a solver.

    Raises:
        ValueError: unknown method name (the message lists the valid ones).
        TypeError: ``method`` of another type, or an option the solver does not have.
    """
    options = dict(options or {})
    if isinstance(method, Solver):
        cls, base = type(method), method
    elif isinstance(method, str):
        if method not in _REGISTRY:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(available())}")
        cls, base = _REGISTRY[method], None
    else:
        raise TypeError(f"method must be a name or a Solver instance, got {type(method).__name__}")
    valid = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for method {cls.name!r}; "
            f"valid options: {', '.join(sorted(valid)) or 'none'}"
        )
    if base is None:
        return cls(**options)
    return dataclasses.replace(base, **options) if options else base


def check_budget(tol: float, stop: str, max_iter: int) -> tuple[float, str, int]:
    """Check a tolerance, stopping criterion and evaluation budget as :func:`solve` does.

    Part of the extension API (with :func:`run`, which checks none of them).

    Args:
        tol: Tolerance, a real number > 0.
        stop: ``"rel"`` or ``"abs"``.
        max_iter: Evaluation budget per sample, an integer >= 1.

    Returns:
        ``(tol, stop, max_iter)`` normalised to ``(float, str, int)``.

    Raises:
        ValueError: Any of them out of range (the message names it).
    """
    return (
        real("tol", tol, 0.0, low_open=True),
        choice("stop", stop, ("abs", "rel")),
        integer("max_iter", max_iter, 1),
    )


def _check_args(f, z0, tol, stop, max_iter) -> None:
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not isinstance(z0, Tensor):
        raise TypeError(f"z0 must be a torch.Tensor, got {type(z0).__name__}")
    if not z0.is_floating_point():
        raise TypeError(f"z0 must be a floating-point tensor, got dtype {z0.dtype}")
    if z0.dim() < 1 or z0.shape[0] < 1 or z0.numel() == 0:
        raise ValueError(
            f"z0 must be batch-first with a non-empty batch (dim 0) and sample, got shape "
            f"{tuple(z0.shape)}"
        )
    if z0.dim() == 1:
        n = z0.shape[0]
        raise ValueError(
            f"z0 must be batch-first ([B, ...], one row per sample); a 1-D z0 of shape ({n},) "
            f"would be {n} samples of one scalar each. Pass z0[None] (shape [1, {n}]) for one "
            f"vector of {n} unknowns, or z0[:, None] (shape [{n}, 1]) for {n} scalar "
            f"problems; f receives tensors of that shape"
        )
    check_budget(tol, stop, max_iter)
    if not all_finite(z0):
        raise ValueError("z0 must be finite; it contains NaN or inf")


def solve(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    method: str | Solver = "anderson",
    *,
    tol: float = 1e-5,
    stop: str = "rel",
    max_iter: int = 50,
    record_trace: bool = False,
    record_iterates: bool = False,
    raise_on_failure: bool = False,
    **options,
) -> SolveResult:
    """Solve ``z = f(z)`` for a batch of samples, each stopping on its own.

    Every sample ``b`` stops when its residual ``r_b <= tol``, where

    * ``stop="abs"``: ``r_b = ||f(z_b) - z_b||``
    * ``stop="rel"``: ``r_b = ||f(z_b) - z_b|| / (||f(z_b)|| + eps)``

    with norms over all non-batch dims. A stopped sample is frozen; the others go on. The
    returned iterate of each sample is the one with the lowest residual seen, and
    ``residual`` is the residual of that returned iterate. Running out of budget is not an
    error (it is the test-time compute budget): it shows as ``Status.MAX_ITER``.

    Args:
        f: Maps a tensor shaped like ``z0`` to one of the same shape. Samples must not
            interact (no batch statistics), or per-sample semantics do not hold.
        z0: ``[B, ...]`` floating-point starting point, batch first, at least 2-D: a 1-D
            tensor is ambiguous (one vector or many scalars) and raises; pass ``z0[None]`` for
            one vector, ``z0[:, None]`` for many scalars. Half-precision ``z0``
            (bfloat16/float16) is iterated in float32; ``f`` still receives ``z0.dtype``.
        method: ``"picard"`` (alias ``"fixed_point"``), ``"anderson"``, ``"broyden"``,
            ``"newton"``, another registered name (see :func:`available`), or a
            :class:`~deqkit.solvers.Solver` instance. Default ``"anderson"``.
        tol: Tolerance, > 0. Default ``1e-5``.
        stop: ``"rel"`` (default) or ``"abs"``.
        max_iter: Budget of evaluations of ``f`` per sample, >= 1, the first one at ``z0``
            included. Default ``50``.
        record_trace: Also return the ``[steps, B]`` residual history. Default ``False``.
        record_iterates: Also return every iterate, ``[steps, *z0.shape]`` (memory grows
            with the number of steps). Default ``False``.
        raise_on_failure: Raise :class:`SolveError` (carrying the result) unless every sample
            converged. Default ``False``.
        **options: Hyperparameters of ``method`` (e.g. Anderson ``m``, ``lam``, ``beta``;
            Picard ``beta``; Broyden ``memory``; Newton ``krylov_dim``). Unknown names raise.

    Returns:
        A :class:`SolveResult`.

    Raises:
        TypeError: ``f`` not callable, ``z0`` not a floating-point tensor, ``f`` returning
            something other than a tensor, unknown option.
        ValueError: bad ``tol``/``stop``/``max_iter``, ``z0`` not at least 2-D or not
            finite, unknown method, ``f`` returning another shape than ``z0``.
        SolveError: only with ``raise_on_failure=True``.

    The forward solve runs under ``torch.no_grad()`` and keeps no autograd graph.
    """
    _check_args(f, z0, tol, stop, max_iter)
    solver = resolve(method, options)
    with torch.no_grad():
        result = run(f, z0, solver, float(tol), stop, max_iter, record_trace, record_iterates)
    return result.raise_for_status() if raise_on_failure else result


def _host_checks_are_free(device: torch.device) -> bool:
    """Whether reading a tensor's value on the host costs nothing: on the CPU, where there is
    no queue of device work to wait for. Module-level so that tests can emulate a device."""
    return device.type == "cpu"


def run(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    solver: Solver,
    tol: float,
    stop: str,
    max_iter: int,
    record_trace: bool = False,
    record_iterates: bool = False,
    on_step: Callable[[int, Tensor, Tensor, Tensor, Tensor], None] | None = None,
) -> SolveResult:
    """The shared loop behind :func:`solve`, without argument checks or ``no_grad``.

    Part of the extension API, for layers and instruments that drive the loop themselves;
    :func:`solve` is what users call. Under autograd it records a graph through every step
    (the "unrolled" backward of :class:`deqkit.DEQ`). Nothing is checked: validate
    ``tol``/``stop``/``max_iter`` with :func:`check_budget` and build ``solver`` with
    :func:`resolve` first.

    Args:
        f: Maps a ``[B, ...]`` tensor shaped like ``z0`` to one of the same shape.
        z0: ``[B, ...]`` floating-point starting point, batch first (see :func:`solve`).
        solver: A :class:`Solver` instance.
        tol: Tolerance, > 0, as a ``float``.
        stop: ``"rel"`` or ``"abs"``.
        max_iter: Evaluations of ``f`` per sample, >= 1.
        record_trace: Also return the ``[steps, B]`` residual history. Default ``False``.
        record_iterates: Also return every iterate, ``[steps, *z0.shape]``. Default
            ``False``.
        on_step: ``on_step(t, z, res, best_z, best_res)``, when given, is called at ``z0``
            (``t = 0``) and after every step ``t``: each sample's current iterate and its
            residual, and its lowest-residual iterate so far and that residual (``z``'s are
            ``[B, n]`` views in the state dtype, residuals ``[B]``; do not modify them). Row
            ``t`` equals ``iterates[t]`` of a recording solve, so readouts at every step need
            no stored iterates. Default ``None``.

    Returns:
        A :class:`SolveResult`, as :func:`solve` returns it.
    """
    state_dtype = torch.float32 if z0.dtype in (torch.float16, torch.bfloat16) else z0.dtype
    free = _host_checks_are_free(z0.device)
    ev = Evaluator(f, z0, state_dtype, stop, max_iter, host_checks_free=free)
    p = ev.point(z0.reshape(ev.batch, -1).to(state_dtype))
    failed = ~torch.isfinite(p.gnorm)
    active = ~failed & (p.res > tol) & (ev.nfev < max_iter)
    all_active = free and bool(active.all())
    ev.set_active(active, all_active)
    best_z, best_res = p.z, p.res  # never modified in place
    start = p.z
    trace = [p.res.clone()] if record_trace else None
    iterates = [p.z] if record_iterates else None
    if on_step is not None:
        on_step(0, p.z, p.res, best_z, best_res)
    elif trace is None and iterates is None and not torch.is_grad_enabled():
        fused = solver.fused(ev, p, active, failed, tol)
        if fused is not None:
            best_z, best_res, nfev, failed = fused
            return _result(
                z0, solver, best_z, best_res, nfev, failed, None, None, stop, tol, max_iter
            )
    state = solver.init(ev, p, active)
    # "Is any sample still running?" is asked before every step, on every device, so that f
    # never runs once every sample has stopped. On an accelerator that is one host
    # synchronisation per step: the host waits for the step's work before it queues the next
    # one, so the device idles while the next step's first kernels are queued. Asking every
    # few steps instead (8, before) saved that wait but could cost up to 7 whole-batch
    # evaluations of f after the last sample stopped, and f (a DEQ layer) is usually the
    # most expensive part of a step; counting them exactly does not make them free. The
    # other checks ("did every sample take its step?") only let whole-batch cases skip
    # per-sample selects, cheaper than a synchronisation, so they run where reading is free.
    for step in range(max_iter - 1):  # every step charges each active sample at least once
        if not all_active and not bool(active.any()):
            break
        q, accept, state = solver.step(ev, p, active, state)
        # Where every running sample took a finite step (the common case on the CPU, checked
        # there for free), the per-sample selects of the new point are skipped: a handful of
        # small operations per step instead of a dozen passes over [B, n]. A stopped
        # sample's proposal is its own z (the solver contract, ev.propose), so q is the new
        # point for every sample.
        simple = free and accept is None
        improved = False
        if simple and all_active:
            # A residual lower than the best one is finite (NaN compares False), so "every
            # sample improved" also says that every sample's step is finite.
            better = q.res < best_res
            improved = bool(better.all())
            simple = improved or math.isfinite(float(q.gnorm.detach().sum()))
        elif simple:  # some samples stopped: a stopped one never improves
            simple = math.isfinite(float(q.gnorm.detach().sum()))
            if simple:
                better = active & (q.res < best_res)
        if simple:
            p = q
            if improved:
                best_z, best_res = p.z, p.res
            else:
                best_z = where_active(better, p.z, best_z)
                best_res = torch.where(better, p.res, best_res)
            count = ev.uniform_count
            if not all_active:
                still = active & (p.res > tol)
                if ev.max_count >= max_iter:  # below it, no sample has used its budget
                    still &= ev.nfev < max_iter
            elif count is not None and count >= max_iter:
                still = torch.zeros_like(active)
            elif count is not None and float(p.res.detach().min()) > tol:
                still = active  # every sample runs on (NaN fails >): the same mask
            else:
                still = p.res > tol
                if count is None:
                    still &= ev.nfev < max_iter
        else:
            p, best_z, best_res, still = _advance(
                q, accept, p, active, failed, best_z, best_res, ev.nfev, tol, max_iter, free
            )
        if trace is not None:
            trace.append(torch.where(active, p.res, torch.nan))
        if iterates is not None:
            iterates.append(p.z)
        if on_step is not None:
            on_step(step + 1, p.z, p.res, best_z, best_res)
        if all_active and still is not active:  # a stopped sample never runs again
            all_active = bool(still.all())
        active = still
        ev.set_active(active, all_active)
    if best_z is start:  # no sample improved on z0: never hand back (a view of) z0 itself
        best_z = best_z.clone()
    return _result(
        z0,
        solver,
        best_z,
        best_res,
        ev.nfev,
        failed,
        torch.stack(trace) if trace is not None else None,
        torch.stack(iterates).view(-1, *z0.shape).to(z0.dtype) if iterates is not None else None,
        stop,
        tol,
        max_iter,
    )


def run_steps(
    ev: Evaluator,
    solver: Solver,
    p: Point,
    best_z: Tensor,
    best_res: Tensor,
    active: Tensor,
    failed: Tensor,
    state: Any,
    n: int,
    tol: float,
) -> tuple[Point, Tensor, Tensor, Tensor, Any]:
    """``n`` steps of the shared loop under the accelerator policy: nothing is read on the
    host, so the ``n`` steps can be recorded once and replayed (a CUDA graph).

    Part of the extension API, for a :meth:`Solver.fused` that drives the steps itself
    (:class:`~deqkit.solvers.Graphed`). Each step is the loop's: ``solver.step`` for the
    samples in ``active``, then per sample: the proposal is taken where accepted unless it
    is non-finite (the sample is then marked in ``failed``, in place, and stops), the best
    iterate is kept, and the sample stops once ``res <= tol`` or its evaluations reach
    ``ev.max_iter``. Unlike :func:`run` it does not stop when every sample has: the steps
    left then evaluate ``f`` on the frozen batch and charge no sample.

    Args:
        ev: The evaluator, with ``ev.host_checks_free`` False.
        solver: The solver; ``state`` is its state.
        p: The current point. best_z, best_res: ``[B, n]``, ``[B]`` each sample's best
            iterate and its residual. active, failed: ``[B]`` bool.
        state: The solver's state.
        n: Steps to take, >= 0.
        tol: The tolerance, under ``ev``'s criterion.

    Returns:
        ``(p, best_z, best_res, active, state)`` after the ``n`` steps.
    """
    for _ in range(n):
        ev.set_active(active, False)
        q, accept, state = solver.step(ev, p, active, state)
        p, best_z, best_res, active = _advance(
            q, accept, p, active, failed, best_z, best_res, ev.nfev, tol, ev.max_iter, False
        )
    ev.set_active(active, False)
    return p, best_z, best_res, active, state


def _advance(
    q: Point,
    accept: Tensor | None,
    p: Point,
    active: Tensor,
    failed: Tensor,
    best_z: Tensor,
    best_res: Tensor,
    nfev: Tensor,
    tol: float,
    max_iter: int,
    free: bool,
) -> tuple[Point, Tensor, Tensor, Tensor]:
    """The loop's per-sample update after a step: the new point, best iterate and residual,
    and which samples run on (``failed`` is updated in place). With ``free`` (the CPU) it
    reads values on the host to skip the selects where a step changed every sample alike;
    without, it reads nothing."""
    take = active if accept is None else active & accept
    bad = take & ~torch.isfinite(q.gnorm)
    failed |= bad
    take = take & ~bad
    # Where every running sample took its step (checked for free on the CPU), q is the new
    # point for all: a stopped sample's proposal is its own z (the solver contract).
    if free and bool((take | ~active).all()):
        p = q
    else:
        p = Point(*(where_active(take, a, b) for a, b in zip(q, p, strict=True)))
    better = take & (p.res < best_res)
    if free and bool(better.all()):
        best_z, best_res = p.z, p.res
    else:
        best_z = where_active(better, p.z, best_z)
        best_res = torch.where(better, p.res, best_res)
    still = active & ~bad & (p.res > tol) & (nfev < max_iter)
    return p, best_z, best_res, still


def _result(z0, solver, best_z, best_res, nfev, failed, trace, iterates, stop, tol, max_iter):
    converged = best_res <= tol
    status = torch.where(
        converged,
        int(Status.CONVERGED),
        torch.where(failed, int(Status.NONFINITE), int(Status.MAX_ITER)),
    )
    return SolveResult(
        z=best_z.view(z0.shape).to(z0.dtype),
        converged=converged,
        iterations=nfev,
        residual=best_res,
        status=status,
        trace=trace,
        iterates=iterates,
        method=solver.name,
        stop=stop,
        tol=tol,
        max_iter=max_iter,
    )
