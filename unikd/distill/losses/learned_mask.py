"""Masked feature distillation with learned (VeXKD-style) masks (kind "learned_mask"); fixed Gaussian
masks are the kind "masked" (`masked.py`).

Learned masks (`LearnedMaskDistillLoss`), with Q masks M_q over the teacher feature f_T applied to both
the adapted student and the teacher feature:

    L = sum_{b,q,h,w} mean_c (M_bqhw A(f_S)_bchw - M_bqhw f_T_bchw)^2 / sum M

The masks come from queries: when the teacher has an MGFM fuser, from its BEV query map
(`fusion_queries`, VeXKD's "BEV query guided mask generation": `QueryGuidedMaskGenerator`, blocks of
deformable cross-attention from the queries into f_T, self-attention and FFN, then one logit per mask
and cell); otherwise from Q learnable query vectors scored against f_T (`MaskGenerator`). They enter
the distillation loss detached: minimising a mask-weighted error with respect to the masks would only
move them onto easy cells. They learn from `mask_learning_loss` instead (MasKD/VeXKD recipe: the
teacher's task loss on each masked teacher feature plus a Dice diversity term between masks), until
`freeze_masks()` or the epoch `mask_learning_until_epoch`. The task loss runs the frozen teacher from
the feature's level to its head: a term on `bev` (low-level) goes through the teacher's backbone, neck
and head, one on `neck` (high-level) through the head; while masks learn, the term adds the part
"mask_learning".
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
from unikd.models.deformable import DeformableBlock
from unikd.ops.precision import in_float32

MASK_ACTIVATIONS = ("sigmoid", "softmax")


def check_activation(activation: str) -> None:
    if activation not in MASK_ACTIVATIONS:
        raise ValueError(f"activation must be one of {MASK_ACTIVATIONS}, got {activation!r}")


def activate_masks(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Masks [B, Q, H, W] from logits: sigmoid, or a softmax over the H*W cells scaled by H*W (mean 1 per mask)."""
    if activation == "sigmoid":
        return logits.sigmoid()
    batch, queries, height, width = logits.shape
    spatial = logits.flatten(2).softmax(dim=-1) * (height * width)
    return spatial.view(batch, queries, height, width)


class MaskGenerator(nn.Module):
    """Q learnable BEV queries [Q, C] that score every location of a teacher feature.

    logits_bqhw = <query_q, f_T[b, :, h, w]> / sqrt(C), then `activate_masks`.
    """

    def __init__(self, channels: int, num_queries: int = 6, activation: str = "sigmoid") -> None:
        super().__init__()
        check_activation(activation)
        self.activation = activation
        self.queries = nn.Parameter(torch.randn(num_queries, channels) * 0.02)

    def forward(self, teacher: torch.Tensor) -> torch.Tensor:
        """Masks [B, Q, H, W] for a teacher feature [B, C, H, W]."""
        logits = torch.einsum("qc,bchw->bqhw", self.queries, teacher) / math.sqrt(teacher.shape[1])
        return activate_masks(logits, self.activation)


class QueryGuidedMaskGenerator(nn.Module):
    """Q masks from a BEV query map [B, E, H, W] (the teacher's MGFM queries) over a teacher feature
    [B, C, H, W] on the same grid: `num_blocks` `DeformableBlock`s whose cross-attention reads the
    feature, then a per-cell linear layer to Q logits, then `activate_masks`."""

    def __init__(
        self,
        query_channels: int,
        feature_channels: int,
        num_masks: int = 6,
        activation: str = "sigmoid",
        num_blocks: int = 3,
        num_heads: int = 8,
        num_points: int = 4,
    ) -> None:
        super().__init__()
        check_activation(activation)
        self.activation = activation
        self.blocks = nn.ModuleList(
            DeformableBlock(query_channels, [feature_channels], num_heads, num_points)
            for _ in range(num_blocks)
        )
        self.mask_head = nn.Linear(query_channels, num_masks)

    def forward(self, teacher: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Masks [B, Q, H, W] for a teacher feature [B, C, H, W] and the query map [B, E, H, W]."""
        if queries.shape[0] != teacher.shape[0] or queries.shape[-2:] != teacher.shape[-2:]:
            raise ValueError(
                f"the query map {tuple(queries.shape)} and the teacher feature {tuple(teacher.shape)} must share "
                "batch and BEV size"
            )
        batch, _, height, width = queries.shape
        x = queries.flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x, (height, width), [teacher])
        logits = self.mask_head(x).transpose(1, 2).reshape(batch, -1, height, width)
        return activate_masks(logits, self.activation)


@in_float32
def dice_diversity(masks: torch.Tensor) -> torch.Tensor:
    """Mean Dice overlap 2<m_i, m_j> / (|m_i|^2 + |m_j|^2) over mask pairs i < j and the batch ([B, Q, H, W])."""
    flat = masks.flatten(2)  # [B, Q, HW]
    overlap = torch.einsum("bqn,bpn->bqp", flat, flat)
    energy = flat.pow(2).sum(-1)
    dice = 2 * overlap / (energy[:, :, None] + energy[:, None, :] + 1e-6)
    pairs = torch.triu_indices(masks.shape[1], masks.shape[1], offset=1, device=masks.device)
    return dice[:, pairs[0], pairs[1]].mean()


# The teacher's modules from a feature's level to its head, through which the masks learn.
TEACHER_PATHS = {"bev": ("backbone", "neck", "head"), "neck": ("head",)}
QUERY_SOURCES = ("auto", "fusion", "own")
FUSION_GENERATOR_OPTIONS = ("num_blocks", "num_heads", "num_points")


def decoder_detection_loss(
    modules: Sequence[nn.Module], feature: torch.Tensor, batch: Mapping[str, Any]
) -> torch.Tensor:
    """The sum of the detection losses of `feature` run through `modules`, the last the detection head."""
    *decoder, head = modules
    for module in decoder:
        feature = module(feature)
    return sum(head.loss(head(feature), batch["gt_boxes"], batch["gt_labels"]).values())


@register_term("learned_mask")
class LearnedMaskDistillLoss(DistillTerm):
    """Learned-mask feature distillation (formula in the module doc) with its own student adapter.

    Shapes are (C, H, W). `num_queries` is the number of masks Q. With `query_shape` (E, H, W) the
    masks come from a query map (`QueryGuidedMaskGenerator`, `num_blocks`, `num_heads`, `num_points`),
    which `distill` reads from the teacher's `fusion_queries` (`teacher_context`); without, from Q own
    queries (`MaskGenerator`). While masks learn, `mask_learning_loss(teacher, masks, task_loss)` joins the
    objective; `task_loss` maps a masked teacher feature to the teacher's task loss; `distill` uses
    `teacher_task_loss` (a plain callable, so that the teacher's weights stay out of the term's state).
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
        teacher_task_loss: Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor] | None = None,
        query_shape: Iterable[int] | None = None,
        num_blocks: int = 3,
        num_heads: int = 8,
        num_points: int = 4,
    ) -> None:
        super().__init__()
        teacher_shape = tuple(teacher_shape)
        self.adapter = build_adapter(student_shape, teacher_shape)
        if query_shape is None:
            self.generator = MaskGenerator(teacher_shape[0], num_queries, activation)
            self.teacher_context = ()
        else:
            query_shape = tuple(query_shape)
            if query_shape[1:] != teacher_shape[1:]:
                raise ValueError(
                    f"the fusion query map {query_shape} and the teacher feature {teacher_shape} must share one BEV size"
                )
            self.generator = QueryGuidedMaskGenerator(
                query_shape[0], teacher_shape[0], num_queries, activation, num_blocks, num_heads, num_points
            )
            self.teacher_context = ("fusion_queries",)
        self.mask_learning_until_epoch = mask_learning_until_epoch
        self.diversity_weight = diversity_weight
        self.register_buffer("masks_frozen", torch.tensor(False))
        self.teacher_task_loss = teacher_task_loss

    @classmethod
    def build(cls, setup: TermSetup, queries: str = "auto", **options: Any) -> LearnedMaskDistillLoss:
        """`queries`: "fusion" (the teacher's MGFM query map), "own" (learnable query vectors) or "auto"
        (fusion when the teacher has an MGFM fuser)."""
        if setup.feature not in TEACHER_PATHS:
            raise ValueError(
                "a learned_mask term learns its masks through the teacher's decoder from the feature it reads: "
                f"one of {sorted(TEACHER_PATHS)} (low-level 'bev', high-level 'neck'); got {setup.feature!r}"
            )
        if getattr(setup.teacher, "head", None) is None:
            raise ValueError(
                "a learned_mask term learns its masks through the teacher's detection head, and the teacher has none "
                "(model config 'head')"
            )
        if queries not in QUERY_SOURCES:
            raise ValueError(f"learned_mask queries must be one of {QUERY_SOURCES}, got {queries!r}")
        teacher_shapes = setup.teacher.output_shapes()
        if queries == "auto":
            queries = "fusion" if "fusion_queries" in teacher_shapes else "own"
        query_shape = None
        if queries == "fusion":
            if "fusion_queries" not in teacher_shapes:
                raise ValueError(
                    "learned_mask queries='fusion' reads the teacher's MGFM query map ('fusion_queries'); the teacher "
                    "has no MGFM fuser (model config 'fuser' type 'mgfm')"
                )
            query_shape = teacher_shapes["fusion_queries"]
        elif set(FUSION_GENERATOR_OPTIONS) & set(options):
            raise ValueError(
                f"learned_mask options {sorted(set(FUSION_GENERATOR_OPTIONS) & set(options))} shape the query-guided "
                "generator of a teacher with an MGFM fuser; these masks come from the term's own queries"
            )
        modules = tuple(getattr(setup.teacher, name) for name in TEACHER_PATHS[setup.feature])
        task_loss = functools.partial(decoder_detection_loss, modules)
        return cls(
            setup.student_shape,
            setup.teacher_shape,
            teacher_task_loss=task_loss,
            query_shape=query_shape,
            **options,
        )

    def masks(self, teacher: torch.Tensor, fusion_queries: torch.Tensor | None = None) -> torch.Tensor:
        """Masks [B, Q, H, W] for a teacher feature (and the teacher's query map, for a query-guided generator)."""
        if isinstance(self.generator, QueryGuidedMaskGenerator):
            if fusion_queries is None:
                raise ValueError("query-guided masks need the teacher's fusion_queries")
            return self.generator(teacher, fusion_queries.detach())
        return self.generator(teacher)

    def distill(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        batch: Mapping[str, Any],
        context: Mapping[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        teacher = teacher.detach()
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            masks = self.masks(teacher, (context or {}).get("fusion_queries"))
        parts = {"": self(student, teacher, masks.detach())}
        if self.training and self.learning_masks:
            parts["mask_learning"] = self.mask_learning_loss(
                teacher, masks, lambda masked: self.teacher_task_loss(masked, batch)
            )
        elif masks.requires_grad:  # frozen: zero gradients for every generator parameter (`freeze_masks`)
            parts[""] = parts[""] + (masks * 0).sum()
        return parts

    @property
    def learning_masks(self) -> bool:
        return not bool(self.masks_frozen)

    def freeze_masks(self) -> None:
        """Stop mask learning for good (saved in the state dict).

        The generator keeps `requires_grad`: DDP registered its parameters when it wrapped the model and
        waits for their gradients at every step ("Expected to have finished reduction" otherwise). In
        training `distill` keeps them in the graph with zero gradients, and the optimizer skips them
        (`frozen_parameters`: zero gradients alone would still move them through AdamW's momentum and
        weight decay)."""
        self.masks_frozen.fill_(True)

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer step must leave as they are (their gradients set to None): the
        generator's once the masks are frozen."""
        return [] if self.learning_masks else list(self.generator.parameters())

    def set_epoch(self, epoch: int) -> None:
        """Freeze the masks once `epoch` reaches `mask_learning_until_epoch`."""
        if self.mask_learning_until_epoch is not None and epoch >= self.mask_learning_until_epoch:
            self.freeze_masks()

    @in_float32
    def forward(self, student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The masked loss of the module doc for masks [B, Q, H, W] (taken as given: detach them first).

        mean_c (M A(f_S) - M f_T)^2 is computed as M^2 mean_c (A(f_S) - f_T)^2, without a [B, Q, C, H, W] copy."""
        teacher = teacher.detach()
        adapted = self.adapter(student)
        if adapted.shape != teacher.shape:
            raise ValueError(
                f"adapted student {tuple(adapted.shape)} does not match teacher {tuple(teacher.shape)}"
            )
        if masks.shape[0] != teacher.shape[0] or masks.shape[-2:] != teacher.shape[-2:]:
            raise ValueError(
                f"masks {tuple(masks.shape)} must be [B, Q, H, W] of the teacher {tuple(teacher.shape)}"
            )
        error = (adapted - teacher).pow(2).mean(dim=1, keepdim=True)  # [B, 1, H, W]
        return (masks.pow(2) * error).sum() / masks.sum().clamp_min(1e-4)

    def mask_learning_loss(
        self, teacher: torch.Tensor, masks: torch.Tensor, task_loss: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """mean_q task_loss(f_T * M_q) + diversity_weight * dice_diversity(M); only while masks learn."""
        if not self.learning_masks:
            raise RuntimeError("masks are frozen; mask_learning_loss is only defined while they learn")
        teacher = teacher.detach()
        task = torch.stack([task_loss(teacher * masks[:, q : q + 1]) for q in range(masks.shape[1])]).mean()
        return task + self.diversity_weight * dice_diversity(masks)
