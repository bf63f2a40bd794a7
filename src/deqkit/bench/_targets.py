"""The solver benchmark's targets: PASS/FAIL lines measured from one run's rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._run import OURS, THEIRS, Row

__all__ = ["check_limit_targets", "check_targets"]


def _mask(r: Row, generous: bool) -> Tensor:
    claimed, checked = torch.tensor(r.converged_mask), torch.tensor(r.checked_mask)
    return claimed | checked if generous else claimed & checked


def _best(rows: Sequence[Row], generous: bool) -> Row:
    """Most samples converged, then fewest evaluations."""
    return min(rows, key=lambda r: (-int(_mask(r, generous).sum()), r.evals))


def _dominates(what: str, ours: Row, refs: Sequence[Row]) -> str:
    # Strict for deqkit (claimed and checked), generous for torchdeq (claimed or checked).
    mine = _mask(ours, generous=False)
    theirs = torch.stack([_mask(r, generous=True) for r in refs]).any(0)
    missed = int((theirs & ~mine).sum())
    need = min(r.evals for r in refs)
    ok = missed == 0 and ours.evals <= need
    names = "/".join(r.solver for r in refs)
    return (
        f"{'PASS' if ok else 'FAIL'}  {what} on {ours.problem}: {ours.label} converges "
        f"{int(mine.sum())}/{ours.batch} ({missed} of torchdeq {names}'s {int(theirs.sum())} "
        f"missed) in {ours.evals} f-evals, need <= {need} "
        f"({', '.join(f'{r.solver} {r.evals}' for r in refs)})"
    )


def check_targets(
    rows: Sequence[Row],
    *,
    time_ratio: float = 0.4,
    overhead: float = 0.25,
    overhead_shape: tuple[int, int] = (1024, 128),
) -> list[str]:
    """Check the benchmark's targets; one readable ``PASS``/``FAIL``/``SKIP`` line each.

    Per problem:

    1. deqkit Anderson converges every sample that torchdeq's Anderson or fixed-point
       iteration converges, with no more f-evaluations than the fewer of the two.
    2. deqkit's best of Anderson and Broyden does the same against torchdeq's best solver
       ("best": most samples converged, then fewest evaluations).
    3. deqkit Anderson's median wall time is at most ``time_ratio`` of torchdeq Anderson's.
       The line also gives the floor set by the evaluations alone,
       ``calls * f_ms / torchdeq time``: no cut in overhead goes below it.

    And on every problem of width and batch ``overhead_shape``:

    4. deqkit Anderson's overhead per iteration beyond evaluating ``f`` is at most
       ``overhead`` of one evaluation.

    A sample counts as converged for deqkit when it both claims and passes the recomputed
    check, for torchdeq when it claims or passes it (the strict reading for deqkit).

    Args:
        rows: From :func:`run_solver_benchmark`.
        time_ratio: Target 3's bound. Default ``0.4``.
        overhead: Target 4's bound. Default ``0.25``.
        overhead_shape: ``(width, batch)`` where target 4 applies. Default ``(1024, 128)``.

    Returns:
        Lines starting with ``PASS``, ``FAIL`` or ``SKIP`` (target not measurable from
        ``rows``, e.g. torchdeq not run).
    """
    lines: list[str] = []
    problems = list(dict.fromkeys(r.problem for r in rows))
    for problem in problems:
        ours = {r.solver: r for r in rows if r.problem == problem and r.impl == OURS}
        theirs = {r.solver: r for r in rows if r.problem == problem and r.impl == THEIRS}
        anderson = ours.get("anderson")
        refs = [theirs[s] for s in ("anderson", "fixed_point_iter") if s in theirs]
        if anderson is None or not refs:
            lines.append(f"SKIP  anderson vs torchdeq on {problem}: needs both libraries' runs")
        else:
            lines.append(_dominates("anderson vs torchdeq anderson|fixed_point", anderson, refs))
        mine = [ours[s] for s in ("anderson", "broyden") if s in ours]
        if not mine or not theirs:
            lines.append(f"SKIP  best vs best on {problem}: needs both libraries' runs")
        else:
            best = _best(mine, generous=False)
            lines.append(_dominates("best vs best", best, [_best(list(theirs.values()), True)]))
        if anderson is None or "anderson" not in theirs:
            lines.append(f"SKIP  wall time on {problem}: needs both libraries' anderson")
        else:
            ref = theirs["anderson"]
            ratio = anderson.time_ms / ref.time_ms
            floor = anderson.calls * anderson.f_ms / ref.time_ms
            lines.append(
                f"{'PASS' if ratio <= time_ratio else 'FAIL'}  wall time on {problem}: "
                f"deqkit anderson {anderson.time_ms:.1f} ms / torchdeq anderson "
                f"{ref.time_ms:.1f} ms = {ratio:.2f}, need <= {time_ratio:g} (f-evaluations "
                f"alone: {anderson.calls} x {anderson.f_ms:.3f} ms = {floor:.2f} of theirs)"
            )
    wide = [
        r
        for r in rows
        if r.impl == OURS
        and r.solver == "anderson"
        and (r.width, r.batch) == tuple(overhead_shape)
        and r.overhead is not None
    ]
    for r in wide:
        lines.append(
            f"{'PASS' if r.overhead <= overhead else 'FAIL'}  overhead per iteration on "
            f"{r.problem} (width {r.width}, batch {r.batch}): {r.overhead:.3f} of one "
            f"f-evaluation ({r.f_ms:.2f} ms), need <= {overhead:g}; "
            f"{r.calls} calls in {r.time_ms:.1f} ms"
        )
    if not wide:
        lines.append(
            f"SKIP  overhead per iteration: no deqkit anderson run at width "
            f"{overhead_shape[0]}, batch {overhead_shape[1]}"
        )
    return lines


def check_limit_targets(
    rows: Sequence[Row],
    *,
    wide: tuple[int, int, float] = (1024, 128, 1.15),
    narrow: tuple[int, int, float] = (256, 64, 3.0),
) -> list[str]:
    """Check deqkit Anderson against its evaluation-only limit and against plain iteration.

    One readable ``PASS``/``FAIL``/``SKIP`` line each; every ratio is measured in the run
    that made ``rows``:

    1. On every problem of width and batch ``wide[:2]``, deqkit Anderson's time is at most
       ``wide[2]`` times its evaluation-only limit ``calls * f_ms`` (1.15: overhead at most
       15% of the total, about 0.15 evaluations of ``f`` per iteration).
    2. The same on every problem of width and batch ``narrow[:2]``, bound ``narrow[2]``.
    3. On every problem where deqkit Anderson needs no more evaluations per sample than
       deqkit's plain iteration (picard), it is not slower: ``time(anderson) <=
       time(picard)``. Where Anderson needs more, the line is a ``SKIP`` saying so.

    Args:
        rows: From :func:`run_solver_benchmark`.
        wide: ``(width, batch, bound)`` of target 1. Default ``(1024, 128, 1.15)``.
        narrow: ``(width, batch, bound)`` of target 2. Default ``(256, 64, 3.0)``.

    Returns:
        The lines, targets 1 and 2 per matching problem, then target 3 per problem.
    """
    lines: list[str] = []
    ours = [r for r in rows if r.impl == OURS]
    for width, batch, bound in (wide, narrow):
        hits = [
            r
            for r in ours
            if r.solver == "anderson" and (r.width, r.batch) == (width, batch) and r.limit_ms
        ]
        for r in hits:
            ratio = r.limit_ratio
            lines.append(
                f"{'PASS' if ratio <= bound else 'FAIL'}  anderson vs its evaluation-only limit "
                f"on {r.problem} (width {width}, batch {batch}): {r.time_ms:.1f} ms / "
                f"({r.calls} x {r.f_ms:.3f} ms = {r.limit_ms:.1f} ms) = {ratio:.2f}, need <= "
                f"{bound:g} (overhead {100 * r.overhead_share:.0f}% of the time)"
            )
        if not hits:
            lines.append(
                f"SKIP  anderson vs its evaluation-only limit: no deqkit anderson run at "
                f"width {width}, batch {batch}"
            )
    for problem in dict.fromkeys(r.problem for r in ours):
        mine = {r.solver: r for r in ours if r.problem == problem}
        anderson, plain = mine.get("anderson"), mine.get("picard") or mine.get("fixed_point")
        if anderson is None or plain is None:
            lines.append(f"SKIP  anderson vs plain iteration on {problem}: needs both runs")
        elif anderson.evals > plain.evals:
            lines.append(
                f"SKIP  anderson vs plain iteration on {problem}: anderson needs more "
                f"f-evals ({anderson.evals} > {plain.evals}), the target does not apply"
            )
        else:
            ratio = anderson.time_ms / plain.time_ms
            lines.append(
                f"{'PASS' if ratio <= 1.0 else 'FAIL'}  anderson vs plain iteration on "
                f"{problem}: {anderson.evals} f-evals <= {plain.evals}, time "
                f"{anderson.time_ms:.1f} ms / {plain.time_ms:.1f} ms = {ratio:.2f}, need <= 1"
            )
    return lines
