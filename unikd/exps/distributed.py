"""What differs between the processes of a DDP run: model-side random draws, and which buffers DDP syncs.

Randomness. Every process builds the model after `seed_everything(--seed)`, so all start from the same
weights and buffers. The data do not depend on the process: the training order is seeded by (seed, epoch)
(`EpochShuffleSampler`) and each sample's augmentation by (seed, epoch, index) (the dataset). What the model
draws while training (MGFM modality dropout, CRD negatives, InfoNCE background cells, drop-path, dropout)
comes from the global generators, which `RankSeeding` reseeds at every training epoch from (seed, rank,
epoch): the processes draw differently from each other, and a run repeats its draws (and a run resumed at an
epoch boundary draws what an uninterrupted one would).

Buffers. DDP broadcasts rank 0's buffers before every forward by default. BatchNorm's running statistics
differ between processes unless SyncBatchNorm computes them from the global batch: without it the
broadcast stays, so that every process evaluates with rank 0's statistics, the ones its checkpoint holds.
With SyncBatchNorm every buffer is identical by construction and the broadcast is skipped: the CRD and
InfoNCE memory banks (CRD's is 28.8 MB at 28k samples) start equal (the same seeded build, or one
checkpoint) and every process updates them with the same all-gathered indices and embeddings; CRD's
normalisation constants are set from an all-reduced mean; the other buffers are constants.
"""

from __future__ import annotations

import inspect
import random

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """A 32-bit seed for process `rank` in training epoch `epoch` of a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def seed_process(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class RankSeeding(pl.Callback):
    """Reseed the global generators from (seed, global rank, epoch) as each training epoch starts."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_process(rank_seed(self.seed, trainer.global_rank, trainer.current_epoch))


def ddp_strategy(world_size: int, sync_batchnorm: bool) -> str | DDPStrategy:
    """The Trainer's strategy: "auto" for one process; DDP otherwise, without the per-step buffer broadcast
    when SyncBatchNorm makes every buffer identical by construction (module doc)."""
    if world_size == 1:
        return "auto"
    if not sync_batchnorm:
        return DDPStrategy()
    ddp_arguments = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    if "forward_sync_buffers" in ddp_arguments:  # torch >= 2.13: buffers are still synced once, at wrapping
        return DDPStrategy(forward_sync_buffers=False)
    return DDPStrategy(broadcast_buffers=False)
