"""Camera branch: ResNet backbone, LSS FPN neck, LSS view transform and depth supervision."""

from unikd.models.camera.depth_loss import depth_loss, depth_targets, num_depth_bins
from unikd.models.camera.fpn import LSSFPN
from unikd.models.camera.lss import (
    CameraBEVEncoder,
    CameraBEVOutput,
    LSSViewTransform,
    camera_rays,
    pixel_to_lidar,
    resample_bev,
)
from unikd.models.camera.resnet import ResNet, load_torchvision_state_dict

__all__ = [
    "LSSFPN",
    "CameraBEVEncoder",
    "CameraBEVOutput",
    "LSSViewTransform",
    "ResNet",
    "camera_rays",
    "depth_loss",
    "depth_targets",
    "load_torchvision_state_dict",
    "num_depth_bins",
    "pixel_to_lidar",
    "resample_bev",
]
