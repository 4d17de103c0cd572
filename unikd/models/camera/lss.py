"""Lift-splat-shoot view transform and the camera BEV encoder (ResNet -> FPN -> LSS).

Frustum: one point per image feature cell and depth bin. Feature cell (i, j) at stride s
covers the augmented pixels [i*s, (i+1)*s) x [j*s, (j+1)*s), its centre is the pixel
((j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5) (integer pixel coordinates at pixel centres, as
`cam2img`), and depth bin k is lifted at its centre `start + (k + 0.5) * step` (camera z).
Lift: augmented pixel -> original pixel (inverse `img_aug`) -> camera (inverse `cam2img`,
times the depth) -> LiDAR (inverse `lidar2cam`) -> augmented LiDAR (`bda`).

`geometry="bevdepth"` is BEVDepth's LSSFPN instead (which UniDistill uses; mmdet3d BEVFusion's
DepthLSSTransform builds and pools the same frustum, with `splat_z_range` its zbound), point for point:
feature cell (i, j) of an H_f x W_f map of an H x W image sits at the pixel
(j * (W - 1) / (W_f - 1), i * (H - 1) / (H_f - 1)) (`linspace(0, W - 1, W_f)`), depth bin k at
its start `start + k * step`; the lift is the same chain of matrices, evaluated as BEVDepth
does (inverse `img_aug` on (u, v, d, 1), then `inverse(lidar2cam) @ inverse(cam2img)`, then
`bda`), and a point's cell is `int((p - lower) / cell)`: truncated toward zero, so points up to
one cell below the grid's lower x, y or z edge land in its first cell. The pooled map is
y-major ([B, C, Y, X], row 0 at y_min) as unikd's.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from unikd.models.camera.depth_loss import depth_loss, depth_targets, num_depth_bins
from unikd.models.camera.depth_lss import lidar_depth_image  # its module registers the depth net "depth_lss"
from unikd.models.camera.fpn import conv_bn_relu, image_neck
from unikd.models.camera.resnet import ResNet, load_torchvision_state_dict
from unikd.models.camera.swin import SwinTransformer
from unikd.models.registry import CAMERA_BACKBONES, DEPTH_NETS
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.bev_pool import bev_pool
from unikd.ops.checks import value_checks
from unikd.ops.precision import in_float32

NUSCENES_POINT_RANGE = (-54.0, -54.0, -10.0, 54.0, 54.0, 10.0)
GEOMETRIES = ("unikd", "bevdepth")


def camera_rays(
    uv: torch.Tensor, lidar2cam: torch.Tensor, cam2img: torch.Tensor, img_aug: torch.Tensor, bda: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of augmented pixels [B, Ncam, M, 2] in the augmented LiDAR frame.

    Returns `direction` [B, Ncam, M, 3] and `origin` [B, Ncam, 1, 3] such that the pixel seen
    at camera depth z (camera-frame z) is `origin + z * direction`.
    """
    uv01 = torch.cat([uv, torch.zeros_like(uv[..., :1]), torch.ones_like(uv[..., :1])], dim=-1)
    original = torch.einsum("bnij,bnmj->bnmi", torch.linalg.inv(img_aug), uv01)[..., :2]
    pixel_to_lidar = bda[:, None] @ torch.linalg.inv(lidar2cam) @ torch.linalg.inv(cam2img)  # [B, N, 4, 4]
    # camera-frame point at depth z: inverse(cam2img) @ (u z, v z, z, 1)
    homogeneous = torch.cat([original, torch.ones_like(original[..., :1])], dim=-1)  # (u, v, 1)
    direction = torch.einsum("bnij,bnmj->bnmi", pixel_to_lidar[..., :3, :3], homogeneous)
    origin = pixel_to_lidar[..., None, :3, 3]
    return direction, origin


def pixel_to_lidar(
    uv: torch.Tensor,
    depth: torch.Tensor,
    lidar2cam: torch.Tensor,
    cam2img: torch.Tensor,
    img_aug: torch.Tensor,
    bda: torch.Tensor,
) -> torch.Tensor:
    """Augmented-LiDAR points [B, Ncam, M, 3] of augmented pixels [B, Ncam, M, 2] at camera depths [B, Ncam, M]."""
    direction, origin = camera_rays(uv, lidar2cam, cam2img, img_aug, bda)
    return origin + depth.unsqueeze(-1) * direction


def resample_bev(bev: torch.Tensor, source: BEVGrid, target: BEVGrid) -> torch.Tensor:
    """Bilinear resampling of a [B, C, H, W] map on `source` at the cell centres of `target`."""
    if source == target:
        return bev
    centres = target.cell_centers(bev.device)  # [H', W', 2] metric (x, y)
    grid = source.metric_to_normalized(centres).to(bev.dtype).expand(bev.shape[0], -1, -1, -1)
    return F.grid_sample(bev, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@DEPTH_NETS.register("3x3+1x1")
class ConvDepthNet(nn.Sequential):
    """LSS's depth net: 3x3 conv + BN + ReLU, then a 1x1 conv to D depth logits and C context channels."""

    needs_points = False
    feature_stride = None  # any

    def __init__(self, in_channels: int, num_bins: int, context_channels: int):
        head = nn.Conv2d(in_channels, num_bins + context_channels, 1)
        super().__init__(conv_bn_relu(in_channels, in_channels, 3), head)


@DEPTH_NETS.register("1x1")
class LinearDepthNet(nn.Sequential):
    """BEVDepth's (UniDistill's) depth net: the 1x1 conv to D depth logits and C context channels alone."""

    needs_points = False
    feature_stride = None  # any

    def __init__(self, in_channels: int, num_bins: int, context_channels: int):
        super().__init__(nn.Conv2d(in_channels, num_bins + context_channels, 1))


class LSSViewTransform(nn.Module):
    """Image features of every camera -> camera BEV [B, C, H, W] on `output_grid`, and depth probabilities.

    A depth head predicts D depth logits and C context channels per feature cell; the frustum
    carries softmax(depth) x context and is summed per BEV cell of a `bev_cell` grid over
    `point_cloud_range` (points outside x, y, or z range are dropped), then convolved with
    stride `bev_downsample`, then resampled to `output_grid` when that grid differs.
    Geometry depends only on the matrices and the feature size; the last one is cached and
    reused when the same values come again.

    `depth_net`: a depth net of the `DEPTH_NETS` registry (`unikd.models.registry`): "3x3+1x1"
    (`ConvDepthNet`), "1x1" (`LinearDepthNet`, BEVDepth/UniDistill) or "depth_lss" (BEVFusion's,
    `depth_lss.DepthLSSNet`: it also reads the LiDAR depth image of the batch's points, so `forward` needs
    them; feature stride 8).
    `geometry`: "unikd" or "bevdepth" (module doc). `splat_z_range`: the (z_min, z_max) of the pooled
    frustum points, when it is not the point cloud range's.
    """

    def __init__(
        self,
        in_channels: int = 256,
        context_channels: int = 80,
        feature_stride: int = 8,
        depth_bins: tuple[float, float, float] = (1.0, 60.0, 0.5),
        point_cloud_range: tuple[float, ...] = NUSCENES_POINT_RANGE,
        bev_cell: float = 0.3,
        bev_downsample: int = 2,
        output_grid: BEVGrid | None = None,
        depth_net: str = "3x3+1x1",
        geometry: str = "unikd",
        splat_z_range: tuple[float, float] | None = None,
    ):
        super().__init__()
        depth_net_class = DEPTH_NETS.lookup(depth_net)
        if geometry not in GEOMETRIES:
            raise ValueError(f"camera geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if depth_net_class.feature_stride not in (None, feature_stride):
            raise ValueError(
                f"depth_net {depth_net!r} reads features at stride {depth_net_class.feature_stride}, got stride {feature_stride}"
            )
        self.needs_points = depth_net_class.needs_points
        self.context_channels = context_channels
        self.feature_stride = feature_stride
        self.geometry_convention = geometry
        self.depth_bins = tuple(depth_bins)
        self.num_bins = num_depth_bins(self.depth_bins)
        start, stop, step = self.depth_bins
        if geometry == "bevdepth":
            bin_depths = torch.arange(start, stop, step, dtype=torch.float32)  # bin starts, as BEVDepth
            if len(bin_depths) != self.num_bins:
                raise ValueError(f"depth bins {depth_bins}: arange gives {len(bin_depths)} bins, not {self.num_bins}")
        else:
            bin_depths = start + (torch.arange(self.num_bins, dtype=torch.float32) + 0.5) * step
        self.register_buffer("bin_depths", bin_depths, persistent=False)
        self.z_range = tuple(splat_z_range) if splat_z_range is not None else (point_cloud_range[2], point_cloud_range[5])
        if len(self.z_range) != 2 or not self.z_range[0] < self.z_range[1]:
            raise ValueError(f"splat_z_range must be (z_min, z_max) with z_min < z_max, got {splat_z_range}")
        self.splat_grid = BEVGrid.from_range(point_cloud_range, bev_cell)
        grid, depth_z = self.splat_grid, self.z_range[1] - self.z_range[0]
        # BEVDepth's voxel size and first voxel centre (x, y, one z bin), float32 as it computes them
        self.register_buffer("voxel_size", torch.tensor([grid.cell_x, grid.cell_y, depth_z]), persistent=False)
        self.register_buffer(
            "voxel_lower",
            torch.tensor([grid.x_min + grid.cell_x / 2, grid.y_min + grid.cell_y / 2, self.z_range[0] + depth_z / 2])
            - self.voxel_size / 2,
            persistent=False,
        )
        if self.splat_grid.height % bev_downsample or self.splat_grid.width % bev_downsample:
            raise ValueError(
                f"splat grid {self.splat_grid.height}x{self.splat_grid.width} is not divisible by bev_downsample={bev_downsample}"
            )
        self.bev_grid = self.splat_grid.resized(
            self.splat_grid.height // bev_downsample, self.splat_grid.width // bev_downsample
        )
        self.output_grid = output_grid or self.bev_grid
        self.depth_net = depth_net_class(in_channels, self.num_bins, context_channels)
        if bev_downsample == 1:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(
                conv_bn_relu(context_channels, context_channels, 3),
                conv_bn_relu(context_channels, context_channels, 3, stride=bev_downsample),
                conv_bn_relu(context_channels, context_channels, 3),
            )
        # ((feature size, matrices, their versions, copies of them), (point_index, cell_index)): `_same_key`
        self._geometry_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    @in_float32  # the geometry's matmuls lose metres in 16 bits under autocast
    def frustum_points(
        self,
        lidar2cam: torch.Tensor,
        cam2img: torch.Tensor,
        img_aug: torch.Tensor,
        bda: torch.Tensor,
        feature_size: tuple[int, int],
    ) -> torch.Tensor:
        """Augmented-LiDAR xyz of every frustum point, [B, Ncam, D, H_f, W_f, 3]."""
        if self.geometry_convention == "bevdepth":
            return self._bevdepth_frustum_points(lidar2cam, cam2img, img_aug, bda, feature_size)
        height, width = feature_size
        stride = self.feature_stride
        device = lidar2cam.device
        v = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride - 0.5
        u = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride - 0.5
        grid_v, grid_u = torch.meshgrid(v, u, indexing="ij")
        uv = torch.stack([grid_u, grid_v], dim=-1).view(1, 1, -1, 2).expand(*lidar2cam.shape[:2], -1, -1)
        direction, origin = camera_rays(uv, lidar2cam.float(), cam2img.float(), img_aug.float(), bda.float())
        # [B, N, D, M, 3]
        points = origin[:, :, None] + self.bin_depths.view(-1, 1, 1) * direction[:, :, None]
        return points.view(*points.shape[:3], height, width, 3)

    def _bevdepth_frustum_points(
        self,
        lidar2cam: torch.Tensor,
        cam2img: torch.Tensor,
        img_aug: torch.Tensor,
        bda: torch.Tensor,
        feature_size: tuple[int, int],
    ) -> torch.Tensor:
        """`frustum_points` as BEVDepth's LSSFPN computes them, operation for operation (module doc)."""
        height, width = feature_size
        stride = self.feature_stride
        batch, num_cams = lidar2cam.shape[:2]
        device = lidar2cam.device
        shape = (self.num_bins, height, width)
        depths = self.bin_depths.view(-1, 1, 1).expand(shape)
        u = torch.linspace(0, width * stride - 1, width, device=device).view(1, 1, width).expand(shape)
        v = torch.linspace(0, height * stride - 1, height, device=device).view(1, height, 1).expand(shape)
        frustum = torch.stack((u, v, depths, torch.ones_like(depths)), -1).unsqueeze(-1)  # [D, H, W, 4, 1]
        per_camera = (batch, num_cams, 1, 1, 1, 4, 4)
        points = img_aug.float().reshape(per_camera).inverse().matmul(frustum)
        points = torch.cat((points[..., :2, :] * points[..., 2:3, :], points[..., 2:, :]), 5)
        combine = torch.inverse(lidar2cam.float()).matmul(torch.inverse(cam2img.float()))
        points = combine.reshape(per_camera).matmul(points)
        points = (bda.float().unsqueeze(1).repeat(1, num_cams, 1, 1).reshape(per_camera) @ points).squeeze(-1)
        return points[..., :3]

    def _cells(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(col, row, inside) of frustum points [..., 3] on the splat grid."""
        grid = self.splat_grid
        if self.geometry_convention == "bevdepth":
            col, row, level = ((points - self.voxel_lower) / self.voxel_size).int().long().unbind(-1)
            inside = (level >= 0) & (level < 1)
        else:
            col = torch.floor((points[..., 0] - grid.x_min) / grid.cell_x).long()
            row = torch.floor((points[..., 1] - grid.y_min) / grid.cell_y).long()
            z = points[..., 2]
            inside = (z >= self.z_range[0]) & (z < self.z_range[1])
        inside &= (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)
        return col, row, inside

    def geometry(
        self,
        lidar2cam: torch.Tensor,
        cam2img: torch.Tensor,
        img_aug: torch.Tensor,
        bda: torch.Tensor,
        feature_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(point_index, cell_index): the flat frustum index (b, n, d, i, j) of every point inside
        the splat grid and z range, and its flat BEV cell index (b, row, col)."""
        key = (tuple(feature_size), lidar2cam, cam2img, img_aug, bda)
        if self._geometry_cache is not None and _same_key(self._geometry_cache[0], key):
            return self._geometry_cache[1]
        # The compaction to the points inside (`nonzero`) reads a count back: one host sync per call on a GPU.
        points = self.frustum_points(lidar2cam, cam2img, img_aug, bda, feature_size)
        grid = self.splat_grid
        col, row, inside = self._cells(points)
        batch = torch.arange(points.shape[0], device=points.device).view(-1, 1, 1, 1, 1)
        cell = (batch * grid.height + row) * grid.width + col
        point_index = inside.view(-1).nonzero().squeeze(1)
        result = (point_index, cell.view(-1)[point_index])
        matrices = (lidar2cam, cam2img, img_aug, bda)
        versions = tuple(None if m.is_inference() else m._version for m in matrices)  # inference tensors have none
        copies = tuple(m.detach().clone() for m in matrices)
        self._geometry_cache = ((tuple(feature_size), matrices, versions, copies), result)
        return result

    def depth_and_context(
        self,
        features: torch.Tensor,
        lidar2cam: torch.Tensor,
        cam2img: torch.Tensor,
        img_aug: torch.Tensor,
        bda: torch.Tensor,
        points: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Ncam, C_in, H_f, W_f] image features -> (depth probabilities [B*Ncam, D, H_f, W_f], context
        [B*Ncam, C, H_f, W_f]): the depth net alone, before the splat."""
        height, width = features.shape[-2:]
        if self.needs_points:
            if points is None:
                raise ValueError("this depth net reads the LiDAR depth image: pass the batch's points")
            image_size = (height * self.feature_stride, width * self.feature_stride)
            depth_image = lidar_depth_image(points, lidar2cam, cam2img, img_aug, bda, image_size)
            out = self.depth_net(features.flatten(0, 1), depth_image.flatten(0, 1))
        else:
            out = self.depth_net(features.flatten(0, 1))  # [B*N, D + C, H_f, W_f]
        return out[:, : self.num_bins].softmax(dim=1), out[:, self.num_bins :]

    def forward(
        self,
        features: torch.Tensor,
        lidar2cam: torch.Tensor,
        cam2img: torch.Tensor,
        img_aug: torch.Tensor,
        bda: torch.Tensor,
        points: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Ncam, C_in, H_f, W_f] image features -> (camera BEV [B, C, H, W] on `output_grid`,
        depth probabilities [B, Ncam, D, H_f, W_f]). `points`: the batch's, for the "depth_lss" depth net."""
        batch, num_cams, _, height, width = features.shape
        depth, context = self.depth_and_context(features, lidar2cam, cam2img, img_aug, bda, points)
        point_index, cell_index = self.geometry(lidar2cam, cam2img, img_aug, bda, (height, width))
        pixels = height * width
        pixel_index = point_index // (self.num_bins * pixels) * pixels + point_index % pixels  # (b, n, i, j)
        context = context.permute(0, 2, 3, 1).reshape(-1, self.context_channels)
        splat = depth.reshape(-1)[point_index].unsqueeze(1) * context[pixel_index]
        grid = self.splat_grid
        bev = bev_pool(splat, cell_index, batch, grid.height, grid.width)
        bev = resample_bev(self.downsample(bev), self.bev_grid, self.output_grid)
        return bev, depth.view(batch, num_cams, self.num_bins, height, width)


def _same_key(cached: tuple, key: tuple) -> bool:
    """Whether `key` (feature size, the four matrices) is the cached geometry's: the same matrix values where
    `value_checks` allows reading them (CPU, or UNIKD_SYNC_CHECKS=1), else the very same tensors unmodified
    since (a comparison of values on a GPU is a host sync; the matrices change with every training batch)."""
    size, originals, versions, copies = cached
    if size != key[0]:
        return False
    if not value_checks(key[1]):
        return all(a is b and v is not None and a._version == v for a, b, v in zip(originals, key[1:], versions, strict=True))
    return all(
        a.shape == b.shape and a.device == b.device and torch.equal(a, b)
        for a, b in zip(copies, key[1:], strict=True)
    )


@CAMERA_BACKBONES.register("resnet")
def resnet_backbone(
    out_indices: tuple[int, ...],
    backbone_depth: int = 50,
    base_width: int = 64,
    pretrained: str | os.PathLike | None = None,
    **other,
) -> ResNet:
    """A ResNet of `backbone_depth` layers at `base_width`, torchvision ImageNet weights from `pretrained`."""
    if other:
        raise ValueError(
            f"the resnet backbone takes no {' / '.join(sorted(other))} settings "
            "(its settings: backbone_depth, base_width, pretrained)"
        )
    model = ResNet(backbone_depth, out_indices, base_width)
    if pretrained is not None:
        load_torchvision_state_dict(model, pretrained)
    return model


@CAMERA_BACKBONES.register("swin")
def swin_backbone(
    out_indices: tuple[int, ...], swin: dict | None = None, pretrained: None = None, **other
) -> SwinTransformer:
    """A Swin Transformer of the `swin` settings (those of `SwinTransformer` other than `out_indices`; Swin-T)."""
    if other:
        raise ValueError(f"the swin backbone takes no {' / '.join(sorted(other))} (its settings: swin), got {other}")
    if pretrained is not None:
        raise ValueError("pretrained (a torchvision ResNet file) does not apply to the swin backbone")
    return SwinTransformer(out_indices=out_indices, **(swin or {}))


class CameraBEVOutput(NamedTuple):
    bev: torch.Tensor  # [B, C, H, W] on the encoder's output grid
    depth_probs: torch.Tensor  # [B, Ncam, D, H_f, W_f]


class CameraBEVEncoder(nn.Module):
    """Camera branch: image backbone (registered) -> image neck -> LSSViewTransform (with a registered depth net).

    Defaults are the nuScenes reference: 256x704 images, ResNet-50 stages (1, 2, 3) fused at
    stride 8 into 256 channels, 80 context channels, depth bins [1, 60, 0.5] (118), a 0.3 m
    splat grid over [-54, 54] m downsampled to 180x180. ResNet-50 is the default because it is
    the camera student of UniDistill's nuScenes setting (BEVDepth-style, 256x704) and has
    torchvision ImageNet weights (`pretrained`: path of a torchvision state dict file).
    The CPU setting is the camera of `unikd.models.configs.SMALL` (ResNet-18 at width 16, stride 8).
    UniDistill's camera encoder (BEVDepth's LSSFPN) is `neck="secondfpn"` with
    `neck_upsample_strides`, `depth_net="1x1"` and `geometry="bevdepth"`
    (`unikd.models.configs.UNIDISTILL_CAMERA_BRANCH`); `fpn.image_neck` and `LSSViewTransform` say what they change.
    BEVFusion's camera branch (mmdet3d `projects/BEVFusion`) is `backbone="swin"` with `depth_net="depth_lss"`,
    `geometry="bevdepth"` and `splat_z_range` (`unikd.models.configs.BEVFUSION_CAMERA`).

    `backbone` names a camera backbone of the `CAMERA_BACKBONES` registry (`unikd.models.registry`), built
    from `out_indices` and `backbone_settings` (the keyword arguments not listed here): "resnet"
    (`resnet_backbone`: `backbone_depth`, default 50, `base_width`, default 64, `pretrained`) or "swin"
    (`swin_backbone`: `swin`, the `SwinTransformer` settings other than `out_indices`, default Swin-T).
    """

    def __init__(
        self,
        backbone: str = "resnet",
        out_indices: tuple[int, ...] = (1, 2, 3),
        neck_channels: int | tuple[int, ...] = 256,
        context_channels: int = 80,
        depth_bins: tuple[float, float, float] = (1.0, 60.0, 0.5),
        point_cloud_range: tuple[float, ...] = NUSCENES_POINT_RANGE,
        bev_cell: float = 0.3,
        bev_downsample: int = 2,
        output_grid: BEVGrid | None = None,
        neck: str = "lss",
        neck_upsample_strides: tuple[float, ...] | None = None,
        depth_net: str = "3x3+1x1",
        geometry: str = "unikd",
        splat_z_range: tuple[float, float] | None = None,
        **backbone_settings,
    ):
        super().__init__()
        self.backbone = CAMERA_BACKBONES.build(backbone, out_indices, **backbone_settings)
        self.neck, neck_out, self.feature_stride = image_neck(
            neck, self.backbone.out_channels, self.backbone.out_strides, neck_channels, neck_upsample_strides
        )
        self.view_transform = LSSViewTransform(
            in_channels=neck_out,
            context_channels=context_channels,
            feature_stride=self.feature_stride,
            depth_bins=depth_bins,
            point_cloud_range=point_cloud_range,
            bev_cell=bev_cell,
            bev_downsample=bev_downsample,
            output_grid=output_grid,
            depth_net=depth_net,
            geometry=geometry,
            splat_z_range=splat_z_range,
        )
        self.needs_points = self.view_transform.needs_points
        self.out_channels = context_channels
        self.output_grid = self.view_transform.output_grid

    def forward(
        self,
        imgs: torch.Tensor,
        lidar2cam: torch.Tensor,
        cam2img: torch.Tensor,
        img_aug: torch.Tensor,
        bda: torch.Tensor,
        points: list[torch.Tensor] | None = None,
    ) -> CameraBEVOutput:
        """[B, Ncam, 3, H, W] normalised images (H, W multiples of the feature stride) -> BEV and depth.
        `points` (the batch's, augmented frame): read only by the "depth_lss" depth net."""
        features = self.image_features(imgs)
        bev, depth_probs = self.view_transform(features, lidar2cam, cam2img, img_aug, bda, points)
        return CameraBEVOutput(bev, depth_probs)

    def image_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, Ncam, 3, H, W] normalised images -> neck features [B, Ncam, C, H / stride, W / stride]."""
        batch, num_cams, _, height, width = imgs.shape
        stride = self.feature_stride
        if height % stride or width % stride:
            raise ValueError(f"image size {height}x{width} must be a multiple of the feature stride {stride}")
        features = self.neck(self.backbone(imgs.flatten(0, 1)))
        if tuple(features.shape[-2:]) != (height // stride, width // stride):
            raise ValueError(f"neck output {tuple(features.shape[-2:])} is not the image size / {stride}")
        return features.view(batch, num_cams, *features.shape[1:])

    def image_depth(
        self,
        imgs: torch.Tensor,
        lidar2cam: torch.Tensor,
        cam2img: torch.Tensor,
        img_aug: torch.Tensor,
        bda: torch.Tensor,
        points: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Depth probabilities [B, Ncam, D, H_f, W_f] of `forward`, without the view transform's splat."""
        features = self.image_features(imgs)
        depth, _ = self.view_transform.depth_and_context(features, lidar2cam, cam2img, img_aug, bda, points)
        return depth.view(*features.shape[:2], *depth.shape[1:])

    def depth_targets(
        self,
        depth_probs: torch.Tensor,
        points: list[torch.Tensor],
        lidar2cam: torch.Tensor,
        cam2img: torch.Tensor,
        img_aug: torch.Tensor,
        bda: torch.Tensor,
    ) -> torch.Tensor:
        """The LiDAR depth bin of every feature cell of `depth_probs` ([B, Ncam, H_f, W_f], -1 without a point)
        from the batch's (augmented-frame) points."""
        stride = self.feature_stride
        image_size = (depth_probs.shape[-2] * stride, depth_probs.shape[-1] * stride)
        return depth_targets(
            points, lidar2cam, cam2img, img_aug, bda, image_size, stride, self.view_transform.depth_bins
        )

    def depth_loss(
        self,
        depth_probs: torch.Tensor,
        points: list[torch.Tensor],
        lidar2cam: torch.Tensor,
        cam2img: torch.Tensor,
        img_aug: torch.Tensor,
        bda: torch.Tensor,
    ) -> torch.Tensor:
        """Depth BCE of `depth_probs` against targets from the batch's (augmented-frame) LiDAR points."""
        return depth_loss(depth_probs, self.depth_targets(depth_probs, points, lidar2cam, cam2img, img_aug, bda))
