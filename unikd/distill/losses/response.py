"""UniDistill response distillation on CenterHead outputs, weighted by a Gaussian GT mask: kind "response".

With P_S = max over all classes (all tasks) of sigmoid(student_logit / T_S), P_T likewise with T_T,
R = the regression maps of all tasks concatenated (reg, height, dim, rot, vel; 10 per task) and
M = `gaussian_gt_mask` (unikd.models.heads) at the teacher head's resolution:

    L_cls = sum_{b,h,w} M |P_T - P_S| / (sum M + 1e-4)
    L_reg = sum_{b,h,w} M mean_c |R_T - R_S|_c / (sum M + 1e-4)
    L_resp = L_cls + L_reg

Defaults are UniDistill's as it trains: T_S = 1 (its head hands the loss sigmoid probabilities,
clamped to [1e-4, 1 - 1e-4]; unikd does not clamp, which differs only where |logit| > 9.2), T_T = 2, and the mask's radius max(0, int(r)) with r the CornerNet radius at min_overlap 0.7 (no
minimum radius, unlike the detection targets' 2). Student maps of another resolution are resized
(bilinear) to the teacher's first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unikd.distill.adapters import resize_to
from unikd.distill.losses.head_outputs import dense_heatmap, require_center_heads
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.models.heads.center_targets import gaussian_gt_mask
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.precision import in_float32

REGRESSION_KEYS = ("reg", "height", "dim", "rot", "vel")
HeadOutputs = Sequence[Mapping[str, torch.Tensor]]


def class_max_heatmap(head: HeadOutputs, temperature: float) -> torch.Tensor:
    """max over every class of every task of sigmoid(logit / temperature): [B, H, W]."""
    return (dense_heatmap(head) / temperature).sigmoid().amax(dim=1)


@register_term("response")
class ResponseDistillLoss(DistillTerm):
    """UniDistill response loss (formulas and defaults in the module doc); returns L_cls + L_reg.

    student and teacher heads are lists (per task) of dicts with heatmap/reg/height/dim/rot/vel
    [B, C, H, W] and the same layout; `grid` gives the metric region. The teacher is detached.
    """

    reads = "head"

    def __init__(
        self,
        grid: BEVGrid,
        resize: nn.Module | None = None,
        student_temperature: float = 1.0,
        teacher_temperature: float = 2.0,
        min_overlap: float = 0.7,
        min_radius: int = 0,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.resize = resize or nn.Identity()
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.min_overlap = min_overlap
        self.min_radius = min_radius

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> ResponseDistillLoss:
        require_center_heads(setup, cls.kind)
        return cls(setup.grid, resize_to(setup.student_shape, setup.teacher_shape), **options)

    @in_float32
    def forward(self, student: HeadOutputs, teacher: HeadOutputs, gt_boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        student = [{key: self.resize(value) for key, value in task.items()} for task in student]
        heat_s = class_max_heatmap(student, self.student_temperature)
        heat_t = class_max_heatmap(teacher, self.teacher_temperature).detach()
        pairs = [(s_task[key], t_task[key].detach()) for s_task, t_task in zip(student, teacher, strict=True) for key in REGRESSION_KEYS]
        if heat_s.shape != heat_t.shape or any(s.shape != t.shape for s, t in pairs):
            raise ValueError(
                f"head outputs differ: heatmaps {tuple(heat_s.shape)} vs {tuple(heat_t.shape)}, regression "
                f"{[tuple(s.shape) for s, _ in pairs]} vs {[tuple(t.shape) for _, t in pairs]}"
            )
        height, width = heat_s.shape[-2:]
        mask = gaussian_gt_mask(
            [boxes.to(heat_s.device) for boxes in gt_boxes],
            self.grid.resized(height, width),
            self.min_overlap,
            self.min_radius,
        ).to(heat_s.dtype)
        normalizer = mask.sum() + 1e-4
        cls = (mask * (heat_s - heat_t).abs()).sum() / normalizer
        # mean over the regression channels of all tasks, one map at a time (no concatenated copy)
        error = sum((s - t).abs().sum(dim=1) for s, t in pairs)
        reg = (mask * error).sum() / (normalizer * sum(s.shape[1] for s, _ in pairs))
        return cls + reg

    def distill(self, student: HeadOutputs, teacher: HeadOutputs, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(student, teacher, batch["gt_boxes"])
