"""Parity fixtures: mmdet3d's own BEVFusion-L (projects/BEVFusion: BEVFusionSparseEncoder, SECOND, SECONDFPN,
TransFusionHead) and BEVFusion-LC (with the Swin-T / GeneralizedLSSFPN / DepthLSSTransform camera branch and the
ConvFuser), built from their published nuScenes configs; their answers are what tests/test_interop_bevfusion.py
compares unikd against.

`projects/BEVFusion` is not part of the mmdet3d pip package: pass a source tree of mmdetection3d v1.4.0 (a
checkout, or the files of `git archive v1.4.0 projects/BEVFusion configs/_base_`). Run in an environment with
mmdet3d (docs/INTEROP.md says how to make one), from the repository root:

    python tools/make_bevfusion_fixtures.py --source <mmdetection3d tree> \
        --points data/synthetic/samples/LIDAR_TOP/<key frame>.pcd.bin

Stand-ins, recorded in the fixture's `stand_ins`: the project's compiled ops are not built. Its hard
voxelization (`ops.Voxelization`) is mmcv's CPU `Voxelization` with the coordinate columns reversed to the
project's (x, y, z) order (the same algorithm: points visited in order, the first `max_num_points` of a voxel
kept, voxels numbered as first met); its CUDA `bev_pool` is unikd's pure-torch `bev_pool`
(tools/make_bevfusion_camera_fixtures.py, whose reduced camera branch and inputs the LC fixture reuses).

It writes under tests/fixtures/bevfusion/:

- `lidar_keys.json`: key names and shapes of the full-width BEVFusion-L as mmdet3d builds it;
- `lidar_parity.pt`: the model at reduced width (random weights, fixed seed, BatchNorm statistics randomised,
  the heatmap's last convolution steered so that the queries start where points are, then every weight rounded to
  a float16 value: stored as float16, integer tensors as int16, computed with in float32), its state dict, the
  input points (one synthetic LiDAR sweep), the voxels, every level's output at fixed cells (mmdet3d's BEV maps
  are x-major, [B, C, X, Y]: they are transposed to unikd's [B, C, Y, X] before sampling, and the cells are
  flat unikd indices row * W + col), the head's dense heatmap and per-query outputs, and the decoded boxes;
- `fusion_keys.json`, `fusion_parity.pt`: the same for BEVFusion-LC, on six random images with the synthetic
  rig's cameras, image and BEV augmentations and the camera fixture's points; levels add the camera BEV and
  the fused BEV.

torch runs on one thread: spconv's CPU build writes wrong rows intermittently with more.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import make_bevfusion_camera_fixtures as camera_fixture  # noqa: E402
from make_parity_fixtures import (  # noqa: E402
    REDUCED_LIDAR_MMDET3D,
    REDUCED_LIDAR_UNIKD,
    Recorder,
    at_cells,
    load_points,
    randomise,
    sampled_cells,
    steer_final_conv,
)

CONFIGS = {
    "lidar": "projects/BEVFusion/configs/bevfusion_lidar_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d.py",
    "fusion": "projects/BEVFusion/configs/bevfusion_lidar-cam_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d.py",
}
NUM_POINTS = 6000
NUM_SAMPLED_CELLS = 256
NUM_PROPOSALS = 40
# reduced widths, as mmdet3d config overrides and as the matching unikd model-config overrides
REDUCED_MMDET3D = {
    **REDUCED_LIDAR_MMDET3D,
    "bbox_head": {"in_channels": 32, "hidden_channel": 16, "num_proposals": NUM_PROPOSALS},
}
DECODER_LAYER = {
    "self_attn_cfg": {"embed_dims": 16, "num_heads": 2, "dropout": 0.1},
    "cross_attn_cfg": {"embed_dims": 16, "num_heads": 2, "dropout": 0.1},
    "ffn_cfg": {"embed_dims": 16, "feedforward_channels": 32},
    "pos_encoding_cfg": {"input_channel": 2, "num_pos_feats": 16},
}
REDUCED_UNIKD = {
    **REDUCED_LIDAR_UNIKD,
    "head.hidden_channels": 16,
    "head.num_heads": 2,
    "head.ffn_channels": 32,
    "head.num_proposals": NUM_PROPOSALS,
}
# the LC model: the camera fixture's reduced camera branch with a Swin of width 8 (the fixture under 2 MB) on the
# LiDAR grid (+-54 m, 0.3 m splat cells downsampled twice to the LiDAR's 0.6 m), the ConvFuser to the LiDAR width
CAMERA_MMDET3D = {
    "img_backbone": {**camera_fixture.SWIN, "embed_dims": 8},
    "img_neck": {**camera_fixture.REDUCED_MMDET3D["img_neck"], "in_channels": [16, 32, 64]},
    "view_transform": {**camera_fixture.REDUCED_MMDET3D["view_transform"], "xbound": [-54.0, 54.0, 0.3], "ybound": [-54.0, 54.0, 0.3]},
    "fusion_layer": {"in_channels": [camera_fixture.CONTEXT_CHANNELS, 32], "out_channels": 32},
}
CAMERA_UNIKD = {
    **{key: value for key, value in camera_fixture.UNIKD_OVERRIDES.items() if key.startswith("camera.")},
    "camera.swin.embed_dims": 8,
    "camera.bev_cell": 0.3,
    "fuser_channels": 32,
}
LEVELS = ["pts_middle_encoder", "pts_backbone", "pts_neck"]
FUSION_LEVELS = ["view_transform", "fusion_layer"]


def install_stand_ins() -> None:
    """The project's `ops` package without its compiled extensions (module docstring)."""
    from mmcv.ops import Voxelization as MmcvVoxelization

    class Voxelization(MmcvVoxelization):
        def forward(self, points: torch.Tensor):
            voxels, coords, num_points = super().forward(points)
            return voxels, coords[:, [2, 1, 0]].contiguous(), num_points  # mmcv (z, y, x) -> the project's (x, y, z)

    ops = types.ModuleType("projects.BEVFusion.bevfusion.ops")
    ops.Voxelization = Voxelization
    ops.bev_pool = camera_fixture.stand_in_bev_pool
    sys.modules[ops.__name__] = ops


def build_model(source: Path, name: str, reduced: bool) -> torch.nn.Module:
    from mmdet3d.registry import MODELS
    from mmdet3d.utils import register_all_modules
    from mmengine import Config

    register_all_modules()
    if str(source) not in sys.path:
        sys.path.insert(0, str(source))
        install_stand_ins()
        __import__("projects.BEVFusion.bevfusion")
    cfg = Config.fromfile(str(source / CONFIGS[name]), import_custom_modules=False)
    model_cfg = copy.deepcopy(cfg.model)
    if "img_backbone" in model_cfg:
        model_cfg["img_backbone"].pop("init_cfg", None)  # an ImageNet download
    if reduced:
        overrides = {**REDUCED_MMDET3D, **(CAMERA_MMDET3D if name == "fusion" else {})}
        for module, override in overrides.items():
            model_cfg[module].update(override)
        for part, override in DECODER_LAYER.items():
            model_cfg["bbox_head"]["decoder_layer"][part].update(override)
    return MODELS.build(model_cfg).eval()


def model_inputs(inputs: dict) -> tuple[dict, list]:
    """mmdet3d BEVFusion's (batch_inputs_dict, metas) of one sample's unikd-style inputs (points in the augmented
    frame; with cameras imgs [N, 3, H, W] and the matrices lidar2cam, cam2img, img_aug [N, 4, 4], bda [4, 4])."""
    from mmdet3d.structures import LiDARInstance3DBoxes

    meta = {"box_type_3d": LiDARInstance3DBoxes}
    batch = {"points": [inputs["points"]]}
    if "imgs" in inputs:
        batch["imgs"] = inputs["imgs"][None]
        meta.update(
            lidar2img=(inputs["cam2img"] @ inputs["lidar2cam"]).numpy(),
            cam2img=inputs["cam2img"].numpy(),
            cam2lidar=torch.linalg.inv(inputs["lidar2cam"]).numpy(),
            img_aug_matrix=inputs["img_aug"].numpy(),
            lidar_aug_matrix=inputs["bda"].numpy(),
        )
    return batch, [meta]


def run(model: torch.nn.Module, inputs: dict, levels: list[str]) -> tuple[torch.Tensor, torch.Tensor, dict, dict, list]:
    """(voxel features, voxel coords (b, x, y, z), level outputs, raw head outputs, decoded InstanceData per sample)."""
    batch, metas = model_inputs(inputs)
    with torch.no_grad(), Recorder(model, levels) as recorder:
        features, coords, _ = model.voxelize(batch["points"])
        neck = model.extract_feat(batch, metas)
        head = model.bbox_head(neck, metas)[0][0]
        raw = {name: value.clone() for name, value in head.items()}  # decoding rewrites the maps in place
        results = model.bbox_head.predict_by_feat([[head]], metas)
    return features, coords, recorder.outputs, raw, results


def steer_heatmap(model: torch.nn.Module, inputs: dict, generator: torch.Generator) -> None:
    """Make the dense heatmap peak at cells that points reach (`steer_final_conv`), so that the queries start at
    the objects' asymmetric places and not at the map's edge, where random weights put the best scores."""
    head = model.bbox_head
    with torch.no_grad(), Recorder(model, ["pts_middle_encoder", "bbox_head.heatmap_head.0"]) as recorder:
        neck = model.extract_feat(*model_inputs(inputs))
        head.heatmap_head(head.shared_conv(neck[0]))
    occupied = recorder.outputs["pts_middle_encoder"].abs().sum(1)[0] > 0  # [X, Y]
    steer_final_conv(head.heatmap_head[-1], recorder.outputs["bbox_head.heatmap_head.0"][0], occupied, generator, 0.0)


def y_major(maps: torch.Tensor) -> torch.Tensor:
    """mmdet3d BEVFusion's x-major map [B, C, X, Y] in unikd's layout [B, C, Y, X]."""
    return maps.transpose(-1, -2)


def make_fixture(source: Path, name: str, inputs: dict, out_dir: Path) -> None:
    full = build_model(source, name, reduced=False)
    keys = {key: list(value.shape) for key, value in full.state_dict().items()}
    (out_dir / f"{name}_keys.json").write_text(json.dumps({"config": CONFIGS[name], "keys": keys}, indent=0))

    torch.manual_seed(0)  # the weights `randomise` leaves to their initialisation (attention projections)
    model = build_model(source, name, reduced=True)
    randomise(model, seed=0)
    steer_heatmap(model, inputs, torch.Generator().manual_seed(2))
    camera_fixture.round_to_half(model)  # weights stored as float16 (computed with in float32): half the bytes
    inputs = {key: value.half().float() if key == "imgs" else value for key, value in inputs.items()}
    levels = LEVELS + (FUSION_LEVELS if name == "fusion" else [])
    features, coords, outputs, head, results = run(model, inputs, levels)
    bev = y_major(outputs["pts_middle_encoder"])
    width = bev.shape[-1]
    cells = sampled_cells(bev, NUM_SAMPLED_CELLS, torch.Generator().manual_seed(1))
    backbone = [y_major(level) for level in outputs["pts_backbone"]]
    strides = [width // level.shape[-1] for level in backbone]
    result = results[0]
    boxes = result.bboxes_3d.tensor.clone()  # mmdet3d LiDAR boxes: bottom-centre z, (l, w, h), yaw, vx, vy
    if len(boxes) == 0:
        raise RuntimeError("no box decoded: the fixture would not test the converted weights")
    fixture = {
        "config": CONFIGS[name],
        "unikd_overrides": {**REDUCED_UNIKD, **(CAMERA_UNIKD if name == "fusion" else {})},
        "stand_ins": {
            "ops.Voxelization": "mmcv.ops.Voxelization (CPU) with coordinates reversed to (x, y, z)",
            "ops.bev_pool": "unikd.ops.bev_pool.bev_pool (pure torch): the same sum per (b, z, x, y) cell",
        },
        "state_dict": {
            key: value.clone() if key in camera_fixture.GEOMETRY else camera_fixture.compact(value)
            for key, value in model.state_dict().items()
        },
        "meta": {"mmdet3d_version": __import__("mmdet3d").__version__},
        **{key: value.half() if key == "imgs" else value for key, value in inputs.items()},
        "voxel_features": features.clone(),
        "voxel_coords": coords.clone(),  # (batch, x, y, z)
        "cells": cells,
        "middle_encoder": at_cells(bev, cells, 1, width),
        "backbone": [at_cells(level, cells, s, width) for level, s in zip(backbone, strides, strict=True)],
        "backbone_strides": strides,
        "neck": at_cells(y_major(outputs["pts_neck"][0]), cells, 1, width),
        "dense_heatmap": at_cells(y_major(head["dense_heatmap"]), cells, 1, width),
        "query_labels": model.bbox_head.query_labels.clone(),
        "queries": {key: value.clone() for key, value in head.items() if key != "dense_heatmap"},
        "boxes": boxes,
        "scores": result.scores_3d.clone(),
        "labels": result.labels_3d.clone(),
    }
    if name == "fusion":
        camera_bev = y_major(outputs["view_transform"])
        camera_cells = camera_fixture.sampled_cells(camera_bev, NUM_SAMPLED_CELLS, torch.Generator().manual_seed(3))
        fixture["camera_cells"] = camera_cells
        fixture["camera_bev"] = at_cells(camera_bev, camera_cells, 1, width)
        fixture["bev"] = at_cells(y_major(outputs["fusion_layer"]), cells, 1, width)
    torch.save(fixture, out_dir / f"{name}_parity.pt")
    print(f"{name}: {len(boxes)} boxes, {len(coords)} voxels, {len(cells)} sampled cells")


def camera_inputs() -> dict:
    """The camera fixture's inputs: six random images, the synthetic rig's matrices, its points."""
    generator = torch.Generator().manual_seed(1)
    matrices = camera_fixture.rig_matrices()
    imgs = torch.randn(6, 3, *camera_fixture.IMAGE_SIZE, generator=generator)
    return {"points": camera_fixture.lidar_points(matrices, generator), "imgs": imgs, **matrices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="an mmdetection3d v1.4.0 source tree")
    parser.add_argument("--points", type=Path, required=True, help="a key-frame .pcd.bin of the synthetic set")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/bevfusion"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.source.resolve()
    make_fixture(source, "lidar", {"points": load_points(args.points, NUM_POINTS)}, args.out)
    make_fixture(source, "fusion", camera_inputs(), args.out)


if __name__ == "__main__":
    main()
