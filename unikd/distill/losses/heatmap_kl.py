"""Spatial Kullback-Leibler distillation of dense class heatmaps, one class channel at a time: kind "heatmap_kl".

Each class channel k of the dense heatmap logits z [B, K, H, W] (a CenterHead's tasks' heatmaps, a
TransFusionHead's `dense_heatmap`: `head_outputs`; both heads with the same classes in order) is turned
into a distribution over the H*W cells, q_k = softmax(flatten(z_k) / T); with the teacher's q^T and the student's q^S:

    L = T^2 * mean_{b,k} sum_cells q^T_k log(q^T_k / q^S_k)

The student learns where the teacher puts each class's mass (channel-wise distillation, Shu et al.
2021), whatever the logits' offset. T = 4 by default; a student head of another resolution is resized
(bilinear) to the teacher's first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unikd.distill.adapters import resize_to
from unikd.distill.losses.head_outputs import HeadOutputs, check_dense_heatmaps, dense_heatmap
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.ops.precision import in_float32


@register_term("heatmap_kl")
class HeatmapKLLoss(DistillTerm):
    """Spatial KL between heatmap logits [B, K, H, W] of equal shape (formula in the module doc)."""

    reads = "head"

    def __init__(self, temperature: float = 4.0, resize: nn.Module | None = None) -> None:
        super().__init__()
        self.temperature = temperature
        self.resize = resize or nn.Identity()

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> HeatmapKLLoss:
        check_dense_heatmaps(setup, cls.kind)
        return cls(resize=resize_to(setup.student_shape, setup.teacher_shape), **options)

    @in_float32
    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ"
            )
        log_student = F.log_softmax(student_logits.flatten(2) / self.temperature, dim=2)
        log_teacher = F.log_softmax(teacher_logits.detach().flatten(2) / self.temperature, dim=2)
        kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=2)  # [B, K]
        return self.temperature**2 * kl.mean()

    def distill(self, student: HeadOutputs, teacher: HeadOutputs, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(self.resize(dense_heatmap(student)), dense_heatmap(teacher))
