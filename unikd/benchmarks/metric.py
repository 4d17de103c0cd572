"""Benchmark case of the nuScenes metric: unikd's `NuScenesDetectionMetric` against the devkit's
`DetectionEval` on the same jittered predictions (`benchmark_metric` times one call of each)."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unikd.benchmarks.harness import Context, median
from unikd.benchmarks.inputs import SYNTHETIC

# The metric's larger set: val scenes of 40 key frames (as in nuScenes), no sweeps (the metric reads none).
METRIC_KEYFRAMES_PER_SCENE = 40
METRIC_MAX_VAL_SCENES = 150  # nuScenes has 150 val scenes


def benchmark_metric(
    dataroot: str | Path, version: str, eval_set: str, predictions: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Time both backends once on the same prediction records.

    ours_s: load the prepared ground truth from its cache file, `update` with every record, `compute`.
    devkit_s: write the submission JSON, `DetectionEval` (loads predictions and ground truth from the
    NuScenes object, filters both) and its `evaluate`. Building the NuScenes object and preparing the
    ground-truth cache (once per dataset and split) are not timed. Also returns the speed-up and the
    largest difference between the two backends' figures (nan equal to nan).
    """
    # Imported here, as in every case: the devkit and the metric take seconds to import in each case's process.
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    from unikd.evaluation.ground_truth import prepare_ground_truth
    from unikd.evaluation.metric import NuScenesDetectionMetric
    from unikd.evaluation.submission import write_submission
    from unikd.evaluation.summary import flatten_summary

    dataroot = str(dataroot)
    config = config_factory("detection_cvpr_2019")
    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_ground_truth(nusc, eval_set, cache_dir=tmp)
        start = time.perf_counter()
        metric = NuScenesDetectionMetric(
            prepare_ground_truth((version, dataroot), eval_set, cache_dir=tmp), config
        )
        metric.update(predictions)
        ours = {key: value.item() for key, value in metric.compute().items()}
        ours_s = time.perf_counter() - start

        start = time.perf_counter()
        path = write_submission(predictions, Path(tmp) / "submission.json", use_camera=False, use_lidar=True)
        evaluation = DetectionEval(nusc, config, str(path), eval_set, output_dir=tmp, verbose=False)
        metrics, _ = evaluation.evaluate()
        devkit_s = time.perf_counter() - start
    theirs = flatten_summary(metrics.serialize())
    differences = [abs(ours[key] - value) for key, value in theirs.items() if not np.isnan(value)]
    mismatched_nan = sum(np.isnan(ours[key]) != np.isnan(value) for key, value in theirs.items())
    return {
        "ours_s": ours_s,
        "devkit_s": devkit_s,
        "speedup": devkit_s / ours_s,
        "max_abs_diff": float("inf") if mismatched_nan else max(differences, default=0.0),
    }


def jittered_predictions(nusc: Any, eval_set: str, seed: int) -> tuple[list[dict], int]:
    """Prediction records made from the devkit's ground truth: 85% of the boxes jittered, plus up
    to 10 false positives per sample (copies of its boxes moved ~10 m), random scores. Returns the
    records and the number of ground-truth boxes."""
    from nuscenes.eval.common.loaders import load_gt
    from nuscenes.eval.detection.data_classes import DetectionBox

    from unikd.data.classes import CLASSES

    gt = load_gt(nusc, eval_set, DetectionBox, verbose=False)
    rng = np.random.default_rng(seed)
    records = []
    gt_boxes = 0
    for token in gt.sample_tokens:
        boxes = gt[token]
        gt_boxes += len(boxes)
        translation = np.array([b.translation for b in boxes], dtype=np.float64).reshape(-1, 3)
        size = np.array([b.size for b in boxes], dtype=np.float64).reshape(-1, 3)
        rotation = np.array([b.rotation for b in boxes], dtype=np.float64).reshape(-1, 4)
        velocity = np.nan_to_num(np.array([b.velocity for b in boxes], dtype=np.float64).reshape(-1, 2))
        label = np.array([CLASSES.index(b.detection_name) for b in boxes], dtype=np.int64)
        keep = rng.random(len(boxes)) < 0.85
        false = rng.integers(len(boxes), size=min(10, len(boxes)))
        index = np.concatenate([np.nonzero(keep)[0], false])
        n = len(index)
        translation = translation[index] + rng.normal(0, 0.3, (n, 3))
        translation[len(index) - len(false) :, :2] += rng.normal(0, 10.0, (len(false), 2))
        half_yaw = rng.normal(0, 0.2, n) / 2
        c, s = np.cos(half_yaw), np.sin(half_yaw)
        w, x, y, z = rotation[index].T
        rotation_out = np.stack([c * w - s * z, c * x - s * y, c * y + s * x, c * z + s * w], axis=1)
        records.append(
            {
                "sample_token": token,
                "translation": translation,
                "size": size[index] * np.exp(rng.normal(0, 0.1, (n, 3))),
                "rotation": rotation_out,
                "velocity": velocity[index] + rng.normal(0, 0.5, (n, 2)),
                "label": label[index],
                "score": rng.uniform(0.05, 1.0, n),
            }
        )
    return records, gt_boxes


def metric_set(root: Path, version: str, eval_set: str, seed: int) -> dict:
    from nuscenes import NuScenes

    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    records, gt_boxes = jittered_predictions(nusc, eval_set, seed)
    return {
        "root": root,
        "version": version,
        "eval_set": eval_set,
        "records": records,
        "samples": len(records),
        "gt_boxes": gt_boxes,
        "predicted_boxes": sum(len(r["score"]) for r in records),
    }


def run_metric(data: dict, repeats: int) -> dict:
    runs = [
        benchmark_metric(data["root"], data["version"], data["eval_set"], data["records"])
        for _ in range(repeats)
    ]
    return {
        "samples": data["samples"],
        "gt_boxes_per_sample": data["gt_boxes"] / data["samples"],
        "predicted_boxes_per_sample": data["predicted_boxes"] / data["samples"],
        "ours_s": median([r["ours_s"] for r in runs]),
        "devkit_s": median([r["devkit_s"] for r in runs]),
        "max_abs_diff": max(r["max_abs_diff"] for r in runs),
    }


def bench_metric(ctx: Context, case: str) -> dict:
    from unikd.data.synthetic import generate_synthetic_nuscenes

    base = metric_set(ctx.data_root, ctx.require_version(), ctx.eval_split, seed=0)
    run_metric(base, repeats=1)  # warm-up
    small = run_metric(base, repeats=ctx.repeats(2, 1))
    figures: dict[str, Any] = {
        f"{key}@{small['samples']}": value for key, value in small.items() if key != "samples"
    }
    notes = [
        "unikd.benchmarks.metric.benchmark_metric: ours = load the prepared ground truth + update + "
        "compute; devkit = write the submission JSON + DetectionEval + evaluate; NuScenes object and "
        "ground-truth preparation untimed",
        "predictions: the devkit's ground truth, 85% of boxes kept and jittered (0.3 m, 10% size, 0.2 rad, "
        "0.5 m/s), up to 10 false positives per sample, random scores",
        f"{small['samples']}-sample set: one warm-up call, then the median of {ctx.repeats(2, 1)}",
    ]
    result: dict[str, Any] = {
        "ratio": small["devkit_s"] / small["ours_s"],
        "ratio_meaning": f"devkit DetectionEval / ours at {small['samples']} samples: speed-up",
        "figures": figures,
        "notes": notes,
    }
    if not ctx.synthetic or ctx.quick:
        notes.append("larger set: not built (" + ("--quick" if ctx.quick else "--data_root given") + ")")
        return result

    scenes = min(METRIC_MAX_VAL_SCENES, math.ceil(ctx.metric_samples / METRIC_KEYFRAMES_PER_SCENE))
    with tempfile.TemporaryDirectory(prefix="unikd-bench-metric-") as tmp:
        root = Path(tmp) / "nuscenes"
        start = time.perf_counter()
        generate_synthetic_nuscenes(
            root,
            "v1.0-trainval",
            seed=1,
            train_scenes=0,
            val_scenes=scenes,
            keyframes_per_scene=METRIC_KEYFRAMES_PER_SCENE,
            sweeps_per_keyframe=0,
            objects_per_scene=SYNTHETIC["objects_per_scene"],
            workers=2,
        )
        build_s = time.perf_counter() - start
        large = run_metric(metric_set(root, "v1.0-trainval", "val", seed=1), repeats=1)
    n = large["samples"]
    figures.update({f"{key}@{n}": value for key, value in large.items() if key != "samples"})
    figures[f"build_s@{n}"] = build_s
    figures[f"ratio@{n}"] = large["devkit_s"] / large["ours_s"]
    figures["ours_time_growth"] = large["ours_s"] / small["ours_s"]
    figures["devkit_time_growth"] = large["devkit_s"] / small["devkit_s"]
    figures["sample_growth"] = n / small["samples"]
    notes.append(
        f"{n}-sample set: synthetic v1.0-trainval, {scenes} val scenes x {METRIC_KEYFRAMES_PER_SCENE} key "
        f"frames, built in a temporary folder ({build_s:.0f} s, untimed otherwise), one call; 5,000+ "
        "samples take too long to build for a default run (--metric_samples N builds more)"
    )
    return result
