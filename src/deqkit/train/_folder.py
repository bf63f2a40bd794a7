"""The run folder before a run starts: empty for a fresh run, a compatible checkpoint to resume."""

from __future__ import annotations

from typing import NamedTuple, NoReturn

from ._choices import RESUMABLE_FIELDS
from ._config import TrainConfig
from ._data import Data
from ._files import CHECKPOINT, read_checkpoint

__all__ = ["RankError", "check_folder", "schedule_break"]


class RankError(NamedTuple):
    """An error rank 0 found, sent to every rank so that all raise the same one.

    Attributes:
        type: The exception class (``FileExistsError``, ``FileNotFoundError``, ``ValueError``).
        message: Its message.
    """

    type: type[Exception]
    message: str

    def throw(self) -> NoReturn:
        """Raise ``type(message)``."""
        raise self.type(self.message)


def schedule_break(saved: TrainConfig, now: TrainConfig, step: int, data: Data) -> str | None:
    """Why resuming at ``step`` with ``now``'s step count would not continue the run, or None.

    The warm-up and a constant schedule do not depend on the step count; a cosine schedule
    does from the end of the warm-up on. The count may therefore change on resume with
    ``schedule="constant"`` or while the checkpoint is still within the warm-up (the run is
    then the fresh run with the new count, bit for bit); otherwise the learning rate from
    ``step`` on would follow neither the planned schedule nor a fresh run's.
    """
    old, new = data.total_steps(saved), data.total_steps(now)
    if old == new or now.schedule == "constant" or step <= now.warmup_steps:
        return None
    return (
        f"its cosine learning-rate schedule was planned for {old} steps and the checkpoint "
        f"is at step {step}, past the {now.warmup_steps} warm-up steps; with {new} steps "
        f"the learning rate would jump from here on, and the result would be neither this "
        f"run continued nor a {new}-step run. Resume with the checkpoint's {old} steps to "
        f"continue it, start a fresh run with steps={new} in another out_dir, or train with "
        "schedule='constant', where the step count may change on resume"
    )


def check_folder(
    config: TrainConfig, resume: bool, data: Data
) -> tuple[RankError | None, dict | None]:
    """Rank 0's check of the run folder before a run starts: ``(error, checkpoint)``.

    A fresh run needs a missing or empty folder; a resumed one its ``checkpoint.pt``,
    readable, with a config that differs from ``config`` only in ``RESUMABLE_FIELDS`` and a
    step count the schedule allows (:func:`schedule_break`). The error is returned, not
    raised, so that rank 0 can send it to every rank and all of them raise it.

    Returns:
        ``(None, checkpoint dict)`` to resume, ``(None, None)`` for a fresh run, or
        ``(RankError, None)``.
    """
    folder = config.run_dir
    ckpt_path = folder / CHECKPOINT
    if not resume:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            return (
                RankError(
                    FileExistsError,
                    f"run folder {folder} exists and is not empty; pass resume=True "
                    "(--resume) to continue that run, or choose another out_dir",
                ),
                None,
            )
        return None, None
    if not ckpt_path.is_file():
        return RankError(FileNotFoundError, f"cannot resume: no {CHECKPOINT} in {folder}"), None
    try:
        state = read_checkpoint(ckpt_path)
    except ValueError as err:  # reported on every rank, like the other errors here
        return RankError(ValueError, f"cannot resume {folder}: {err}"), None
    # Through TrainConfig, so fields added since the checkpoint was written take their
    # defaults (which reproduce the old behaviour) instead of blocking the resume.
    saved_config = TrainConfig.from_dict(state["config"])
    saved, now = saved_config.to_dict(), config.to_dict()
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    bad = [k for k in diff if k not in RESUMABLE_FIELDS]
    if bad:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in bad)
        return (
            RankError(
                ValueError,
                f"cannot resume {folder}: config differs from the checkpoint's in {detail} "
                f"(only {', '.join(sorted(RESUMABLE_FIELDS))} may change)",
            ),
            None,
        )
    why = schedule_break(saved_config, config, state["step"], data)
    if why is not None:
        return RankError(ValueError, f"cannot resume {folder}: {why}"), None
    return None, state
