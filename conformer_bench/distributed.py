"""Data-parallel helpers for runs started by ``torchrun`` (one process per device, gloo on CPU, NCCL on GPU).

Outside torchrun (no ``WORLD_SIZE`` > 1 in the environment) every helper degrades to the single-process case,
so the same training code runs either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import BenchError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BenchError(
            f"environment variable {name}={value!r} is not an integer; launch with torchrun"
        ) from None


def env_rank() -> int:
    """This process's global rank from the torchrun environment (0 outside torchrun)."""
    return _env_int("RANK", 0)


def is_main_process() -> bool:
    """True on rank 0 or outside torchrun; usable after the process group is gone (for writing output)."""
    return env_rank() == 0


def init_from_env(device: str) -> DistContext:
    """Join the process group described by torchrun's variables; gloo for CPU, NCCL for CUDA.

    Returns a single-process context when ``WORLD_SIZE`` is absent or 1. ``device`` is the resolved device
    (``cpu`` or ``cuda``); under CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = env_rank()
    local_rank = _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise BenchError("this torch build has no torch.distributed; run without torchrun")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise BenchError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                "lower --nproc_per_node"
            )
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        return DistContext(rank, world, local_rank, dist.get_backend(), initialized_here=False)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, backend, initialized_here=True)


def process_device(ctx: DistContext, device: str) -> str:
    """The device this process uses: ``cuda:LOCAL_RANK`` for a distributed CUDA run, else ``device``."""
    if ctx.enabled and device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if this module created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op on one process) and return it."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all ranks evaluate one model."""
    if not ctx.enabled:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def shard_indices(n: int, ctx: DistContext) -> list[int]:
    """This rank's share of ``range(n)`` with no padding: every index is seen by exactly one rank."""
    return list(range(ctx.rank, n, ctx.world_size))


def train_sampler(dataset_len: int, ctx: DistContext, seed: int) -> torch.utils.data.Sampler[int]:
    """Shuffling sampler: a DistributedSampler under torchrun, else a seeded random permutation per epoch.

    Call :func:`set_sampler_epoch` before each epoch; the order depends only on (seed, epoch).
    """
    from torch.utils.data import DistributedSampler

    if ctx.enabled:
        return DistributedSampler(
            range(dataset_len),  # type: ignore[arg-type]
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
    return EpochShuffle(dataset_len, seed)


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A random permutation of ``range(n)`` drawn from a generator seeded with (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        # seed + epoch would give seed 1 at epoch 0 the permutation of seed 0 at epoch 1; combine them instead.
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        return iter(torch.randperm(self.n, generator=gen).tolist())


def set_sampler_epoch(sampler: torch.utils.data.Sampler[int], epoch: int) -> None:
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def wrap_model(model: nn.Module, ctx: DistContext, device: str) -> nn.Module:
    """DistributedDataParallel around ``model`` under torchrun; the model itself otherwise."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.startswith("cuda"):
        return DistributedDataParallel(model, device_ids=[ctx.local_rank], output_device=ctx.local_rank)
    return DistributedDataParallel(model)
