"""Detection heads."""

from unikd.models.heads.center_head import CenterHead, gaussian_focal_loss
from unikd.models.heads.center_targets import TaskTargets, gaussian_gt_mask
from unikd.models.heads.transfusion_head import TransFusionHead

__all__ = ["CenterHead", "TaskTargets", "TransFusionHead", "gaussian_focal_loss", "gaussian_gt_mask"]
