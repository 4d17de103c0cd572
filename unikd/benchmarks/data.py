"""Benchmark cases of the data path: voxelization against a naive loop, DataLoader workers, full against
reduced JPEG decode, and one data worker against the training step."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from unikd.benchmarks.harness import Context, median, peak_memory, time_interleaved
from unikd.benchmarks.inputs import make_dataset, most_swept
from unikd.benchmarks.models import bench_train_step


# ------------------------------------------------------------------------------------ 1. voxelize
def reference_voxelize(
    points: np.ndarray,
    voxel_size: tuple[float, float, float],
    point_cloud_range: tuple[float, ...],
    max_points: int,
    max_voxels: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Naive voxelization: a Python loop over the points filling a dict voxel -> point indices.

    Same contract as `unikd.ops.voxelize.voxelize` (voxels in order of first point, first
    `max_points` points each), but indices are computed in float64.
    """
    from unikd.ops.voxelize import grid_size

    nx, ny, nz = grid_size(voxel_size, point_cloud_range)
    x0, y0, z0 = point_cloud_range[:3]
    vx, vy, vz = voxel_size
    members: dict[tuple[int, int, int], list[int]] = {}
    for i, (x, y, z) in enumerate(points[:, :3].tolist()):
        ix = math.floor((x - x0) / vx)
        iy = math.floor((y - y0) / vy)
        iz = math.floor((z - z0) / vz)
        if not (0 <= ix < nx and 0 <= iy < ny and 0 <= iz < nz):
            continue
        key = (iz, iy, ix)
        voxel = members.get(key)
        if voxel is None:
            if len(members) >= max_voxels:
                continue
            voxel = members[key] = []
        if len(voxel) < max_points:
            voxel.append(i)
    voxels = np.zeros((len(members), max_points, points.shape[1]), dtype=np.float32)
    counts = np.zeros(len(members), dtype=np.int64)
    for v, indices in enumerate(members.values()):
        voxels[v, : len(indices)] = points[indices]
        counts[v] = len(indices)
    coords = np.array(list(members), dtype=np.int32).reshape(-1, 3)
    return voxels, counts, coords


def sweep_stack(ctx: Context, num_sweeps: int = 10) -> tuple[np.ndarray, int]:
    """The [N, 5] sweep stack (key LiDAR frame, unfiltered) of the sample with the most sweeps, and its sweep count."""
    from unikd.models.configs import NUSCENES_RANGE

    dataset = make_dataset(ctx, ctx.eval_split, NUSCENES_RANGE, num_sweeps, use_camera=False, training=False)
    info = dataset.infos[most_swept(dataset, 1)[0]]
    return dataset.load_sweeps(info), 1 + min(len(info["sweeps"]), num_sweeps - 1)


def bench_voxelize(ctx: Context, case: str) -> dict:
    from unikd.models.configs import model_config
    from unikd.ops.voxelize import voxelize

    config = model_config("nuscenes", ("lidar",))
    lidar = config["lidar"]
    settings = (
        lidar["voxel_size"],
        config["point_cloud_range"],
        lidar["max_points_per_voxel"],
        lidar["max_voxels"],
    )
    stack, sweeps = sweep_stack(ctx)
    points = torch.from_numpy(stack).to(ctx.device)
    rng = np.random.default_rng(0)
    subsample = np.sort(
        rng.choice(len(stack), size=min(len(stack), ctx.repeats(30000, 10000)), replace=False)
    )
    sub_np = np.ascontiguousarray(stack[subsample])
    sub_points = torch.from_numpy(sub_np).to(ctx.device)

    memory = peak_memory(lambda: voxelize(points, *settings), ctx.device)
    times = time_interleaved(
        {
            "ours": lambda: voxelize(points, *settings),
            "ours_subsample": lambda: voxelize(sub_points, *settings),
            "reference_subsample": lambda: reference_voxelize(sub_np, *settings),
        },
        repeats=ctx.repeats(5, 3),
        device=ctx.device,
    )
    ours_s, ours_sub_s, ref_sub_s = (
        median(times[k]) for k in ("ours", "ours_subsample", "reference_subsample")
    )
    scale = len(stack) / len(sub_np)
    ref_scaled_s = ref_sub_s * scale

    voxels, _, coords = voxelize(points, *settings)
    _, _, ref_coords = reference_voxelize(sub_np, *settings)
    _, _, sub_coords = voxelize(sub_points, *settings)
    ours_keys = {tuple(c) for c in sub_coords.cpu().tolist()}
    ref_keys = {tuple(c) for c in ref_coords.tolist()}
    agreement = len(ours_keys & ref_keys) / max(len(ours_keys | ref_keys), 1)
    return {
        "ratio": ref_scaled_s / ours_s,
        "ratio_meaning": "naive reference (scaled to N) / ours: speed-up",
        "figures": {
            "points": len(stack),
            "sweeps": sweeps,
            "voxels": int(voxels.shape[0]),
            "ours_s": ours_s,
            "reference_scaled_s": ref_scaled_s,
            "reference_subsample_points": len(sub_np),
            "reference_subsample_s": ref_sub_s,
            "ours_subsample_s": ours_sub_s,
            "subsample_speedup": ref_sub_s / ours_sub_s,
            "subsample_voxel_agreement": agreement,
            "ours_peak_bytes": memory["peak_bytes"],
            "ours_peak_upper_bound": memory["upper_bound"],
        },
        "notes": [
            "input: the 10-sweep stack of one sample of the dataset (key LiDAR frame); nuScenes settings "
            "(0.075 x 0.075 x 0.2 m voxels, range [-54,-54,-5,54,54,3], 10 points/voxel, 120000 voxels)",
            "reference: per-point Python loop accumulating a dict voxel -> point indices, then a per-voxel "
            f"fill; timed on a random {len(sub_np)}-point subsample (input order kept) and scaled linearly "
            f"by N/n = {scale:.2f} (an estimate: its cost is per point); the subsample ratio is exact",
            "subsample_voxel_agreement: |voxel sets intersect| / |union| of ours and the reference on the "
            "subsample (the reference floors in float64, ours in float32)",
        ],
    }


# ------------------------------------------------------------------------------------ 2. data loading
def bench_data_loading(ctx: Context, case: str) -> dict:
    from torch.utils.data import DataLoader, Subset

    from unikd.data.collate import collate_batch
    from unikd.models.configs import image_aug_for, model_config

    use_camera = case == "lidar+camera"
    config = model_config("nuscenes", ("lidar", "camera"))
    dataset = make_dataset(
        ctx,
        ctx.eval_split,
        config["point_cloud_range"],
        num_sweeps=10,
        use_camera=use_camera,
        training=True,
        image_aug=image_aug_for("nuscenes") if use_camera else None,
    )
    count = min(len(dataset), ctx.repeats(32, 8) if not use_camera else ctx.repeats(24, 8))
    subset = Subset(dataset, most_swept(dataset, count))
    batch_size = 2

    def one_pass(workers: int) -> Callable[[], object]:
        def run() -> int:
            loader = DataLoader(subset, batch_size=batch_size, num_workers=workers, collate_fn=collate_batch)
            return sum(len(batch["sample_token"]) for batch in loader)

        return run

    times = time_interleaved(
        {"workers_0": one_pass(0), "workers_2": one_pass(2)},
        repeats=ctx.repeats(2, 1),
        device=torch.device("cpu"),
    )
    rate0, rate2 = (count / median(times[k]) for k in ("workers_0", "workers_2"))
    sweeps = [1 + min(len(dataset.infos[i]["sweeps"]), 9) for i in subset.indices]
    points = [len(dataset[i]["points"]) for i in subset.indices[:4]]
    return {
        "ratio": rate2 / rate0,
        "ratio_meaning": "samples/s with 2 workers / with 0 workers",
        "figures": {
            "samples": count,
            "batch_size": batch_size,
            "workers_0_samples_per_sec": rate0,
            "workers_2_samples_per_sec": rate2,
            "mean_sweeps": float(np.mean(sweeps)),
            "mean_points_in_range": float(np.mean(points)),
        },
        "notes": [
            "training mode (BEV augmentation on), nuScenes range, num_sweeps 10"
            + (
                ", six 1600x900 JPEGs per sample through the nuScenes image_aug (256x704)"
                if use_camera
                else ""
            ),
            "a pass is a whole DataLoader pass over the samples, worker start included; median of passes after "
            "one warm-up pass of each",
        ],
    }


# ------------------------------------------------------------------------------------ image_decode
def bench_image_decode(ctx: Context, case: str) -> dict:
    """The six camera images of a sample, loaded and augmented at the `case` size's image_aug, decoded in full
    (the reference) or at a reduced DCT scale (`ImageAugConfig.reduced_decode`)."""
    from dataclasses import replace

    from unikd.models.configs import image_aug_for, model_config

    config = model_config(case, ("camera",))
    image_aug = replace(image_aug_for(case), reduced_decode=False)
    datasets = {
        mode: make_dataset(ctx, ctx.eval_split, config["point_cloud_range"], 1, True, True,
                           replace(image_aug, reduced_decode=mode == "reduced"))
        for mode in ("full", "reduced")
    }
    count = min(len(datasets["full"]), ctx.repeats(12, 4))

    def load(mode: str) -> Callable[[], object]:
        dataset = datasets[mode]
        return lambda: [dataset.load_cameras(dataset.infos[i], np.random.default_rng(i)) for i in range(count)]

    times = time_interleaved({mode: load(mode) for mode in datasets}, repeats=ctx.repeats(3, 1), device=torch.device("cpu"))
    full, reduced = (median(times[mode]) / count for mode in ("full", "reduced"))
    return {
        "ratio": full / reduced,
        "ratio_meaning": "full decode / reduced decode, time per sample (six images)",
        "figures": {"samples": count, "full_ms_per_sample": 1e3 * full, "reduced_ms_per_sample": 1e3 * reduced,
                    "final_size": list(image_aug.final_size), "train_resize": list(image_aug.train_resize)},
        "notes": [
            "training-mode augmentation (random resize, crop, flip, rotation) of six 1600x900 JPEGs, normalised to "
            "float tensors; the same random parameters for both modes",
            "interleaved rounds, median after a warm-up, one process, no DataLoader",
        ],
    }


# ------------------------------------------------------------------------------------ 14. data_throughput
THROUGHPUT_MODALITIES = {"lidar": ("lidar",), "camera": ("camera",), "fusion": ("lidar", "camera")}


def bench_data_throughput(ctx: Context, case: str) -> dict:
    """Samples/s of one data worker at the nuScenes size against the samples/s of the model's training step."""
    from unikd.data.collate import collate_batch
    from unikd.models.configs import image_aug_for, model_config

    modalities = THROUGHPUT_MODALITIES[case]
    use_camera = "camera" in modalities
    num_sweeps = 10 if "lidar" in modalities else 1  # a camera model reads the key frame's points only
    config = model_config("nuscenes", modalities)
    dataset = make_dataset(
        ctx,
        ctx.eval_split,
        config["point_cloud_range"],
        num_sweeps=num_sweeps,
        use_camera=use_camera,
        training=True,
        image_aug=image_aug_for("nuscenes") if use_camera else None,
    )
    indices = most_swept(dataset, min(len(dataset), ctx.repeats(16 if not use_camera else 8, 4)))

    def load() -> object:
        return [collate_batch([dataset[i]]) for i in indices]

    data_s = median(time_interleaved({"data": load}, repeats=ctx.repeats(3, 1), device=torch.device("cpu"))["data"])
    data_rate = len(indices) / data_s
    step = bench_train_step(ctx, "nuscenes", modalities, repeats=1)
    step_rate = 1 / step["figures"]["step_s"]
    return {
        "ratio": data_rate / step_rate,
        "ratio_meaning": "samples/s of one data worker / samples/s of the training step (goal: workers x ratio >= 3)",
        "figures": {
            "worker_samples_per_sec": data_rate,
            "step_samples_per_sec": step_rate,
            "step_s": step["figures"]["step_s"],
            "workers_for_3x": math.ceil(3 * step_rate / data_rate),
            "samples": len(indices),
            "image_decode": ("reduced" if image_aug_for("nuscenes").reduced_decode else "full") if use_camera else "-",
        },
        "notes": [
            f"a worker's work in this process: dataset[i] (training mode, BEV augmentation, num_sweeps {num_sweeps}"
            + (", six 1600x900 JPEGs through the nuScenes image_aug (256x704)" if use_camera else "")
            + ") and collate_batch of batch 1; median of passes over the samples with the most sweeps after a warm-up",
            f"step: model_config('nuscenes', {modalities}), batch 1, forward + loss + backward + AdamW on "
            f"{ctx.device}, 1 timed step after the memory runs (warm-ups)",
        ],
    }
