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


class EpochPermutation(Sampler[int]):
    """A seeded random permutation of ``range(n)``, a new one per epoch (``set_epoch``)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (through ``batch_sampler.sampler``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class GlobalBatchSampler(Sampler[list[int]]):
    """Batch sampler: this rank's share of each global batch (see the module docstring).

    It yields whole batches, so a resumed ``StatefulDataLoader`` skips the number of
    *batches* already trained on, which is the number of global batches whatever the
    number of processes: a checkpoint written by 1 process resumes correctly on 2.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.sampler = EpochPermutation(n, seed)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.global_batches = n // (batch_size * world_size)

    def __len__(self) -> int:
        return self.global_batches

    def __iter__(self) -> Iterator[list[int]]:
        perm = list(self.sampler)
        gb, b = self.batch_size * self.world_size, self.batch_size
        for k in range(self.global_batches):
            start = k * gb + self.rank * b
            yield perm[start : start + b]


class EvalShardSampler(Sampler[int]):
    """Every ``world_size``-th sample starting at ``rank``: disjoint, complete, unpadded."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))
