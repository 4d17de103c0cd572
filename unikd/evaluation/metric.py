"""`NuScenesDetectionMetric`: the devkit's detection evaluation as a torchmetrics Metric."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.data_classes import DetectionConfig
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from unikd.evaluation.algorithm import BoxArrays, evaluate_detections
from unikd.evaluation.geometry import quaternions_to_yaw
from unikd.evaluation.ground_truth import GroundTruth
from unikd.evaluation.predictions import as_arrays
from unikd.evaluation.summary import flatten_summary

# Columns of the per-box state rows.
_COLUMNS = ("x", "y", "z", "w", "l", "h", "yaw", "vx", "vy", "score", "label", "attribute")


class NuScenesDetectionMetric(Metric):
    """nuScenes detection metrics (mAP, NDS, TP errors) with the devkit's exact rules.

    `update(predictions)` takes per-sample prediction records in the global frame (see
    `unikd.evaluation.predictions`); boxes are filtered as the devkit filters them (class range,
    bicycle racks) and kept as float64 rows; states are concatenated across processes. Ties between
    equal scores are broken like the devkit reading a submission that lists the samples in update
    order (process by process). A sample given more than once (a distributed sampler's padding)
    counts once, with its first record. Call `update`, not `forward`.

    `compute()` returns the figures of `flatten_summary` as float64 tensors and keeps the
    devkit-style summary in `self.summary` (for `write_metrics_summary` and `print_metrics`).
    With `require_all_samples`, every sample of the split must have been given, as the devkit
    demands; otherwise the ground truth is restricted to the samples given.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        gt: GroundTruth,
        config: DetectionConfig | str = "detection_cvpr_2019",
        require_all_samples: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.gt = gt
        self.config = config_factory(config) if isinstance(config, str) else config
        self.require_all_samples = require_all_samples
        self.summary: dict[str, Any] | None = None
        self._gt_boxes = gt.eval_boxes(self.config)
        self.add_state("boxes", default=[], dist_reduce_fx="cat")
        self.add_state("records", default=[], dist_reduce_fx="cat")
        # States are float64; a process without data then contributes an empty float64 tensor too.
        self.set_dtype(torch.float64)

    def update(self, predictions: Sequence[dict[str, Any]]) -> None:
        """Add per-sample prediction records."""
        if not predictions:
            return
        samples, arrays = [], []
        for record in predictions:
            token = record["sample_token"]
            if token not in self.gt.sample_index:
                raise KeyError(f"sample {token} is not in the {self.gt.eval_set} split of {self.gt.version}")
            samples.append(self.gt.sample_index[token])
            arrays.append(as_arrays(record, self.config.max_boxes_per_sample))
        boxes = {key: np.concatenate([a[key] for a in arrays]) for key in arrays[0]}
        counts = np.array([len(a["label"]) for a in arrays])
        record_index = np.repeat(np.arange(len(arrays)), counts)
        sample = np.repeat(samples, counts)
        keep = self.gt.keep_mask(sample, boxes["translation"], boxes["label"], self.config.class_range)
        rows = np.concatenate(
            [
                boxes["translation"],
                boxes["size"],
                quaternions_to_yaw(boxes["rotation"])[:, None],
                boxes["velocity"],
                boxes["score"][:, None],
                boxes["label"][:, None],
                boxes["attribute"][:, None],
            ],
            axis=1,
        )[keep]
        records = np.stack([samples, np.bincount(record_index[keep], minlength=len(arrays))], axis=1)
        self.boxes.append(torch.from_numpy(rows.reshape(-1)).to(self.device))
        self.records.append(torch.from_numpy(records.astype(np.float64).reshape(-1)).to(self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        """Evaluate everything given so far; returns flat figures (see `flatten_summary`)."""
        start = time.perf_counter()
        if isinstance(self.records, list) and not self.records:
            raise RuntimeError(
                "NuScenesDetectionMetric.compute() called before any prediction record was given"
            )
        records = dim_zero_cat(self.records).cpu().double().numpy().reshape(-1, 2).astype(np.int64)
        rows = dim_zero_cat(self.boxes).cpu().double().numpy().reshape(-1, len(_COLUMNS))
        samples, counts = records[:, 0], records[:, 1]
        first = np.zeros(len(records), dtype=bool)
        first[np.unique(samples, return_index=True)[1]] = True
        keep = np.repeat(first, counts)
        seen = np.unique(samples)
        gt_boxes = self._gt_boxes
        num_samples = len(self.gt.sample_tokens)
        if len(seen) < num_samples:
            if self.require_all_samples:
                raise ValueError(
                    f"predictions cover {len(seen)} of the {num_samples} samples of {self.gt.eval_set}; the devkit "
                    "needs all of them (use require_all_samples=False to evaluate on the samples given)"
                )
            gt_boxes = gt_boxes.select(np.isin(gt_boxes.sample, seen))
        rows = rows[keep]
        pred_boxes = BoxArrays(
            sample=np.repeat(samples, counts)[keep],
            translation=rows[:, 0:3],
            size=rows[:, 3:6],
            yaw=rows[:, 6],
            velocity=rows[:, 7:9],
            label=rows[:, 10].astype(np.int64),
            attribute=rows[:, 11].astype(np.int64),
            score=rows[:, 9],
        )
        summary = evaluate_detections(gt_boxes, pred_boxes, self.config)
        summary["eval_time"] = time.perf_counter() - start
        self.summary = summary
        return {
            key: torch.tensor(value, dtype=torch.float64) for key, value in flatten_summary(summary).items()
        }
