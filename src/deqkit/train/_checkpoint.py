"""Checkpoints: what one holds, and the model rebuilt from one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ._config import TrainConfig
from ._files import CHECKPOINT, FORMAT, get_rng_state, read_checkpoint, save_atomic
from ._model import is_equilibrium, model_from_config

__all__ = ["check_deq_settings", "deq_settings_text", "load_checkpoint", "save_checkpoint"]


def deq_settings_text(model: nn.Module) -> str | None:
    """``repr(model.deq.settings)`` of an equilibrium model (solver, tolerance, budget,
    gradient and every other setting not at its default); ``None`` for an explicit one, or
    where the text names an object by its address (a solver or gradient of the user's own
    without a ``repr``), which differs between processes."""
    if not is_equilibrium(model):
        return None
    text = repr(model.deq.settings)
    return None if re.search(r" at 0x[0-9a-fA-F]+", text) else text


def check_deq_settings(state: dict[str, Any], model: nn.Module, path: Path) -> None:
    """Refuse to continue a run whose model now gets other DEQ settings than it trained with.

    The config holds only the settings a user gave; the others are the model's defaults,
    which a newer deqkit may have changed (``DEQConv``'s gradient did). A checkpoint records
    the settings its model ran with (``deq_settings``); one written before that record
    existed is not checked.

    Raises:
        ValueError: the recorded settings differ from ``model``'s, both named.
    """
    saved = state.get("deq_settings")
    now = deq_settings_text(model)
    if saved is not None and saved != now:
        raise ValueError(
            f"cannot resume {path}: its model trained with {saved}, but this deqkit builds "
            f"{now} from the same config (a default changed); continuing would change the "
            "run. Start a fresh run, or use the deqkit version that wrote the checkpoint"
        )


def save_checkpoint(
    path: Path,
    config: TrainConfig,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    records: list[dict[str, Any]],
    elapsed: float,
    world_size: int,
) -> Path:
    """Write everything a run needs to continue bit for bit to ``path``, atomically.

    The checkpoint dict holds ``format``, ``config`` (as a dict), ``step``, the ``model``,
    ``optimizer`` and ``scheduler`` states, ``rng`` (torch, CUDA, NumPy and Python random
    states, taken now), every metrics ``records`` so far, ``elapsed`` seconds, the
    ``world_size``, the deqkit and torch ``versions``, and ``deq_settings``, the
    :func:`deq_settings_text` of the model (checked on resume by :func:`check_deq_settings`).
    """
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": get_rng_state(),
        "records": list(records),
        "elapsed": elapsed,
        "world_size": world_size,
        "versions": {"deqkit": __version__, "torch": str(torch.__version__)},
        "deq_settings": deq_settings_text(model),
    }
    return save_atomic(payload, path)


def load_checkpoint(
    path: str | Path, *, map_location: Any = "cpu"
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint, for evaluation or a sweep.

    Args:
        path: ``checkpoint.pt`` or the run folder holding it.
        map_location: Where to load tensors. Default ``"cpu"``.

    Returns:
        ``(model, config, state)``: the model with the saved weights in eval mode, its
        :class:`TrainConfig`, and the checkpoint dict (``step``, ``optimizer``,
        ``scheduler``, ``rng``, ``records``, ``world_size``, ``versions``, ...).

    Raises:
        FileNotFoundError: If there is no checkpoint at ``path``.
        ValueError: If the file is truncated, corrupt or not a deqkit.train checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_checkpoint(path, map_location)
    config = TrainConfig.from_dict(state["config"])
    torch.manual_seed(config.seed)
    model = model_from_config(config)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, state
