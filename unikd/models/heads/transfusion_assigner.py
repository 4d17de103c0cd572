"""Hungarian assignment of TransFusion queries to ground-truth boxes (mmdet3d's HungarianAssigner3D).

The cost of query i for box j is the sum of three terms (weights: BEVFusion's nuScenes config):

- classification (mmdet FocalLossCost, weight 0.15, alpha 0.25, gamma 2, eps 1e-12), with p the sigmoid
  of query i's logit of box j's class:
  alpha (1 - p)^gamma (-log(p + eps)) - (1 - alpha) p^gamma (-log(1 - p + eps));
- BEV centre distance (BBoxBEVL1Cost, weight 0.25): the L1 distance of the centres, x and y each divided
  by the grid's extent along it;
- overlap (IoU3DCost, weight 0.25): minus the 3D IoU (BboxOverlaps3D in the LiDAR frame: rotated BEV
  overlap times height overlap, over the union of the volumes).

`linear_sum_assignment` (scipy) minimises the summed cost; with at least as many queries as boxes every
box gets one query and the other queries are background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from unikd.ops.bev_grid import BEVGrid
from unikd.ops.rotated_iou import rotated_bev_iou

FOCAL_COST_EPS = 1e-12
MIN_BEV_SIZE = 1e-4  # l and w are clamped to this for the BEV overlap, as mmdet3d does
MIN_UNION = 1e-8


def focal_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Classification cost [P, M] of query logits [P, K] for boxes of class `labels` [M] (module doc)."""
    prob = logits.float().sigmoid()
    positive = alpha * (1 - prob).pow(gamma) * -(prob + FOCAL_COST_EPS).log()
    negative = (1 - alpha) * prob.pow(gamma) * -(1 - prob + FOCAL_COST_EPS).log()
    return (positive - negative)[:, labels]


def bev_l1_cost(pred_xy: torch.Tensor, gt_xy: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """L1 distance [P, M] of BEV centres [P, 2] and [M, 2] (x, y), in units of the grid's extent."""
    extent = pred_xy.new_tensor([grid.x_max - grid.x_min, grid.y_max - grid.y_min])
    return torch.cdist(pred_xy / extent, gt_xy / extent, p=1)


def iou_3d(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """3D IoU [N, M] of boxes [N, >=7] and [M, >=7] (x, y, z centre, l, w, h, yaw).

    Intersection = rotated BEV overlap (l, w clamped to >= 1e-4) times the overlap of the z intervals;
    union = the two volumes minus it, at least 1e-8.
    """
    a, b = boxes_a[:, :7].float().clone(), boxes_b[:, :7].float().clone()
    volume_a, volume_b = a[:, 3:6].prod(dim=1), b[:, 3:6].prod(dim=1)
    a[:, 3:5] = a[:, 3:5].clamp(min=MIN_BEV_SIZE)
    b[:, 3:5] = b[:, 3:5].clamp(min=MIN_BEV_SIZE)
    iou_bev = rotated_bev_iou(a, b)
    area_a, area_b = a[:, 3] * a[:, 4], b[:, 3] * b[:, 4]
    overlap_bev = iou_bev * (area_a[:, None] + area_b[None, :]) / (1 + iou_bev)
    top = torch.minimum((a[:, 2] + a[:, 5] / 2)[:, None], (b[:, 2] + b[:, 5] / 2)[None, :])
    bottom = torch.maximum((a[:, 2] - a[:, 5] / 2)[:, None], (b[:, 2] - b[:, 5] / 2)[None, :])
    overlap = overlap_bev * (top - bottom).clamp(min=0)
    return overlap / (volume_a[:, None] + volume_b[None, :] - overlap).clamp(min=MIN_UNION)


def hungarian_match(cost: torch.Tensor) -> torch.Tensor:
    """The box index [P] (int64, -1: none) each query gets in the minimum-cost matching of cost [P, M]."""
    if not torch.isfinite(cost).all():
        raise ValueError(f"the assignment cost [queries, boxes] {tuple(cost.shape)} has non-finite entries")
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    assigned = torch.full((cost.shape[0],), -1, dtype=torch.long)
    assigned[torch.from_numpy(rows)] = torch.from_numpy(cols)
    return assigned.to(cost.device)


@dataclass(frozen=True)
class HungarianAssigner:
    """The weighted costs of the module doc and their minimum-cost matching."""

    grid: BEVGrid
    cls_weight: float = 0.15
    reg_weight: float = 0.25
    iou_weight: float = 0.25
    alpha: float = 0.25
    gamma: float = 2.0

    def cost(
        self, logits: torch.Tensor, pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
    ) -> torch.Tensor:
        """Cost [P, M] of queries (logits [P, K], decoded boxes [P, >=7]) for boxes [M, >=7] of `gt_labels` [M]."""
        return (
            self.cls_weight * focal_cost(logits, gt_labels, self.alpha, self.gamma)
            + self.reg_weight * bev_l1_cost(pred_boxes[:, :2].float(), gt_boxes[:, :2].float(), self.grid)
            - self.iou_weight * iou_3d(pred_boxes, gt_boxes)
        )

    def assign(
        self, logits: torch.Tensor, pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
    ) -> torch.Tensor:
        """The box index [P] (int64, -1: background) of each query (arguments as `cost`)."""
        if len(gt_boxes) == 0:
            return torch.full((logits.shape[0],), -1, dtype=torch.long, device=logits.device)
        return hungarian_match(self.cost(logits, pred_boxes, gt_boxes, gt_labels))
