"""FitNet hint loss: MSE between the adapted student feature and the teacher's hint: kind "fitnet".

L = mean (A(f_S) - f_T)^2,  A = build_adapter(student_shape, teacher_shape, override)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from unikd.distill.adapters import build_adapter
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.ops.precision import in_float32


@register_term("fitnet")
class FitNetLoss(DistillTerm):
    """Hint MSE through its own adapter (shapes are (C, H, W)); the teacher is detached.

    FitNet's regressor is learnable, so pass override="conv" to learn one between equal shapes.
    """

    reads = "dense"

    def __init__(
        self, student_shape: Iterable[int], teacher_shape: Iterable[int], override: str | None = None
    ) -> None:
        super().__init__()
        self.adapter = build_adapter(student_shape, teacher_shape, override)

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> FitNetLoss:
        return cls(setup.student_shape, setup.teacher_shape, **options)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(student, teacher)

    @in_float32
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        adapted = self.adapter(student)
        if adapted.shape != teacher.shape:
            raise ValueError(
                f"adapted student {tuple(adapted.shape)} does not match teacher {tuple(teacher.shape)}"
            )
        return (adapted - teacher.detach()).pow(2).mean()
