"""The data of an experiment as a LightningDataModule: its datasets, samplers, loaders and their workers.

Training batches come in an order fixed by (seed, epoch), sharded over the processes, and a run
resumed part-way into an epoch starts where its checkpoint left off (`EpochShuffleSampler`). Each
training index travels with its epoch (`EpochTaggedSampler`): the loader's workers persist across
epochs, and their copies of the dataset never see a `set_epoch`, so the epoch that seeds a sample's
augmentation comes with the index. Evaluation shards each sample to one process, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Sampler

from unikd.data.collate import collate_batch
from unikd.data.image_aug import ImageAugConfig
from unikd.data.infos import SPLITS_BY_VERSION, prepare_infos
from unikd.data.loader_workers import stop_signal_shield
from unikd.data.map_targets import MAP_GRID
from unikd.data.mmdet3d_infos import info_files
from unikd.data.nuscenes_dataset import NuScenesDetectionDataset
from unikd.data.samplers import EpochShuffleSampler, EpochTaggedSampler, UnpaddedDistributedSampler
from unikd.data.transforms import BEVAugConfig
from unikd.ops.bev_grid import BEVGrid

MAX_DEFAULT_WORKERS = 8  # per process: beyond this the decode rarely gains and host memory grows


def default_num_workers(devices_per_node: int, cores: int | None = None) -> int:
    """Loader workers per process when an experiment leaves `num_workers` unset: the CPU cores this process
    may use shared among the node's devices, at most MAX_DEFAULT_WORKERS, at least 1."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return max(1, min(MAX_DEFAULT_WORKERS, cores // max(devices_per_node, 1)))


@dataclass(frozen=True)
class DataSettings:
    """What an experiment reads and how: the database, the samples' sensors and augmentation, the batches."""

    data_root: str
    version: str
    point_cloud_range: tuple[float, ...]
    batch_size: int
    num_sweeps: int
    seed: int
    image_aug: ImageAugConfig
    bev_aug: BEVAugConfig | None
    train_modalities: tuple[str, ...]  # a distillation's training batches also carry what its teacher reads
    eval_modalities: tuple[str, ...]
    num_workers: int | None = None  # per process; None: default_num_workers
    infos: tuple[str, ...] = ()  # mmdet3d info files read instead of the devkit (`mmdet3d_infos.info_files`)
    infos_box_convention: str | None = None
    map_grid: BEVGrid | None = None  # the grid of the map targets `gt_masks_bev`; None: no map targets


class NuScenesDataModule(pl.LightningDataModule):
    """Datasets of one nuScenes version opened once per (split, training), and their loaders (module doc)."""

    def __init__(self, settings: DataSettings) -> None:
        super().__init__()
        self.settings = settings
        self._datasets: dict[tuple[str, bool], NuScenesDetectionDataset] = {}
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches done) of a resumed run

    @property
    def train_split(self) -> str:
        return SPLITS_BY_VERSION[self.settings.version][0]

    @property
    def val_split(self) -> str:
        return SPLITS_BY_VERSION[self.settings.version][-1]

    def dataset(self, split: str, training: bool) -> NuScenesDetectionDataset:
        """The dataset of `split` (opened and checked at the first call)."""
        key = (split, training)
        if key not in self._datasets:
            s = self.settings
            self._datasets[key] = NuScenesDetectionDataset(
                data_root=s.data_root,
                version=s.version,
                split=split,
                point_cloud_range=s.point_cloud_range,
                num_sweeps=s.num_sweeps,
                use_camera="camera" in (s.train_modalities if training else s.eval_modalities),
                training=training,
                bev_aug=s.bev_aug,
                image_aug=s.image_aug,
                seed=s.seed,
                infos_file=info_files(s.infos, s.version)[split] if s.infos else None,
                infos_box_convention=s.infos_box_convention,
                map_segmentation=s.map_grid is not None,
                map_grid=s.map_grid if s.map_grid is not None else MAP_GRID,
            )
        return self._datasets[key]

    def train_dataset(self) -> NuScenesDetectionDataset:
        return self.dataset(self.train_split, training=True)

    def val_dataset(self) -> NuScenesDetectionDataset:
        return self.dataset(self.val_split, training=False)

    # ----------------------------------------------------------------------------- Lightning's hooks
    def prepare_data(self) -> None:
        """On the first process of each machine, before the others read them: the infos of the splits this
        run reads, built once through the devkit (none to build with --infos or a database's own cache)."""
        if self.settings.infos:
            return
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        splits = (self.train_split, self.val_split) if fitting else (self.val_split,)
        prepare_infos(self.settings.data_root, self.settings.version, splits, self.settings.num_sweeps)

    def setup(self, stage: str) -> None:
        """Open the datasets (their start-up checks) and check that training makes full batches, so that bad
        data fails before any training time is spent."""
        if stage == "fit":
            self.check_full_batches(len(self.train_dataset()))
        self.val_dataset()

    def check_full_batches(self, num_samples: int) -> None:
        """An error when no process gets one full training batch (the incomplete last batch is dropped)."""
        world = self.trainer.world_size
        per_rank = -(-num_samples // world)  # EpochShuffleSampler's shard
        if self.settings.batch_size > per_rank:
            raise ValueError(
                f"batch size {self.settings.batch_size} per device is larger than the {per_rank} samples each of the "
                f"{world} process(es) gets from the {num_samples} samples of split {self.train_split!r}: no full "
                "batch, and the incomplete last batch of an epoch is dropped; pass a smaller -b"
            )

    def resume(self, epoch: int, batches_done: int) -> None:
        """Make the training loader start `epoch` after its first `batches_done` batches (a resumed run)."""
        self._resume_position = (epoch, batches_done)

    def train_dataloader(self) -> DataLoader:
        """Batches in an order fixed by (seed, epoch), sharded over the processes; a resumed run starts where
        the checkpoint left off, so it sees the same batches as an uninterrupted one."""
        dataset = self.train_dataset()
        sampler = EpochShuffleSampler(
            len(dataset), self.settings.seed, self.settings.batch_size, self.trainer.global_rank, self.trainer.world_size
        )
        sampler.set_epoch(self.trainer.current_epoch)  # Lightning sets it again at the start of each epoch
        if self._resume_position is not None:
            sampler.resume(*self._resume_position)
        return self._loader(dataset, EpochTaggedSampler(sampler), training=True)

    def val_dataloader(self) -> DataLoader:
        dataset = self.val_dataset()
        sampler = None
        if self.trainer.world_size > 1:
            sampler = UnpaddedDistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return self._loader(dataset, sampler, training=False)

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def num_workers(self) -> int:
        """Loader workers per process: the experiment's `num_workers`, or `default_num_workers` for this
        machine's devices."""
        if self.settings.num_workers is not None:
            return self.settings.num_workers
        return default_num_workers(self.trainer.num_devices)

    def _loader(self, dataset: NuScenesDetectionDataset, sampler: Sampler | None, training: bool) -> DataLoader:
        workers = self.num_workers()
        return DataLoader(
            dataset,
            batch_size=self.settings.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_batch,
            pin_memory=self.trainer.strategy.root_device.type == "cuda",  # page-locked batches copy to the GPU faster
            drop_last=training,
            persistent_workers=workers > 0,  # no new processes (and dataset copies) at every epoch
            worker_init_fn=stop_signal_shield(),  # a job-wide SIGTERM leaves the workers to the checkpoint
        )
