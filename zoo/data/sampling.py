"""Samplers that split a map-style dataset between processes without changing the math.

Lightning's default ``DistributedSampler`` shuffles per rank and pads evaluation splits with
repeated samples; both make a multi-process run differ from a single-process one. These
samplers instead:

* :class:`GlobalBatchSampler` (training): draw ONE seeded permutation per epoch, cut it into
  global batches of ``world_size × batch_size`` samples, and give rank ``r`` the ``r``-th
  slice of each. A run on ``W`` processes with batch ``b`` then sees exactly the samples a
  single process with batch ``W·b`` sees, step for step (and the ranks see disjoint samples
  whose union is the whole epoch, minus the last incomplete global batch).
* :class:`EvalShardSampler` (evaluation): rank ``r`` takes samples ``r, r + W, r + 2W, ...``
  with no padding, so metrics summed over ranks cover every sample exactly once and the
  reported bits per byte equal the single-process value.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class GlobalBatchSampler(Sampler[int]):
    """This rank's share of seeded global batches (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.global_batches = n // (batch_size * world_size)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch: a new permutation per epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.global_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        gb, b = self.batch_size * self.world_size, self.batch_size
        for k in range(self.global_batches):
            start = k * gb + self.rank * b
            yield from perm[start : start + b].tolist()


class EvalShardSampler(Sampler[int]):
    """Every ``world_size``-th sample starting at ``rank``: disjoint, complete, unpadded."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))
