"""What an experiment is scored on, one class per task: its metric, its evaluation step, its report (printed,
logged and written to eval/) and its pictures.

An experiment names its task by `task` ("detection", "segmentation" or "depth", the depth pretraining's:
`unikd.exps.depth_task`), which picks the class in `EVALUATION_TASKS`; the experiment (a `BaseExp`) delegates
its validation hooks to it. Each is an `unikd.exps.evaluation_task.EvaluationTask`. The tasks live in exps/
because they draw pictures (`unikd.utils`), a package beside `unikd.evaluation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from unikd.data.map_targets import MAP_CLASSES
from unikd.data.transforms import apply_bda_to_boxes
from unikd.evaluation.ground_truth import prepare_ground_truth
from unikd.evaluation.map_segmentation import MapSegmentationMetric
from unikd.evaluation.metric import NuScenesDetectionMetric
from unikd.evaluation.predictions import make_prediction
from unikd.evaluation.table import format_map_metrics, format_metrics
from unikd.exps.depth_task import DepthTask
from unikd.exps.evaluation_task import EvaluationTask
from unikd.registry import Registry

if TYPE_CHECKING:
    from unikd.exps.base_exp import BaseExp


def prediction_records(detections: list[dict], batch: dict) -> list[dict]:
    """Global-frame prediction records of decoded boxes, undoing the batch's BEV augmentation."""
    records = []
    for i, det in enumerate(detections):
        unaugment = np.linalg.inv(batch["bda"][i].detach().cpu().double().numpy())
        boxes = apply_bda_to_boxes(det["boxes"].detach().cpu().double().numpy(), unaugment)
        token = batch["sample_token"][i]
        records.append(make_prediction(token, boxes, batch["lidar2global"][i], det["labels"], det["scores"]))
    return records


def gathered_records(records: list[dict]) -> list[dict] | None:
    """All processes' `records` on rank 0 (None elsewhere)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return records
    # only rank 0 writes the submission or runs the devkit: gather to it alone, not to every rank
    zero = torch.distributed.get_rank() == 0
    gathered = [None] * torch.distributed.get_world_size() if zero else None
    torch.distributed.gather_object(records, gathered, dst=0)
    return [r for part in gathered for r in part] if zero else None


class DetectionTask(EvaluationTask):
    """3D boxes scored by the nuScenes detection metric (`eval_backend` "metric", the same numbers as the
    devkit, fast) or by the devkit itself ("devkit"); BEV pictures of the first batches."""

    name = "detection"

    def __init__(self, exp: BaseExp) -> None:
        super().__init__(exp)
        self.records: list[dict] = []

    def ground_truth(self):
        """The ground truth of the validation split, prepared once and cached, or an error naming what is
        missing."""
        exp = self.exp
        split = exp.datamodule.val_split
        try:
            return prepare_ground_truth((exp.version, exp.data_root), split)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"the evaluation (--eval_backend {exp.eval_backend}) reads the ground truth of split "
                f"{split!r} from the nuScenes tables, also with --infos: {error}. Without the tables, "
                "train without evaluation (--limit_val_batches 0)"
            ) from error

    def prepare_data(self) -> None:
        self.ground_truth()

    def setup(self) -> None:
        if self.exp.eval_backend == "metric":
            self.metric()
        else:  # the devkit reads the same tables at the end of validation
            self.ground_truth()

    def build_metric(self) -> NuScenesDetectionMetric:
        return NuScenesDetectionMetric(self.ground_truth(), require_all_samples=self.scores_whole_split())

    def on_validation_epoch_start(self) -> None:
        self.records = []
        if self.exp.eval_backend == "metric":
            self.metric().reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        exp = self.exp
        detections = exp.detect(batch)
        records = prediction_records(detections, batch)
        if exp.eval_backend == "metric":
            self.metric().update(records)
        self.records.extend(records)
        if batch_idx < exp.num_visualizations and exp.trainer.is_global_zero:
            self.save_picture(batch, detections, batch_idx)

    def on_validation_epoch_end(self) -> None:
        if self.exp.eval_backend == "metric":
            self.metric().compute()
            summary = self.metric().summary
        else:
            summary = self.devkit_metrics()
        if summary is None:  # devkit backend, not rank 0
            return
        self.report(
            summary,
            {"val/mAP": "mean_ap", "val/NDS": "nd_score"},
            format_metrics(summary),
            "metrics_summary",
            {"backend": self.exp.eval_backend, "split": self.exp.datamodule.val_split},
        )

    def devkit_metrics(self) -> dict | None:
        """The devkit's scores of every process's records, on rank 0 (None elsewhere)."""
        from unikd.evaluation.devkit_eval import evaluate_with_devkit
        from unikd.evaluation.submission import write_submission

        records = gathered_records(self.records)
        if records is None:
            return None
        exp = self.exp
        out_dir = exp.run_dir() / "eval" / f"devkit_epoch{exp.epoch_label}"
        modalities = exp.modalities
        path = write_submission(
            records, out_dir / "submission.json", use_lidar="lidar" in modalities, use_camera="camera" in modalities
        )
        return evaluate_with_devkit((exp.version, exp.data_root), path, exp.datamodule.val_split, out_dir)

    def save_picture(self, batch: dict, detections: list[dict], batch_idx: int) -> None:
        from unikd.utils.visualization import save_bev_prediction

        exp = self.exp
        out = exp.run_dir() / "vis" / f"epoch{exp.epoch_label}_{batch_idx}.png"
        save_bev_prediction(batch, detections, exp.model_config["point_cloud_range"], out)


class SegmentationTask(EvaluationTask):
    """BEV map segmentation scored by the map IoU (`MapSegmentationMetric`); the datasets give the map
    targets on the grid of the segmentation head's logits."""

    name = "segmentation"
    reads_map_masks = True

    def check_settings(self) -> None:
        if self.exp.eval_backend != "metric":
            raise ValueError(
                f"eval_backend {self.exp.eval_backend!r} evaluates detection; segmentation uses 'metric' (map IoU)"
            )

    def build_metric(self) -> MapSegmentationMetric:
        samples = len(self.exp.datamodule.val_dataset()) if self.scores_whole_split() else None
        return MapSegmentationMetric(MAP_CLASSES, expected_samples=samples)

    def segment(self, batch: dict) -> torch.Tensor:
        """Map scores [B, K, H, W]: the sigmoid of the segmentation logits, without `drop_modality_at_eval`'s
        modality."""
        exp = self.exp
        return exp.model(batch, absent_modality=exp.drop_modality_at_eval or None)["seg"].sigmoid()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.metric().update(self.segment(batch), batch["gt_masks_bev"])

    def on_validation_epoch_end(self) -> None:
        self.metric().compute()
        summary = self.metric().summary
        self.report(
            summary, {"val/mIoU": "mean_iou"}, format_map_metrics(summary), "map_segmentation",
            {"split": self.exp.datamodule.val_split},
        )


EVALUATION_TASKS: Registry[type[EvaluationTask]] = Registry("task", "task")
EVALUATION_TASKS.add(DetectionTask.name, DetectionTask)
EVALUATION_TASKS.add(SegmentationTask.name, SegmentationTask)
EVALUATION_TASKS.add(DepthTask.name, DepthTask)
