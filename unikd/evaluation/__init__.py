"""nuScenes detection evaluation (a torchmetrics metric equal to the devkit's, the devkit backend, submissions)
and BEV map segmentation IoU."""

from unikd.evaluation.ground_truth import GroundTruth, prepare_ground_truth
from unikd.evaluation.map_segmentation import MapSegmentationMetric
from unikd.evaluation.metric import NuScenesDetectionMetric
from unikd.evaluation.predictions import ATTRIBUTE_NAMES, default_attributes, make_prediction
from unikd.evaluation.submission import read_submission, submission_results, write_submission
from unikd.evaluation.summary import flatten_summary, write_metrics_summary
from unikd.evaluation.table import format_map_metrics, format_metrics, print_metrics

__all__ = [
    "ATTRIBUTE_NAMES",
    "GroundTruth",
    "MapSegmentationMetric",
    "NuScenesDetectionMetric",
    "default_attributes",
    "flatten_summary",
    "format_map_metrics",
    "format_metrics",
    "make_prediction",
    "prepare_ground_truth",
    "print_metrics",
    "read_submission",
    "submission_results",
    "write_metrics_summary",
    "write_submission",
]
