"""Data-parallel training under ``torchrun``: process group, sharding, rank-0 duties.

``torchrun --nproc_per_node N -m handfuse train ...`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set.  :func:`setup` joins them into one
process group (``nccl`` on CUDA, ``gloo`` on CPU), and ``handfuse.train.fit``
then:

* wraps the model in ``DistributedDataParallel`` (gradients averaged across ranks);
* gives each rank its shard of every epoch with ``DistributedSampler``: the ranks'
  batches at one step together make up the one-process batch of the same global
  ``batch_size`` (rank r takes positions r, r + N, ... of the shuffled order), so
  N processes train like one with the same global batch;
* logs, shows progress and writes checkpoints on rank 0 only; every rank
  evaluates the whole validation split, so early stopping agrees without talk.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing here does anything.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


def setup(device: str = "cpu") -> tuple[int, int]:
    """Join the torchrun process group if there is one; returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def shard_order(n: int, seed: int, epoch: int) -> list[int]:
    """This process's share of epoch ``epoch``'s shuffled order of ``n`` items (``DistributedSampler``:
    the whole permutation in one process, positions rank, rank + N, ... of it under N processes)."""
    rank, world = rank_world()
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


def local_batch_size(global_batch: int) -> int:
    """The per-process batch of a global ``batch_size``, which must divide evenly."""
    _, world = rank_world()
    if global_batch % world:
        from .errors import ConfigError

        raise ConfigError("train.batch_size", global_batch, f"a multiple of the {world} processes (a global batch)")
    return global_batch // world


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, salt: int = 0, drop_last: bool = False
                  ) -> list[list[int]]:
    """This process's batches of one epoch over ``n`` items: its :func:`shard_order` cut into
    ``batch_size / world`` pieces.  ``drop_last`` drops a short last batch unless it is the only one.
    ``salt`` separates the orders of tasks that share a seed."""
    import numpy as np

    base = int(np.random.SeedSequence([seed, salt]).generate_state(1)[0])
    order = shard_order(n, base, epoch)
    b = local_batch_size(batch_size)
    chunks = [order[i:i + b] for i in range(0, len(order), b)]
    if drop_last and len(chunks) > 1 and len(chunks[-1]) < b:
        chunks.pop()
    return chunks
