"""Fixed-point solver benchmark: deqkit's solvers against torchdeq's, side by side.

Runs deqkit's Anderson, Broyden and Picard and torchdeq's anderson, broyden and
fixed_point_iter on the same tanh-layer problems in one process, prints a Markdown table
(f-evaluations to tolerance, converged fraction, median wall time, ratios deqkit/torchdeq,
deqkit's overhead per iteration) and the PASS/FAIL lines of the targets, and writes
``solver_bench.md``, ``solver_bench.json`` and one convergence plot per problem to ``--out``.

torchdeq is an optional extra (``pip install 'deqkit[bench]'``); without it only deqkit's
solvers run.

    python benchmarks/solver_bench.py                 # full run, ~1-2 minutes on 2 CPU cores
    python benchmarks/solver_bench.py --quick         # small problems, a few seconds
    python benchmarks/solver_bench.py --device cuda --out bench-out/cuda
"""

from __future__ import annotations

import argparse
import sys

import torch

from deqkit.bench import (
    BenchConfig,
    check_targets,
    default_problems,
    format_table,
    run_solver_benchmark,
    torchdeq_available,
    write_report,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs (default 7; 2 with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small problems, to check the pipeline"
    )
    parser.add_argument("--out", default="bench-out", help="output folder (default bench-out)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for the run (default: torch's); 1 is steadier on a busy machine",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")

    with_torchdeq = torchdeq_available()
    if not with_torchdeq:
        print(
            "torchdeq is not installed, so only deqkit's solvers run and the comparisons are "
            "skipped. Install it with: pip install 'deqkit[bench]'",
            file=sys.stderr,
        )
    config = BenchConfig(
        problems=default_problems(quick=args.quick),
        repeats=repeats,
        include_torchdeq=with_torchdeq,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )
    rows = run_solver_benchmark(config)
    targets = check_targets(rows)
    print(format_table(rows))
    print()
    print("\n".join(targets))
    if args.quick:
        print("(--quick: small problems; the targets are meant for the full sizes)")
    paths = write_report(rows, targets, config, args.out)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
