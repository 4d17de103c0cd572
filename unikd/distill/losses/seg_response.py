"""Response distillation on the map segmentation logits, per cell and class: kind "seg_response".

Each class of each cell is a binary problem. With z_S, z_T the student's and teacher's logits
[B, K, H, W] (the detector output `seg`), T the temperature, p = sigmoid(z / T):

    "kl":  L = T^2 * mean_{b,k,h,w} [ p_T log(p_T / p_S) + (1 - p_T) log((1 - p_T) / (1 - p_S)) ]
    "mse": L = mean_{b,k,h,w} (p_S - p_T)^2

The KL's gradient in z_S is T (p_S - p_T) / N, so T^2 keeps its scale across temperatures (Hinton et
al.). Log-probabilities come from `logsigmoid`, finite for any logit. The teacher is detached; a student
map of another resolution is resized (bilinear) to the teacher's first.
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

SEG_RESPONSE_LOSSES = ("kl", "mse")


def binary_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean binary KL(p_T || p_S) of per-element sigmoid probabilities at temperature T (module doc)."""
    s, t = student_logits / temperature, teacher_logits / temperature
    p_t = t.sigmoid()
    kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return temperature**2 * kl.mean()


@register_term("seg_response")
class SegResponseLoss(DistillTerm):
    """Per-cell binary KL (or MSE) between segmentation probabilities (formulas in the module doc)."""

    reads = "dense"

    def __init__(self, loss: str = "kl", temperature: float = 1.0, resize: nn.Module | None = None) -> None:
        super().__init__()
        if loss not in SEG_RESPONSE_LOSSES:
            raise ValueError(f"seg_response loss must be one of {SEG_RESPONSE_LOSSES}, got {loss!r}")
        if temperature <= 0:
            raise ValueError(f"seg_response temperature must be positive, got {temperature}")
        self.loss = loss
        self.temperature = temperature
        self.resize = resize or nn.Identity()

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> SegResponseLoss:
        if setup.feature != "seg":
            raise ValueError(
                f"a seg_response term reads the segmentation logits ('seg'), got {setup.feature!r}"
            )
        if setup.student_shape[0] != setup.teacher_shape[0]:
            raise ValueError(
                f"student and teacher segment different numbers of map classes: {setup.student_shape[0]} vs "
                f"{setup.teacher_shape[0]}"
            )
        return cls(resize=resize_to(setup.student_shape[1:], setup.teacher_shape[1:]), **options)

    @in_float32
    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        student_logits = self.resize(student_logits)
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ"
            )
        teacher_logits = teacher_logits.detach()
        if self.loss == "kl":
            return binary_kl(student_logits, teacher_logits, self.temperature)
        student_prob = (student_logits / self.temperature).sigmoid()
        teacher_prob = (teacher_logits / self.temperature).sigmoid()
        return (student_prob - teacher_prob).pow(2).mean()

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(student, teacher)
