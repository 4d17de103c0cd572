"""Attention transfer (Zagoruyko & Komodakis): match normalised spatial attention maps: kind "attention".

a(f) = normalize(flatten(mean_c f_c^2))  ([B, H*W], unit L2 norm per sample)
mode "mse": L = mean_{b,i} (a(f_S) - a(f_T))_bi^2      (the reference implementation's form)
mode "l2":  L = mean_b ||a(f_S) - a(f_T)||_2

Channels may differ; a student map of another resolution is resized (bilinear) to the teacher's first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unikd.distill.adapters import resize_to
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.ops.precision import in_float32


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Normalised spatial attention [B, H*W] of a feature [B, C, H, W]."""
    return F.normalize(feature.pow(2).mean(dim=1).flatten(1), dim=1)


@register_term("attention")
class AttentionTransferLoss(DistillTerm):
    """Attention-transfer loss (formulas in the module doc) on a dense output; the teacher is detached."""

    reads = "dense"

    def __init__(self, mode: str = "mse", resize: nn.Module | None = None) -> None:
        super().__init__()
        if mode not in ("mse", "l2"):
            raise ValueError(f"mode must be 'mse' or 'l2', got {mode!r}")
        self.mode = mode
        self.resize = resize or nn.Identity()

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> AttentionTransferLoss:
        return cls(resize=resize_to(setup.student_shape[1:], setup.teacher_shape[1:]), **options)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(student, teacher)

    @in_float32
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        student = self.resize(student)
        if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
            raise ValueError(
                f"batch and spatial size must match: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}"
            )
        difference = attention_map(student) - attention_map(teacher.detach())
        if self.mode == "mse":
            return difference.pow(2).mean()
        return difference.norm(dim=1).mean()
