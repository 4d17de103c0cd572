"""Masked feature distillation: fixed Gaussian foreground masks (kind "masked") and learned
(VeXKD-style) masks (kind "learned_mask").

Fixed masks (`GaussianMaskedFeatureLoss`), with M the class-agnostic Gaussian GT mask [B, H, W] and
A the student adapter (`build_adapter`):

    L = sum_{b,h,w} M_bhw * mean_c (A(f_S) - f_T)^2_bchw / (sum M + 1e-4)

Learned masks (`LearnedMaskDistillLoss`), with Q masks M_q from BEV queries over the teacher feature
and A the student adapter:

    L = sum_{b,q,h,w} M_bqhw * mean_c (A(f_S) - f_T)^2_bchw / sum M

The masks enter the distillation loss detached: minimising a mask-weighted error with respect to
the masks would only move them onto easy cells. They learn from `mask_learning_loss` instead
(MasKD/VeXKD recipe: the teacher's task loss on each masked teacher feature plus a Dice diversity
term between masks), until `freeze_masks()` or the epoch `mask_learning_until_epoch`. The term reads
the teacher head's input (`neck`), so that the teacher's own head gives the task loss; while masks
learn, it adds the part "mask_learning".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unikd.distill.adapters import build_adapter
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.models.heads.center_targets import gaussian_gt_mask
from unikd.ops.bev_grid import BEVGrid


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


class MaskGenerator(nn.Module):
    """Q learnable BEV queries [Q, C] that score every location of a teacher feature.

    logits_bqhw = <query_q, f_T[b, :, h, w]> / sqrt(C); masks = sigmoid(logits), or with
    activation "softmax" a softmax over the H*W locations scaled by H*W (mean 1 per mask).
    """

    def __init__(self, channels: int, num_queries: int = 6, activation: str = "sigmoid") -> None:
        super().__init__()
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        self.activation = activation
        self.queries = nn.Parameter(torch.randn(num_queries, channels) * 0.02)

    def forward(self, teacher: torch.Tensor) -> torch.Tensor:
        """Masks [B, Q, H, W] for a teacher feature [B, C, H, W]."""
        logits = torch.einsum("qc,bchw->bqhw", self.queries, teacher) / math.sqrt(teacher.shape[1])
        if self.activation == "sigmoid":
            return logits.sigmoid()
        batch, queries, height, width = logits.shape
        spatial = logits.flatten(2).softmax(dim=-1) * (height * width)
        return spatial.view(batch, queries, height, width)


def dice_diversity(masks: torch.Tensor) -> torch.Tensor:
    """Mean Dice overlap 2<m_i, m_j> / (|m_i|^2 + |m_j|^2) over mask pairs i < j and the batch ([B, Q, H, W])."""
    flat = masks.flatten(2)  # [B, Q, HW]
    overlap = torch.einsum("bqn,bpn->bqp", flat, flat)
    energy = flat.pow(2).sum(-1)
    dice = 2 * overlap / (energy[:, :, None] + energy[:, None, :] + 1e-6)
    pairs = torch.triu_indices(masks.shape[1], masks.shape[1], offset=1, device=masks.device)
    return dice[:, pairs[0], pairs[1]].mean()


def head_detection_loss(head: nn.Module, feature: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
    """The sum of a CenterHead's detection losses on `feature` (its input) for the batch's boxes."""
    return sum(head.loss(head(feature), batch["gt_boxes"], batch["gt_labels"]).values())


@register_term("learned_mask")
class LearnedMaskDistillLoss(DistillTerm):
    """Learned-mask feature distillation (formula in the module doc) with its own student adapter.

    Shapes are (C, H, W). While masks learn, add `mask_learning_loss(teacher, task_loss)` to the
    objective; `task_loss` maps a masked teacher feature [B, C, H, W] to the teacher's task loss.
    `distill` uses `teacher_head`'s detection loss, held as a plain callable so that the head's
    weights stay out of the term's state.
    """

    reads = "dense"

    def __init__(
        self,
        student_shape: Iterable[int],
        teacher_shape: Iterable[int],
        num_queries: int = 6,
        activation: str = "sigmoid",
        mask_learning_until_epoch: int | None = None,
        diversity_weight: float = 1.0,
        teacher_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        teacher_shape = tuple(teacher_shape)
        self.adapter = build_adapter(student_shape, teacher_shape)
        self.generator = MaskGenerator(teacher_shape[0], num_queries, activation)
        self.mask_learning_until_epoch = mask_learning_until_epoch
        self.diversity_weight = diversity_weight
        self.register_buffer("masks_frozen", torch.tensor(False))
        self.teacher_task_loss = None if teacher_head is None else functools.partial(head_detection_loss, teacher_head)

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> LearnedMaskDistillLoss:
        if setup.feature != "neck":
            raise ValueError(
                "a learned_mask term learns its masks through the teacher's head, whose input is 'neck'; "
                f"got {setup.feature!r}"
            )
        if getattr(setup.teacher, "head", None) is None:
            raise ValueError(
                "a learned_mask term learns its masks through the teacher's detection head, and the teacher has none "
                "(model config 'head')"
            )
        return cls(setup.student_shape, setup.teacher_shape, teacher_head=setup.teacher.head, **options)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        parts = {"": self(student, teacher)}
        if self.training and self.learning_masks:
            parts["mask_learning"] = self.mask_learning_loss(
                teacher, lambda masked: self.teacher_task_loss(masked, batch)
            )
        return parts

    @property
    def learning_masks(self) -> bool:
        return not bool(self.masks_frozen)

    def freeze_masks(self) -> None:
        """Stop mask learning for good (the queries stop receiving gradient; saved in the state dict)."""
        self.masks_frozen.fill_(True)
        self.generator.queries.requires_grad_(False)

    def set_epoch(self, epoch: int) -> None:
        """Freeze the masks once `epoch` reaches `mask_learning_until_epoch`."""
        if self.mask_learning_until_epoch is not None and epoch >= self.mask_learning_until_epoch:
            self.freeze_masks()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher.detach()
        adapted = self.adapter(student)
        if adapted.shape != teacher.shape:
            raise ValueError(
                f"adapted student {tuple(adapted.shape)} does not match teacher {tuple(teacher.shape)}"
            )
        masks = self.generator(teacher).detach()
        error = (adapted - teacher).pow(2).mean(dim=1, keepdim=True)  # [B, 1, H, W]
        return (masks * error).sum() / masks.sum().clamp_min(1e-4)

    def mask_learning_loss(
        self, teacher: torch.Tensor, task_loss: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """mean_q task_loss(f_T * M_q) + diversity_weight * dice_diversity(M); only while masks learn."""
        if not self.learning_masks:
            raise RuntimeError("masks are frozen; mask_learning_loss is only defined while they learn")
        teacher = teacher.detach()
        masks = self.generator(teacher)
        task = torch.stack([task_loss(teacher * masks[:, q : q + 1]) for q in range(masks.shape[1])]).mean()
        return task + self.diversity_weight * dice_diversity(masks)
