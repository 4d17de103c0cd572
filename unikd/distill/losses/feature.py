"""UniDistill feature distillation at the 9 key points of every GT box (low-level BEV): kind "feature".

    L_feat = sum_boxes mean_{k,c} |f_T(p_k) - A(f_S)(p_k)|_c / (N_boxes + 1e-4)

p_k are the 9 BEV key points of a box (`box_keypoints_bev`), sampled bilinearly at their metric
positions (x along columns, y along rows); A is a 1x1 conv + BN adapter when the channels differ
(identity otherwise); N_boxes is the number of boxes in the batch, averaged across processes.
Resolutions may differ: both maps cover the same metric region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unikd.distill.adapters import build_adapter
from unikd.distill.keypoints import box_keypoints_bev, sample_bev
from unikd.distill.losses.distributed import average_across_processes
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.boxes import pad_boxes
from unikd.ops.precision import in_float32


def sample_box_keypoints(
    student: torch.Tensor, teacher: torch.Tensor, gt_boxes: Sequence[torch.Tensor], grid: BEVGrid
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both maps sampled at every box's key points in one call each: student [B, C_S, M, 9], the
    (detached) teacher [B, C_T, M, 9], and `valid` [B, M] (which of the M padded slots hold a box)."""
    if student.shape[0] != teacher.shape[0] or student.shape[0] != len(gt_boxes):
        raise ValueError(
            f"batch sizes differ: student {student.shape[0]}, teacher {teacher.shape[0]}, gt_boxes {len(gt_boxes)}"
        )
    boxes, valid = pad_boxes(gt_boxes, student.device, student.dtype)
    keypoints = box_keypoints_bev(boxes)  # [B, M, 9, 2]
    return sample_bev(student, keypoints, grid), sample_bev(teacher.detach(), keypoints, grid), valid


def box_count(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The number of boxes in the batch, averaged across processes (a `dtype` tensor, no host read)."""
    return average_across_processes(valid.sum().to(dtype))


@register_term("feature")
class FeatureDistillLoss(DistillTerm):
    """UniDistill feature loss (formula in the module doc) on a dense BEV output; the teacher is detached."""

    reads = "dense"

    def __init__(self, grid: BEVGrid, adapter: nn.Module | None = None) -> None:
        super().__init__()
        self.grid = grid
        self.adapter = adapter or nn.Identity()

    @classmethod
    def build(cls, setup: TermSetup) -> FeatureDistillLoss:
        student_shape = setup.student_shape  # the adapter keeps the student's resolution
        return cls(setup.grid, build_adapter(student_shape, (setup.teacher_shape[0], *student_shape[1:])))

    @in_float32
    def forward(self, student: torch.Tensor, teacher: torch.Tensor, gt_boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        student = self.adapter(student)
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(
                f"channels differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}"
            )
        s, t, valid = sample_box_keypoints(student, teacher, gt_boxes, self.grid)
        per_box = (s - t).abs().mean(dim=(1, 3))  # [B, M]
        return (per_box * valid).sum() / (box_count(valid, per_box.dtype) + 1e-4)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(student, teacher, batch["gt_boxes"])
