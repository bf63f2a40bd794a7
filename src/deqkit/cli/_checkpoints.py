"""``deqkit eval``, ``sweep`` and ``examine``: a trained run's checkpoint, scored and studied."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..tasks import describe_difficulties
from ._args import ints, positive_int, solver_help

__all__ = ["add_eval", "add_examine", "add_sweep"]


def _load(path: str):
    from ..train import load_checkpoint

    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return load_checkpoint(path)


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..train import evaluate

    model, config, _ = _load(args.checkpoint)
    out = evaluate(model, config, args.difficulty, args.n, max_iter=args.max_iter, tol=args.tol)
    print(json.dumps(out.to_dict()))
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a checkpoint at any difficulty and solver budget")
    p.add_argument("checkpoint", help="path to a run's checkpoint.pt (from deqkit train)")
    p.add_argument(
        "--difficulty",
        type=positive_int,
        default=None,
        help="test difficulty of a procedural task, a positive integer: "
        f"{describe_difficulties()}, e.g. 64; not for data sets, which use their test split "
        "(default: the run's training difficulty)",
    )
    p.add_argument(
        "--n",
        type=positive_int,
        default=None,
        help="number of test samples, a positive integer (default: the run's eval_size, "
        "else 1000 for a procedural task and the whole test split for a data set)",
    )
    p.add_argument(
        "--max-iter",
        type=positive_int,
        default=None,
        help="forward solver budget, evaluations of f per sample, a positive integer; "
        "iterations in recurrent mode (default: the run's eval_max_iter, else its max_iter, "
        "else the model's own)",
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
    from ..analysis import sweep

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
        type=ints,
        default=None,
        metavar="D1,D2,...",
        help="comma-separated test difficulties of a procedural task, positive integers: "
        f"{describe_difficulties()}, e.g. {example} {_DIFFICULTIES_DEFAULT}",
    )


def add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep", help="test-time compute curve of a checkpoint: accuracy against iterations"
    )
    _add_checkpoint_and_difficulties(p, "16,32,64,128")
    p.add_argument(
        "--iterations",
        type=ints,
        default="1,2,5,10,20,50,100",
        metavar="B1,B2,...",
        help="comma-separated solver budgets (evaluations of f per sample) to read the "
        "accuracy at, positive integers (default: %(default)s)",
    )
    p.add_argument(
        "--n",
        type=positive_int,
        default=500,
        help="test samples per difficulty, a positive integer (default: %(default)s)",
    )
    p.add_argument("--solver", default=None, help=solver_help("forward solver"))
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
        type=positive_int,
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
    from ..analysis import examine

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


def add_examine(sub) -> None:
    p = sub.add_parser(
        "examine",
        help="solvers forward and backward, contraction, path independence and per-iterate "
        "readout of a checkpoint, per test sample",
    )
    _add_checkpoint_and_difficulties(p, "16,32,64")
    p.add_argument(
        "--n",
        type=positive_int,
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
        type=positive_int,
        default=300,
        help="budget of every solve, evaluations of f per sample, a positive integer "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--readout-iters",
        type=positive_int,
        default=200,
        help="iterates read out per solver, a positive integer (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=50,
        help="samples per batch, a positive integer; memory grows as readout-iters x batch "
        "x state (default: %(default)s)",
    )
    p.add_argument(
        "--solver", default=None, help=solver_help("solver for z* and the backward solve")
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
