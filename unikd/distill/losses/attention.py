"""Attention transfer (Zagoruyko & Komodakis): match normalised spatial attention maps.

a(f) = normalize(flatten(mean_c f_c^2))  ([B, H*W], unit L2 norm per sample)
mode "mse": L = mean_{b,i} (a(f_S) - a(f_T))_bi^2      (the reference implementation's form)
mode "l2":  L = mean_b ||a(f_S) - a(f_T)||_2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Normalised spatial attention [B, H*W] of a feature [B, C, H, W]."""
    return F.normalize(feature.pow(2).mean(dim=1).flatten(1), dim=1)


class AttentionTransferLoss(nn.Module):
    """Attention-transfer loss (formulas in the module doc); channels may differ, H, W must match."""

    def __init__(self, mode: str = "mse") -> None:
        super().__init__()
        if mode not in ("mse", "l2"):
            raise ValueError(f"mode must be 'mse' or 'l2', got {mode!r}")
        self.mode = mode

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
            raise ValueError(
                f"batch and spatial size must match: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}"
            )
        difference = attention_map(student) - attention_map(teacher.detach())
        if self.mode == "mse":
            return difference.pow(2).mean()
        return difference.norm(dim=1).mean()
