"""The distributed world of a training run: this process's place in a torch.distributed job.

World size 1 is a plain single process, and every collective here is then a no-op, so the step
loop reads the same with one process or many. :func:`joined_world` joins the job torchrun
launched (env ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``), NCCL on CUDA and gloo on CPU, and leaves
it again when this call initialised it.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .config import TrainConfig


@dataclass(frozen=True)
class World:
    """This process's place in a torch.distributed job (size 1: a plain single process)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    owned: bool = False  # this call initialised the process group (and tears it down)

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, checkpoints, evaluates and exports."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes in place; returns it."""
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def device(self, config: TrainConfig) -> torch.device:
        """The device this process trains on: the config's, on this process's GPU in a multi-GPU job."""
        device = config.torch_device()
        if device.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the step loop calls: ``model`` itself, or DistributedDataParallel over it."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def no_sync(self, runner: nn.Module, last_micro_batch: bool) -> Any:
        """Gradient averaging only on the last micro-batch of a step (DDP's ``no_sync`` before it)."""
        if self.size > 1 and not last_micro_batch:
            return runner.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()


def join_world(config: TrainConfig) -> World:
    """Join the job torchrun launched, if any. A process group the caller initialised is used as is."""
    import torch.distributed as dist

    if config.distributed == "off":
        return World()
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = config.torch_device().type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    # Other ranks wait at a barrier while rank 0 evaluates: allow long evaluations.
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return World(dist.get_world_size(), dist.get_rank(), local_rank, owned=True)


@contextlib.contextmanager
def joined_world(config: TrainConfig) -> Iterator[World]:
    """:func:`join_world`, and leave the process group afterwards when this call created it."""
    world = join_world(config)
    try:
        yield world
    finally:
        if world.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def micro_batch_size(config: TrainConfig, world: World) -> int:
    """Samples per micro-batch and process; refuses a global batch that does not split evenly."""
    per_process = world.size * config.grad_accum_steps
    if config.batch_size % per_process:
        raise ValueError(f"invalid batch_size={config.batch_size}: a multiple of processes x grad_accum_steps "
                         f"= {world.size} x {config.grad_accum_steps}")
    return config.batch_size // per_process
