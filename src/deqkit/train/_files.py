"""What a run writes: checkpoints (atomically), the config, and the metrics logs."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import save_torch_atomic, write_text_atomic

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "EVAL_COLUMNS",
    "MetricsLog",
    "TRAIN_COLUMNS",
    "get_rng_state",
    "read_checkpoint",
    "save_atomic",
    "set_rng_state",
    "write_text_atomic",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
EVAL_CSV = "eval.csv"
FORMAT = 1

TRAIN_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "penalty",
    "accuracy",
    "iters_mean",
    "iters_max",
    "residual_mean",
    "converged",
    "backward_iters",
    "fallback",
    "grad_norm",
    "lr",
    "time",
)
EVAL_COLUMNS = (
    "step",
    "difficulty",
    "n",
    "loss",
    "accuracy",
    "iters_mean",
    "iters_max",
    "residual_mean",
    "converged",
    "max_iter",
    "tol",
    "time",
)


def save_atomic(obj: Any, path: Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`deqkit._io.save_torch_atomic`)."""
    return save_torch_atomic(obj, path)


def read_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`deqkit.train.train` (``weights_only`` loading).

    Raises:
        ValueError: One line naming ``path`` if the file is truncated, corrupt or not a
            deqkit.train checkpoint (torch's own error is chained as the cause).
        FileNotFoundError, PermissionError: If the file cannot be opened.
    """
    try:
        with warnings.catch_warnings():
            # a foreign pickle warns about its protocol before failing; the error says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # bad bytes raise many types (EOF, Key, Runtime, OS errno 22...)
        first = str(err).strip().split("\n")[0].split(". ")[0][:120]
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise ValueError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt, or not a "
            f"deqkit.train checkpoint ({reason})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a deqkit.train checkpoint (format {FORMAT})")
    return state


def get_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), NumPy and Python random states, in ``weights_only``-safe types."""
    np_state = np.random.get_state()  # noqa: NPY002 (the global state user code draws from)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _to_lists(obj: Any) -> Any:
    return [_to_lists(o) for o in obj] if isinstance(obj, tuple) else obj


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return str(value)


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (all), ``metrics.csv`` (train), ``eval.csv``.

    Only the main process writes (``enabled``); every process keeps ``records``.

    Durability: :meth:`append` writes a line and closes the file (the line is with the
    operating system, so it survives the process being killed) but does not ``fsync``: that
    costs about 1.5 ms per file on ext4, two files per logged step, against steps of a few
    milliseconds. :meth:`sync` makes the files durable and runs at every checkpoint, which
    holds the same records anyway: after a power cut, resuming rewrites the three files from
    the checkpoint's records (:meth:`rewrite`, atomic), dropping the steps after it that the
    run then redoes. So what a crash can cost is only what the resume redoes.
    """

    def __init__(self, folder: Path, records: list[dict[str, Any]], *, enabled: bool):
        self.folder = folder
        self.records = records
        self.enabled = enabled
        self.paths = {
            "jsonl": folder / METRICS_JSONL,
            "train": folder / METRICS_CSV,
            "eval": folder / EVAL_CSV,
        }

    def rewrite(self) -> None:
        """Write all three files afresh from ``records``, atomically (used on resume)."""
        if not self.enabled:
            return
        write_text_atomic(self.paths["jsonl"], "".join(_json_line(r) for r in self.records))
        for kind, columns in (("train", TRAIN_COLUMNS), ("eval", EVAL_COLUMNS)):
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(columns)
            for r in self.records:
                if r["kind"] == kind:
                    writer.writerow([_cell(r.get(c)) for c in columns])
            write_text_atomic(self.paths[kind], buf.getvalue())

    def append(self, record: dict[str, Any]) -> None:
        """Keep ``record`` and append it to ``metrics.jsonl`` and to its CSV (by ``kind``)."""
        self.records.append(record)
        if not self.enabled:
            return
        with open(self.paths["jsonl"], "a", encoding="utf-8") as fh:
            fh.write(_json_line(record))
        columns = TRAIN_COLUMNS if record["kind"] == "train" else EVAL_COLUMNS
        with open(self.paths[record["kind"]], "a", encoding="utf-8", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow([_cell(record.get(c)) for c in columns])

    def sync(self) -> None:
        """``fsync`` the three files, so that every line appended so far survives a power cut."""
        if not self.enabled:
            return
        for path in self.paths.values():
            if path.exists():
                with open(path, "ab") as fh:  # writable: Windows refuses fsync otherwise
                    os.fsync(fh.fileno())


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"
