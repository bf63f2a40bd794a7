"""``deqkit train`` (the training command line, :mod:`deqkit.train.__main__`) and
``deqkit demo``."""

from __future__ import annotations

import argparse

from ._args import positive_int

__all__ = ["add_demo", "add_train"]


def _cmd_train(args: argparse.Namespace) -> int:
    from ..train.__main__ import main as train_main

    return train_main(args.rest, prog="deqkit train")


def add_train(sub) -> None:
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo

    overrides = {k: v for k, v in vars(args).items() if k in DemoConfig.fields() and v is not None}
    report = run_demo(DemoConfig(**overrides))
    print(f"\nreport: {report}")
    return 0


def add_demo(sub) -> None:
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
        type=positive_int,
        default=32,
        help="channels of the recall network, a positive integer (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
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
        type=positive_int,
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
