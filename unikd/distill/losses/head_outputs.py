"""What the terms that read `head` find there, by head kind, and the checks their `build` makes.

A CenterHead's outputs are a list (per task) of dicts of dense maps: heatmap, reg, height, dim, rot, vel;
its dense class heatmap is the tasks' heatmaps concatenated (classes in the tasks' order). A
TransFusionHead's outputs are one dict: its `dense_heatmap` [B, 10, H, W] has the classes in CLASSES order,
and its regression is per query, with no dense maps. So the heatmap terms (heatmap_kd, heatmap_kl) apply
to any pair of heads whose dense heatmaps have the same classes in the same order, and the terms that also
read the regression maps (response) only to two CenterHeads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unikd.distill.losses.term import TermSetup
from unikd.models.heads.center_head import CenterHead
from unikd.models.heads.transfusion_head import TransFusionHead

HEAD_KINDS = (CenterHead, TransFusionHead)
HeadOutputs = Sequence[Mapping[str, torch.Tensor]] | Mapping[str, Any]  # CenterHead's, TransFusionHead's


def _heads(setup: TermSetup, kind: str) -> dict[str, nn.Module]:
    """The student's and the teacher's head, which must be of a kind in HEAD_KINDS."""
    heads = {"student": getattr(setup.student, "head", None), "teacher": getattr(setup.teacher, "head", None)}
    for network, head in heads.items():
        if not isinstance(head, HEAD_KINDS):
            raise ValueError(
                f"distill term kind {kind!r} reads the {network}'s head outputs, but its head is "
                f"{type(head).__name__}; expected one of {[k.__name__ for k in HEAD_KINDS]}"
            )
    return heads


def require_center_heads(setup: TermSetup, kind: str) -> None:
    """Raise unless both networks have a CenterHead (a term reading its per-task regression maps)."""
    for network, head in _heads(setup, kind).items():
        if not isinstance(head, CenterHead):
            raise ValueError(
                f"distill term kind {kind!r} reads CenterHead's per-task heatmaps and dense regression maps, but "
                f"the {network}'s head is a {type(head).__name__}, which has no dense regression maps "
                "(heatmap_kd and heatmap_kl read its dense heatmap)"
            )


def heatmap_classes(head: nn.Module) -> tuple[str, ...]:
    """The class of each channel of a head's dense heatmap."""
    if isinstance(head, CenterHead):
        return tuple(name for task in head.tasks for name in task)
    return head.class_names


def check_dense_heatmaps(setup: TermSetup, kind: str) -> None:
    """Raise unless both heads have dense heatmaps with the same classes in the same order."""
    classes = {network: heatmap_classes(head) for network, head in _heads(setup, kind).items()}
    if classes["student"] != classes["teacher"]:
        raise ValueError(
            f"distill term kind {kind!r} compares the dense heatmaps channel by channel, but the student's "
            f"classes are {classes['student']} and the teacher's {classes['teacher']}"
        )


def dense_heatmap(outputs: HeadOutputs) -> torch.Tensor:
    """The dense class heatmap logits [B, K, H, W] of a CenterHead's or a TransFusionHead's outputs."""
    if isinstance(outputs, Mapping):
        return outputs["dense_heatmap"]
    return torch.cat([task["heatmap"] for task in outputs], dim=1)
