"""Temperature-scaled heatmap distillation for sigmoid (per-class) dense heatmaps: kind "heatmap_kd".

With p = sigmoid(logit / T) (each cell and class an independent Bernoulli):
    mode "l1":  L = mean |p_S - p_T|
    mode "bce": L = mean BCE(p_S; target p_T) = -mean [p_T log p_S + (1 - p_T) log(1 - p_S)]
No T^2 rescaling is applied; fold it into the loss weight if wanted. The term reads the dense class
heatmap (a CenterHead's tasks' heatmaps, a TransFusionHead's `dense_heatmap`: `head_outputs`; both heads
must have the same classes in the same order); a student head of another resolution is resized
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


@register_term("heatmap_kd")
class HeatmapKDLoss(DistillTerm):
    """Heatmap KD between logits [B, K, H, W] of equal shape (formulas in the module doc)."""

    reads = "head"

    def __init__(self, temperature: float = 2.0, mode: str = "l1", resize: nn.Module | None = None) -> None:
        super().__init__()
        if mode not in ("l1", "bce"):
            raise ValueError(f"mode must be 'l1' or 'bce', got {mode!r}")
        self.temperature = temperature
        self.mode = mode
        self.resize = resize or nn.Identity()

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> HeatmapKDLoss:
        check_dense_heatmaps(setup, cls.kind)
        return cls(resize=resize_to(setup.student_shape, setup.teacher_shape), **options)

    def distill(self, student: HeadOutputs, teacher: HeadOutputs, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(self.resize(dense_heatmap(student)), dense_heatmap(teacher))

    @in_float32
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
