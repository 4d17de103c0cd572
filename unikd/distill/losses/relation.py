"""UniDistill relation distillation between the 9 key points of every GT box (high-level BEV): kind "relation".

    R(f)_box = V V^T,  V = the 9 key-point vectors of the box, each L2-normalised ([9, 9] cosines)
    L_rel = sum_boxes mean_{i,j} |R(f_T) - R(f_S)|_ij / N_boxes

N_boxes is the number of boxes in the batch averaged across processes; with no box anywhere the
sum is empty and the loss is 0. Student and teacher channels and resolutions may differ (no adapter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from unikd.distill.losses.feature import box_count, sample_box_keypoints
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.precision import in_float32


def keypoint_relation(points: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity matrices [B, M, 9, 9] of key-point features [B, C, M, 9]."""
    unit = F.normalize(points, dim=1)
    return torch.einsum("bcmk,bcml->bmkl", unit, unit)


@register_term("relation")
class RelationDistillLoss(DistillTerm):
    """UniDistill relation loss (formula in the module doc); the teacher is detached."""

    reads = "dense"

    def __init__(self, grid: BEVGrid) -> None:
        super().__init__()
        self.grid = grid

    @classmethod
    def build(cls, setup: TermSetup) -> RelationDistillLoss:
        return cls(setup.grid)

    @in_float32
    def forward(self, student: torch.Tensor, teacher: torch.Tensor, gt_boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        s, t, valid = sample_box_keypoints(student, teacher, gt_boxes, self.grid)
        per_box = (keypoint_relation(s) - keypoint_relation(t)).abs().mean(dim=(2, 3))  # [B, M]
        return (per_box * valid).sum() / box_count(valid, per_box.dtype).clamp_min(1e-4)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(student, teacher, batch["gt_boxes"])
