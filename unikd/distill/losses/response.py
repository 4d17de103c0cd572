"""UniDistill response distillation on CenterHead outputs, weighted by a Gaussian GT mask.

With P = max over all classes (all tasks) of sigmoid(heatmap_logit / T), T = 2 for both networks,
R = the regression maps of all tasks concatenated (reg, height, dim, rot, vel; 10 per task) and
M = `gaussian_gt_mask` (unikd.models.heads) (min_overlap 0.7, min_radius 2) at the head's resolution:

    L_cls = sum_{b,h,w} M |P_T - P_S| / (sum M + 1e-4)
    L_reg = sum_{b,h,w} M mean_c |R_T - R_S|_c / (sum M + 1e-4)
    L_resp = L_cls + L_reg
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from unikd.models.heads.center_targets import gaussian_gt_mask
from unikd.ops.bev_grid import BEVGrid

REGRESSION_KEYS = ("reg", "height", "dim", "rot", "vel")
HeadOutputs = Sequence[Mapping[str, torch.Tensor]]


def class_max_heatmap(head: HeadOutputs, temperature: float) -> torch.Tensor:
    """max over every class of every task of sigmoid(logit / temperature): [B, H, W]."""
    logits = torch.cat([task["heatmap"] for task in head], dim=1)
    return (logits / temperature).sigmoid().amax(dim=1)


def regression_maps(head: HeadOutputs) -> torch.Tensor:
    """All tasks' regression maps concatenated along channels: [B, 10 * tasks, H, W]."""
    return torch.cat([task[key] for task in head for key in REGRESSION_KEYS], dim=1)


class ResponseDistillLoss(nn.Module):
    """UniDistill response loss (formulas in the module doc); returns L_cls + L_reg.

    student and teacher heads are lists (per task) of dicts with heatmap/reg/height/dim/rot/vel
    [B, C, H, W] and the same layout. `grid` gives the metric region. The teacher is detached.
    """

    def __init__(self, temperature: float = 2.0, min_overlap: float = 0.7, min_radius: int = 2) -> None:
        super().__init__()
        self.temperature = temperature
        self.min_overlap = min_overlap
        self.min_radius = min_radius

    def forward(
        self, student: HeadOutputs, teacher: HeadOutputs, gt_boxes: Sequence[torch.Tensor], grid: BEVGrid
    ) -> torch.Tensor:
        heat_s = class_max_heatmap(student, self.temperature)
        heat_t = class_max_heatmap(teacher, self.temperature).detach()
        reg_s, reg_t = regression_maps(student), regression_maps(teacher).detach()
        if heat_s.shape != heat_t.shape or reg_s.shape != reg_t.shape:
            raise ValueError(
                f"head outputs differ: heatmaps {tuple(heat_s.shape)} vs {tuple(heat_t.shape)}, "
                f"regression {tuple(reg_s.shape)} vs {tuple(reg_t.shape)}"
            )
        height, width = heat_s.shape[-2:]
        mask = gaussian_gt_mask(
            [boxes.to(heat_s.device) for boxes in gt_boxes], grid.resized(height, width), self.min_overlap, self.min_radius
        ).to(heat_s.dtype)
        normalizer = mask.sum() + 1e-4
        cls = (mask * (heat_s - heat_t).abs()).sum() / normalizer
        reg = (mask * (reg_s - reg_t).abs().mean(dim=1)).sum() / normalizer
        return cls + reg
