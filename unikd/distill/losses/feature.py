"""UniDistill feature distillation at the 9 key points of every GT box (low-level BEV).

    L_feat = sum_boxes mean_{k,c} |f_T(p_k) - f_S(p_k)|_c / (N_boxes + 1e-4)

p_k are the 9 BEV key points of a box (`box_keypoints_bev`), sampled bilinearly; N_boxes is
the number of boxes in the batch, averaged across processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unikd.distill.keypoints import box_keypoints_bev, sample_bev
from unikd.distill.losses.distributed import average_across_processes
from unikd.ops.bev_grid import BEVGrid


def sample_box_keypoints(
    student: torch.Tensor, teacher: torch.Tensor, gt_boxes: Sequence[torch.Tensor], grid: BEVGrid
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sample, the student [M, 9, C_S] and (detached) teacher [M, 9, C_T] features at the key points."""
    if student.shape[0] != teacher.shape[0] or student.shape[0] != len(gt_boxes):
        raise ValueError(
            f"batch sizes differ: student {student.shape[0]}, teacher {teacher.shape[0]}, gt_boxes {len(gt_boxes)}"
        )
    student_points, teacher_points = [], []
    for b, boxes in enumerate(gt_boxes):
        keypoints = box_keypoints_bev(boxes.to(student))
        student_points.append(sample_bev(student[b], keypoints, grid))
        teacher_points.append(sample_bev(teacher[b].detach(), keypoints, grid))
    return student_points, teacher_points


class FeatureDistillLoss(nn.Module):
    """UniDistill feature loss (formula in the module doc).

    student [B, C, H_S, W_S] and teacher [B, C, H_T, W_T] must have equal channels (adapt
    first); resolutions may differ, both cover `grid`'s metric region. The teacher is detached.
    """

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, gt_boxes: Sequence[torch.Tensor], grid: BEVGrid
    ) -> torch.Tensor:
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(
                f"channels differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}; adapt first"
            )
        student_points, teacher_points = sample_box_keypoints(student, teacher, gt_boxes, grid)
        total = student.new_zeros(())
        for s, t in zip(student_points, teacher_points, strict=True):
            total = total + (s - t).abs().mean(dim=(1, 2)).sum()
        num_boxes = average_across_processes(student.new_tensor(float(sum(len(b) for b in gt_boxes))))
        return total / (num_boxes + 1e-4)
