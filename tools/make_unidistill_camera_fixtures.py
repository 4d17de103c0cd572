"""Parity fixtures for UniDistill's camera encoder (BEVDepth's LSSFPN) and fusion encoder, built from
UniDistill's own source; tests/test_interop_unidistill_camera.py compares unikd against their answers.

Run in an mmdet3d environment (docs/INTEROP.md), from the repository root, with UniDistill's repository
(a git repository; only its Python files are read) and a synthetic nuScenes-format set:

    python tools/create_data.py synthetic --root /tmp/synthetic/nuscenes --train-scenes 1 --val-scenes 1 \
        --keyframes-per-scene 2 --sweeps-per-keyframe 0 --objects-per-scene 40
    python tools/make_unidistill_camera_fixtures.py --unidistill <UniDistill repo> --data-root /tmp/synthetic/nuscenes

(The committed fixtures come from exactly these commands, UniDistill at commit 32f02b4, torch 2.13 on
one thread; a rerun writes the same bytes.)

UniDistill needs its prebuilt CUDA extension `voxel_pooling_ext` (py3.6) and mmcv 1.x-era builders;
only these are replaced: `voxel_pooling_forward_wrapper` by `voxel_pooling_forward` below (the
kernel's sum pooling in torch: every point whose integer (x, y, z) lies inside the grid adds its
features to output[batch, y, x] and records (batch, y, x) in pos_memo), `mmdet.models.build_backbone`
and `mmdet3d.models.build_neck` by mmdet3d's registry (`mmdet.` scope for the backbone), and the one
`.cuda()` call of LSSFPN (on its `voxel_num` buffer) by a no-op. mmdet 3.3's ResNet and mmdet3d 1.4's
SECONDFPN stand for the mmdet 2.x / mmdet3d 0.18 ones UniDistill imports (same definitions). The
model configuration comes from UniDistill's files: MODEL_CFG's camera_encoder with the fusion
experiment's image backbone, neck and depth net (which its camera experiment inherits), and its
FusionEncoder(use_elementwise=False). LSSFPN is called directly: UniDistill's CameraEncoder passes
`is_return_depth` where LSSFPN takes `timestamps`, so it never returns the depth.

It writes under tests/fixtures/unidistill/:

- `camera_keys.json`, `fusion_camera_keys.json`: key names and shapes of the full-width camera model's
  camera encoder, and of the fusion model's camera and fusion encoders (keys after the model prefix;
  the prefixes are listed);
- `camera_parity.pt`: a reduced-width model (random weights, seed 0, BatchNorm statistics randomised),
  its state dict, one synthetic sample's six camera images (training augmentation: flips, rotations,
  a BEV rotation) with their matrices, and its answers: every backbone level and the depth
  probabilities at fixed positions, the neck output, the BEV at fixed cells (half of them reached by
  the frustum), the number of frustum points pooled, and the fusion encoder's output on a window of
  that BEV with a random LiDAR map.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import json
import logging
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import torch
from make_parity_fixtures import Recorder, randomise
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # unikd, for the synthetic sample

SOURCES = {
    "lss_fpn": "unidistill/layers/blocks_3d/mmdet3d/lss_fpn.py",
    "cfg": "unidistill/exps/multisensor_fusion/nuscenes/_base_/base_nuscenes_cfg.py",
    "base_exp": "unidistill/exps/multisensor_fusion/nuscenes/BEVFusion/BEVFusion_nuscenes_base_exp.py",
    "fusion_exp": "unidistill/exps/multisensor_fusion/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_fusion_exp.py",
    "multisensor_base": "unidistill/models/multisensor_fusion/base.py",
}
PREFIXES = ["model.", ""]  # Lightning `state_dict`, and the `model_state` its distillation experiments read
IMAGE_SIZE = (64, 256)  # (H, W), multiples of 32: the stride-32 level upsampled meets the others
RESIZE = (0.16, 0.19)  # of the 1600 x 900 synthetic images
# reduced widths: UniDistill config overrides and the matching unikd camera-config overrides
BASE_CHANNELS = 4
NECK_CHANNELS = [8, 8, 8, 8]
CONTEXT_CHANNELS = 16
UNIKD_OVERRIDES = {
    "camera.base_width": BASE_CHANNELS,
    "camera.neck_channels": tuple(NECK_CHANNELS),
    "camera.context_channels": CONTEXT_CHANNELS,
}
FUSION_WINDOW = 24  # cells of the BEV window the fusion encoder runs on
SAMPLES_PER_LEVEL = 256
SAMPLED_CELLS = 512


def extract(repo: Path, out: Path) -> str:
    """UniDistill's Python files of SOURCES under `out`; returns the commit."""
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD", *SOURCES.values()], check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(out, filter="data")
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def voxel_pooling_forward(batch_size, num_points, num_channels, num_x, num_y, num_z, geom_xyz, features, output, pos_memo):
    """voxel_pooling_ext.voxel_pooling_forward_wrapper in torch (module docstring): in place on `output`
    [B, Y, X, C] and `pos_memo` [B, P, 3]."""
    x, y, z = geom_xyz.long().unbind(-1)  # [B, P]
    inside = (x >= 0) & (x < int(num_x)) & (y >= 0) & (y < int(num_y)) & (z >= 0) & (z < int(num_z))
    batch = torch.arange(batch_size).view(-1, 1).expand_as(x)
    cell = (batch * int(num_y) + y) * int(num_x) + x
    flat = output.view(-1, num_channels)
    flat.index_add_(0, cell[inside], features[inside])
    pos_memo[inside] = torch.stack([batch, y, x], -1)[inside].to(pos_memo.dtype)
    VOXEL_POOLING_CALLS.append(int(inside.sum()))
    return 1


VOXEL_POOLING_CALLS: list[int] = []


class HostTensor(torch.Tensor):
    """A CPU tensor whose `.cuda()` is itself (LSSFPN moves `voxel_num` to the GPU on every call)."""

    def cuda(self, *args, **kwargs):
        return self


def plain(value):
    """`value` with every HostTensor (and anything computed from one) as a plain tensor."""
    if isinstance(value, torch.Tensor):
        return value.as_subclass(torch.Tensor)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def load_unidistill(root: Path) -> dict:
    """UniDistill's LSSFPN, CameraEncoder, FusionEncoder and its configuration, from `root`."""
    import mmdet.models
    import mmdet3d.models
    from mmdet3d.registry import MODELS
    from mmdet3d.utils import register_all_modules
    from mmengine.logging import MMLogger

    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # its per-parameter init report
    mmdet.models.build_backbone = lambda cfg: MODELS.build(dict(cfg, type=f"mmdet.{cfg['type']}"))
    mmdet3d.models.build_neck = MODELS.build
    package = types.ModuleType("unidistill_blocks")
    package.__path__ = []
    package.voxel_pooling_ext = types.SimpleNamespace(voxel_pooling_forward_wrapper=voxel_pooling_forward)
    sys.modules["unidistill_blocks"] = package
    sys.modules["unidistill_blocks.voxel_pooling_ext"] = package.voxel_pooling_ext
    spec = importlib.util.spec_from_file_location("unidistill_blocks.lss_fpn", root / SOURCES["lss_fpn"])
    lss_fpn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lss_fpn)

    cfg_spec = importlib.util.spec_from_file_location("unidistill_cfg", root / SOURCES["cfg"])
    cfg = importlib.util.module_from_spec(cfg_spec)
    cfg_spec.loader.exec_module(cfg)
    base_spec = importlib.util.spec_from_file_location("unidistill_multisensor_base", root / SOURCES["multisensor_base"])
    multisensor_base = importlib.util.module_from_spec(base_spec)
    base_spec.loader.exec_module(multisensor_base)

    # the classes and constants of the experiment files, without their imports (data, heads, CUDA ops)
    namespace = {
        "nn": nn,
        "torch": torch,
        "Any": object,
        "Dict": dict,
        "mmcv": types.SimpleNamespace(Config=dict),
        "BaseEncoder": multisensor_base.BaseEncoder,
        "LSSFPN": lss_fpn.LSSFPN,
        "dict": dict,
    }
    wanted = {"base_exp": {"CameraEncoder", "FusionEncoder"}, "fusion_exp": {"_IMG_BACKBONE_CONF", "_IMG_NECK_CONF", "_DEPTH_NET_CONF"}}
    for source, names in wanted.items():
        tree = ast.parse((root / SOURCES[source]).read_text())
        nodes = [
            node
            for node in tree.body
            if (isinstance(node, ast.ClassDef) and node.name in names)
            or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) in names for t in node.targets))
        ]
        if len(nodes) != len(names):
            raise RuntimeError(f"{SOURCES[source]}: expected definitions of {sorted(names)}")
        exec(compile(ast.Module(body=nodes, type_ignores=[]), str(root / SOURCES[source]), "exec"), namespace)
    camera_cfg = dict(cfg.MODEL_CFG["camera_encoder"])
    camera_cfg.update(
        img_backbone_conf=dict(namespace["_IMG_BACKBONE_CONF"], init_cfg=None),  # no ImageNet download
        img_neck_conf=dict(namespace["_IMG_NECK_CONF"]),
        depth_net_conf=dict(namespace["_DEPTH_NET_CONF"]),
    )
    return {"camera_cfg": camera_cfg, "CameraEncoder": namespace["CameraEncoder"], "FusionEncoder": namespace["FusionEncoder"]}


def build(unidistill: dict, camera_cfg: dict, fusion_channels: tuple[int, int]) -> nn.Module:
    """A module holding UniDistill's `camera_encoder` and `fusion_encoder` (as its BEVFusion names them)."""
    model = nn.Module()
    model.camera_encoder = unidistill["CameraEncoder"](camera_cfg)
    model.fusion_encoder = unidistill["FusionEncoder"](
        use_elementwise=False, input_channel=fusion_channels[0], output_channel=fusion_channels[1]
    )
    lss = model.camera_encoder.backbone
    lss.voxel_num = lss.voxel_num.as_subclass(HostTensor)
    return model.eval()


def reduced_cfg(camera_cfg: dict) -> dict:
    cfg = dict(camera_cfg)
    stage_channels = [BASE_CHANNELS * 4 * 2**i for i in range(4)]
    cfg.update(
        final_dim=IMAGE_SIZE,
        output_channels=CONTEXT_CHANNELS,
        img_backbone_conf=dict(cfg["img_backbone_conf"], base_channels=BASE_CHANNELS),
        img_neck_conf=dict(cfg["img_neck_conf"], in_channels=stage_channels, out_channels=NECK_CHANNELS),
        depth_net_conf=dict(in_channels=sum(NECK_CHANNELS), mid_channels=sum(NECK_CHANNELS)),
    )
    return cfg


def synthetic_sample(data_root: Path) -> dict:
    """One training sample of the synthetic set's mini_train split: six augmented images and matrices."""
    from unikd.data.image_aug import ImageAugConfig
    from unikd.data.nuscenes_dataset import NuScenesDetectionDataset
    from unikd.data.transforms import BEVAugConfig

    dataset = NuScenesDetectionDataset(
        data_root,
        "v1.0-mini",
        "mini_train",
        (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0),
        num_sweeps=1,
        use_camera=True,
        training=True,
        bev_aug=BEVAugConfig(),
        image_aug=ImageAugConfig(final_size=IMAGE_SIZE, train_resize=RESIZE),
        seed=3,
    )
    item = dataset[0]
    # the images travel as float16; both models see the same float32 values
    imgs = item["imgs"].half().float()
    return {"imgs": imgs, **{k: item[k] for k in ("lidar2cam", "cam2img", "img_aug", "bda")}, "sample_token": item["sample_token"]}


def full_width_keys(unidistill: dict, out_dir: Path, commit: str) -> None:
    model = build(unidistill, unidistill["camera_cfg"], (512, 256))
    camera = {k: list(v.shape) for k, v in model.state_dict().items() if k.startswith("camera_encoder.")}
    fusion = {k: list(v.shape) for k, v in model.state_dict().items() if k.startswith("fusion_encoder.")}
    about = {"unidistill_commit": commit, "prefixes": PREFIXES}
    (out_dir / "camera_keys.json").write_text(json.dumps({**about, "experiment": "BEVFusion_nuscenes_centerhead_camera_exp", "keys": camera}, indent=0))
    (out_dir / "fusion_camera_keys.json").write_text(
        json.dumps({**about, "experiment": "BEVFusion_nuscenes_centerhead_fusion_exp", "keys": {**camera, **fusion}}, indent=0)
    )
    print(f"full width: {len(camera)} camera keys, {len(fusion)} fusion keys")


def positions(shape: tuple[int, ...], count: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 3] (camera, row, col) positions in a [N, C, H, W] map."""
    cams, _, height, width = shape
    flat = torch.randperm(cams * height * width, generator=generator)[:count]
    return torch.stack([flat // (height * width), flat // width % height, flat % width], 1)


def make_parity(unidistill: dict, sample: dict, out_dir: Path, commit: str) -> None:
    torch.manual_seed(0)
    model = build(unidistill, reduced_cfg(unidistill["camera_cfg"]), (2 * CONTEXT_CHANNELS, CONTEXT_CHANNELS))
    randomise(model, seed=0)
    lss = model.camera_encoder.backbone
    imgs = sample["imgs"][None, None]  # [B, sweeps, N, 3, H, W]
    mats = {
        "sensor2ego_mats": torch.inverse(sample["lidar2cam"])[None, None],
        "intrin_mats": sample["cam2img"][None, None],
        "ida_mats": sample["img_aug"][None, None],
        "bda_mat": sample["bda"][None],
    }
    names = ["camera_encoder.backbone.img_backbone", "camera_encoder.backbone.img_neck"]
    VOXEL_POOLING_CALLS.clear()
    with torch.no_grad(), Recorder(model, names) as recorder:
        bev, depth = lss(imgs, mats, is_return_depth=True)
    levels = recorder.outputs[names[0]]
    neck = recorder.outputs[names[1]][0]
    generator = torch.Generator().manual_seed(1)
    level_positions = [positions(tuple(level.shape), SAMPLES_PER_LEVEL, generator) for level in levels]
    level_values = [level[p[:, 0], :, p[:, 1], p[:, 2]].clone() for level, p in zip(levels, level_positions, strict=True)]
    depth_positions = positions(tuple(depth.shape), SAMPLES_PER_LEVEL, generator)

    occupied = torch.nonzero(bev[0].abs().sum(0).flatten() > 0).flatten()
    if len(occupied) < SAMPLED_CELLS:
        raise RuntimeError(f"only {len(occupied)} BEV cells are reached by the frustum")
    cells = torch.cat(
        [
            occupied[torch.randperm(len(occupied), generator=generator)[: SAMPLED_CELLS // 2]],
            torch.randperm(bev.shape[-1] * bev.shape[-2], generator=generator)[: SAMPLED_CELLS // 2],
        ]
    )
    # fusion: a window around the densest occupied cell, with a random LiDAR map of the same size
    density = torch.nn.functional.avg_pool2d((bev[0].abs().sum(0) > 0).float()[None, None], FUSION_WINDOW, 1)[0, 0]
    row, col = divmod(int(density.argmax()), density.shape[-1])
    window = (row, col, FUSION_WINDOW)
    camera_window = bev[:, :, row : row + FUSION_WINDOW, col : col + FUSION_WINDOW].clone()
    lidar_window = torch.randn(camera_window.shape, generator=generator)
    with torch.no_grad():
        fused = model.fusion_encoder(lidar_window, camera_window)

    fixture = {
        "unidistill_commit": commit,
        "unikd_overrides": UNIKD_OVERRIDES,
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "sample_token": sample["sample_token"],
        "imgs": sample["imgs"].half(),
        **{k: sample[k] for k in ("lidar2cam", "cam2img", "img_aug", "bda")},
        "backbone_positions": level_positions,
        "backbone": level_values,
        "neck": neck.clone(),
        "depth_positions": depth_positions,
        "depth_probs": depth[depth_positions[:, 0], :, depth_positions[:, 1], depth_positions[:, 2]].clone(),
        "pooled_points": VOXEL_POOLING_CALLS[0],
        "cells": cells,
        "bev": bev[0].flatten(1)[:, cells].clone(),
        "bev_shape": list(bev.shape),
        "bev_occupied": len(occupied),
        "fusion_window": window,
        "fusion_lidar": lidar_window,
        "fusion_camera": camera_window,
        "fusion": fused.clone(),
    }
    torch.save(plain(fixture), out_dir / "camera_parity.pt")
    print(
        f"reduced: BEV {list(bev.shape)}, {len(occupied)} occupied cells, {VOXEL_POOLING_CALLS[0]} of "
        f"{depth.numel()} frustum points pooled, levels {[list(level.shape) for level in levels]}, "
        f"neck {list(neck.shape)}, lss {type(lss).__name__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unidistill", type=Path, required=True, help="UniDistill's git repository (bare or not)")
    parser.add_argument("--data-root", type=Path, required=True, help="a synthetic nuScenes-format set (v1.0-mini)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/unidistill-source"), help="where its files are extracted")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/unidistill"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    commit = extract(args.unidistill, args.work)
    unidistill = load_unidistill(args.work)
    full_width_keys(unidistill, args.out, commit)
    make_parity(unidistill, synthetic_sample(args.data_root), args.out, commit)


if __name__ == "__main__":
    main()
