"""The registry of benchmark entries: name -> `Entry` (its function, its cases, whether it reads a dataset,
a description), in the order a full run takes them."""

from __future__ import annotations

from unikd.benchmarks.data import (
    THROUGHPUT_MODALITIES,
    bench_data_loading,
    bench_data_throughput,
    bench_image_decode,
    bench_voxelize,
)
from unikd.benchmarks.distill import DISTILL_CASES, bench_distill_step, bench_distill_terms
from unikd.benchmarks.harness import Entry
from unikd.benchmarks.metric import bench_metric
from unikd.benchmarks.models import (
    CHANNELS_LAST_MODALITIES,
    bench_bev_pool,
    bench_camera_forward,
    bench_camera_train_step,
    bench_center_targets,
    bench_channels_last,
    bench_fuser_step,
    bench_head_step,
    bench_lidar_train_step,
)

ENTRIES: dict[str, Entry] = {
    "voxelize": Entry(bench_voxelize, lambda quick: ["nuscenes"], True, "unikd.ops.voxelize.voxelize"),
    "data_loading": Entry(
        bench_data_loading, lambda quick: ["lidar", "lidar+camera"], True, "dataset + DataLoader + collate"
    ),
    "image_decode": Entry(
        bench_image_decode, lambda quick: ["small", "nuscenes"], True, "camera images: full vs reduced JPEG decode"
    ),
    "lidar_train_step": Entry(
        bench_lidar_train_step,
        lambda quick: ["small"] if quick else ["small", "nuscenes"],
        True,
        "BEVFusion LiDAR training step",
    ),
    "bev_pool": Entry(
        bench_bev_pool, lambda quick: ["small", "nuscenes"], True, "unikd.ops.bev_pool.bev_pool"
    ),
    "camera_train_step": Entry(
        bench_camera_train_step, lambda quick: ["small"], True, "BEVFusion camera training step"
    ),
    "camera_forward": Entry(
        bench_camera_forward, lambda quick: ["nuscenes"], True, "camera branch forward: Swin-T vs ResNet-50"
    ),
    "metric": Entry(bench_metric, lambda quick: ["synthetic"], True, "nuScenes metric: ours vs the devkit"),
    "head_step": Entry(bench_head_step, lambda quick: ["nuscenes"], False, "TransFusionHead vs CenterHead"),
    "fuser_step": Entry(
        bench_fuser_step, lambda quick: ["small"] if quick else ["small", "nuscenes"], False, "MGFM vs ConvFuser"
    ),
    "distill_step": Entry(
        bench_distill_step,
        lambda quick: ["camera_from_lidar-small"] if quick else list(DISTILL_CASES),
        True,
        "distillation training step",
    ),
    "distill_terms": Entry(
        bench_distill_terms, lambda quick: ["nuscenes"], False, "UniDistill terms: batched vs per-sample"
    ),
    "center_targets": Entry(
        bench_center_targets, lambda quick: ["batch1", "batch4"], False, "CenterHead targets: batched vs box loop"
    ),
    "data_throughput": Entry(
        bench_data_throughput,
        lambda quick: list(THROUGHPUT_MODALITIES),
        True,
        "one data worker vs the training step, nuScenes size",
    ),
    "channels_last": Entry(
        bench_channels_last,
        lambda quick: ["camera"] if quick else list(CHANNELS_LAST_MODALITIES),
        True,
        "training step: channels-last vs contiguous convolution weights",
    ),
}
