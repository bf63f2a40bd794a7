"""The training loop: one entry point, single-process or data-parallel under ``torchrun``.

:func:`train` sets a run up (:class:`_Run`: folder checks, model, optimiser, resumed
state, metrics log, DDP) and runs :meth:`_Run.loop`, the loop itself, which reads top to
bottom: forward and backward, optimiser step, statistics over ranks, log, evaluate,
checkpoint, callback. The pieces live beside it: ``_folder`` (the folder and resume
checks), ``_stats`` (the step's statistics and its record), ``_optim`` (optimiser and
schedule), ``_signals`` (Ctrl-C), ``_checkpoint``, ``_dist`` (processes and DDP).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._io import write_json_atomic
from . import _dist
from ._checkpoint import check_deq_settings, save_checkpoint
from ._config import TrainConfig
from ._data import LOSS_STREAM, STEP_STREAM, Data, mix_seed
from ._evaluate import evaluate_on
from ._files import CHECKPOINT, CONFIG, MetricsLog, set_rng_state
from ._folder import check_folder
from ._model import Objective, build, check_amp, check_recipes, compile_cell
from ._optim import lr_factor, make_optimizer
from ._signals import is_tty, stop_requests
from ._stats import StepOutput, StepTotals, postfix, train_record

__all__ = ["StepEvent", "TrainResult", "train"]


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
        run = _Run(config, dist, resume)
        run.loop(progress, callback)
        return run.result()
    finally:
        dist.close()


def _seed_step(seed: int, step: int, rank: int) -> None:
    """Reseed torch, NumPy and Python from ``(seed, step, rank)``: a step's randomness does
    not depend on what ran before it, so a resumed run draws what the full run drew."""
    s = mix_seed(seed, STEP_STREAM, step, rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)  # noqa: NPY002 (the global state user code draws from)
    random.seed(s)


class _Run:
    """One run on this process: its config, data, model, optimiser, schedule, log and step.

    Built, it is ready to loop: the folder checked (on rank 0, the error sent to all), the
    model built from ``config.seed``, the checkpoint's state loaded when resuming, the
    config and the logs written, the objective wrapped in DDP when data-parallel.
    """

    def __init__(self, config: TrainConfig, dist: _dist.Dist, resume: bool):
        c = self.config = config
        self.dist = dist
        self.folder = c.run_dir
        check_amp(c, dist.device)
        self.data = Data(c)
        self.total = self.data.total_steps()
        self.per_rank = c.batch_size // dist.world_size
        error, state = check_folder(c, resume, self.data) if dist.is_main else (None, None)
        error = dist.broadcast(error)
        if error is not None:
            error.throw()
        state = dist.broadcast(state)

        torch.manual_seed(c.seed)
        self.model = build(c, self.data).to(dist.device)
        check_recipes(c, self.model)
        self.optimizer = make_optimizer(c, list(self.model.parameters()))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(c, self.total))
        self.step, self.elapsed, records = 0, 0.0, []
        if state is not None:
            check_deq_settings(state, self.model, self.folder)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step, self.elapsed = state["step"], state["elapsed"]
            records = list(state["records"])
            set_rng_state(state["rng"])
        self.saved_step = self.step if state is not None else -1
        self.log = MetricsLog(self.folder, records, enabled=dist.is_main)
        if dist.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder / CONFIG, c.to_dict())
            self.log.rewrite()
        if c.compile:
            compile_cell(self.model)
        objective: nn.Module = Objective(self.model, c, dist.device, self.data.num_classes)
        if dist.enabled:
            example = self.batch(self.step, 0, min(2, self.per_rank))
            objective = _dist.ddp(objective, dist, *example, self.step)
        self.objective = objective

    def loop(self, progress: bool, callback: Callable[[StepEvent], None] | None) -> None:
        """Train from ``self.step`` to ``self.total``; on Ctrl-C save (if consistent), raise."""
        c, dist = self.config, self.dist
        show = progress and dist.is_main and is_tty()
        bar = tqdm(total=self.total, initial=self.step, disable=not show, dynamic_ncols=True)
        start = time.perf_counter() - self.elapsed
        updating = False  # inside the optimiser step: the parameters may be half written
        try:
            with stop_requests(announce=dist.is_main) as flag:
                if self.step >= self.total and not self.evaluated():
                    self.evaluate(start)
                while self.step < self.total:
                    out = self.forward_backward()
                    updating = True
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1
                    updating = False
                    self.elapsed = time.perf_counter() - start
                    last = self.step == self.total

                    correct = None if out.logits is None else self.data.correct(out.logits, out.y)
                    totals = StepTotals.of(out, correct, flag["stop"]).reduce(dist)
                    stop = bool(totals.stop)  # any rank asked to stop
                    bar.update(1)
                    record = None
                    if self.step % c.log_every == 0 or last or stop:
                        epoch = self.data.epoch(self.step - 1)
                        record = train_record(
                            out, totals, step=self.step, epoch=epoch, elapsed=self.elapsed
                        )
                        self.log.append(record)
                        bar.set_postfix(postfix(record), refresh=False)

                    if (c.eval_every and self.step % c.eval_every == 0) or last:
                        self.evaluate(start)
                    if (c.checkpoint_every and self.step % c.checkpoint_every == 0) or last:
                        self.save()
                    if callback is not None:
                        callback(
                            StepEvent(
                                self.step,
                                record,
                                self.model,
                                self.optimizer,
                                dist.rank,
                                dist.world_size,
                            )
                        )
                    if stop:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            if not updating and self.step != self.saved_step:
                self.save()
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

    def batch(self, step: int, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Samples ``lo .. hi - 1`` of the global batch of ``step``, on the device (inputs
        in ``config.dtype``)."""
        x, y = self.data.batch(step, lo, hi)
        return x.to(self.dist.device, getattr(torch, self.config.dtype)), y.to(self.dist.device)

    def forward_backward(self) -> StepOutput:
        """This rank's slice of the step's batch through the objective, gradients computed
        (and clipped to ``grad_clip``); the optimiser has not stepped yet."""
        c, dist = self.config, self.dist
        _seed_step(c.seed, self.step, dist.rank)
        lo = dist.rank * self.per_rank
        x, y = self.batch(self.step, lo, lo + self.per_rank)
        generator = torch.Generator().manual_seed(mix_seed(c.seed, LOSS_STREAM, self.step))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits, info, penalty = self.objective(x, y, generator, self.step)
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            grad_norm = torch.zeros(())
        elif c.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(grads)
        return StepOutput(
            loss=loss.detach(),
            logits=None if logits is None else logits.detach(),
            y=y,
            info=info,
            penalty=None if penalty is None else penalty.detach(),
            grad_norm=grad_norm.detach(),
            lr=self.scheduler.get_last_lr()[0],
        )

    def evaluated(self) -> bool:
        """Whether the log holds an evaluation at the current step."""
        return any(r["kind"] == "eval" and r["step"] == self.step for r in self.log.records)

    def evaluate(self, start: float) -> None:
        """Evaluate on rank 0 at every ``eval_levels`` difficulty and log it (the other
        ranks wait at their next collective); ``start`` dates the records' ``time``."""
        if not self.dist.is_main:
            return
        for difficulty in self.config.eval_levels:
            out = evaluate_on(self.model, self.config, self.data, difficulty, self.config.eval_size)
            record = {"kind": "eval", "step": self.step, **out.to_dict()}
            self.log.append({**record, "time": round(time.perf_counter() - start, 3)})

    def save(self) -> None:
        """Write the checkpoint (rank 0, the metrics logs made durable first) and note the
        step it holds (every rank)."""
        if self.dist.is_main:
            self.log.sync()
            save_checkpoint(
                self.folder / CHECKPOINT,
                self.config,
                step=self.step,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                records=self.log.records,
                elapsed=self.elapsed,
                world_size=self.dist.world_size,
            )
        self.saved_step = self.step

    def result(self) -> TrainResult:
        """The :class:`TrainResult` of the run, the model in eval mode (after a barrier)."""
        self.model.eval()
        records = self.log.records
        last_train = next((r for r in reversed(records) if r["kind"] == "train"), None)
        final_evals = [r for r in records if r["kind"] == "eval" and r["step"] == self.step]
        self.dist.barrier()
        return TrainResult(
            self.config,
            self.folder,
            self.folder / CHECKPOINT,
            self.log.paths["jsonl"],
            self.step,
            last_train,
            final_evals,
            self.model,
        )
