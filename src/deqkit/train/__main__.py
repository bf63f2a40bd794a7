"""``python -m deqkit.train``: run :func:`deqkit.train.train` from a config file.

Examples::

    deqkit train --task prefix_sums --difficulty 16 --width 64 --out-dir runs/ps16
    python -m deqkit.train --config cfg.toml --out-dir runs/ps16
    python -m deqkit.train --config cfg.toml --set lr=3e-4 --set model_kwargs='{"width": 64}'
    python -m deqkit.train --resume runs/ps16
    torchrun --nproc_per_node=4 -m deqkit.train --config cfg.toml

The flags only build a :class:`~deqkit.train.TrainConfig`; the library never sees them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..utils import OneLineArgumentParser
from ._config import TrainConfig, load_config
from ._files import CONFIG
from ._loop import train

__all__ = ["main"]

_SHORTCUTS = {
    "task": str,
    "difficulty": int,
    "model": str,
    "mode": str,
    "solver": str,
    "tol": float,
    "max_iter": int,
    "backward": str,
    "out_dir": str,
    "steps": int,
    "epochs": int,
    "batch_size": int,
    "lr": float,
    "seed": int,
    "device": str,
    "amp": str,
}


_HELP = {
    "backward": "training gradient: phantom (the DEQ default), implicit or unrolled; for an "
    "implicit gradient with the phantom fallback use --set "
    'backward=\'{"name": "implicit", "fallback": {"name": "phantom"}}\'',
}


def _parser(prog: str = "python -m deqkit.train") -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog=prog,
        description="Train a deep equilibrium model from a TrainConfig file (JSON or TOML) "
        "and/or flags; flags override the file. With neither, the TrainConfig defaults "
        "(prefix sums at 16 bits).",
    )
    p.add_argument("--config", type=Path, help="config file (.json or .toml)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue the run from its checkpoint.pt; with RUN_DIR and no --config, the "
        "config is read from RUN_DIR/config.json",
    )
    for name, kind in _SHORTCUTS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=None,
            metavar=name.upper(),
            help=_HELP.get(name, f"set the config's {name}"),
        )
    p.add_argument("--width", type=int, default=None, help="set model_kwargs['width']")
    p.add_argument(
        "--eval-difficulties",
        type=lambda text: [int(v) for v in text.split(",")],
        default=None,
        metavar="D1,D2,...",
        help="set the config's eval_difficulties",
    )
    p.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the model's cell f"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field; VALUE is parsed as JSON, else taken as a string",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that parsed flags describe.

    The base is the ``--config`` file, else ``RUN_DIR/config.json`` when resuming, else the
    ``TrainConfig`` defaults (prefix sums at 16 bits); the other flags are applied on top.
    """
    base: dict[str, Any] = {}
    run_dir = args.resume if isinstance(args.resume, str) else None
    if args.resume is True and args.config is None and args.out_dir is not None:
        run_dir = args.out_dir  # "--out-dir RUN --resume": continue RUN with its own config
    if args.config is not None:
        base = load_config(args.config).to_dict()
    elif run_dir is not None:
        base = load_config(Path(run_dir) / CONFIG).to_dict()
    if run_dir is not None:
        base["out_dir"] = run_dir
    for name in _SHORTCUTS:
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    if args.width is not None:
        base["model_kwargs"] = {**base.get("model_kwargs", {}), "width": args.width}
    if args.eval_difficulties is not None:
        base["eval_difficulties"] = args.eval_difficulties
    if args.compile:
        base["compile"] = True
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        base[key.strip()] = _value(text)
    return TrainConfig.from_dict(base)


def main(argv: Sequence[str] | None = None, prog: str = "python -m deqkit.train") -> int:
    """Parse ``argv``, train, print where the run went. Returns the exit status."""
    args = _parser(prog).parse_args(argv)
    try:
        config = config_from_args(args)
        result = train(config, resume=args.resume is not None, progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, ImportError) as err:
        print(f"deqkit: error: {err}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":
        return 0
    if result.eval:
        for r in result.eval:
            where = f"difficulty {r['difficulty']}" if r["difficulty"] is not None else "test"
            print(f"step {result.step}: {where}: accuracy {r['accuracy']:.4f}", file=sys.stderr)
    print(result.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
