"""Parity fixtures for BEVFusion's camera branch, from mmdet3d's own modules (projects/BEVFusion of
mmdetection3d v1.4.0 and mmdet 3.x's SwinTransformer); tests/test_interop_bevfusion_camera.py compares
unikd against their answers.

Run with mmdet3d's environment (docs/INTEROP.md), from the repository root, with an mmdetection3d git
repository (bare or not; only the files named in SOURCES are read, through `git archive`):

    python tools/make_bevfusion_camera_fixtures.py --mmdet3d <mmdetection3d repo>

(The committed fixtures come from exactly this command, mmdetection3d at v1.4.0 = fe25f7a, torch on one
thread; a rerun writes the same bytes.)

The model settings come from the project's LiDAR-camera config (`model.img_backbone`, `img_neck`,
`view_transform`, built by mmdet3d's registry), and the forward is the project's own
`BEVFusion.extract_img_feat` (backbone, neck, its first output, the view transform), called on a module
that holds only those three. Stand-ins, recorded in the fixture's `stand_ins`: projects/BEVFusion's `ops`
package is not built, so its CUDA `bev_pool(feats, coords, B, D, H, W)` is unikd's pure-torch
`unikd.ops.bev_pool.bev_pool` (the same sum per (b, z, x, y) cell, into [B, C, Z, X, Y]), and its
`Voxelization` (which the camera branch never calls) raises. The Swin's `init_cfg` (an ImageNet download)
is dropped.

It writes under tests/fixtures/bevfusion/:

- `camera_keys.json`: key names and shapes of the full-width camera branch (Swin-T, GeneralizedLSSFPN,
  DepthLSSTransform) under the detector's prefixes `img_backbone.`, `img_neck.`, `view_transform.`;
- `camera_parity.pt`: a reduced model (a Swin of width 12, 64 x 176 images, 24 depth bins, a 120 x 120
  splat grid of 0.4 m; random weights of seed 0 rounded to float16 values, so that they are stored as
  float16 and computed with as float32; BatchNorm statistics and relative position biases randomised; the
  view transform's geometry parameters dx, bx, nx, frustum as the config makes them),
  its state dict (weights as float16, integer tensors as int16, the geometry parameters as they are), the input (six random images, the synthetic rig's camera matrices with six different
  image augmentations, a BEV augmentation, a few hundred points), and its answers: every backbone level,
  the neck output and the depth probabilities at fixed positions, the LiDAR depth image (its non-zero
  pixels), the number of frustum points pooled, the BEV before and after the downsampling convs at fixed
  cells (positions, pixels and cells as int16). mmdet3d's BEV maps are
  x-major ([B, C, X, Y]): they are transposed to unikd's [B, C, Y, X] before sampling, and the cells are
  flat unikd indices row * W + col. The points avoid pixel borders (1e-3 px) and never share a pixel,
  so that the depth image does not depend on rounding or on the order of writes.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
# unikd: bev_pool, the synthetic rig, the matrices
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from make_parity_fixtures import Recorder, randomise  # noqa: E402

from unikd.data.image_aug import ida_matrix  # noqa: E402
from unikd.data.synthetic.calibration import CAMERA_SPECS, LIDAR_TRANSLATION, LIDAR_YAW  # noqa: E402
from unikd.data.transforms import bda_matrix  # noqa: E402
from unikd.ops.bev_pool import bev_pool  # noqa: E402

CONFIG = "projects/BEVFusion/configs/bevfusion_lidar-cam_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d.py"
SOURCES = (
    CONFIG,
    "projects/BEVFusion/configs/bevfusion_lidar_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d.py",
    "configs/_base_/default_runtime.py",
    "projects/BEVFusion/bevfusion/bevfusion.py",
    "projects/BEVFusion/bevfusion/bevfusion_necks.py",
    "projects/BEVFusion/bevfusion/depth_lss.py",
)
PACKAGE = "bevfusion_camera_reference"  # the project's three modules, imported as one package
PREFIXES = ("img_backbone", "img_neck", "view_transform")
# the view transform's parameters that its config makes (grid and frustum): not weights
GEOMETRY = tuple(f"view_transform.{name}" for name in ("dx", "bx", "nx", "frustum"))

IMAGE_SIZE = (64, 176)
POINT_RANGE = (-24.0, -24.0, -5.0, 24.0, 24.0, 3.0)
SPLAT_CELL = 0.4
DEPTH_BINS = (1.0, 25.0, 1.0)
SWIN = {"embed_dims": 12, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8]}
NECK_CHANNELS = 32
CONTEXT_CHANNELS = 16
REDUCED_MMDET3D = {
    "img_backbone": SWIN,
    "img_neck": {"in_channels": [24, 48, 96], "out_channels": NECK_CHANNELS},
    "view_transform": {
        "in_channels": NECK_CHANNELS,
        "out_channels": CONTEXT_CHANNELS,
        "image_size": list(IMAGE_SIZE),
        "feature_size": [IMAGE_SIZE[0] // 8, IMAGE_SIZE[1] // 8],
        "xbound": [POINT_RANGE[0], POINT_RANGE[3], SPLAT_CELL],
        "ybound": [POINT_RANGE[1], POINT_RANGE[4], SPLAT_CELL],
        "dbound": list(DEPTH_BINS),
    },
}
# the same model as unikd camera settings (over BEVFUSION_CAMERA) and its point cloud range
UNIKD_OVERRIDES = {
    "point_cloud_range": POINT_RANGE,
    "camera.swin.embed_dims": SWIN["embed_dims"],
    "camera.swin.depths": tuple(SWIN["depths"]),
    "camera.swin.num_heads": tuple(SWIN["num_heads"]),
    "camera.neck_channels": NECK_CHANNELS,
    "camera.context_channels": CONTEXT_CHANNELS,
    "camera.depth_bins": DEPTH_BINS,
    "camera.bev_cell": SPLAT_CELL,
}
# per camera: resize of the 1600 x 900 image, crop (x0, y0, x1, y1), flip, rotation (degrees)
IMAGE_AUGS = (
    (0.11, (0, 35, 176, 99), False, 0.0),
    (0.12, (8, 40, 184, 104), True, 0.0),
    (0.11, (0, 35, 176, 99), False, 4.0),
    (0.13, (15, 45, 191, 109), True, -3.0),
    (0.115, (4, 38, 180, 102), False, -5.0),
    (0.11, (0, 30, 176, 94), True, 2.5),
)
BDA = {
    "rotation": 0.35,
    "scale": 1.05,
    "translation": np.array([0.4, -0.3, 0.1]),
    "flip_x": False,
    "flip_y": True,
}
NUM_POINTS = 1200  # drawn; those on an image border or sharing a pixel are dropped
BORDER = 1e-3  # pixels
SAMPLES_PER_LEVEL = 256
SAMPLED_CELLS = 512
FULL_WIDTH_FILE = "camera_keys.json"
PARITY_FILE = "camera_parity.pt"


def extract(repo: Path, out: Path) -> str:
    """The files of SOURCES from `repo`'s HEAD under `out`; returns the commit."""
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "HEAD", *SOURCES], check=True, capture_output=True
    ).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(out, filter="data")
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


POOLED_POINTS: list[int] = []


def stand_in_bev_pool(
    feats: torch.Tensor, coords: torch.Tensor, batch: int, depth: int, height: int, width: int
) -> torch.Tensor:
    """projects/BEVFusion's `bev_pool` (coords (x, y, z, b) -> [B, C, D=Z, H=X, W=Y]) through unikd's `bev_pool`."""
    x, y, z, b = coords.long().unbind(1)
    POOLED_POINTS.append(len(feats))
    pooled = bev_pool(feats, torch.stack([b, z * height + x, y], 1), batch, depth * height, width)
    return pooled.view(batch, -1, depth, height, width)


def import_project(root: Path) -> types.ModuleType:
    """projects/BEVFusion's bevfusion.py, bevfusion_necks.py and depth_lss.py as the package PACKAGE, with the
    stand-in `ops` (module docstring)."""
    import importlib.util

    def voxelization(*args, **kwargs):
        raise NotImplementedError("the camera branch never voxelizes")

    source = root / "projects/BEVFusion/bevfusion"
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(source)]
    sys.modules[PACKAGE] = package
    ops = types.ModuleType(f"{PACKAGE}.ops")
    ops.bev_pool, ops.Voxelization = stand_in_bev_pool, voxelization
    sys.modules[ops.__name__] = ops
    for name in ("bevfusion_necks", "depth_lss", "bevfusion"):
        spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", source / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        setattr(package, name, module)
    return package


def build_camera(root: Path, reduced: bool) -> nn.Module:
    """A module holding the config's img_backbone, img_neck and view_transform (eval mode)."""
    from mmdet3d.registry import MODELS
    from mmdet3d.utils import register_all_modules
    from mmengine import Config

    register_all_modules()
    cfg = Config.fromfile(str(root / CONFIG), import_custom_modules=False).model
    camera = nn.Module()
    for name in PREFIXES:
        module_cfg = dict(cfg[name])
        module_cfg.pop("init_cfg", None)
        if reduced:
            module_cfg.update(REDUCED_MMDET3D[name])
        camera.add_module(name, MODELS.build(module_cfg))
    camera.eval()  # mmdet's SwinTransformer.train returns None: not chained
    return camera


def rig_matrices() -> dict[str, torch.Tensor]:
    """lidar2cam, cam2img, img_aug [6, 4, 4] and bda [4, 4] (unikd's conventions) of the synthetic rig."""
    lidar2ego = np.eye(4)
    cos, sin = np.cos(LIDAR_YAW), np.sin(LIDAR_YAW)
    lidar2ego[:3, :3] = [[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]
    lidar2ego[:3, 3] = LIDAR_TRANSLATION
    lidar2cam, cam2img = [], []
    for spec in CAMERA_SPECS:
        cam2ego = np.eye(4)
        cam2ego[:3, :3], cam2ego[:3, 3] = spec.rotation_matrix, spec.translation
        lidar2cam.append(np.linalg.inv(cam2ego) @ lidar2ego)
        intrinsic = np.eye(4)
        intrinsic[:3, :3] = spec.intrinsic
        cam2img.append(intrinsic)
    img_aug = [ida_matrix(*aug) for aug in IMAGE_AUGS]
    matrices = {"lidar2cam": lidar2cam, "cam2img": cam2img, "img_aug": img_aug}
    matrices = {key: torch.tensor(np.stack(value), dtype=torch.float32) for key, value in matrices.items()}
    matrices["bda"] = torch.tensor(bda_matrix(**BDA), dtype=torch.float32)
    return matrices


def mmdet3d_pixels(
    points: torch.Tensor, matrices: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented pixels [N, P, 2] (u, v) and depths [N, P] of points [P, 3] (augmented frame) in float64, through
    the matrices mmdet3d's depth image reads (lidar2image = cam2img @ lidar2cam, img_aug, lidar_aug = bda)."""
    double = {key: value.double() for key, value in matrices.items()}
    original = (points.double() - double["bda"][:3, 3]) @ torch.linalg.inv(double["bda"][:3, :3]).T
    lidar2image = double["cam2img"] @ double["lidar2cam"]
    cam = torch.einsum("nij,pj->npi", lidar2image[:, :3, :3], original) + lidar2image[:, None, :3, 3]
    depth = cam[..., 2]
    uv = cam[..., :2] / depth.clamp(1e-5, 1e5)[..., None]
    uvd = torch.cat([uv, depth.clamp(1e-5, 1e5)[..., None]], -1)
    aug = torch.einsum("nij,npj->npi", double["img_aug"][:, :3, :3], uvd) + double["img_aug"][:, None, :3, 3]
    return aug[..., :2], depth


def lidar_points(matrices: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """[P, 5] points (augmented LiDAR frame; intensity, time lag): a uniform scatter in the original frame and a
    box-like cluster to the front left, kept where no image sees them within BORDER of a pixel border and no
    two share a pixel of one camera; at least a hundred land in an image."""
    scatter = torch.rand(NUM_POINTS, 3, generator=generator) * torch.tensor([44.0, 44.0, 3.0]) - torch.tensor(
        [22.0, 22.0, 2.0]
    )
    cluster = torch.rand(NUM_POINTS // 4, 3, generator=generator) * torch.tensor(
        [4.0, 2.0, 1.5]
    ) + torch.tensor([-3.0, 9.0, -1.5])
    original = torch.cat([scatter, cluster])
    bda = matrices["bda"].double()
    xyz = (original.double() @ bda[:3, :3].T + bda[:3, 3]).float()
    uv, depth = mmdet3d_pixels(xyz, matrices)
    height, width = IMAGE_SIZE
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    fraction = uv - uv.floor()
    near_border = ((fraction < BORDER) | (fraction > 1 - BORDER)).any(-1)
    outer = (uv[..., 0] > -1) & (uv[..., 0] < width + 1) & (uv[..., 1] > -1) & (uv[..., 1] < height + 1)
    keep = ~(near_border & outer).any(0) & ~(inside & (depth <= 0)).any(0)
    column, row = uv.floor().long().unbind(-1)
    pixel = (torch.arange(len(uv)).view(-1, 1) * height + row) * width + column  # (camera, row, column)
    taken: set[int] = set()
    for index in torch.nonzero(keep).flatten().tolist():
        pixels = set(pixel[:, index][inside[:, index]].tolist())
        if pixels & taken:
            keep[index] = False
        else:
            taken |= pixels
    if int(inside[:, keep].sum()) < 100:
        raise RuntimeError(f"only {int(inside[:, keep].sum())} points land in an image")
    extra = torch.rand(len(xyz), 2, generator=generator) * torch.tensor([255.0, 0.5])
    return torch.cat([xyz, extra], 1)[keep]


def round_to_half(model: nn.Module) -> None:
    """Every floating-point weight and buffer rounded to the nearest float16 value (kept as float32), the
    geometry parameters aside."""
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if tensor.is_floating_point() and name not in GEOMETRY:
                tensor.copy_(tensor.half().float())


def compact(value: torch.Tensor) -> torch.Tensor:
    """A weight or index tensor as stored: float16 (its values are float16's, `round_to_half`), int16
    (indices; scalars such as num_batches_tracked keep their type)."""
    if value.is_floating_point():
        return value.half()
    return value.short() if value.dim() else value.clone()


def positions(shape: tuple[int, ...], count: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 3] (camera, row, col) positions in a [N, C, H, W] map."""
    cams, _, height, width = shape
    flat = torch.randperm(cams * height * width, generator=generator)[:count]
    return torch.stack([flat // (height * width), flat // width % height, flat % width], 1)


def at(maps: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """[K, C] values of [N, C, H, W] maps at (camera, row, col) positions."""
    return maps[where[:, 0], :, where[:, 1], where[:, 2]].clone()


def sampled_cells(bev: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """[count] flat cells of a [1, C, H, W] map: half among the non-zero ones, half anywhere."""
    flat = bev[0].abs().sum(0).flatten()
    occupied = torch.nonzero(flat > 0).flatten()
    if len(occupied) < count // 2:
        raise RuntimeError(f"only {len(occupied)} BEV cells are reached by the frustum")
    near = occupied[torch.randperm(len(occupied), generator=generator)[: count // 2]]
    return torch.cat([near, torch.randperm(flat.numel(), generator=generator)[: count - len(near)]])


def y_major(maps: torch.Tensor) -> torch.Tensor:
    """mmdet3d BEVFusion's x-major map [B, C, X, Y] in unikd's layout [B, C, Y, X]."""
    return maps.transpose(-1, -2)


def run(
    project: types.ModuleType, camera: nn.Module, imgs: torch.Tensor, points: torch.Tensor, matrices: dict
) -> dict:
    """The project's `extract_img_feat` on one sample, with the inputs and outputs of its parts."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        camera.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: inputs.__setitem__(name, args[0])
        )
        for name in ("view_transform.dtransform", "view_transform.downsample")
    ]
    batch = {key: value[None] for key, value in matrices.items()}
    names = ["img_backbone", "img_neck", "view_transform.depthnet"]
    POOLED_POINTS.clear()
    try:
        with torch.no_grad(), Recorder(camera, names) as recorder:
            bev = project.bevfusion.BEVFusion.extract_img_feat(
                camera,
                imgs[None],
                [points.clone()],
                batch["cam2img"] @ batch["lidar2cam"],  # lidar2image
                batch["cam2img"],
                torch.linalg.inv(batch["lidar2cam"]),  # camera2lidar
                batch["img_aug"],
                batch["bda"],  # lidar_aug_matrix
                [{}],
            )
    finally:
        for hook in hooks:
            hook.remove()
    depth_logits = recorder.outputs["view_transform.depthnet"]
    num_bins = camera.view_transform.D
    return {
        "backbone": recorder.outputs["img_backbone"],
        "neck": recorder.outputs["img_neck"][0],
        "depth_image": inputs["view_transform.dtransform"],  # [N, 1, H, W]
        "depth_probs": depth_logits[:, :num_bins].softmax(dim=1),  # as get_cam_feats computes them
        "splat": y_major(inputs["view_transform.downsample"]),
        "bev": y_major(bev),
    }


def full_width_keys(root: Path, out_dir: Path, commit: str) -> None:
    camera = build_camera(root, reduced=False)
    keys = {key: list(value.shape) for key, value in camera.state_dict().items()}
    (out_dir / FULL_WIDTH_FILE).write_text(
        json.dumps({"config": CONFIG, "mmdet3d_commit": commit, "keys": keys}, indent=0)
    )
    print(f"full width: {len(keys)} keys")


def make_parity(project: types.ModuleType, root: Path, out_dir: Path, commit: str) -> None:
    torch.manual_seed(0)
    camera = build_camera(root, reduced=True)
    randomise(camera, seed=0)
    generator = torch.Generator().manual_seed(1)
    for name, table in camera.named_parameters():
        if name.endswith("relative_position_bias_table"):
            table.data.copy_(torch.randn(table.shape, generator=generator))
    round_to_half(camera)
    matrices = rig_matrices()
    imgs = torch.randn(len(CAMERA_SPECS), 3, *IMAGE_SIZE, generator=generator).half().float()
    points = lidar_points(matrices, generator)
    out = run(project, camera, imgs, points, matrices)

    level_positions = [
        positions(tuple(level.shape), SAMPLES_PER_LEVEL, generator) for level in out["backbone"]
    ]
    neck_positions = positions(tuple(out["neck"].shape), SAMPLES_PER_LEVEL, generator)
    depth_positions = positions(tuple(out["depth_probs"].shape), SAMPLES_PER_LEVEL, generator)
    depth_image = out["depth_image"][:, 0]
    written = torch.nonzero(depth_image)  # (camera, row, col)
    splat_cells = sampled_cells(out["splat"], SAMPLED_CELLS, generator)
    bev_cells = sampled_cells(out["bev"], SAMPLED_CELLS, generator)
    state = {
        key: value.clone() if key in GEOMETRY else compact(value)
        for key, value in camera.state_dict().items()
    }
    fixture = {
        "config": CONFIG,
        "mmdet3d_commit": commit,
        "stand_ins": {
            "ops.bev_pool": "unikd.ops.bev_pool.bev_pool (pure torch): the same sum per (b, z, x, y) cell",
            "ops.Voxelization": "not used by the camera branch (raises)",
            "img_backbone.init_cfg": "dropped (no ImageNet weights)",
        },
        "unikd_overrides": UNIKD_OVERRIDES,
        "state_dict": state,
        "imgs": imgs.half(),
        **matrices,
        "points": points,
        "backbone_positions": [compact(where) for where in level_positions],
        "backbone": [at(level, where) for level, where in zip(out["backbone"], level_positions, strict=True)],
        "neck_positions": compact(neck_positions),
        "neck": at(out["neck"], neck_positions),
        "depth_image_pixels": compact(written),
        "depth_image_values": depth_image[written[:, 0], written[:, 1], written[:, 2]].clone(),
        "depth_positions": compact(depth_positions),
        "depth_probs": at(out["depth_probs"], depth_positions),
        "pooled_points": POOLED_POINTS[0],
        "splat_shape": list(out["splat"].shape),
        "splat_cells": compact(splat_cells),
        "splat": out["splat"][0].flatten(1)[:, splat_cells].clone(),
        "bev_shape": list(out["bev"].shape),
        "bev_cells": compact(bev_cells),
        "bev": out["bev"][0].flatten(1)[:, bev_cells].clone(),
    }
    torch.save(fixture, out_dir / PARITY_FILE)
    print(
        f"reduced: {len(points)} points, {len(written)} depth pixels, {POOLED_POINTS[0]} frustum points pooled, "
        f"levels {[list(level.shape) for level in out['backbone']]}, neck {list(out['neck'].shape)}, "
        f"splat {list(out['splat'].shape)} ({int((out['splat'][0].abs().sum(0) > 0).sum())} cells reached), "
        f"bev {list(out['bev'].shape)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mmdet3d", type=Path, required=True, help="an mmdetection3d git repository (bare or not)"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/mmdet3d-bevfusion-camera"),
        help="where its files are extracted",
    )
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/bevfusion"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    commit = extract(args.mmdet3d, args.work)
    project = import_project(args.work)
    full_width_keys(args.work, args.out, commit)
    make_parity(project, args.work, args.out, commit)


if __name__ == "__main__":
    main()
