"""Process-group setup under ``torchrun``, device choice, the few collectives we need, and
the objective wrapped in ``DistributedDataParallel``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ._config import TrainConfig

__all__ = ["Dist", "ddp", "planned_world_size", "setup"]


@dataclass
class Dist:
    """This process's place in the run: rank, world size, device, and who owns the group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool
    _wrapped: list = field(default_factory=list, repr=False)  # the DDP modules of wrap()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for small objects and checkpoints)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """``module`` in ``DistributedDataParallel`` on this process's device; :meth:`close`
        releases the wrapper's reducer before it leaves the group."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(
            module, device_ids=ids, find_unused_parameters=find_unused_parameters
        )
        self._wrapped.append(wrapped)
        return wrapped

    def close(self) -> None:
        """Release the reducers of :meth:`wrap`'s modules, then leave the group if this
        process joined it.

        The order matters. A DDP reducer holds the process group from C++ and is freed with
        the GIL held; were it the group's last holder, the gloo destructor would wait, with
        the GIL, for a worker thread that may still be releasing a finished collective's
        tensors, which takes the GIL: a deadlock (torch issue 56297; it hung one test run
        in four here, the other rank then waiting in the next rendezvous). Released while
        the group is registered, the reducer is never the last holder, and the group goes
        with the registry's reference, whose destructor releases the GIL.
        """
        for module in self._wrapped:
            module.__dict__.pop("reducer", None)
        self._wrapped.clear()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def _object_device(self) -> torch.device | None:
        return self.device if dist.get_backend() == "nccl" else None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def planned_world_size() -> int:
    """The number of processes: the initialised group's, else ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE") or 1


def setup(config: TrainConfig) -> Dist:
    """Join the process group if launched by ``torchrun`` (or one is already initialised).

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE > 1`` the
    group is initialised from the environment (``MASTER_ADDR``/``MASTER_PORT``, which
    ``torchrun`` also sets, single- or multi-node). The backend is ``nccl`` on CUDA and
    ``gloo`` on CPU unless ``config.dist_backend`` says otherwise. On CUDA each process uses
    ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: ``device="cuda"`` without CUDA, ``nccl`` on CPU, or malformed variables.
    """
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if dist.is_available() and dist.is_initialized():
        rank, world, owns = dist.get_rank(), dist.get_world_size(), False
        local = _env_int("LOCAL_RANK") or 0
    else:
        world = _env_int("WORLD_SIZE") or 1
        rank = _env_int("RANK") or 0
        local = _env_int("LOCAL_RANK") or 0
        owns = world > 1
    if use_cuda:
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if owns:
        backend = config.dist_backend
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        if backend == "nccl" and not use_cuda:
            raise ValueError("dist_backend='nccl' needs CUDA; use 'gloo' on CPU")
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=timedelta(minutes=30),
            device_id=device if use_cuda else None,
        )
    return Dist(rank, world, local, device, owns)


def ddp(objective: nn.Module, dist: Dist, x: Tensor, y: Tensor, step: int) -> nn.Module:
    """``objective`` wrapped in ``DistributedDataParallel`` for a data-parallel run.

    ``objective`` is a :class:`~deqkit.train.Objective` (its ``model`` is what trains). DDP
    must look for unused parameters every step when some get no gradient (e.g. a
    recall-free RecallNet's injection, whose DEQ start is detached); it warns when asked to
    and finds none, so it is asked only when a dry run on ``x``/``y`` (a sample or two of
    the step ``step`` batch, on the device) leaves a parameter without gradient. The dry
    run's gradients are cleared and the buffers (batch-norm statistics) restored.
    """
    model = objective.model
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.train()
    objective(x, y, torch.Generator().manual_seed(0), step)[0].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    return dist.wrap(objective, find_unused_parameters=bool(unused))
