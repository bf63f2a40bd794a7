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
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..models import available_models
from ..nn import DEQSettings, available_gradients
from ..solvers import available as available_solvers
from ..tasks import available_tasks, describe_difficulties, get_task
from ..utils import OneLineArgumentParser
from ._choices import AMP, DEFAULT_STEPS, DEVICES, MODES
from ._config import TrainConfig, load_config
from ._deq_table import set_key
from ._files import CONFIG
from ._loop import train

__all__ = ["build_parser", "main"]

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


def _choices() -> dict[str, tuple[str, ...]]:
    """Closed sets of valid values (TrainConfig refuses anything else), read when the parser
    is built (tasks registered by then are among them). Solvers and models are open:
    solvers can be registered (deqkit.solvers.register), models named
    "package.module:factory"; their help lists the built-ins instead."""
    return {
        "task": tuple(available_tasks()),
        "mode": MODES,
        "backward": tuple(available_gradients()),
        "device": DEVICES,
        "amp": AMP,
    }


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def _by_value(mapping: dict[str, Any]) -> str:
    """``{"a": 1, "b": 1, "c": 2}`` -> ``"1 for a, b; 2 for c"``."""
    groups: dict[Any, list[str]] = {}
    for key, value in mapping.items():
        groups.setdefault(value, []).append(key)
    return "; ".join(f"{value} for {', '.join(keys)}" for value, keys in groups.items())


def _help() -> dict[str, str]:
    """Help of the config shortcuts: meaning, valid values, default (TrainConfig's)."""
    # the DEQ defaults, which a model's own settings start from
    deq = {f.name: f.default for f in dataclasses.fields(DEQSettings)}
    solvers = ", ".join(available_solvers())
    models = ", ".join(available_models())
    procedural = available_tasks(procedural=True)
    specs = [get_task(n) for n in available_tasks()]
    return {
        "task": f"task to train on: %(choices)s (procedural: {', '.join(procedural)}; the "
        f"others are data sets) (default: {_default('task')})",
        "difficulty": "training difficulty of a procedural task, a positive integer: "
        f"{describe_difficulties()}; not for data sets (default: "
        f"{_by_value({t.name: t.default_difficulty for t in specs if t.procedural})})",
        "model": f"model to train: {models}, or 'package.module:factory' for your own "
        f"(default: the task's: {_by_value({t.name: t.default_model for t in specs})})",
        "mode": "deq (solve for the fixed point) or recurrent (a fixed number of weight-tied "
        f"iterations, progressive loss) (default: {_default('mode')})",
        "solver": f"forward solver: {solvers}, or a name registered with "
        "deqkit.solvers.register (default: the model's own: "
        f"{deq['solver']}, the DEQ default; picard for monotone_mlp)",
        "tol": "forward solver tolerance, > 0 (deq mode) (default: the model's own: "
        f"{deq['tol']}, the DEQ default; 0.001 for recall1d and recall2d)",
        "max_iter": "forward budget, evaluations of f per sample, >= 1; in recurrent mode "
        "the iterations run at evaluation (default: the model's own: "
        f"{deq['max_iter']}, the DEQ default; 100 for monotone_mlp; recurrent mode: "
        f"train_iters, {_default('train_iters')})",
        "backward": "training gradient: %(choices)s (default: the model's own: "
        f"{deq['backward']}, the DEQ default; implicit for monotone_mlp); for a gradient "
        "spec, e.g. implicit with the phantom fallback, use --set "
        'backward=\'{"name": "implicit", "fallback": {"name": "phantom"}}\'',
        "out_dir": "run folder; must be new or empty unless resuming (default: "
        "runs/{task}-{model}-{mode}-seed{seed})",
        "steps": "optimiser steps, >= 1; not together with --epochs (default: "
        f"{DEFAULT_STEPS}, or epochs times the steps per epoch for a data set)",
        "epochs": "passes over a data set's training split, >= 1 (data sets only); not "
        "together with --steps (default: none, --steps decides)",
        "batch_size": "global batch size, split evenly over data-parallel ranks, >= 1 "
        f"(default: {_default('batch_size')})",
        "lr": f"peak learning rate, > 0 (default: {_default('lr')})",
        "seed": "seed of the model initialisation, the data stream and every step's "
        f"randomness, an integer (default: {_default('seed')})",
        "device": "device to train on: %(choices)s; auto is CUDA when available, else cpu "
        f"(default: {_default('device')})",
        "amp": "mixed precision: %(choices)s; bf16 autocasts the forward in bfloat16, the "
        f"solver state stays float32 (default: {_default('amp')})",
    }


def build_parser(prog: str = "python -m deqkit.train") -> argparse.ArgumentParser:
    """The training command line's parser (``deqkit train``, ``python -m deqkit.train``)."""
    p = OneLineArgumentParser(
        prog=prog,
        description="Train a deep equilibrium model from a TrainConfig file (JSON or TOML) "
        "and/or flags; flags override the file. With neither, the TrainConfig defaults "
        "(prefix sums at 16 bits). Each flag sets the TrainConfig field of its name (--width: "
        "model_kwargs['width']); a default below is TrainConfig's, used where neither a flag "
        "nor the config file (--config, or RUN_DIR/config.json with --resume RUN_DIR) sets "
        "the field.",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="config file (.json or .toml) of TrainConfig fields (default: none, the "
        "TrainConfig defaults; with --resume RUN_DIR, RUN_DIR/config.json)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue the run from its checkpoint.pt; with RUN_DIR and no --config, the "
        "config is read from RUN_DIR/config.json; without RUN_DIR, the run in --out-dir "
        "(or the config's out_dir) (default: start a fresh run)",
    )
    helps, choices = _help(), _choices()
    for name, kind in _SHORTCUTS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=None,
            choices=choices.get(name),
            metavar=name.upper(),
            help=helps[name],
        )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="set model_kwargs['width'], the model's channels or hidden units, >= 1 "
        "(default: the model's own, 64 for the recall networks)",
    )
    p.add_argument(
        "--eval-difficulties",
        type=lambda text: [int(v) for v in text.split(",")],
        default=None,
        metavar="D1,D2,...",
        help="comma-separated difficulties to evaluate at, procedural tasks only "
        "(default: the training difficulty)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model's cell f (default: off)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any TrainConfig field, repeatable, applied after the other flags; "
        "VALUE is parsed as JSON, else taken as a string, e.g. --set lr=3e-4 --set "
        "model_kwargs='{\"width\": 64}'; a DEQ setting by name or as deq.NAME, e.g. "
        "--set deq.max_iter=60 (default: none)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (default: a progress bar on stderr)",
    )
    return p


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that parsed flags describe.

    The base is the ``--config`` file, else ``RUN_DIR/config.json`` when resuming, else the
    ``TrainConfig`` defaults (prefix sums at 16 bits); the other flags are applied on top
    (``--tol``, ``--set tol=...`` and ``--set deq.tol=...`` set ``deq.tol``; ``--set deq=...``
    the whole table).
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
    for name in _SHORTCUTS:  # a DEQ setting (--tol) sets that entry of base["deq"]
        if getattr(args, name) is not None:
            set_key(base, name, getattr(args, name))
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
        set_key(base, key.strip(), _value(text))
    return TrainConfig.from_dict(base)


def main(argv: Sequence[str] | None = None, prog: str = "python -m deqkit.train") -> int:
    """Parse ``argv``, train, print where the run went. Returns the exit status."""
    args = build_parser(prog).parse_args(argv)
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
