"""Distillation losses, one module each (formulas in each module's docstring)."""

from unikd.distill.losses.attention import AttentionTransferLoss, attention_map
from unikd.distill.losses.crd import CRDLoss, crd_nce_loss
from unikd.distill.losses.feature import FeatureDistillLoss
from unikd.distill.losses.fitnet import FitNetLoss
from unikd.distill.losses.heatmap_kd import HeatmapKDLoss
from unikd.distill.losses.infonce import MemoryQueue, MultiLevelInfoNCE, info_nce
from unikd.distill.losses.masked import (
    GaussianMaskedFeatureLoss,
    LearnedMaskDistillLoss,
    MaskGenerator,
)
from unikd.distill.losses.projector import Projector
from unikd.distill.losses.relation import RelationDistillLoss
from unikd.distill.losses.response import ResponseDistillLoss

__all__ = [
    "AttentionTransferLoss",
    "CRDLoss",
    "FeatureDistillLoss",
    "FitNetLoss",
    "GaussianMaskedFeatureLoss",
    "HeatmapKDLoss",
    "LearnedMaskDistillLoss",
    "MaskGenerator",
    "MemoryQueue",
    "MultiLevelInfoNCE",
    "Projector",
    "RelationDistillLoss",
    "ResponseDistillLoss",
    "attention_map",
    "crd_nce_loss",
    "info_nce",
]
