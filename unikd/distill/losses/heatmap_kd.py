"""Temperature-scaled heatmap distillation for sigmoid (per-class, CenterHead) heatmaps.

With p = sigmoid(logit / T) (each cell and class an independent Bernoulli):
    mode "l1":  L = mean |p_S - p_T|
    mode "bce": L = mean BCE(p_S; target p_T) = -mean [p_T log p_S + (1 - p_T) log(1 - p_S)]
No T^2 rescaling is applied; fold it into the loss weight if wanted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HeatmapKDLoss(nn.Module):
    """Heatmap KD between logits [B, K, H, W] of equal shape (formulas in the module doc)."""

    def __init__(self, temperature: float = 2.0, mode: str = "l1") -> None:
        super().__init__()
        if mode not in ("l1", "bce"):
            raise ValueError(f"mode must be 'l1' or 'bce', got {mode!r}")
        self.temperature = temperature
        self.mode = mode

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ"
            )
        target = (teacher_logits.detach() / self.temperature).sigmoid()
        scaled = student_logits / self.temperature
        if self.mode == "l1":
            return (scaled.sigmoid() - target).abs().mean()
        return F.binary_cross_entropy_with_logits(scaled, target)
