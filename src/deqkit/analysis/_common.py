"""Helpers shared by the instruments: argument checks, flat views of states, row residuals,
CSV text."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ..nn import Packer, State
from ..solvers import Anderson, Broyden, Picard, Solver, SolveResult

# Solvers whose every step costs exactly one evaluation of f per active sample, so that row t
# of a recorded solve is what a budget of t + 1 evaluations reaches.
ONE_EVALUATION_PER_STEP = (Picard, Anderson, Broyden)


def check_callable(name: str, value: object) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def one_evaluation_per_step(solver: Solver) -> bool:
    """Whether each step of ``solver`` costs one evaluation (subclasses may change the step)."""
    return type(solver) in ONE_EVALUATION_PER_STEP


def flat_map(f: Callable[[State], State], packer: Packer) -> Callable[[Tensor], Tensor]:
    """``f`` on flat ``[B, N]`` states, checking that it returns a state shaped like its input."""

    def fz(z: Tensor) -> Tensor:
        return packer.pack(f(packer.unpack(z)), "f(z)").to(z.dtype)

    return fz


def unpack_rows(flat: Tensor, packer: Packer) -> State:
    """``[T, B, N]`` flat rows to the state structure with a leading ``T`` dimension."""
    sizes = [s[1:].numel() for s in packer.shapes]
    parts = tuple(
        t.reshape(flat.shape[0], *s)
        for t, s in zip(torch.split(flat, sizes, dim=-1), packer.shapes, strict=True)
    )
    return parts if packer.is_tuple else parts[0]


def flatten_rows(iterates: State, name: str = "iterates") -> Tensor:
    """A tensor ``[T, B, ...]`` or tuple of them to one ``[T, B, N]`` tensor."""
    parts = iterates if isinstance(iterates, tuple) else (iterates,)
    if not parts or not all(isinstance(t, Tensor) for t in parts):
        raise TypeError(f"{name} must be a tensor [T, B, ...] or a tuple of them")
    if any(t.dim() < 2 for t in parts) or len({t.shape[:2] for t in parts}) != 1:
        raise ValueError(
            f"{name} must be shaped [T, B, ...] (the same T and B for every part), got shapes "
            f"{[tuple(t.shape) for t in parts]}"
        )
    T, B = parts[0].shape[:2]
    return torch.cat([t.reshape(T, B, -1) for t in parts], dim=2)


def row_residuals(result: SolveResult) -> Tensor:
    """``[steps, B]`` residual of each recorded iterate (``result.iterates[t]``).

    The loop's trace holds the residual of each step's *proposal* (NaN once a sample stopped),
    and a rejected proposal leaves the iterate where it was. So a row whose iterate moved has
    the trace's residual, and a row whose iterate did not move keeps the previous row's.
    """
    trace, iterates = result.trace, result.iterates
    if trace is None or iterates is None:
        raise ValueError("the solve must record both its trace and its iterates")
    flat = iterates.reshape(iterates.shape[0], iterates.shape[1], -1)
    rows = [trace[0]]
    for t in range(1, trace.shape[0]):
        moved = (flat[t] != flat[t - 1]).any(dim=1)
        rows.append(torch.where(moved, trace[t], rows[-1]))
    return torch.stack(rows)


def random_like(flat: Tensor, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    device = generator.device if generator is not None else flat.device
    out = torch.randn(flat.shape, generator=generator, dtype=dtype, device=device)
    return out.to(flat.device)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """``header`` and ``rows`` as CSV text (the ``csv`` module's defaults: ``\\r\\n`` line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
