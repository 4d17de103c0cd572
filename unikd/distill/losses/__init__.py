"""Distillation losses, one module each (formulas in each module's docstring).

Every module of this package is imported here, so that the term kinds it registers
(`unikd.distill.losses.term.register_term`) are known: a new kind is one new module.
"""

import importlib
import pkgutil

from unikd.distill.losses.attention import AttentionTransferLoss, attention_map
from unikd.distill.losses.crd import CRDLoss, crd_nce_loss
from unikd.distill.losses.feature import FeatureDistillLoss
from unikd.distill.losses.fitnet import FitNetLoss
from unikd.distill.losses.heatmap_kd import HeatmapKDLoss
from unikd.distill.losses.infonce import MemoryQueue, MultiLevelInfoNCE, info_nce
from unikd.distill.losses.learned_mask import LearnedMaskDistillLoss, MaskGenerator
from unikd.distill.losses.masked import GaussianMaskedFeatureLoss
from unikd.distill.losses.projector import Projector
from unikd.distill.losses.relation import RelationDistillLoss
from unikd.distill.losses.response import ResponseDistillLoss
from unikd.distill.losses.term import TERM_KINDS, DistillTerm, TermSetup, register_term

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "TERM_KINDS",
    "AttentionTransferLoss",
    "CRDLoss",
    "DistillTerm",
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
    "TermSetup",
    "attention_map",
    "crd_nce_loss",
    "info_nce",
    "register_term",
]
