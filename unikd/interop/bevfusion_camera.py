"""The camera branch of mmdet3d's BEVFusion (projects/BEVFusion: `img_backbone`, `img_neck`, `view_transform`)
as unikd's camera module (`unikd.models.configs.BEVFUSION_CAMERA`).

Keys are taken after the detector's prefix (none in an mmdet3d checkpoint's `state_dict`); mit-han-lab's
names become these through `unikd.interop.bevfusion.mit_han_lab_to_mmdet3d`.

- `img_backbone.*` -> `camera.backbone.*`: mmdet's SwinTransformer, whose names and shapes unikd's
  `SwinTransformer` keeps (`unikd.models.camera.swin`; `relative_position_index` is a buffer of both).
- `img_neck` (GeneralizedLSSFPN): the view transform reads only its first output, which is unikd's `LSSFPN`
  (the same upsample-concatenate-1x1-3x3 top-down path, bilinear without corner alignment); mmdet3d numbers
  its levels from the shallowest, unikd from the deepest: with L lateral convs,
  `lateral_convs.{i}.{conv,bn}` -> `camera.neck.lateral.{L-1-i}.{0,1}` and `fpn_convs.{i}.{conv,bn}` ->
  `camera.neck.smooth.{L-1-i}.{0,1}`.
- `view_transform.dtransform.*`, `view_transform.depthnet.*` -> `camera.view_transform.depth_net.*`
  (`unikd.models.camera.depth_lss.DepthLSSNet` keeps their indices).
- `view_transform.downsample.{0,1,3,4,6,7}` (conv, BN, ReLU three times) ->
  `camera.view_transform.downsample.{0,1,2}.{0,1}`. BEVFusion's BEV is x-major ([B, C, X, Y]: its
  bev_pool writes cell (x, y)), unikd's y-major ([B, C, Y, X]): a convolution on the transposed map is the
  convolution with the transposed kernel (and, stride and padding being the same along both axes, gives the
  transposed output), so each conv weight [out, in, kh, kw] has its last two dimensions swapped.
- `view_transform.{dx, bx, nx, frustum}`: the grid (cell size, first cell centre, cell counts, in x, y, z)
  and the frustum, derived from the configuration; `check_geometry` compares them with unikd's.

The frustum is BEVDepth's (`geometry="bevdepth"`: cell (i, j) of the H_f x W_f feature map at the pixel
(j (W - 1) / (W_f - 1), i (H - 1) / (H_f - 1)), depths at the bin starts `arange(*dbound)`, cells by
truncation toward zero), pooled over one z bin of `zbound` (`splat_z_range`).

Images: BEVFusion reads RGB (pillow, channel_order 'rgb'; `bgr_to_rgb=False`) normalised with the
ImageNet mean and std (x 255): unikd's normalisation of the same picture, so no weight changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from unikd.ops.bev_grid import BEVGrid

GEOMETRY_KEYS = tuple(f"view_transform.{name}" for name in ("dx", "bx", "nx", "frustum"))

_DIRECT = (
    (re.compile(r"^img_backbone\.(.+)$"), "camera.backbone.{0}"),
    (re.compile(r"^view_transform\.(dtransform|depthnet)\.(.+)$"), "camera.view_transform.depth_net.{0}.{1}"),
)
_NECK = re.compile(r"^img_neck\.(lateral_convs|fpn_convs)\.(\d+)\.(conv|bn)\.(.+)$")
_NECK_PARTS = {"lateral_convs": "lateral", "fpn_convs": "smooth"}
_DOWNSAMPLE = re.compile(r"^view_transform\.downsample\.(\d+)\.(.+)$")


def neck_levels(state: Mapping[str, torch.Tensor]) -> int:
    """Number of lateral convs of the GeneralizedLSSFPN in `state` (0 when it has none)."""
    indices = {int(match[2]) for match in map(_NECK.match, state) if match and match[1] == "lateral_convs"}
    return max(indices) + 1 if indices else 0


def unikd_camera_key(key: str, num_levels: int) -> str | None:
    """The unikd detector key of an mmdet3d BEVFusion camera-branch key (`num_levels`: the neck's lateral
    convs, `neck_levels`); None for any other key, the geometry entries included (`GEOMETRY_KEYS`)."""
    for pattern, template in _DIRECT:
        match = pattern.match(key)
        if match:
            return template.format(*match.groups())
    match = _NECK.match(key)
    if match:
        part, index, layer, rest = match.groups()
        return f"camera.neck.{_NECK_PARTS[part]}.{num_levels - 1 - int(index)}.{'0' if layer == 'conv' else '1'}.{rest}"
    match = _DOWNSAMPLE.match(key)
    if match and int(match[1]) % 3 != 2:  # index 3 k + 2 is a ReLU, which has no parameters
        index = int(match[1])
        return f"camera.view_transform.downsample.{index // 3}.{index % 3}.{match[2]}"
    return None


def unikd_camera_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    """`value` of the mmdet3d key `key` as unikd's module holds it: the BEV downsample kernels transposed."""
    match = _DOWNSAMPLE.match(key)
    if match and int(match[1]) % 3 == 0 and match[2] == "weight":
        return value.transpose(-1, -2).contiguous()
    return value


def camera_to_unikd(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(unikd keys and tensors of the camera branch, the keys of `state` with no unikd counterpart other
    than the geometry entries). Keys of other modules (the LiDAR branch, the fuser, the head) are the caller's:
    they are among the unmapped ones."""
    levels = neck_levels(state)
    converted, unmapped = {}, []
    for key, value in state.items():
        target = unikd_camera_key(key, levels)
        if target is not None:
            converted[target] = unikd_camera_tensor(key, value)
        elif key not in GEOMETRY_KEYS:
            unmapped.append(key)
    return converted, unmapped


def expected_geometry(config: Mapping, image_size: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """mmdet3d's dx, bx, nx and frustum depths (and, given the (H, W) of the images, the frustum's pixel
    extent and size) for a unikd model configuration (`point_cloud_range`, `camera.bev_cell`,
    `camera.depth_bins`, `camera.splat_z_range`)."""
    camera = config["camera"]
    point_range = config["point_cloud_range"]
    grid = BEVGrid.from_range(point_range, camera["bev_cell"])
    z_min, z_max = camera.get("splat_z_range") or (point_range[2], point_range[5])
    size = (grid.cell_x, grid.cell_y, z_max - z_min)
    lower = (grid.x_min, grid.y_min, z_min)
    expected = {
        "dx": torch.tensor(size),
        "bx": torch.tensor([low + step / 2 for low, step in zip(lower, size, strict=True)]),
        "nx": torch.tensor([grid.width, grid.height, 1]),
        "depths": torch.arange(*camera["depth_bins"], dtype=torch.float32),
    }
    if image_size is not None:
        height, width = image_size
        expected["pixel_extent"] = torch.tensor([width - 1.0, height - 1.0])
        expected["feature_size"] = torch.tensor([height // 8, width // 8])
    return expected


def check_geometry(
    state: Mapping[str, torch.Tensor], config: Mapping, image_size: Sequence[int] | None = None
) -> None:
    """A ValueError when the geometry entries of an mmdet3d BEVFusion view transform (those present in
    `state`) say another grid, z range, set of depth bins or (with `image_size`) image than the unikd
    configuration `config`."""
    expected = expected_geometry(config, image_size)
    found = {
        name: state[f"view_transform.{name}"]
        for name in ("dx", "bx", "nx")
        if f"view_transform.{name}" in state
    }
    frustum = state.get("view_transform.frustum")  # [D, H_f, W_f, (u, v, d)]
    if frustum is not None:
        found["depths"] = frustum[:, 0, 0, 2]
        if image_size is not None:
            found["pixel_extent"] = frustum[0, -1, -1, :2]
            found["feature_size"] = torch.tensor(frustum.shape[1:3])
    differing = [
        f"{name}: checkpoint {value.tolist()} vs configuration {expected[name].tolist()}"
        for name, value in found.items()
        if value.shape != expected[name].shape
        or not torch.allclose(value.double(), expected[name].double(), atol=1e-5)
    ]
    if differing:
        raise ValueError(
            "the BEVFusion view transform's geometry differs from the configuration's: "
            + "; ".join(differing)
        )
