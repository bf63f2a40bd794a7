"""The ``deqkit`` command line: train, eval, sweep, examine, solve-bench, mem-bench, demo.

Each subcommand maps its flags onto the library's config objects and calls library code;
no library function sees an ``argparse`` namespace. A user error (bad flag, bad value,
missing file, missing optional package) prints one line, ``deqkit: error: ...``, and exits
with status 2; no traceback.

The parser is put together here; each group of commands lives in its own module
(``_train``: train and demo, ``_checkpoints``: eval, sweep and examine, ``_bench``:
solve-bench and mem-bench), and ``_args`` holds the argument types they share.
"""

from __future__ import annotations

import argparse
import sys

from ..utils import OneLineArgumentParser
from ._bench import add_mem_bench, add_solve_bench
from ._checkpoints import add_eval, add_examine, add_sweep
from ._train import add_demo, add_train

__all__ = ["build_parser", "main"]

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError)


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
        add_train,
        add_eval,
        add_sweep,
        add_examine,
        add_solve_bench,
        add_mem_bench,
        add_demo,
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
