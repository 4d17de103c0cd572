"""`MapSegmentationMetric`: BEV map segmentation IoU as BEVFusion evaluates it, as a torchmetrics Metric.

A cell is predicted as class k at threshold t when its sigmoid score is >= t, for t in
0.35, 0.40, ..., 0.65. True positives, false positives and false negatives are counted per class and
threshold over every cell of every sample of the split, and

    IoU_k(t) = TP_k(t) / (TP_k(t) + FP_k(t) + FN_k(t) + 1e-7)
    IoU_k    = max_t IoU_k(t)          mIoU = mean_k IoU_k

(BEVFusion's `evaluate_map`: the best threshold is chosen per class, on the split itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

THRESHOLDS = (0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65)
IOU_EPS = 1e-7


def threshold_counts(
    scores: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(TP, FP, FN) per class and threshold [K, T] (int64) of scores and masks [B, K, H, W]."""
    predicted = scores.unsqueeze(-1) >= thresholds  # [B, K, H, W, T]
    truth = masks.bool().unsqueeze(-1)
    dims = (0, 2, 3)
    tp = (predicted & truth).sum(dim=dims)
    positives = predicted.sum(dim=dims)
    truths = truth.sum(dim=dims)
    return tp, positives - tp, truths - tp


def map_summary(
    tp: torch.Tensor,
    fp: torch.Tensor,
    fn: torch.Tensor,
    classes: Sequence[str],
    thresholds: Sequence[float],
    num_samples: int,
) -> dict[str, Any]:
    """The figures of accumulated counts [K, T]: IoU per class and threshold, its max, the mean (module doc)."""
    iou = tp.double() / (tp + fp + fn).double().add(IOU_EPS)
    best = iou.max(dim=1).values
    return {
        "mean_iou": float(best.mean()),
        "class_iou": {name: float(best[k]) for k, name in enumerate(classes)},
        "class_iou_at": {
            name: {f"{t:.2f}": float(iou[k, j]) for j, t in enumerate(thresholds)}
            for k, name in enumerate(classes)
        },
        "thresholds": [float(t) for t in thresholds],
        "num_samples": num_samples,
    }


def flatten_map_summary(summary: dict[str, Any]) -> dict[str, float]:
    """Flat figures of `map_summary`: mIoU, IoU/<class>, IoU@<threshold>/<class>."""
    flat = {"mIoU": summary["mean_iou"]}
    for name, iou in summary["class_iou"].items():
        flat[f"IoU/{name}"] = iou
        for threshold, value in summary["class_iou_at"][name].items():
            flat[f"IoU@{threshold}/{name}"] = value
    return flat


class MapSegmentationMetric(Metric):
    """Per-class IoU at BEVFusion's thresholds (module doc) over every sample given.

    `update(scores, masks)`: sigmoid scores in [0, 1] and binary GT masks, both [B, K, H, W] with K =
    len(classes). The counts are int64 states summed across processes. `compute()` returns the figures of
    `flatten_map_summary` as float64 tensors and keeps the summary in `self.summary`. With
    `expected_samples`, `compute()` checks that exactly that many samples were given (over all processes).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        classes: Sequence[str],
        thresholds: Sequence[float] = THRESHOLDS,
        expected_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.classes = tuple(classes)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.expected_samples = expected_samples
        self.summary: dict[str, Any] | None = None
        shape = (len(self.classes), len(self.thresholds))
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, masks: torch.Tensor) -> None:
        """Add a batch of scores and GT masks [B, K, H, W]."""
        if scores.shape != masks.shape or scores.dim() != 4 or scores.shape[1] != len(self.classes):
            raise ValueError(
                f"scores {tuple(scores.shape)} and masks {tuple(masks.shape)} must both be [B, {len(self.classes)}, H, W] "
                f"(classes {self.classes})"
            )
        if not scores.is_floating_point() or bool(((scores < 0) | (scores > 1)).any()):
            raise ValueError("scores must be probabilities in [0, 1] (the sigmoid of the logits)")
        thresholds = torch.tensor(self.thresholds, device=scores.device, dtype=torch.float32)
        tp, fp, fn = threshold_counts(scores.float(), masks, thresholds)
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.num_samples += scores.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        """The figures of everything given so far (`flatten_map_summary`)."""
        num_samples = int(self.num_samples)
        if num_samples == 0:
            raise RuntimeError("MapSegmentationMetric.compute() called before any sample was given")
        if self.expected_samples is not None and num_samples != self.expected_samples:
            raise ValueError(
                f"map scores cover {num_samples} samples, expected the split's {self.expected_samples}"
            )
        self.summary = map_summary(self.tp, self.fp, self.fn, self.classes, self.thresholds, num_samples)
        return {
            key: torch.tensor(value, dtype=torch.float64)
            for key, value in flatten_map_summary(self.summary).items()
        }
