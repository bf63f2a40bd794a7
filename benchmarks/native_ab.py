"""Anderson's solve against its evaluation-only limit, variant by variant, in one process.

Runs the solver benchmark's problems (``deqkit.testing.benchmark_problems``) with Anderson
as the eager step (the default), ``native=True`` and ``native=True,
history_dtype=torch.bfloat16``, and plain iteration beside them, in interleaved rounds
(every variant once per round, then a burst of ``f`` alone on the same problem), and
prints per problem and variant the median over rounds of

* ``evals``: evaluations of ``f`` (the largest per-sample count: the batch's calls);
* ``time``: the whole solve, ms;
* ``limit``: ``time / (evals x f alone)``, the ratio the speed targets bound (<= 1.15 at
  batch 128 x width 1024, <= 3 at 64 x 256);
* ``over picard``: ``time`` over plain iteration's on the same problem (the target: <= 1
  where Anderson needs no more evaluations than plain iteration);
* ``f in solve``: one evaluation of ``f`` inside the solve, ms, against ``f alone`` (the
  history's memory traffic displaces ``f``'s operands from the cache, so ``f`` itself runs
  slower inside a solve than in a burst);
* ``bookkeeping``: the solve's time outside ``f``, per evaluation, ms.

Times are this process's CPU time (``time.thread_time``) at one torch thread, so a busy
second core changes them less (it still shares the cache and memory bus: run it alone).

    python benchmarks/native_ab.py                 # every problem, 9 rounds
    python benchmarks/native_ab.py --wide          # the two 128 x 1024 problems only
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deqkit import solve
from deqkit.solvers import Anderson, Picard
from deqkit.testing import benchmark_problems, build_tanh

VARIANTS = {
    "eager": Anderson(),
    "native": Anderson(native=True),
    "native+bf16": Anderson(native=True, history_dtype=torch.bfloat16),
    "picard": Picard(),  # plain iteration: the "never slower than plain" baseline
}


class Timed:
    """``f`` that adds its own CPU time to ``self.seconds``."""

    def __init__(self, f):
        self.f, self.seconds = f, 0.0

    def __call__(self, z):
        t = time.thread_time()
        out = self.f(z)
        self.seconds += time.thread_time() - t
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    ap.add_argument("--wide", action="store_true", help="only the 128 x 1024 problems")
    args = ap.parse_args()
    torch.set_num_threads(1)
    specs = [s for s in benchmark_problems() if not args.wide or s.width == 1024]
    print("| problem | variant | evals | time ms | limit | over picard | f in solve ms | "
          "f alone ms | bookkeeping ms / eval |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in specs:
        p = build_tanh(spec)
        solvers = VARIANTS
        kw = dict(tol=1e-5, max_iter=300)
        evals = {}
        for k, s in solvers.items():  # warm-up (and the extension's build)
            evals[k] = int(solve(p.f, p.z0, s, **kw).iterations.max())
        times = {k: [] for k in solvers}
        inside = {k: [] for k in solvers}
        alone = []
        z = p.z0.clone()
        for _ in range(args.rounds):
            for k, s in solvers.items():
                f = Timed(p.f)
                t = time.thread_time()
                r = solve(f, p.z0, s, **kw)
                times[k].append(time.thread_time() - t)
                inside[k].append(f.seconds / int(r.iterations.max()))
            t = time.thread_time()
            for _ in range(10):
                p.f(z)
            alone.append((time.thread_time() - t) / 10)
        fa = statistics.median(alone)
        plain = statistics.median(times["picard"])
        for k in solvers:
            tm, fi, n = statistics.median(times[k]), statistics.median(inside[k]), evals[k]
            print(f"| {spec.name} | {k} | {n} | {tm * 1e3:.2f} | {tm / (n * fa):.3f} | "
                  f"{tm / plain:.3f} | {fi * 1e3:.3f} | {fa * 1e3:.3f} | "
                  f"{(tm - n * fi) / n * 1e3:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
