"""Types shared by every solver: the result, the status codes, the evaluator, the base class."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from .._autodiff import jvp

__all__ = [
    "Point",
    "SolveError",
    "SolveResult",
    "Solver",
    "Status",
    "put",
    "where_active",
]


class Status(enum.IntEnum):
    """Why a sample stopped. Stored per sample in :attr:`SolveResult.status`."""

    CONVERGED = 0
    """The residual met the tolerance."""
    MAX_ITER = 1
    """The evaluation budget ``max_iter`` ran out first (the test-time budget, not an error)."""
    NONFINITE = 2
    """``f`` returned a non-finite value; the best finite iterate is returned."""

    def describe(self) -> str:
        return {
            Status.CONVERGED: "converged",
            Status.MAX_ITER: "reached max_iter before the tolerance",
            Status.NONFINITE: "f returned a non-finite value (NaN or inf)",
        }[self]


@dataclass(frozen=True)
class SolveResult:
    """What :func:`deqkit.solve` found, per sample where it is per sample.

    Attributes:
        z: The returned iterate, shape, dtype and device of ``z0``: per sample the iterate
            with the lowest residual seen.
        converged: ``[B]`` bool, whether ``residual <= tol``.
        iterations: ``[B]`` long, evaluations of ``f`` (Jacobian-vector products included for
            Newton) each sample used until it stopped.
        residual: ``[B]`` residual of the returned ``z`` under the ``stop`` criterion
            (``abs``: ``||f(z) - z||``; ``rel``: ``||f(z) - z|| / (||f(z)|| + eps)``).
            NaN for a sample whose very first evaluation was non-finite.
        status: ``[B]`` long, a :class:`Status` code per sample.
        trace: ``[steps, B]`` residual of each sample's current (accepted) iterate after every
            solver step (row 0 is ``z0``; a rejected proposal leaves it unchanged), or ``None``
            when ``record_trace=False``. ``steps`` is the number of steps the loop actually
            ran; a sample's entries after it stopped are NaN (not repeated), so ``trace[:, b]``
            ends where sample ``b`` ended.
        iterates: ``[steps, *z0.shape]`` the current iterate after every step (row 0 is
            ``z0``; a stopped sample stays where it stopped), or ``None`` unless
            ``record_iterates=True``.
        method: Name of the solver that ran.
        stop: ``"abs"`` or ``"rel"``.
        tol: The tolerance used.
        max_iter: The evaluation budget used.
    """

    z: Tensor
    converged: Tensor
    iterations: Tensor
    residual: Tensor
    status: Tensor
    trace: Tensor | None
    iterates: Tensor | None
    method: str
    stop: str
    tol: float
    max_iter: int

    @property
    def all_converged(self) -> bool:
        """True when every sample converged (one host synchronisation)."""
        return bool(self.converged.all())

    def summary(self) -> str:
        """One readable line: how many samples ended in each status, and the worst residual."""
        counts = torch.bincount(self.status.cpu(), minlength=len(Status))
        parts = [f"{int(c)} {Status(i).name.lower()}" for i, c in enumerate(counts) if c > 0]
        worst = self.residual.max().item() if self.residual.numel() else float("nan")
        return (
            f"{self.method}: {', '.join(parts)} of {self.status.numel()} samples "
            f"(tol={self.tol:g}, stop={self.stop}, max_iter={self.max_iter}, "
            f"worst residual={worst:.3g})"
        )

    def raise_for_status(self) -> SolveResult:
        """Raise :class:`SolveError` unless every sample converged; return ``self`` otherwise."""
        if not self.all_converged:
            raise SolveError(self)
        return self


class SolveError(RuntimeError):
    """Raised by ``solve(..., raise_on_failure=True)`` when some sample did not converge.

    Attributes:
        result: The full :class:`SolveResult`, so nothing computed is lost.
    """

    def __init__(self, result: SolveResult):
        self.result = result
        first = int(torch.nonzero(~result.converged.cpu())[0, 0])
        why = Status(int(result.status[first])).describe()
        super().__init__(f"{result.summary()}; first failing sample {first}: {why}")


class Point(NamedTuple):
    """An evaluated iterate, flattened to ``[B, n]`` in the solver's state dtype.

    Attributes:
        z: ``[B, n]`` the iterate.
        fz: ``[B, n]`` ``f(z)``.
        g: ``[B, n]`` residual vector ``f(z) - z``.
        gnorm: ``[B]`` ``||g||`` (absolute, whatever the stopping criterion).
        res: ``[B]`` the residual under the stopping criterion.
    """

    z: Tensor
    fz: Tensor
    g: Tensor
    gnorm: Tensor
    res: Tensor


class Evaluator:
    """Evaluates ``f`` on flat iterates, counts evaluations per active sample, checks output.

    Solvers call :meth:`point` (and :meth:`jvp`) instead of ``f`` so that the shared loop owns
    the bookkeeping. Which samples are active is the loop's alone (:meth:`set_active`, before
    every step; solvers read :attr:`active`): an evaluation is charged to every active sample,
    or, with ``charge``, to the active samples a solver's inner iteration still runs for.

    Args:
        f: The map, on tensors shaped like ``z0``.
        z0: ``[B, ...]`` the starting point (its shape, dtype and device are used).
        state_dtype: Dtype of the flat iterates the solver keeps.
        stop: ``"abs"`` or ``"rel"``: what :attr:`Point.res` measures.
        max_iter: The evaluation budget per sample.
        host_checks_free: Whether reading a tensor's value on the host costs nothing (the
            CPU): solvers may then branch on tensor values (``bool(mask.all())``) to skip
            per-sample work. ``None`` (default): true on the CPU. On an accelerator a solver
            must not synchronise inside a step.

    Attributes:
        host_checks_free: As given (resolved).
        max_iter: As given.
    """

    def __init__(
        self,
        f: Callable[[Tensor], Tensor],
        z0: Tensor,
        state_dtype: torch.dtype,
        stop: str,
        max_iter: int,
        *,
        host_checks_free: bool | None = None,
    ):
        self._f = f
        self.max_iter = max_iter
        self.shape = z0.shape
        self.in_dtype = z0.dtype
        self.dtype = state_dtype
        self.batch = z0.shape[0]
        self._flat = z0.dim() == 2  # iterates are f's own shape: no view per evaluation
        self.host_checks_free = (
            z0.device.type == "cpu" if host_checks_free is None else bool(host_checks_free)
        )
        self._rel = stop == "rel"
        self._eps = torch.finfo(state_dtype).tiny ** 0.5
        self._nfev = torch.zeros(self.batch, dtype=torch.long, device=z0.device)
        # Evaluations charged to every sample while every sample was active are counted
        # here, on the host, and added to _nfev when it is read: one tensor operation less
        # per evaluation, on any device. _uniform stays True while every evaluation so far
        # was charged to every sample, so that every sample has used exactly _count.
        self._pending = 0
        self._count = 0
        self._calls = 0
        self._uniform = True
        self._eps_t = torch.tensor(self._eps, dtype=state_dtype, device=z0.device)
        self.set_active(torch.ones(self.batch, dtype=torch.bool, device=z0.device), True)

    @property
    def nfev(self) -> Tensor:
        """``[B]`` long, the evaluations charged to each sample so far."""
        if self._pending:
            self._nfev += self._pending
            self._pending = 0
        return self._nfev

    @property
    def uniform_count(self) -> int | None:
        """The evaluations every sample has used, when every evaluation so far was charged
        to every sample (read on the host, no synchronisation); else ``None``."""
        return self._count if self._uniform else None

    @property
    def max_count(self) -> int:
        """An upper bound on every sample's evaluations so far, read on the host: the
        evaluations of ``f`` made (each charges a sample at most once)."""
        return self._calls

    @property
    def active(self) -> Tensor:
        """``[B]`` bool, the samples still running (read-only; the loop sets it)."""
        return self._active

    def set_active(self, active: Tensor, all_active: bool = False) -> None:
        """The loop's: set the ``[B]`` mask of running samples before a step.

        ``all_active`` is True only where the caller knows that every sample is running (the
        loop checks it where that is free, on the CPU), so that proposals need no per-sample
        select and evaluations are counted on the host.
        """
        self._active = active
        self.all_active = all_active

    def _check(self, out: Any) -> Tensor:
        if not isinstance(out, Tensor):
            raise TypeError(f"f must return a tensor, got {type(out).__name__}")
        if out.shape != self.shape:
            raise ValueError(
                f"f must return a tensor shaped like z0: z0 has shape {tuple(self.shape)}, "
                f"f returned shape {tuple(out.shape)}"
            )
        out = out if self._flat else out.reshape(self.batch, -1)
        return out if out.dtype == self.dtype else out.to(self.dtype)

    @property
    def relative(self) -> bool:
        """Whether :attr:`Point.res` is the relative residual (``stop="rel"``)."""
        return self._rel

    @property
    def eps(self) -> float:
        """The ``eps`` of the relative residual ``||g|| / (||f(z)|| + eps)``:
        ``sqrt(tiny)`` of the state dtype."""
        return self._eps

    def evaluate(self, z: Tensor) -> Tensor:
        """``f`` at flat ``z`` (``[B, n]``), checked and flattened to ``[B, n]`` in the state
        dtype, charged to no sample: for a solver's fused loop (:meth:`Solver.fused`), which
        counts evaluations itself."""
        z_in = z if self._flat else z.view(self.shape)
        return self._check(self._f(z_in if z.dtype == self.in_dtype else z_in.to(self.in_dtype)))

    def _finish(self, z: Tensor, fz: Tensor, g_out: Tensor | None = None) -> Point:
        g = fz - z if g_out is None else torch.sub(fz, z, out=g_out)
        gnorm = torch.linalg.vector_norm(g, dim=1)
        res = gnorm / (torch.linalg.vector_norm(fz, dim=1) + self._eps_t) if self._rel else gnorm
        return Point(z, fz, g, gnorm, res)

    def propose(self, active: Tensor, new: Tensor, old: Tensor) -> Tensor:
        """``new`` for active samples, ``old`` (where they stopped) for the others."""
        return new if self.all_active else where_active(active, new, old)

    def _charge(self, charge: Tensor | None) -> None:
        self._calls += 1
        if charge is None and self.all_active:
            self._pending += 1
            self._count += 1
            return
        self._uniform = False
        self.nfev.add_(self._active if charge is None else self._active & charge)

    def point(
        self, z: Tensor, charge: Tensor | None = None, *, g_out: Tensor | None = None
    ) -> Point:
        """Evaluate ``f`` at flat ``z`` (``[B, n]``).

        Counted as one evaluation for each active sample, or, when ``charge`` (``[B]`` bool)
        is given, for each active sample where it is True: the samples a solver's inner
        iteration (a Krylov solve, a line search) still runs for. ``f`` sees the whole batch
        either way. ``g_out``, a ``[B, n]`` tensor of the state dtype, receives the residual
        vector (the point's ``g`` is then that tensor), for solvers that keep it in a buffer;
        not while autograd records.
        """
        fz = self.evaluate(z)
        self._charge(charge)
        return self._finish(z, fz, g_out)

    def jvp(self, z: Tensor, v: Tensor, charge: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(f(z), J_f(z) v)`` by forward-mode autodiff; counted as one evaluation, like
        :meth:`point` (``charge`` included)."""
        fz, jv = jvp(
            self._f,
            (z.view(self.shape).to(self.in_dtype),),
            (v.view(self.shape).to(self.in_dtype),),
        )
        self._charge(charge)
        return self._check(fz), jv.reshape(self.batch, -1).to(self.dtype)


def put(buf: Tensor, index: tuple[Tensor, ...], value: Tensor) -> Tensor:
    """``buf[index] = value``, in place unless autograd is recording (unrolled solves)."""
    if torch.is_grad_enabled():
        return buf.index_put(index, value)
    return buf.index_put_(index, value)


def all_finite(t: Tensor) -> bool:
    """Whether every element of ``t`` (a floating-point tensor, any shape) is finite.

    One sum answers where it is finite: a NaN or infinite element makes the sum NaN or
    infinite, so a finite sum means every element is finite. Only where the sum is not
    finite (a non-finite element, or finite values whose sum overflows) does the
    elementwise ``torch.isfinite`` decide. The sum reads ``t`` once and allocates nothing
    the size of ``t``; ``torch.isfinite(t).all()`` writes a bool mask of ``t``'s size first,
    about ten times slower (0.36 against 0.03 ms at 128 x 1024 on one CPU core). Reads the
    value on the host.
    """
    t = t.detach()
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def where_active(active: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per-sample select: ``new`` where ``active`` (``[B]``), else ``old``; any trailing shape."""
    return torch.where(active.view(-1, *([1] * (new.dim() - 1))), new, old)


class Solver:
    """Base class of fixed-point solvers: hold hyperparameters, supply one step.

    A solver is an immutable object (subclasses are frozen dataclasses) whose fields are its
    hyperparameters. The shared loop in :func:`deqkit.solve` owns budgets, tolerances,
    per-sample masks, the best iterate, evaluation counts and traces; a solver supplies

    * :meth:`init`: its state (history buffers...) given the first evaluated point, and
    * :meth:`step`: the next evaluated point, obtained through ``ev.point`` (or ``ev.jvp``),
      plus an optional ``[B]`` bool ``accept``: where it is False the loop keeps the old point
      (a rejected proposal); ``None`` accepts every sample. A step that evaluates ``f``
      several times for some samples only (an inner iteration) says so with ``charge=``;
      it does not change ``ev.active``, which is the loop's.

    A step must leave inactive samples where they are (pass the proposal through
    ``ev.propose(active, proposal, p.z)`` before evaluating it): on the CPU the loop takes
    the returned point whole, without a per-sample select, once every running sample has
    taken its step. A step should avoid host synchronisation where ``ev.host_checks_free``
    is False (an accelerator); where it is True, a step may branch on tensor values to skip
    per-sample work (Anderson's uniform path). A sample whose accepted point is non-finite
    is marked failed by the loop.

    Subclass, give it a ``name`` and register it with :func:`deqkit.solvers.register` to make
    it available by name.

    Capabilities are declared here, not found by ``isinstance``: ``differentiable_steps`` says
    whether autograd through :meth:`step` gives the derivative of the iteration (the unrolled
    gradient of :class:`deqkit.DEQ` needs it); ``capturable`` says that where
    ``ev.host_checks_free`` is False its :meth:`step` reads nothing on the host and returns a
    state of the same structure, tensor shapes and dtypes as it was given, so that a fixed
    number of steps can be recorded once and replayed (:class:`deqkit.solvers.Graphed`, CUDA
    graphs).
    """

    name: str = "solver"
    differentiable_steps: ClassVar[bool] = True
    capturable: ClassVar[bool] = False

    def init(self, ev: Evaluator, p: Point, active: Tensor) -> Any:
        """Return the solver state for the starting point ``p`` (default: no state).

        ``ev.max_iter`` is the evaluation budget, so buffers can be sized to what it can use.
        """
        return None

    def fused(
        self, ev: Evaluator, p: Point, active: Tensor, failed: Tensor, tol: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """A whole solve with the shared loop's semantics, for solvers that have a faster one
        (``Anderson(native=True)``: one native call per evaluation); ``None`` (the default)
        runs the shared loop with :meth:`init` and :meth:`step`.

        The loop offers it only where nothing is asked of the steps in between: no trace,
        no iterates, no ``on_step``, autograd off; on any device.

        Args:
            ev: The evaluator (:meth:`Evaluator.evaluate` evaluates ``f`` without counting).
            p: The evaluated starting point (counted: every sample has used 1 evaluation).
            active: ``[B]`` bool, the samples to run.
            failed: ``[B]`` bool, the samples whose first evaluation was non-finite.
            tol: The tolerance, under the criterion of ``ev.relative``.

        Returns:
            ``(best_z [B, n], best_res [B], nfev [B] long, failed [B] bool)``, per sample its
            lowest-residual iterate, that residual, its evaluations and whether an accepted
            point was non-finite, or ``None``.
        """
        return None

    def step(
        self, ev: Evaluator, p: Point, active: Tensor, state: Any
    ) -> tuple[Point, Tensor | None, Any]:
        """Return the next evaluated point, the per-sample acceptance (or None), the state."""
        raise NotImplementedError
