"""Wall time of `NuScenesDetectionMetric` against the devkit's `DetectionEval` on the same predictions."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval

from unikd.evaluation.ground_truth import prepare_ground_truth
from unikd.evaluation.metric import NuScenesDetectionMetric
from unikd.evaluation.submission import write_submission
from unikd.evaluation.summary import flatten_summary


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
