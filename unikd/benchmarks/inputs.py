"""The inputs of the benchmark cases: the synthetic dataset a run builds, the datasets and training
batches read from it, and random boxes of nuScenes-like objects."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unikd.benchmarks.harness import Context

if TYPE_CHECKING:
    from unikd.data.nuscenes_dataset import NuScenesDetectionDataset

# The synthetic dataset built when --data_root is not given: one train scene (the distillation
# experiment reads the train split) and val scenes whose key frames are the metric's 100 samples.
# Two sweeps between key frames, so that key frames from the fourth on have 9 earlier sweeps.
SYNTHETIC = {
    "version": "v1.0-trainval",
    "seed": 0,
    "train_scenes": 1,
    "val_scenes": 10,
    "keyframes_per_scene": 10,
    "sweeps_per_keyframe": 2,
    "objects_per_scene": 30,
}
SYNTHETIC_QUICK = {**SYNTHETIC, "val_scenes": 3, "keyframes_per_scene": 5}

# The nuScenes-size batch of the cases on random inputs: batch 2, 60 boxes per sample.
TERMS_BATCH, TERMS_BOXES = 2, 60
# (length, width) in metres and relative frequency of nuScenes-like objects.
TERMS_OBJECTS = (((4.6, 1.95), 0.45), ((0.73, 0.67), 0.2), ((0.5, 2.5), 0.15), ((0.41, 0.41), 0.1),
                 ((6.9, 2.5), 0.05), ((11.0, 2.9), 0.05))


# ------------------------------------------------------------------------------------ datasets
def resolve_version(data_root: Path, version: str | None) -> str:
    if version is not None:
        return version
    for candidate in ("v1.0-trainval", "v1.0-mini"):
        if (data_root / candidate).is_dir():
            return candidate
    raise FileNotFoundError(f"{data_root} holds neither v1.0-trainval/ nor v1.0-mini/; pass --version")


def build_synthetic(root: Path, quick: bool) -> float:
    from unikd.data.synthetic import generate_synthetic_nuscenes

    settings = SYNTHETIC_QUICK if quick else SYNTHETIC
    start = time.perf_counter()
    generate_synthetic_nuscenes(root, **settings, workers=2)
    return time.perf_counter() - start


def make_dataset(
    ctx: Context,
    split: str,
    point_cloud_range: tuple[float, ...],
    num_sweeps: int,
    use_camera: bool,
    training: bool,
    image_aug: Any = None,
) -> NuScenesDetectionDataset:
    from unikd.data.nuscenes_dataset import NuScenesDetectionDataset
    from unikd.data.transforms import BEVAugConfig

    return NuScenesDetectionDataset(
        data_root=ctx.data_root,
        version=ctx.require_version(),
        split=split,
        point_cloud_range=point_cloud_range,
        num_sweeps=num_sweeps,
        use_camera=use_camera,
        training=training,
        bev_aug=BEVAugConfig() if training else None,
        image_aug=image_aug,
        seed=0,
    )


def most_swept(dataset: NuScenesDetectionDataset, count: int) -> list[int]:
    """Indices of the `count` samples with the most sweeps (ties: the first ones)."""
    order = sorted(range(len(dataset)), key=lambda i: -len(dataset.infos[i]["sweeps"]))
    return order[:count]


def training_batch(
    ctx: Context,
    size: str,
    modalities: tuple[str, ...],
    batch_size: int,
    num_sweeps: int,
) -> dict:
    """A collated training batch (augmentation on) of the eval split's samples with the most sweeps."""
    from unikd.data.collate import collate_batch
    from unikd.models.configs import image_aug_for, model_config

    config = model_config(size, modalities)
    dataset = make_dataset(
        ctx,
        ctx.eval_split,
        config["point_cloud_range"],
        num_sweeps=num_sweeps,
        use_camera="camera" in modalities,
        training=True,
        image_aug=image_aug_for(size),
    )
    return collate_batch([dataset[i] for i in most_swept(dataset, batch_size)])


# ------------------------------------------------------------------------------------ random boxes
def random_boxes(gen: torch.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` boxes [count, 9] of TERMS_OBJECTS' sizes and frequencies over +-50 m, and their kinds [count]."""
    sizes = torch.tensor([dims for dims, _ in TERMS_OBJECTS])
    weights = torch.tensor([weight for _, weight in TERMS_OBJECTS])
    kind = torch.multinomial(weights, count, replacement=True, generator=gen)
    box = torch.zeros(count, 9)
    box[:, :2] = torch.rand(count, 2, generator=gen) * 100 - 50
    box[:, 3:5] = sizes[kind]
    box[:, 5] = 1.7
    box[:, 6] = torch.rand(count, generator=gen) * 2 * math.pi - math.pi
    return box, kind
