"""Samplers: a reproducible, resumable training order and evaluation shards without duplicates."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler, Sampler


class EpochShuffleSampler(Sampler[int]):
    """Training order: a permutation of the dataset seeded by (seed, epoch), padded to a multiple of the
    number of ranks and sharded like DistributedSampler.

    The order depends only on (seed, epoch, rank, world size), so a run resumed part-way into an
    epoch replays exactly the batches an uninterrupted run would have seen: `resume(epoch, batches)`
    makes the next pass over `epoch` start after its first `batches` batches. `len()` stays the whole
    shard so that the trainer's step counts (and the learning-rate schedule) do not change on resume.
    """

    def __init__(self, num_samples: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of size {world_size}")
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        self._resume = (epoch, batches_done)

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)

    def shard(self, epoch: int) -> list[int]:
        """This rank's indices of `epoch`, in order."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        padded = len(self) * self.world_size
        order += order[: padded - len(order)]
        return order[self.rank : padded : self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self.shard(self.epoch)
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] * self.batch_size :]
            self._resume = None
        return iter(indices)


class EpochTaggedSampler(Sampler[tuple[int, int]]):
    """(index, epoch) pairs in the order of an EpochShuffleSampler, for a dataset that draws each sample's
    augmentation from (seed, epoch, index): a loader's persistent workers hold copies of the dataset made
    at the first epoch, which a later `set_epoch` on the dataset never reaches."""

    def __init__(self, sampler: EpochShuffleSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((index, epoch) for index in self.sampler)


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation shards without the padding duplicates, so every sample is evaluated once."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
