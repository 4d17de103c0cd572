"""The camera encoder and fusion encoder of UniDistill's BEVFusion checkpoints as unikd modules.

Keys are taken after the checkpoint's model prefix (`model.` in its Lightning `state_dict`, none in
the `model_state` its distillation experiments read). UniDistill's `camera_encoder.backbone` is
BEVDepth's LSSFPN, which unikd's camera branch reproduces with the options of
`unikd.models.configs.UNIDISTILL_CAMERA_BRANCH`:

- `img_backbone`: mmdet's ResNet-50 (style pytorch: the stride on the 3x3 conv), all four stages;
  its names (`conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}/bn{1,2,3}/downsample.{0,1}`) are
  torchvision's, which `camera.backbone` keeps.
- `img_neck`: mmdet3d's SECONDFPN, `deblocks.{i}.{0,1}` -> `camera.neck.blocks.{i}.{0,1}`. Its
  stride-1 level is a 1x1 ConvTranspose2d (weight [in, out, 1, 1]; mmdet3d's
  use_conv_for_no_stride=False), unikd's a 1x1 Conv2d ([out, in, 1, 1]): the same map with the
  first two weight dimensions swapped.
- `depth_net.0`: the one 1x1 conv to 112 depth logits then 256 context channels; the frustum, the
  lift and the voxel pooling are `geometry="bevdepth"` of `camera.view_transform` (feature cells at
  `linspace(0, W - 1, W_f)` pixels, depths at the bin starts 2, 2.5, ..., 57.5 m, cells by truncation
  toward zero, one z bin over [-5, 3] m, pooled straight into the 0.6 m 180 x 180 grid).
- `frustum`, `voxel_size`, `voxel_coord`, `voxel_num`: buffers derived from the configuration, which
  unikd derives from its own (`check_geometry_buffers` compares them).

Images: UniDistill reads them as RGB (skimage) and normalises them with mmcv's imnormalize(to_rgb=True),
which swaps them to BGR first, so its network sees channel c = (I[2 - c] - mean[c]) / std[c] (mean, std
of ImageNet in RGB order, as unikd's, which feeds (I[c] - mean[c]) / std[c]). `rgb_input` rewrites the
stem for unikd's images: conv1's input channels reversed and rescaled, the constant their offsets add
folded into bn1's running mean. Exact wherever conv1's 7x7 window lies inside the image; in the
outermost two output rows and columns of the stem the zero padding stands for another colour.

The pooled camera BEV is [B, C, Y, X] (the voxel-pooling kernel writes cell (batch, y, x)), row 0 at
y = -54 m: y-major like unikd's, so no map needs a transpose. The fusion encoder concatenates
(LiDAR, camera) where unikd's fuser concatenates (camera, LiDAR): `att.1` (1x1 conv, channel c gates
channel c) has its output and input channels, `reduce_conv.0` its input channels, rotated by half.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from unikd.data.nuscenes_dataset import IMAGENET_MEAN, IMAGENET_STD
from unikd.ops.bev_grid import BEVGrid

CAMERA_PREFIX = "camera_encoder.backbone."
GEOMETRY_BUFFERS = tuple(CAMERA_PREFIX + name for name in ("frustum", "voxel_size", "voxel_coord", "voxel_num"))

_RULES = (
    (re.compile(r"^camera_encoder\.backbone\.img_backbone\.(.+)$"), "camera.backbone.{0}"),
    (re.compile(r"^camera_encoder\.backbone\.img_neck\.deblocks\.(\d+)\.([01])\.(.+)$"), "camera.neck.blocks.{0}.{1}.{2}"),
    (re.compile(r"^camera_encoder\.backbone\.depth_net\.0\.(weight|bias)$"), "camera.view_transform.depth_net.0.{0}"),
    (re.compile(r"^fusion_encoder\.att\.1\.(weight|bias)$"), "fuser.attention.1.{0}"),
    (re.compile(r"^fusion_encoder\.reduce_conv\.([01])\.(.+)$"), "fuser.{0}.{1}"),
)


def unikd_camera_key(key: str) -> str | None:
    """The unikd detector key of a UniDistill camera-encoder or fusion-encoder key (after the model
    prefix); None for any other key, the geometry buffers included (`GEOMETRY_BUFFERS`)."""
    for pattern, template in _RULES:
        match = pattern.match(key)
        if match:
            return template.format(*match.groups())
    return None


def _lidar_camera_to_camera_lidar(value: torch.Tensor, dim: int) -> torch.Tensor:
    half = value.shape[dim] // 2
    return torch.cat([value.narrow(dim, half, value.shape[dim] - half), value.narrow(dim, 0, half)], dim)


def unikd_camera_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    """`value` of the UniDistill key `key` as unikd's module holds it (module docstring)."""
    if re.match(r"^camera_encoder\.backbone\.img_neck\.deblocks\.\d+\.0\.weight$", key) and value.shape[-2:] == (1, 1):
        return value.transpose(0, 1).contiguous()  # ConvTranspose2d 1x1 [in, out] -> Conv2d [out, in]
    if key == "fusion_encoder.att.1.weight":
        return _lidar_camera_to_camera_lidar(_lidar_camera_to_camera_lidar(value, 0), 1)
    if key == "fusion_encoder.att.1.bias":
        return _lidar_camera_to_camera_lidar(value, 0)
    if key == "fusion_encoder.reduce_conv.0.weight":
        return _lidar_camera_to_camera_lidar(value, 1)
    return value


def rgb_input(state: dict[str, torch.Tensor]) -> None:
    """Rewrite (in place) the stem of a converted camera branch (unikd keys) from UniDistill's BGR input
    to unikd's RGB input (module docstring)."""
    weight_key, mean_key = "camera.backbone.conv1.weight", "camera.backbone.bn1.running_mean"
    weight = state[weight_key].double()
    mean = torch.from_numpy(IMAGENET_MEAN).double()
    std = torch.from_numpy(IMAGENET_STD).double()
    flip = [2, 1, 0]
    # UniDistill's channel c = (std[2 - c] * x[2 - c] + mean[2 - c] - mean[c]) / std[c] of unikd's x
    state[weight_key] = (weight[:, flip] * (std / std[flip]).view(1, 3, 1, 1)).to(state[weight_key].dtype)
    offset = ((mean[flip] - mean) / std).view(1, 3, 1, 1)
    state[mean_key] = (state[mean_key].double() - (weight * offset).sum((1, 2, 3))).to(state[mean_key].dtype)


def camera_to_unikd(
    state: Mapping[str, torch.Tensor], rgb: bool = True
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(unikd keys and tensors of the camera and fusion encoders, the keys of `state` with no unikd
    counterpart other than the geometry buffers). With `rgb` (and an image backbone in `state`) the stem
    reads unikd's RGB images (`rgb_input`); without, the modules compute exactly UniDistill's function."""
    converted, unmapped = {}, []
    for key, value in state.items():
        target = unikd_camera_key(key)
        if target is not None:
            converted[target] = unikd_camera_tensor(key, value)
        elif key not in GEOMETRY_BUFFERS:
            unmapped.append(key)
    if rgb and "camera.backbone.conv1.weight" in converted:
        rgb_input(converted)
    return converted, unmapped


def expected_geometry_buffers(config: Mapping) -> dict[str, torch.Tensor]:
    """UniDistill's voxel_size, voxel_coord, voxel_num and frustum depths for a unikd model configuration
    (`point_cloud_range`, `camera.bev_cell`, `camera.depth_bins`)."""
    point_range, camera = config["point_cloud_range"], config["camera"]
    grid = BEVGrid.from_range(point_range, camera["bev_cell"])
    z_min, z_max = point_range[2], point_range[5]
    size = (grid.cell_x, grid.cell_y, z_max - z_min)
    lower = (grid.x_min, grid.y_min, z_min)
    return {
        "voxel_size": torch.tensor(size),
        "voxel_coord": torch.tensor([low + step / 2 for low, step in zip(lower, size, strict=True)]),
        "voxel_num": torch.tensor([grid.width, grid.height, 1]),
        "depths": torch.arange(*camera["depth_bins"], dtype=torch.float32),
    }


def check_geometry_buffers(state: Mapping[str, torch.Tensor], config: Mapping) -> None:
    """A ValueError when the geometry buffers of a UniDistill camera encoder (those present in `state`)
    say another BEV grid, z range or set of depth bins than the unikd configuration `config`."""
    expected = expected_geometry_buffers(config)
    found = {name: state[CAMERA_PREFIX + name] for name in ("voxel_size", "voxel_coord", "voxel_num") if CAMERA_PREFIX + name in state}
    if CAMERA_PREFIX + "frustum" in state:
        found["depths"] = state[CAMERA_PREFIX + "frustum"][:, 0, 0, 2]  # [D, H_f, W_f, (u, v, d, 1)]
    differing = [
        f"{name}: checkpoint {value.tolist()} vs configuration {expected[name].tolist()}"
        for name, value in found.items()
        if value.shape != expected[name].shape or not torch.allclose(value.double(), expected[name].double(), atol=1e-5)
    ]
    if differing:
        raise ValueError("the UniDistill camera encoder's geometry differs from the configuration's: " + "; ".join(differing))
