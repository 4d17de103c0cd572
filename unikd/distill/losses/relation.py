"""UniDistill relation distillation between the 9 key points of every GT box (high-level BEV).

    R(f)_box = V V^T,  V = the 9 key-point vectors of the box, each L2-normalised ([9, 9] cosines)
    L_rel = sum_boxes mean_{i,j} |R(f_T) - R(f_S)|_ij / N_boxes

N_boxes is the number of boxes in the batch averaged across processes; with no box anywhere the
sum is empty and the loss is 0. Student and teacher channels may differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unikd.distill.losses.distributed import average_across_processes
from unikd.distill.losses.feature import sample_box_keypoints
from unikd.ops.bev_grid import BEVGrid


def keypoint_relation(points: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity matrices [M, 9, 9] of key-point features [M, 9, C]."""
    unit = F.normalize(points, dim=-1)
    return unit @ unit.transpose(1, 2)


class RelationDistillLoss(nn.Module):
    """UniDistill relation loss (formula in the module doc); the teacher is detached."""

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, gt_boxes: Sequence[torch.Tensor], grid: BEVGrid
    ) -> torch.Tensor:
        student_points, teacher_points = sample_box_keypoints(student, teacher, gt_boxes, grid)
        total = student.new_zeros(())
        for s, t in zip(student_points, teacher_points, strict=True):
            total = total + (keypoint_relation(s) - keypoint_relation(t)).abs().mean(dim=(1, 2)).sum()
        num_boxes = average_across_processes(student.new_tensor(float(sum(len(b) for b in gt_boxes))))
        return total / num_boxes.clamp_min(1e-4)
