"""``deqkit solve-bench`` and ``mem-bench``: the solver and memory benchmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._args import ints, positive_int

__all__ = ["add_mem_bench", "add_solve_bench"]


def _cmd_solve_bench(args: argparse.Namespace) -> int:
    from .. import bench

    with_torchdeq = bench.torchdeq_available()
    if not with_torchdeq:
        print(
            "torchdeq is not installed: only deqkit's solvers run, and the targets against "
            "torchdeq are skipped. Install it with: pip install 'deqkit[bench]'",
            file=sys.stderr,
        )
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    config = bench.BenchConfig(
        problems=bench.default_problems(quick=args.quick),
        repeats=repeats,
        include_torchdeq=with_torchdeq,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
        clock=args.clock,
        native=args.native,
        history=args.history,
        graph=args.graph,
    )
    rows = bench.run_solver_benchmark(config)
    targets = bench.check_targets(rows) + bench.check_limit_targets(rows)
    print(bench.format_table(rows))
    print()
    print("\n".join(targets))
    paths = bench.write_report(rows, targets, config, args.out)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0


def _add_bench_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="device to run on: %(choices)s (default: %(default)s)",
    )


def _add_bench_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads for the run, a positive integer; 1 makes timings far less "
        "sensitive to other processes (default: leave torch's setting)",
    )


def _add_bench_clock(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="what every time of the run is measured on: %(choices)s; wall is elapsed time, "
        "cpu is this process's CPU time, which leaves out the time other processes had the "
        "core (steadier on a shared machine; --device cpu only) (default: %(default)s)",
    )


def add_solve_bench(sub) -> None:
    p = sub.add_parser("solve-bench", help="our solvers against torchdeq's, side by side")
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help="timed runs per solver and problem, median reported, a positive integer "
        "(default: 7, or 2 with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the same problems at a fraction of the size (width 32 and 128, batch 8 and 16) "
        "to check the pipeline in seconds; the targets are stated for the full sizes "
        "(default: full size, width 256 and 1024)",
    )
    p.add_argument(
        "--out",
        default="bench-out",
        help="output folder for solver_bench.md, .json and .png plots (default: %(default)s)",
    )
    _add_bench_device(p)
    _add_bench_threads(p)
    _add_bench_clock(p)
    p.add_argument(
        "--native",
        action="store_true",
        help="run deqkit's anderson as Anderson(native=True), its bookkeeping in a C++ "
        "extension built on first use (needs a C++ compiler and ninja; CPU only) "
        "(default: the eager step)",
    )
    p.add_argument(
        "--history",
        default="state",
        choices=["state", "bfloat16"],
        help="with --native, the dtype anderson's history is stored in: %(choices)s; "
        "bfloat16 halves the history's memory traffic, residuals stay exact "
        "(default: %(default)s, the state's float32)",
    )
    p.add_argument(
        "--graph",
        type=positive_int,
        default=None,
        metavar="STEPS",
        help="run deqkit's anderson and picard as Graphed(method, steps=STEPS): STEPS steps "
        "per host read, each chunk one CUDA graph replay on a GPU (eager chunks on the CPU) "
        "(default: the loop, one host read per step on a GPU)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (default: a progress bar on stderr)",
    )
    p.set_defaults(func=_cmd_solve_bench)


def _cmd_mem_bench(args: argparse.Namespace) -> int:
    from .. import bench
    from ..bench.memory import rows_to_json

    with_torchdeq = bench.torchdeq_available()
    if not with_torchdeq:
        print(
            "torchdeq is not installed: its DEQ is not run, and the targets against it are "
            "skipped. Install it with: pip install 'deqkit[bench]'",
            file=sys.stderr,
        )
    cfg = bench.MemoryConfig(
        iterations=tuple(args.iterations),
        cell=args.cell,
        width=args.width,
        tokens=args.tokens,
        batch=args.batch,
        repeats=args.repeats,
        device=args.device,
        include_torchdeq=with_torchdeq,
        clock=args.clock,
        threads=args.threads,
    )
    rows = bench.run_memory_benchmark(cfg)
    table = bench.format_memory_table(rows)
    targets = bench.check_memory_targets(rows)
    print(table + "\n\n" + "\n".join(targets))
    out = Path(args.out)
    files = [
        rows_to_json(rows, out / "mem_bench.json"),
        bench.plot_memory(rows, out / "mem_bench.png"),
    ]
    from ..utils import atomic_write_text

    files.append(
        atomic_write_text(out / "mem_bench.md", table + "\n\n" + "\n".join(targets) + "\n")
    )
    print(f"\nwrote {', '.join(files)}")
    return 0


def add_mem_bench(sub) -> None:
    p = sub.add_parser(
        "mem-bench",
        help="peak memory and time of a training step against iterations, with the implicit "
        "and the phantom gradient, against torchdeq",
    )
    p.add_argument(
        "--iterations",
        type=ints,
        default="5,10,20,40,80",
        metavar="N1,N2,...",
        help="comma-separated forward iteration counts to measure at, positive integers "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--cell",
        choices=("tanh", "attention"),  # deqkit.bench.memory.CELLS (not imported here)
        default="tanh",
        help="the layer f(z, x): tanh, z <- tanh(W z + U x + b) with ||W|| = 0.9, or "
        "attention, the pre-norm transformer block of DEQAttention (4 heads) over --tokens "
        "positions (default: %(default)s)",
    )
    p.add_argument(
        "--width",
        type=positive_int,
        default=256,
        help="width of the layer and its state (d_model of the attention cell, a multiple "
        "of 4), a positive integer (default: %(default)s)",
    )
    p.add_argument(
        "--tokens",
        type=positive_int,
        default=81,
        help="positions of the attention cell's state [batch, tokens, width], a positive "
        "integer; 81 is a Sudoku board (default: %(default)s)",
    )
    p.add_argument(
        "--batch", type=positive_int, default=64, help="batch size (default: %(default)s)"
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="timed steps per method and iteration count, interleaved across methods, median "
        "reported, a positive integer (default: %(default)s)",
    )
    _add_bench_device(p)
    p.add_argument(
        "--out",
        default="bench-out",
        help="output folder for mem_bench.json, .png and .md (default: %(default)s)",
    )
    _add_bench_threads(p)
    _add_bench_clock(p)
    p.set_defaults(func=_cmd_mem_bench)
