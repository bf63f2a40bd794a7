"""The ``deqkit`` command line: train, eval, sweep, examine, solve-bench, mem-bench, demo.

Each subcommand maps its flags onto the library's config objects and calls library code;
no library function sees an ``argparse`` namespace. A user error (bad flag, bad value,
missing file, missing optional package) prints one line, ``deqkit: error: ...``, and exits
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._validate import integer, invalid
from .tasks import describe_difficulties
from .utils import OneLineArgumentParser

__all__ = ["main"]

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError)


def _ints(text: str) -> list[int]:
    """Comma-separated integers >= 1 (``"1,2,5"``); a bad list is one error in
    :mod:`deqkit._validate`'s form: ``Invalid value: '1,x' (expected comma-separated
    integers >= 1)``."""
    try:
        values = [integer("value", int(v), 1) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(
            str(invalid("value", text, "comma-separated integers >= 1"))
        )
    return values


def _positive_int(text: str) -> int:
    """An integer >= 1, checked by :func:`deqkit._validate.integer`: ``Invalid value: 0
    (expected an integer >= 1)`` (argparse names the flag before it)."""
    try:
        value: object = int(text)
    except ValueError:
        value = text
    try:
        return integer("value", value, 1)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _solver_help(what: str) -> str:
    from .solvers import available

    return (
        f"{what}: {', '.join(available())}, or a name registered with "
        "deqkit.solvers.register (default: the model's own)"
    )


# ---------------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.__main__ import main as train_main

    return train_main(args.rest, prog="deqkit train")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a config file and/or flags (deqkit train --help)",
        add_help=False,
        prefix_chars="\0",  # everything after "train" goes to the training parser
    )
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, help="the training flags (see deqkit train --help)"
    )
    p.set_defaults(func=_cmd_train)


# ----------------------------------------------------------------------------- eval, sweep


def _load(path: str):
    from .train import load_checkpoint

    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return load_checkpoint(path)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate

    model, config, _ = _load(args.checkpoint)
    out = evaluate(model, config, args.difficulty, args.n, max_iter=args.max_iter, tol=args.tol)
    print(json.dumps(out.to_dict()))
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a checkpoint at any difficulty and solver budget")
    p.add_argument("checkpoint", help="path to a run's checkpoint.pt (from deqkit train)")
    p.add_argument(
        "--difficulty",
        type=_positive_int,
        default=None,
        help="test difficulty of a procedural task, a positive integer: "
        f"{describe_difficulties()}, e.g. 64; not for data sets, which use their test split "
        "(default: the run's training difficulty)",
    )
    p.add_argument(
        "--n",
        type=_positive_int,
        default=None,
        help="number of test samples, a positive integer (default: the run's eval_size, "
        "else 1000 for a procedural task and the whole test split for a data set)",
    )
    p.add_argument(
        "--max-iter",
        type=_positive_int,
        default=None,
        help="forward solver budget, evaluations of f per sample, a positive integer; "
        "iterations in recurrent mode (default: the run's max_iter, else the model's own)",
    )
    p.add_argument(
        "--tol",
        type=float,
        default=None,
        help="forward solver tolerance, > 0, deq mode only (default: the run's tol, else "
        "the model's own)",
    )
    p.set_defaults(func=_cmd_eval)


_DIFFICULTIES_DEFAULT = "(default: the run's eval_difficulties, else its training difficulty)"


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .analysis import sweep

    model, config, _ = _load(args.checkpoint)
    out = sweep(
        model,
        config,
        difficulties=args.difficulties,
        iterations=args.iterations,
        n=args.n,
        out_dir=args.out or str(Path(args.checkpoint).parent),
        method=args.solver,
        batch_size=args.batch_size,
        pick=args.pick,
    )
    print(out.table)
    print(f"wrote {', '.join(str(p) for p in out.files)}")
    return 0


def _add_checkpoint_and_difficulties(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("checkpoint", help="path to a run's checkpoint.pt (from deqkit train)")
    p.add_argument(
        "--difficulties",
        type=_ints,
        default=None,
        metavar="D1,D2,...",
        help="comma-separated test difficulties of a procedural task, positive integers: "
        f"{describe_difficulties()}, e.g. {example} {_DIFFICULTIES_DEFAULT}",
    )


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep", help="test-time compute curve of a checkpoint: accuracy against iterations"
    )
    _add_checkpoint_and_difficulties(p, "16,32,64,128")
    p.add_argument(
        "--iterations",
        type=_ints,
        default="1,2,5,10,20,50,100",
        metavar="B1,B2,...",
        help="comma-separated solver budgets (evaluations of f per sample) to read the "
        "accuracy at, positive integers (default: %(default)s)",
    )
    p.add_argument(
        "--n",
        type=_positive_int,
        default=500,
        help="test samples per difficulty, a positive integer (default: %(default)s)",
    )
    p.add_argument("--solver", default=None, help=_solver_help("forward solver"))
    p.add_argument(
        "--pick",
        choices=("best", "last"),
        default="best",
        help="which iterate within each budget is read out: best (each sample's "
        "lowest-residual one, what a solve returns) or last (its latest one, what a "
        "recurrent net holds) (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=100,
        help="samples per solve, a positive integer (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder for sweep.csv, sweep.json and sweep.png (default: the "
        "checkpoint's folder)",
    )
    p.set_defaults(func=_cmd_sweep)


def _cmd_examine(args: argparse.Namespace) -> int:
    from .analysis import examine

    model, config, _ = _load(args.checkpoint)
    out = examine(
        model,
        config,
        difficulties=args.difficulties,
        n=args.n,
        tol=args.tol,
        max_iter=args.max_iter,
        readout_iters=args.readout_iters,
        batch_size=args.batch_size,
        method=args.solver,
        seed=args.seed,
        out_dir=args.out or str(Path(args.checkpoint).parent),
    )
    columns = (
        "accuracy",
        "converged",
        "picard_converged",
        "picard_fails_solver_converges",
        "backward_converged",
        "backward_picard_converged",
        "median_radius",
        "median_norm",
        "median_path_score",
        "best_readout_beats_fixed_point",
        "picard_cycle",
    )
    print("| difficulty | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for d, s in out.difficulties.items():
        values = (
            s.accuracy,
            s.converged,
            s.picard_converged,
            s.picard_fails_solver_converges,
            s.backward_converged,
            s.backward_picard_converged,
            s.median_radius,
            s.median_norm,
            s.median_path_score,
            s.best_readout_beats_fixed_point,
            s.picard_cycle,
        )
        print(f"| {d} | " + " | ".join(f"{v:.3g}" for v in values) + " |")
    print(f"wrote {', '.join(str(p) for p in out.files)}")
    return 0


def _add_examine(sub) -> None:
    p = sub.add_parser(
        "examine",
        help="solvers forward and backward, contraction, path independence and per-iterate "
        "readout of a checkpoint, per test sample",
    )
    _add_checkpoint_and_difficulties(p, "16,32,64")
    p.add_argument(
        "--n",
        type=_positive_int,
        default=100,
        help="test samples per difficulty, a positive integer (default: %(default)s)",
    )
    p.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="relative tolerance of every solve, > 0 (default: %(default)s)",
    )
    p.add_argument(
        "--max-iter",
        type=_positive_int,
        default=300,
        help="budget of every solve, evaluations of f per sample, a positive integer "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--readout-iters",
        type=_positive_int,
        default=200,
        help="iterates read out per solver, a positive integer (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=50,
        help="samples per batch, a positive integer; memory grows as readout-iters x batch "
        "x state (default: %(default)s)",
    )
    p.add_argument(
        "--solver", default=None, help=_solver_help("solver for z* and the backward solve")
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random probes and starts, an integer (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder for examples.csv, examine.json and readout.png (default: the "
        "checkpoint's folder)",
    )
    p.set_defaults(func=_cmd_examine)


# ------------------------------------------------------------------------------ benchmarks


def _cmd_solve_bench(args: argparse.Namespace) -> int:
    from . import bench

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
        type=_positive_int,
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


def _add_solve_bench(sub) -> None:
    p = sub.add_parser("solve-bench", help="our solvers against torchdeq's, side by side")
    p.add_argument(
        "--repeats",
        type=_positive_int,
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
        "--no-progress",
        action="store_true",
        help="no progress bar (default: a progress bar on stderr)",
    )
    p.set_defaults(func=_cmd_solve_bench)


def _cmd_mem_bench(args: argparse.Namespace) -> int:
    from . import bench
    from .bench.memory import rows_to_json

    with_torchdeq = bench.torchdeq_available()
    if not with_torchdeq:
        print(
            "torchdeq is not installed: its DEQ is not run, and the targets against it are "
            "skipped. Install it with: pip install 'deqkit[bench]'",
            file=sys.stderr,
        )
    cfg = bench.MemoryConfig(
        iterations=tuple(args.iterations),
        width=args.width,
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
    from .utils import atomic_write_text

    files.append(
        atomic_write_text(out / "mem_bench.md", table + "\n\n" + "\n".join(targets) + "\n")
    )
    print(f"\nwrote {', '.join(files)}")
    return 0


def _add_mem_bench(sub) -> None:
    p = sub.add_parser(
        "mem-bench",
        help="peak memory and time of a training step against iterations, with the implicit "
        "and the phantom gradient, against torchdeq",
    )
    p.add_argument(
        "--iterations",
        type=_ints,
        default="5,10,20,40,80",
        metavar="N1,N2,...",
        help="comma-separated forward iteration counts to measure at, positive integers "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--width",
        type=_positive_int,
        default=256,
        help="width of the tanh layer z <- tanh(W z + U x + b) and its state, a positive "
        "integer (default: %(default)s)",
    )
    p.add_argument(
        "--batch", type=_positive_int, default=64, help="batch size (default: %(default)s)"
    )
    p.add_argument(
        "--repeats",
        type=_positive_int,
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


# ------------------------------------------------------------------------------------ demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    overrides = {k: v for k, v in vars(args).items() if k in DemoConfig.fields() and v is not None}
    report = run_demo(DemoConfig(**overrides))
    print(f"\nreport: {report}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small DEQ on prefix sums and write a report (the main job)",
        description="Train a small DEQ recall network on short strings, measure the test-time "
        "compute curve on longer ones, compare solvers at its fixed points, measure spectral "
        "radius/norm and path independence, and write report.html/report.md.",
    )
    # The defaults are DemoConfig's (tests/test_cli_help.py checks they agree); they are
    # written out here so that building the parser does not import the demo's dependencies.
    p.add_argument(
        "--task",
        default="prefix_sums",
        choices=["prefix_sums", "mazes"],
        help="task: %(choices)s (prefix-sum parity strings, or mazes) (default: %(default)s)",
    )
    p.add_argument(
        "--width",
        type=_positive_int,
        default=32,
        help="channels of the recall network, a positive integer (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=400,
        help="training steps, a positive integer (default: %(default)s)",
    )
    p.add_argument(
        "--backward",
        default="phantom",
        choices=["implicit", "phantom", "unrolled"],
        help="training gradient: %(choices)s (default: %(default)s; implicit training of "
        "this network loses forward convergence, docs/results.md)",
    )
    p.add_argument(
        "--max-budget",
        dest="max_budget",
        type=_positive_int,
        default=200,
        help="largest solver budget of the compute curve, a positive integer "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="device: %(choices)s; auto is CUDA when present, else cpu (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the model, data and probes, an integer (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        dest="out_dir",
        default=None,
        help="report folder; a given one must not exist or be empty (default: runs/demo, "
        "or runs/demo-2, ... if taken)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="a tiny run that checks the pipeline end to end in seconds: width 8, 6 steps, "
        "shorter strings or mazes; overrides --width and --steps (default: off)",
    )
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``deqkit`` argument parser (exposed for documentation and tests)."""
    description = __doc__.split("\n\n")[0].replace("``", "")
    parser = OneLineArgumentParser(prog="deqkit", description=description)
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        parser_class=OneLineArgumentParser,
        metavar="COMMAND",
        help="one of the commands below; deqkit COMMAND --help states its flags",
    )
    for add in (
        _add_train,
        _add_eval,
        _add_sweep,
        _add_examine,
        _add_solve_bench,
        _add_mem_bench,
        _add_demo,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``deqkit`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"deqkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
