"""BEVFusion's DepthLSS depth net (mmdet3d `projects/BEVFusion` DepthLSSTransform): the depth and context
logits read the image features and a LiDAR depth image of the same camera.

`lidar_depth_image` draws the batch's points into each augmented image, as mmdet3d's BaseDepthTransform
does: every point (all sweeps) goes back through `bda`, into the camera (`lidar2cam`, `cam2img`) and the
augmented image (`img_aug`); a point whose augmented pixel (u, v) lies in [0, W) x [0, H) writes its
camera depth z (clamped to [1e-5, 1e5]) at row floor(v), column floor(u), zero elsewhere. Where several
points fall on one pixel the nearest is kept (mmdet3d keeps whichever write lands last, which torch leaves
undefined).

`DepthLSSNet` keeps mmdet3d's module names and indices (`dtransform.{0,1,3,4,6,7}`,
`depthnet.{0,1,3,4,6}`), so its weights load by key: `dtransform` brings the depth image to the feature
stride 8 (1x1 conv to 8 channels, 5x5 stride 4 to 32, 5x5 stride 2 to 64, each with BN and ReLU), and
`depthnet` reads cat(depth features, image features) (two 3x3 conv + BN + ReLU, then a 1x1 conv to the
D depth logits and the C context channels; every conv with a bias).
"""

from __future__ import annotations

import torch
from torch import nn

from unikd.models.camera.depth_loss import project_points
from unikd.models.registry import DEPTH_NETS

DEPTH_IMAGE_STRIDE = 8  # of dtransform: 1 x 4 x 2
DEPTH_FEATURE_CHANNELS = 64


def lidar_depth_image(
    points: list[torch.Tensor],
    lidar2cam: torch.Tensor,
    cam2img: torch.Tensor,
    img_aug: torch.Tensor,
    bda: torch.Tensor,
    image_size: tuple[int, int],
) -> torch.Tensor:
    """[B, Ncam, 1, H, W] camera depth of the nearest point per pixel of each augmented image (module doc).

    `points[b]` is [P, >=3] in the augmented LiDAR frame; the matrices are [B, Ncam, 4, 4] and `bda` [B, 4, 4].
    """
    height, width = image_size
    batch, num_cams = lidar2cam.shape[:2]
    depth_image = torch.zeros(batch, num_cams * height * width, device=lidar2cam.device)
    for b in range(batch):
        uv, depth = project_points(
            points[b][:, :3], lidar2cam[b], cam2img[b], img_aug[b], bda[b], min_depth=1e-5
        )
        depth = depth.clamp(1e-5, 1e5)
        u, v = uv.unbind(-1)
        inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
        cam_index = torch.arange(num_cams, device=depth.device).unsqueeze(1).expand_as(depth)
        pixel = (cam_index * height + v.clamp(0, height - 1).long()) * width + u.clamp(0, width - 1).long()
        depth_image[b].scatter_reduce_(0, pixel[inside], depth[inside], reduce="amin", include_self=False)
    return depth_image.view(batch, num_cams, 1, height, width)


def conv_bn_relu_layers(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> list[nn.Module]:
    """Conv (with bias) + BN + ReLU as three entries of a flat nn.Sequential (mmdet3d's indices)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


@DEPTH_NETS.register("depth_lss")
class DepthLSSNet(nn.Module):
    """(image features [N, C_in, H_f, W_f], depth image [N, 1, 8 H_f, 8 W_f]) -> [N, D + C, H_f, W_f] logits."""

    needs_points = True  # its forward reads the LiDAR depth image
    feature_stride = DEPTH_IMAGE_STRIDE

    def __init__(self, in_channels: int, num_bins: int, context_channels: int):
        super().__init__()
        self.dtransform = nn.Sequential(
            *conv_bn_relu_layers(1, 8, 1),
            *conv_bn_relu_layers(8, 32, 5, stride=4),
            *conv_bn_relu_layers(32, DEPTH_FEATURE_CHANNELS, 5, stride=2),
        )
        self.depthnet = nn.Sequential(
            *conv_bn_relu_layers(in_channels + DEPTH_FEATURE_CHANNELS, in_channels, 3),
            *conv_bn_relu_layers(in_channels, in_channels, 3),
            nn.Conv2d(in_channels, num_bins + context_channels, 1),
        )

    def forward(self, features: torch.Tensor, depth_image: torch.Tensor) -> torch.Tensor:
        depth = self.dtransform(depth_image)
        if depth.shape[-2:] != features.shape[-2:]:
            raise ValueError(
                f"depth image {tuple(depth_image.shape[-2:])} / {DEPTH_IMAGE_STRIDE} is {tuple(depth.shape[-2:])}, "
                f"not the feature size {tuple(features.shape[-2:])}"
            )
        return self.depthnet(torch.cat([depth, features], dim=1))
