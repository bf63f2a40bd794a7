"""Does ``torch.compile`` pay for Anderson's bookkeeping? Eager against compiled, per step.

Times the two halves of one Anderson step that are not evaluations of ``f``, written as
``deqkit.solvers.Anderson`` computes them on its CPU path (``m = 5``, float32 state, float64
``m x m`` system):

* ``weights``: Cholesky of the ``[B, m, m]`` Gram matrix (with its ridge), the weights
  ``gamma``, their checks, and the proposal ``f(z_k) - dF gamma``;
* ``record``: the new differences written into the ring, the Gram row and right-hand side
  from one batched product, the row and column of ``A`` written back;

each eager and under ``torch.compile`` (inductor), and the same ``weights`` with the
Cholesky written out in tensor operations for fixed ``m`` (which inductor can fuse into one
kernel). Prints microseconds per call (median of 7 rounds, CPU time of this process).

    python benchmarks/compile_step.py                  # batch 64, width 256
    python benchmarks/compile_step.py --batch 128 --width 1024

Measured twice on the 2-core CPU of REFERENCE.md (shared with two training runs and other
test runs, 1 thread, batch 64, width 256): compiled ``record`` 176-383 us against 128-172 us
eager, compiled ``weights`` 192-264 us against 188-203 us eager; the written-out Cholesky,
compiled, 151-159 us (eager, 630-950 us). Compiling does not pay on the CPU at these sizes
(the compiled wrapper's per-call cost is about what fusing a few small kernels saves, and
the first call takes 0.3-10 s), so deqkit's solvers have no ``compile`` option; on an
accelerator, where each small kernel costs a launch, it may, and that has not been measured.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

TINY = torch.finfo(torch.float64).tiny


def record(pg, qg, pf, qf, D, dG, A, k: int, lam: float):
    dg = torch.sub(qg, pg, out=dG[:, k])
    torch.sub(qf, pf, out=D[:, k])
    both = torch.bmm(torch.stack((dg, qg), 1), dG.transpose(1, 2)).to(torch.float64)
    row = both[:, 0].clone()
    row[:, k] = row[:, k] + (lam * row[:, k] + TINY)
    A[:, k] = row
    A[:, :, k] = row
    return both[:, 1]


def weights(A, rhs, fz, D, max_weight: float):
    chol, info = torch.linalg.cholesky_ex(A)
    gamma = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
    weight = torch.linalg.vector_norm(gamma, dim=-1)
    bad = (info != 0) | ~(weight <= max_weight)
    return fz - torch.bmm(gamma.to(fz.dtype)[:, None, :], D)[:, 0], bad.any()


def weights_written_out(A, rhs, fz, D, max_weight: float):
    """The same, with the Cholesky factorisation and both triangular solves unrolled."""
    m = A.shape[-1]
    L = [[None] * m for _ in range(m)]
    ok = torch.ones(A.shape[0], dtype=torch.bool, device=A.device)
    for j in range(m):
        s = A[:, j, j]
        for p in range(j):
            s = s - L[j][p] * L[j][p]
        ok = ok & (s > 0)
        L[j][j] = torch.sqrt(s.clamp(min=TINY))
        for i in range(j + 1, m):
            s2 = A[:, i, j]
            for p in range(j):
                s2 = s2 - L[i][p] * L[j][p]
            L[i][j] = s2 / L[j][j]
    y = []
    for i in range(m):
        s = rhs[:, i]
        for p in range(i):
            s = s - L[i][p] * y[p]
        y.append(s / L[i][i])
    x = [None] * m
    for i in reversed(range(m)):
        s = y[i]
        for p in range(i + 1, m):
            s = s - L[p][i] * x[p]
        x[i] = s / L[i][i]
    gamma = torch.stack(x, 1)
    weight = torch.linalg.vector_norm(gamma, dim=-1)
    bad = ~ok | ~(weight <= max_weight)
    return fz - torch.bmm(gamma.to(fz.dtype)[:, None, :], D)[:, 0], bad.any()


def _time(fn, calls: int = 100) -> float:
    for _ in range(10):
        fn()
    rounds = []
    for _ in range(7):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        rounds.append((time.process_time() - t0) / calls * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="batch B (default: 64)")
    parser.add_argument("--width", type=int, default=256, help="state width n (default: 256)")
    parser.add_argument("--m", type=int, default=5, help="Anderson memory m (default: 5)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    B, n, m = args.batch, args.width, args.m
    g = torch.Generator().manual_seed(0)
    D, dG = torch.randn(B, m, n, generator=g), torch.randn(B, m, n, generator=g)
    X = torch.randn(B, m, 4 * m, generator=g, dtype=torch.float64)
    A = X @ X.mT + 1e-3 * torch.eye(m, dtype=torch.float64)
    rhs = torch.randn(B, m, generator=g, dtype=torch.float64)
    pg, qg, pf, qf = (torch.randn(B, n, generator=g) for _ in range(4))
    cases = {
        "record": (record, (pg, qg, pf, qf, D, dG, A.clone(), 2, 1e-8)),
        "weights": (weights, (A, rhs, pf, D, 1e6)),
        "weights, Cholesky written out": (weights_written_out, (A, rhs, pf, D, 1e6)),
    }
    with torch.no_grad():
        for name, (fn, fargs) in cases.items():
            eager = _time(lambda fn=fn, fargs=fargs: fn(*fargs))
            compiled_fn = torch.compile(fn, dynamic=False)
            t0 = time.perf_counter()
            compiled_fn(*fargs)
            first = time.perf_counter() - t0
            compiled = _time(lambda c=compiled_fn, fargs=fargs: c(*fargs))
            print(
                f"{name:32s} eager {eager:7.1f} us   compiled {compiled:7.1f} us   "
                f"(compiling took {first:.1f} s)"
            )


if __name__ == "__main__":
    main()
