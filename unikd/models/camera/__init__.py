"""Camera branch: an image backbone (registered in `CAMERA_BACKBONES`: ResNet, Swin), an image neck, the LSS
view transform with a depth net (registered in `DEPTH_NETS`: LSS's, BEVDepth's 1x1, BEVFusion's DepthLSS) and
depth supervision. Importing it registers its backbones and depth nets (`unikd.models.registry`)."""

from unikd.models.camera.depth_loss import depth_loss, depth_targets, num_depth_bins, project_points
from unikd.models.camera.depth_lss import DepthLSSNet, lidar_depth_image
from unikd.models.camera.fpn import LSSFPN
from unikd.models.camera.lss import (
    CameraBEVEncoder,
    CameraBEVOutput,
    ConvDepthNet,
    LinearDepthNet,
    LSSViewTransform,
    camera_rays,
    pixel_to_lidar,
    resample_bev,
)
from unikd.models.camera.resnet import ResNet, load_torchvision_state_dict
from unikd.models.camera.swin import SwinTransformer

__all__ = [
    "LSSFPN",
    "CameraBEVEncoder",
    "CameraBEVOutput",
    "ConvDepthNet",
    "DepthLSSNet",
    "LSSViewTransform",
    "LinearDepthNet",
    "ResNet",
    "SwinTransformer",
    "camera_rays",
    "depth_loss",
    "depth_targets",
    "lidar_depth_image",
    "load_torchvision_state_dict",
    "num_depth_bins",
    "pixel_to_lidar",
    "project_points",
    "resample_bev",
]
