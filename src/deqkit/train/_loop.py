"""The training loop: one entry point, single-process or data-parallel under ``torchrun``."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import __version__
from .._io import write_json_atomic
from . import _dist
from ._config import RESUMABLE_FIELDS, TrainConfig
from ._data import LOSS_STREAM, STEP_STREAM, Data, mix_seed
from ._files import (
    CHECKPOINT,
    CONFIG,
    FORMAT,
    MetricsLog,
    get_rng_state,
    read_checkpoint,
    save_atomic,
    set_rng_state,
)
from ._model import Objective, build, check_amp, evaluate_on, is_equilibrium, model_from_config

__all__ = ["StepEvent", "TrainResult", "load_checkpoint", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        config: The run's configuration.
        out_dir: The run folder.
        checkpoint: Path of the final ``checkpoint.pt``.
        metrics: Path of ``metrics.jsonl`` (``metrics.csv`` and ``eval.csv`` beside it).
        step: Optimiser steps completed.
        train: The last training record (loss, accuracy, iterations, ...), or ``None``.
        eval: The final evaluation records, one per difficulty.
        model: The trained model (unwrapped, on the training device, in eval mode).
    """

    config: TrainConfig
    out_dir: Path
    checkpoint: Path
    metrics: Path
    step: int
    train: dict[str, Any] | None
    eval: list[dict[str, Any]]
    model: nn.Module


@dataclass(frozen=True)
class StepEvent:
    """Passed to ``train(..., callback=...)`` after each step (and its logging, evaluation
    and checkpoint) has finished, on every rank.

    Attributes:
        step: Optimiser steps completed so far (1 after the first step).
        record: The training record written at this step, or ``None`` between ``log_every``.
        model: The model (unwrapped from DDP); gradients of this step are still in ``.grad``.
        optimizer: The optimiser.
        rank: This process's rank (0 without ``torchrun``).
        world_size: Number of processes.
    """

    step: int
    record: dict[str, Any] | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    rank: int
    world_size: int


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[StepEvent], None] | None = None,
) -> TrainResult:
    """Train the model ``config`` describes; the same call serves one process or ``torchrun``.

    Each step draws the global batch of ``config.batch_size`` samples (a pure function of
    ``(seed, step)``), computes the loss (a DEQ solve with the configured gradient, or the
    progressive loss in recurrent mode), steps the optimiser and the schedule, and logs
    loss, accuracy, forward iterations (mean and max), mean residual, converged fraction,
    backward iterations, gradient norm and learning rate to ``metrics.jsonl`` and
    ``metrics.csv``. Evaluations (one record per difficulty, ``"kind": "eval"``) go to the
    same JSON lines and to ``eval.csv``. ``checkpoint.pt`` is replaced atomically every
    ``checkpoint_every`` steps and at the end. Every step reseeds torch, NumPy and Python
    from ``(seed, step, rank)``, so a resumed run continues bit for bit (on a deterministic
    device) as if it had never stopped.

    Under ``torchrun --nproc_per_node=N`` (or with a process group already initialised) the
    objective is wrapped in ``DistributedDataParallel``, each rank computes its contiguous
    ``batch_size / N`` slice of the same global batch, and only rank 0 writes files and
    shows progress.

    Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and raises
    ``KeyboardInterrupt``; a second Ctrl-C interrupts at once (saving only if no parameter
    update was under way).

    Args:
        config: The run's :class:`TrainConfig`.
        resume: Continue the run in ``config.run_dir`` from its ``checkpoint.pt``. Its
            config must equal ``config`` except for the fields in ``RESUMABLE_FIELDS``
            (``steps``, ``epochs``, evaluation, logging and checkpoint intervals, device,
            ...). Metrics logged after that checkpoint are dropped and redone. With the
            same step count the run continues bit for bit. The step count (``steps``, or
            ``epochs`` of a data set) may change only where the learning-rate schedule does
            not depend on it: with ``schedule="constant"`` (extending the run is then well
            defined), or while the checkpoint is within the warm-up (the resumed run is the
            fresh run with the new count). A cosine schedule past its warm-up was planned
            for the old count, so a new count is refused with a ``ValueError``.
        progress: Show a tqdm bar (only on rank 0, and only on a terminal).
        callback: Called with a :class:`StepEvent` after each step; it may raise
            ``KeyboardInterrupt`` to stop the run as Ctrl-C would.

    Returns:
        A :class:`TrainResult`.

    Raises:
        FileExistsError: The run folder exists, is not empty and ``resume`` is false.
        FileNotFoundError: ``resume`` is true and the folder has no checkpoint.
        ValueError: An incompatible checkpoint config (or step count, see ``resume``), an
            unreadable checkpoint, a batch size not divisible by the number of processes, or
            settings the device cannot run.
        KeyboardInterrupt: After saving a checkpoint, on Ctrl-C.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    world = _dist.planned_world_size()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by the {world} processes"
        )
    dist = _dist.setup(config)
    try:
        return _Run(config, dist, resume, progress, callback).run()
    finally:
        dist.close()


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


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _seed_step(seed: int, step: int, rank: int) -> None:
    s = mix_seed(seed, STEP_STREAM, step, rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)  # noqa: NPY002 (the global state user code draws from)
    random.seed(s)


@contextlib.contextmanager
def _stop_requests(announce: bool) -> Iterator[dict[str, bool]]:
    """A flag set by SIGINT / SIGTERM (main thread only); a second SIGINT raises at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True
        if announce:
            print(
                f"\n{signal.Signals(signum).name}: finishing this step, then saving a "
                "checkpoint (Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _lr_lambda(config: TrainConfig, total: int) -> Callable[[int], float]:
    warm = config.warmup_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.schedule == "constant":
            return 1.0
        span = max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))

    return factor


def _optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _schedule_break(saved: TrainConfig, now: TrainConfig, step: int, data: Data) -> str | None:
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


def _check_folder(config: TrainConfig, resume: bool, data: Data) -> tuple[str | None, dict | None]:
    """Rank 0's check of the run folder: ``(error, checkpoint)``."""
    folder = config.run_dir
    ckpt_path = folder / CHECKPOINT
    if not resume:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            return (
                f"FileExistsError:run folder {folder} exists and is not empty; pass "
                "resume=True (--resume) to continue that run, or choose another out_dir",
                None,
            )
        return None, None
    if not ckpt_path.is_file():
        return f"FileNotFoundError:cannot resume: no {CHECKPOINT} in {folder}", None
    try:
        state = read_checkpoint(ckpt_path)
    except ValueError as err:  # reported on every rank, like the other errors here
        return f"ValueError:cannot resume {folder}: {err}", None
    # Through TrainConfig, so fields added since the checkpoint was written take their
    # defaults (which reproduce the old behaviour) instead of blocking the resume.
    saved_config = TrainConfig.from_dict(state["config"])
    saved, now = saved_config.to_dict(), config.to_dict()
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    bad = [k for k in diff if k not in RESUMABLE_FIELDS]
    if bad:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in bad)
        return (
            f"ValueError:cannot resume {folder}: config differs from the checkpoint's in "
            f"{detail} (only {', '.join(sorted(RESUMABLE_FIELDS))} may change)",
            None,
        )
    why = _schedule_break(saved_config, config, state["step"], data)
    if why is not None:
        return f"ValueError:cannot resume {folder}: {why}", None
    return None, state


_ERRORS = {"FileExistsError": FileExistsError, "FileNotFoundError": FileNotFoundError}


class _Run:
    def __init__(self, config, dist, resume, progress, callback):
        self.config: TrainConfig = config
        self.dist: _dist.Dist = dist
        self.resume = resume
        self.progress = progress
        self.callback = callback
        self.folder = config.run_dir

    def run(self) -> TrainResult:
        c, dist = self.config, self.dist
        check_amp(c, dist.device)
        self.data = Data(c)
        self.total = self.data.total_steps()
        self.per_rank = c.batch_size // dist.world_size
        error, state = _check_folder(c, self.resume, self.data) if dist.is_main else (None, None)
        error = dist.broadcast(error)
        if error is not None:
            kind, _, message = error.partition(":")
            raise _ERRORS.get(kind, ValueError)(message)
        state = dist.broadcast(state)

        torch.manual_seed(c.seed)
        model = build(c, self.data).to(dist.device)
        recipe_fields = c.recipe_fields()
        if recipe_fields and not is_equilibrium(model):
            raise ValueError(
                f"{', '.join(recipe_fields)} {'needs' if len(recipe_fields) == 1 else 'need'} "
                "an equilibrium model (a DEQ); "
                f"{c.model_name!r} is not one"
            )
        self.model = model
        self.optimizer = _optimizer(c, list(model.parameters()))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(c, self.total)
        )
        self.step = 0
        self.elapsed = 0.0
        records: list[dict[str, Any]] = []
        if state is not None:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = state["step"]
            self.elapsed = state["elapsed"]
            records = list(state["records"])
            set_rng_state(state["rng"])
        self.log = MetricsLog(self.folder, records, enabled=dist.is_main)
        if dist.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder / CONFIG, c.to_dict())
            self.log.rewrite()
        if c.compile:
            _compile_cell(model)
        objective = Objective(model, c, dist.device)
        if dist.enabled:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.wrapped: nn.Module = DistributedDataParallel(
                objective,
                device_ids=ids,
                find_unused_parameters=bool(self._unused_parameters(objective)),
            )
        else:
            self.wrapped = objective
        self.saved_step = self.step if state is not None else -1
        self._stop = False
        self._loop()
        model.eval()
        last_train = next((r for r in reversed(self.log.records) if r["kind"] == "train"), None)
        final_evals = [
            r for r in self.log.records if r["kind"] == "eval" and r["step"] == self.step
        ]
        dist.barrier()
        return TrainResult(
            c,
            self.folder,
            self.folder / CHECKPOINT,
            self.log.paths["jsonl"],
            self.step,
            last_train,
            final_evals,
            model,
        )

    def _unused_parameters(self, objective: Objective) -> list[str]:
        """Parameters that get no gradient from a two-sample dry run (e.g. a recall-free
        RecallNet's injection, whose DEQ start is detached). DDP must then look for unused
        parameters every step; it warns when asked to and finds none, so it is asked only
        when needed. Buffers (batch-norm statistics) are restored after the dry run."""
        c = self.config
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        x, y = self.data.batch(self.step, 0, min(2, self.per_rank))
        x, y = x.to(self.dist.device, getattr(torch, c.dtype)), y.to(self.dist.device)
        self.model.train()
        objective(x, y, torch.Generator().manual_seed(0), self.step)[0].backward()
        unused = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        self.model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(buffers[k])
        return unused

    def _loop(self) -> None:
        c, dist = self.config, self.dist
        show = self.progress and dist.is_main and _is_tty()
        bar = tqdm(total=self.total, initial=self.step, disable=not show, dynamic_ncols=True)
        start = time.perf_counter() - self.elapsed
        updating = False
        try:
            with _stop_requests(announce=dist.is_main) as flag:
                if self.step >= self.total and not any(
                    r["kind"] == "eval" and r["step"] == self.step for r in self.log.records
                ):
                    self._evaluate(start)
                while self.step < self.total:
                    stats = self._train_step()
                    updating = True
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1
                    updating = False
                    self.elapsed = time.perf_counter() - start
                    record = self._reduce(stats, flag["stop"])
                    bar.update(1)
                    if record is not None:
                        self.log.append(record)
                        bar.set_postfix(_postfix(record), refresh=False)
                    if (c.eval_every and self.step % c.eval_every == 0) or self.step == self.total:
                        self._evaluate(start)
                    if (
                        c.checkpoint_every and self.step % c.checkpoint_every == 0
                    ) or self.step == self.total:
                        self._save()
                    if self.callback is not None:
                        self.callback(
                            StepEvent(
                                self.step,
                                record,
                                self.model,
                                self.optimizer,
                                dist.rank,
                                dist.world_size,
                            )
                        )
                    if self._stop:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            if not updating and self.step != self.saved_step:
                self._save()
            if dist.is_main:
                where = (
                    f"checkpoint {self.folder / CHECKPOINT} holds step {self.saved_step} "
                    "(continue with resume=True / --resume)"
                    if self.saved_step >= 0
                    else "no checkpoint was written"
                )
                print(
                    f"\ninterrupted at step {self.step}/{self.total}; {where}",
                    file=sys.stderr,
                    flush=True,
                )
            raise
        finally:
            bar.close()

    def _train_step(self) -> dict[str, Any]:
        c, dist = self.config, self.dist
        _seed_step(c.seed, self.step, dist.rank)
        lo = dist.rank * self.per_rank
        x, y = self.data.batch(self.step, lo, lo + self.per_rank)
        x = x.to(dist.device, getattr(torch, c.dtype))
        y = y.to(dist.device)
        generator = torch.Generator().manual_seed(mix_seed(c.seed, LOSS_STREAM, self.step))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits, info, penalty = self.wrapped(x, y, generator, self.step)
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            grad_norm = torch.zeros(())
        elif c.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(grads)
        lr = self.scheduler.get_last_lr()[0]
        return {
            "loss": loss.detach(),
            "logits": None if logits is None else logits.detach(),
            "y": y,
            "info": info,
            "penalty": None if penalty is None else penalty.detach(),
            "grad_norm": grad_norm.detach(),
            "lr": lr,
        }

    def _reduce(self, s: dict[str, Any], stop: bool) -> dict[str, Any] | None:
        """All-reduce the step's statistics (and the stop flag); the record on log steps."""
        c, dist = self.config, self.dist
        n = s["y"].shape[0]
        nan = float("nan")
        info = s["info"]
        fwd = info.forward if info is not None else None
        bwd = info.backward if info is not None else None
        fell = getattr(info, "fallback", None)
        correct = self.data.correct(s["logits"], s["y"]).sum() if s["logits"] is not None else nan
        sums = torch.tensor(
            [
                s["loss"].item() * n,
                float(correct),
                n,
                fwd.iterations.sum().item() if fwd is not None else nan,
                fwd.residual.float().sum().item() if fwd is not None else nan,
                fwd.converged.sum().item() if fwd is not None else nan,
                bwd.iterations.float().sum().item() if bwd is not None else nan,
                s["penalty"].item() * n if s["penalty"] is not None else nan,
                fell.float().sum().item() if fell is not None else nan,
            ],
            dtype=torch.float64,
            device=dist.device,
        )
        maxes = torch.tensor(
            [fwd.iterations.max().item() if fwd is not None else nan, float(stop)],
            dtype=torch.float64,
            device=dist.device,
        )
        dist.all_reduce(sums, "sum")
        dist.all_reduce(maxes, "max")
        sums, maxes = sums.tolist(), maxes.tolist()
        self._stop = bool(maxes[1])
        if not (self.step % c.log_every == 0 or self.step == self.total or self._stop):
            return None
        total = sums[2]

        def mean(v: float) -> float | None:
            return None if fwd is None else v / total

        return {
            "kind": "train",
            "step": self.step,
            "epoch": self.data.epoch(self.step - 1),
            "loss": sums[0] / total,
            "penalty": None if s["penalty"] is None else sums[7] / total,
            "accuracy": None if s["logits"] is None else sums[1] / total,
            "iters_mean": mean(sums[3]),
            "iters_max": None if fwd is None else int(maxes[0]),
            "residual_mean": mean(sums[4]),
            "converged": mean(sums[5]),
            "backward_iters": None if bwd is None else sums[6] / total,
            "fallback": None if fell is None else sums[8] / total,
            "grad_norm": s["grad_norm"].item(),
            "lr": s["lr"],
            "time": round(self.elapsed, 3),
        }

    def _evaluate(self, start: float) -> None:
        """Evaluate on rank 0 (the others wait at their next collective)."""
        c = self.config
        if not self.dist.is_main:
            return
        for difficulty in c.eval_levels:
            out = evaluate_on(self.model, c, self.data, difficulty, c.eval_size)
            self.log.append(
                {
                    "kind": "eval",
                    "step": self.step,
                    **out,
                    "time": round(time.perf_counter() - start, 3),
                }
            )

    def _save(self) -> None:
        if self.dist.is_main:
            payload = {
                "format": FORMAT,
                "config": self.config.to_dict(),
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": get_rng_state(),
                "records": list(self.log.records),
                "elapsed": self.elapsed,
                "world_size": self.dist.world_size,
                "versions": {"deqkit": __version__, "torch": str(torch.__version__)},
            }
            save_atomic(payload, self.folder / CHECKPOINT)
        self.saved_step = self.step


def _compile_cell(model: nn.Module) -> None:
    if not is_equilibrium(model):
        raise ValueError("compile=True compiles the cell f of an equilibrium model; this has none")
    model.cell.compile()


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    out = {"loss": f"{record['loss']:.4f}"}
    if record["accuracy"] is not None:
        out["acc"] = f"{record['accuracy']:.3f}"
    if record["iters_mean"] is not None:
        out["it"] = f"{record['iters_mean']:.1f}"
        out["res"] = f"{record['residual_mean']:.2e}"
    return out
