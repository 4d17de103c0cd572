"""Masked feature distillation with fixed Gaussian foreground masks (kind "masked"); learned masks are
the kind "learned_mask" (`learned_mask.py`).

Fixed masks (`GaussianMaskedFeatureLoss`), with M the class-agnostic Gaussian GT mask [B, H, W] and
A the student adapter (`build_adapter`):

    L = sum_{b,h,w} M_bhw * mean_c (A(f_S) - f_T)^2_bchw / (sum M + 1e-4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unikd.distill.adapters import build_adapter
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.models.heads.center_targets import gaussian_gt_mask
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.precision import in_float32


@register_term("masked")
class GaussianMaskedFeatureLoss(DistillTerm):
    """Feature MSE weighted by the Gaussian GT mask (formula in the module doc).

    The adapted student and the teacher are [B, C, H, W] of the same shape; `grid` gives the metric
    region, the mask is drawn at the teacher's resolution. The teacher is detached.
    """

    reads = "dense"

    def __init__(
        self, grid: BEVGrid, adapter: nn.Module | None = None, min_overlap: float = 0.7, min_radius: int = 2
    ) -> None:
        super().__init__()
        self.grid = grid
        self.adapter = adapter or nn.Identity()
        self.min_overlap = min_overlap
        self.min_radius = min_radius

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> GaussianMaskedFeatureLoss:
        return cls(setup.grid, build_adapter(setup.student_shape, setup.teacher_shape), **options)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(student, teacher, batch["gt_boxes"])

    @in_float32
    def forward(self, student: torch.Tensor, teacher: torch.Tensor, gt_boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        student = self.adapter(student)
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must match")
        height, width = student.shape[-2:]
        mask = gaussian_gt_mask(
            [boxes.to(student.device) for boxes in gt_boxes],
            self.grid.resized(height, width),
            self.min_overlap,
            self.min_radius,
        )
        error = (student - teacher.detach()).pow(2).mean(dim=1)
        return (mask * error).sum() / (mask.sum() + 1e-4)
