"""Fixed-point solver benchmark: deqkit's solvers against torchdeq's, side by side.

Same as ``deqkit solve-bench``: runs deqkit's Anderson, Broyden and Picard and torchdeq's
anderson, broyden and fixed_point_iter on the same tanh-layer problems in one process,
prints a Markdown table (f-evaluations to tolerance, converged fraction, median time, the
evaluation-only limit and the overhead share, ratios deqkit/torchdeq, deqkit's overhead per
iteration) and the PASS/FAIL lines of the targets (against torchdeq, against the limit,
against plain iteration), and writes ``solver_bench.md``, ``solver_bench.json`` and one
convergence plot per problem to ``--out`` (default ``bench-out``).

    python benchmarks/solver_bench.py                 # full run, ~1-2 minutes on 2 CPU cores
    python benchmarks/solver_bench.py --quick         # small problems, a few seconds
    python benchmarks/solver_bench.py --threads 1     # steadier timings on a busy machine
    python benchmarks/solver_bench.py --threads 1 --clock cpu   # CPU time: a shared machine
"""

import sys

from deqkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["solve-bench", *sys.argv[1:]]))
