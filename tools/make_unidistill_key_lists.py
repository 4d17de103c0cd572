"""UniDistill's own LiDAR detector (BEVFusion_nuscenes_centerhead_lidar_exp), built from its source, run on
one synthetic LiDAR sweep: its key names and answers are what tests/test_interop_unidistill.py compares
unikd against.

Run in the mmdet3d environment of docs/INTEROP.md (torch 2.13 CPU, mmcv 2.1, mmengine, spconv 2.3.8,
shapely), from the repository root:

    python tools/make_unidistill_key_lists.py --points data/synthetic/samples/LIDAR_TOP/<key frame>.pcd.bin \\
        [--repo /work/.mirror/megvii-research+CVPR2023-UniDistill/repo]

(The committed fixtures: UniDistill at commit 32f02b4, key frame n008-2018-07-23-23-28-47-0400__LIDAR_TOP__
1532402927000000 of the synthetic set, whose 6,000 chosen points the parity file holds; a rerun writes the
same bytes.)

It extracts the repository's HEAD into a temporary folder and imports UniDistill's modules from there.
What is not UniDistill's own code, and why:

- its prebuilt CUDA extensions (py3.6 `.so`, absent from the mirror) are empty modules, except
  `iou3d_nms_cuda.nms_gpu`, which becomes a CPU loop of OpenPCDet's semantics (boxes sorted by the
  caller, suppress a box whose rotated BEV IoU with a kept one is > thresh) over shapely polygons, so
  that UniDistill's whole decoding runs; `roiaware_pool3d_cuda` is only imported, never called here;
- `mmcv.Config` (an mmcv 1.x name) is mmengine's `Config`, and `Tensor.cuda()` returns the tensor
  itself (UniDistill's NMS moves the kept indices to the GPU);
- spconv's CPU build refuses sparse convolutions with a bias (the residual blocks' have one): they run
  without it, and the bias is added to every output site afterwards, as the GPU kernels do;
- the package `__init__` files of `unidistill.layers.head.det3d` and its `target_assigner` are not run
  (they re-export the TransFusion and Hungarian parts, which import mmdet 2.x's `mmdet.core`); the
  modules the LiDAR detector uses are imported from their own files;
- the experiment files import the dataset and camera stack (mmdet3d 0.x), so the classes that wire the
  detector (`LidarEncoder`, `BevEncoder`, `BEVFusion` of BEVFusion_nuscenes_base_exp.py, `DetHead`,
  `BEVFusionCenterHead` of BEVFusion_nuscenes_centerhead_fusion_exp.py) are compiled from those files'
  class definitions alone, with the published MODEL_CFG and CENTERPOINT_DET_HEAD_CFG and
  `camera_encoder=None` (as the LiDAR experiment sets); the voxelizer they create on "cuda" is created
  on the CPU.

It writes under tests/fixtures/unidistill/:

- `lidar_keys.json`: every key and shape of the full-width detector, under the prefix `model.` of a
  Lightning checkpoint of the experiment (a `.pth` teacher file keeps the same keys without it, under
  `model_state`);
- `lidar_parity.pt`: the detector at a quarter of the sparse backbone's width (its channel constants
  16/32/64/128 divided by 4 in the class's source, nothing else changed), a narrower BEV backbone and
  shared head conv (through the config) and 16-channel SepHead branches (the default head_conv of
  SepHead, which the config cannot reach), random weights with seed 0 (conv biases and BatchNorm statistics included),
  heatmap convolutions steered so that only cells near the points pass the score threshold; its state dict,
  the input points, the voxels, every level's output at 256 fixed cells (half of them reached by
  points), the head maps there, the decoded boxes, and a geometry probe (the BEV cell that one point at
  an asymmetric place lights up, and the box UniDistill decodes from a one-peak map).

torch runs on one thread: spconv 2.3.8's CPU build writes wrong rows intermittently with more.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_parity_fixtures import (  # noqa: E402  (the CenterPoint fixtures' helpers)
    Recorder,
    at_cells,
    load_points,
    randomise,
    sampled_cells,
    separating_kernel,
)

DEFAULT_REPO = Path("/work/.mirror/megvii-research+CVPR2023-UniDistill/repo")
EXPERIMENT = "BEVFusion_nuscenes_centerhead_lidar_exp"
EXPS = "unidistill/exps/multisensor_fusion/nuscenes/BEVFusion"
SPARSE_WIDTHS = (16, 32, 64, 128)
SPARSE_DIVISOR = 4
REDUCED_BEV_ENCODER = {
    "num_bev_features": 2 * SPARSE_WIDTHS[-1] // SPARSE_DIVISOR,
    "backbone2d_num_filters": [16, 32],
    "backbone2d_num_upsample_filters": [24, 16],  # stride-1 deblock 16 -> 24: a non-square 1x1 kernel
}
REDUCED_SHARE_CONV = 8
REDUCED_HEAD_CONV = 16  # SepHead's head_conv: a default UniDistill's CenterHead does not pass (64)
# the same model as unikd model-config overrides (unidistill_lidar)
REDUCED_UNIKD = {
    "lidar.sparse_encoder.base_channels": 4,
    "lidar.sparse_encoder.encoder_channels": ((4, 4, 8), (8, 8, 16), (16, 16, 32), (32, 32)),
    "lidar.sparse_encoder.output_channels": 32,
    "backbone.out_channels": (16, 32),
    "neck.out_channels": (24, 16),
    "head.shared_channels": REDUCED_SHARE_CONV,
    "head.head_conv": REDUCED_HEAD_CONV,
}
NUM_POINTS = 6000
NUM_SAMPLED_CELLS = 256
PEAK_ABOVE_EMPTY = 3.0  # logits: best cell near the points over the best one elsewhere
SCORE_MARGIN = 0.5  # logits below the threshold for the best cell away from the points
SCORE_THRESHOLD = 0.1
PROBE_POINT = (20.3, -35.7, 0.1)  # x, y, z: a place where x-major and y-major layouts differ
PROBE_PEAK = (37, 141)  # (row, col) of the one-peak map given to UniDistill's decoding


def extract(repo: Path, into: Path) -> Path:
    """The repository's HEAD (Python files and configs; not the absent `.so` blobs) under `into`."""
    names = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "-r", "--name-only", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.split()
    wanted = [name for name in names if name.endswith(".py")]
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD", *wanted], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def nms_gpu(boxes: torch.Tensor, keep: torch.Tensor, thresh: float) -> int:
    """OpenPCDet's iou3d_nms_cuda.nms_gpu on the CPU: boxes [N, 7] (x, y, z, dx, dy, dz, heading) sorted
    by score; writes the kept indices into `keep` and returns their count."""
    from shapely.geometry import Polygon

    polygons = []
    for x, y, _, dx, dy, _, heading in boxes.tolist():
        cos, sin = np.cos(heading), np.sin(heading)
        corners = [(x + cos * u - sin * v, y + sin * u + cos * v) for u, v in
                   ((dx / 2, dy / 2), (-dx / 2, dy / 2), (-dx / 2, -dy / 2), (dx / 2, -dy / 2))]
        polygons.append(Polygon(corners))
    kept: list[int] = []
    for index, polygon in enumerate(polygons):
        suppressed = False
        for other in kept:
            overlap = polygon.intersection(polygons[other]).area
            union = polygon.area + polygons[other].area - overlap
            if overlap / max(union, 1e-8) > thresh:
                suppressed = True
                break
        if not suppressed:
            kept.append(index)
    keep[: len(kept)] = torch.tensor(kept, dtype=keep.dtype)
    return len(kept)


def biased_sparse_convs_on_cpu() -> None:
    """spconv's CPU build refuses convolutions with a bias (its residual blocks have them): run those
    without it and add it to every output site, which is what the GPU kernels compute."""
    from spconv.pytorch.conv import SparseConvolution

    forward = SparseConvolution.forward

    def forward_then_bias(self, input):
        bias = self.bias
        if bias is None or input.features.is_cuda:
            return forward(self, input)
        self.bias = None
        try:
            output = forward(self, input)
        finally:
            self.bias = bias
        return output.replace_feature(output.features + bias)

    SparseConvolution.forward = forward_then_bias


def install_stubs(root: Path) -> None:
    """The stand-ins of the module docstring, then UniDistill's source on sys.path."""
    import mmcv
    import mmengine

    mmcv.Config = mmengine.Config
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # its NMS moves the kept indices to "cuda"
    biased_sparse_convs_on_cpu()
    nms = types.ModuleType("unidistill.layers.head.det3d.generate_proposals.iou3d_nms_cuda")
    nms.nms_gpu = nms_gpu
    sys.modules[nms.__name__] = nms
    for name in ("unidistill.utils.det3d_utils.roiaware_pool3d_cuda",):
        sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(root))
    for package in ("unidistill.layers.head.det3d", "unidistill.layers.head.det3d.target_assigner"):
        module = types.ModuleType(package)
        module.__path__ = [str(root / package.replace(".", "/"))]
        sys.modules[package] = module
    det3d = sys.modules["unidistill.layers.head.det3d"]
    det3d.CenterHead = importlib.import_module("unidistill.layers.head.det3d.center_head").CenterHead


def reduced_sparse_backbone(root: Path) -> type:
    """VoxelResBackBone8x with its channel constants divided by SPARSE_DIVISOR (its own source otherwise)."""
    module = importlib.import_module("unidistill.layers.blocks_3d.det3d.spconv_backbone")
    tree = ast.parse((root / "unidistill/layers/blocks_3d/det3d/spconv_backbone.py").read_text())
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "VoxelResBackBone8x"]

    class Narrow(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.Constant:
            if type(node.value) is int and node.value in SPARSE_WIDTHS:
                return ast.copy_location(ast.Constant(node.value // SPARSE_DIVISOR), node)
            return node

    narrow = ast.fix_missing_locations(Narrow().visit(cls))
    namespace = dict(vars(module))
    exec(compile(ast.Module([narrow], []), "VoxelResBackBone8x (narrow)", "exec"), namespace)
    return namespace["VoxelResBackBone8x"]


def class_definitions(path: Path, names: tuple[str, ...], namespace: dict) -> None:
    """Compile the named top-level classes of a source file into `namespace`."""
    tree = ast.parse(path.read_text())
    nodes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name in names]
    if {node.name for node in nodes} != set(names):
        raise RuntimeError(f"{path}: expected classes {names}, found {[node.name for node in nodes]}")
    exec(compile(ast.Module(nodes, []), str(path), "exec"), namespace)


def detector_class(root: Path, sparse_backbone: type | None) -> type:
    """UniDistill's BEVFusionCenterHead, from its experiment files' class definitions."""
    from typing import Any

    import mmcv
    from torch import nn
    from unidistill.data.det3d.preprocess.voxelization import Voxelization
    from unidistill.layers.blocks_2d.det3d import BaseBEVBackbone, HeightCompression
    from unidistill.layers.blocks_3d.det3d import MeanVFE, VoxelResBackBone8x
    from unidistill.layers.head.det3d.center_head_iou_aware import CenterHeadIouAware
    from unidistill.layers.head.det3d.generate_proposals import IouAwareGenProposals
    from unidistill.layers.head.det3d.target_assigner.fcos_assigner import FCOSAssigner
    from unidistill.layers.losses.det3d import CenterNetRegLoss, FocalLoss
    from unidistill.models.multisensor_fusion import BaseEncoder, BaseMultiSensorFusion

    class CPUVoxelization(Voxelization):
        def __init__(self, *args, device=None, **kwargs) -> None:
            super().__init__(*args, device=torch.device("cpu"), **kwargs)

    namespace = {
        "Any": Any, "Dict": dict, "List": list, "Tuple": tuple, "torch": torch, "nn": nn, "np": np, "mmcv": mmcv,
        "Voxelization": CPUVoxelization, "MeanVFE": MeanVFE, "VoxelResBackBone8x": sparse_backbone or VoxelResBackBone8x,
        "HeightCompression": HeightCompression, "BaseBEVBackbone": BaseBEVBackbone, "BaseEncoder": BaseEncoder,
        "BaseMultiSensorFusion": BaseMultiSensorFusion, "CenterHeadIouAware": CenterHeadIouAware,
        "IouAwareGenProposals": IouAwareGenProposals, "FCOSAssigner": FCOSAssigner, "FocalLoss": FocalLoss,
        "CenterNetRegLoss": CenterNetRegLoss,
    }
    class_definitions(root / EXPS / "BEVFusion_nuscenes_base_exp.py", ("LidarEncoder", "BevEncoder", "BEVFusion"), namespace)
    class_definitions(root / EXPS / "BEVFusion_nuscenes_centerhead_fusion_exp.py", ("DetHead", "BEVFusionCenterHead"), namespace)
    return namespace["BEVFusionCenterHead"]


def lidar_config(reduced: bool) -> dict:
    """MODEL_CFG of the LiDAR experiment: camera_encoder None, det_head CENTERPOINT_DET_HEAD_CFG."""
    from unidistill.exps.multisensor_fusion.nuscenes._base_ import base_nuscenes_cfg as cfg

    model_cfg = copy.deepcopy(cfg.MODEL_CFG)
    model_cfg["camera_encoder"] = None
    model_cfg["det_head"] = copy.deepcopy(cfg.CENTERPOINT_DET_HEAD_CFG)
    if reduced:
        model_cfg["bev_encoder"].update(REDUCED_BEV_ENCODER)
        head = model_cfg["det_head"]["dense_head"]
        head["input_channels"] = sum(REDUCED_BEV_ENCODER["backbone2d_num_upsample_filters"])
        head["densehead_share_conv_channel"] = REDUCED_SHARE_CONV
    return model_cfg


def build(root: Path, reduced: bool) -> torch.nn.Module:
    import mmcv
    from unidistill.layers.head.det3d.center_head import SepHead

    detector = detector_class(root, reduced_sparse_backbone(root) if reduced else None)
    defaults = SepHead.__init__.__defaults__
    if reduced:  # (head_conv, name, final_kernel, bn, init_bias, directional_classifier)
        SepHead.__init__.__defaults__ = (REDUCED_HEAD_CONV, *defaults[1:])
    try:
        return detector(model_cfg=mmcv.Config(lidar_config(reduced)))
    finally:
        SepHead.__init__.__defaults__ = defaults


LEVELS = ["lidar_encoder", "lidar_encoder.vfe", "bev_encoder.backbone_2d"]


def run(model: torch.nn.Module, points: torch.Tensor) -> tuple[dict, dict, dict]:
    """(voxels, recorded outputs, UniDistill's decoded predictions of the one sample)."""
    voxelizer = model.lidar_encoder.voxelizer
    with torch.no_grad():
        voxels, coords, num_points = voxelizer([points])
        with Recorder(model, LEVELS) as recorder:
            result = model([points], None, None, None)
    pyramid_hooked = recorder.outputs["bev_encoder.backbone_2d"]
    recorder.outputs["pyramid"] = pyramid_hooked[1]
    recorder.outputs["bev_encoder"] = pyramid_hooked[0]
    return {"coords": coords, "num_points": num_points}, recorder.outputs, result["pred_dicts"][0]


def head_maps(model: torch.nn.Module, bev: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The per-task maps of the head on the BEV-encoder output (before any decoding)."""
    head = model.det_head.dense_head
    with torch.no_grad():
        shared = head.shared_conv(bev)
        return [task(shared) for task in head.tasks]


def steer_heatmaps(model: torch.nn.Module, lidar_bev: torch.Tensor, bev: torch.Tensor) -> None:
    """Make each heatmap class peak where points are (as tools/make_parity_fixtures.py does for mmdet3d):
    its last convolution becomes a kernel whose best response within 4 cells of an occupied cell beats
    its best response elsewhere by PEAK_ABOVE_EMPTY, and its bias puts the best cell elsewhere
    SCORE_MARGIN below the score threshold (minus 0.05 per class: no two classes of a task tie). With
    plain random weights the best scores lie on the plateau of empty cells, thousands of them nearly
    equal, or at the map edges."""
    occupied = lidar_bev.abs().sum(1)[0] > 0
    reached = torch.nn.functional.max_pool2d(occupied[None, None].float(), 9, 1, 4)[0, 0] > 0
    threshold = float(np.log(SCORE_THRESHOLD / (1 - SCORE_THRESHOLD)))
    generator = torch.Generator().manual_seed(2)
    candidates = torch.nonzero(occupied)
    empty_row, empty_col = torch.nonzero(~reached[1:-1, 1:-1])[0].add(1).tolist()
    head = model.det_head.dense_head
    with torch.no_grad():
        shared = head.shared_conv(bev)
    for task in head.tasks:
        final = task.hm[-1]
        with torch.no_grad():
            features = task.hm[2](task.hm[1](task.hm[0](shared)))[0]  # conv, BN, ReLU: the last conv's input
        empty = features[:, empty_row - 1 : empty_row + 2, empty_col - 1 : empty_col + 2]
        for cls in range(final.weight.shape[0]):
            picks = candidates[torch.randperm(len(candidates), generator=generator)[:3]].tolist()
            contrast = sum(features[:, r - 1 : r + 2, c - 1 : c + 2] - empty for r, c in picks)
            final.weight.data[cls] = separating_kernel(features, contrast, reached)
        logits = torch.nn.functional.conv2d(features[None], final.weight, padding=1)[0]
        gap = logits[:, reached].amax(dim=1) - logits[:, ~reached].amax(dim=1)
        if (gap <= 0).any():
            raise RuntimeError("no cell near the points outscores the empty ones")
        final.weight.data *= (PEAK_ABOVE_EMPTY / gap)[:, None, None, None]
        logits = torch.nn.functional.conv2d(features[None], final.weight, padding=1)[0]
        offsets = 0.05 * torch.arange(len(logits), dtype=logits.dtype)
        final.bias.data = -logits[:, ~reached].amax(dim=1) + threshold - SCORE_MARGIN - offsets


def geometry_probe(model: torch.nn.Module) -> dict:
    """Where UniDistill puts one point at PROBE_POINT in its BEV, and the box its decoding reads from a
    map with one peak at PROBE_PEAK (reg (0.25, 0.75), yaw 0.5, dims (4, 2, 1.5), z 0.3, vel (1, -2));
    every other cell has heatmap logit -10 and zeros elsewhere."""
    with torch.no_grad():
        point = torch.tensor([[*PROBE_POINT, 0.5, 0.0]])
        bev = model.lidar_encoder([point])
        occupied = torch.nonzero(bev[0].abs().sum(0) > 0)
        height, width = bev.shape[-2:]
        maps = {
            "hm": torch.full((1, 1, height, width), -10.0),
            "reg": torch.zeros(1, 2, height, width), "height": torch.zeros(1, 1, height, width),
            "dim": torch.zeros(1, 3, height, width), "rot": torch.zeros(1, 2, height, width),
            "vel": torch.zeros(1, 2, height, width), "iou": torch.zeros(1, 1, height, width),
        }
        row, col = PROBE_PEAK
        maps["hm"][0, 0, row, col] = 2.0
        for name, values in {"reg": (0.25, 0.75), "height": (0.3,), "dim": (np.log(4.0), np.log(2.0), np.log(1.5)),
                             "rot": (np.sin(0.5), np.cos(0.5)), "vel": (1.0, -2.0), "iou": (0.4,)}.items():
            maps[name][0, :, row, col] = torch.tensor(values, dtype=torch.float32)
        proposals = model.det_head.dense_head.proposal_layer
        decoded = proposals.generate_predicted_boxes({"multi_head_features": [maps] * 6}, {})["pred_dicts"][0]
    peak = {name: value[0, :, row, col].clone() for name, value in maps.items()}
    return {"point": torch.tensor(PROBE_POINT), "bev_cells": occupied, "peak_cell": torch.tensor(PROBE_PEAK),
            "peak": peak, "boxes": decoded["pred_boxes"][:1].clone(), "scores": decoded["pred_scores"][:1].clone()}


def make_fixtures(root: Path, commit: str, points: torch.Tensor, out_dir: Path) -> None:
    full = build(root, reduced=False)
    keys = {f"model.{key}": list(value.shape) for key, value in full.state_dict().items()}
    listed = {"experiment": EXPERIMENT, "unidistill_commit": commit, "keys": keys}
    (out_dir / "lidar_keys.json").write_text(json.dumps(listed, indent=0))
    del full

    model = build(root, reduced=True)
    randomise(model, seed=0)
    model.eval()
    _, outputs, _ = run(model, points)
    steer_heatmaps(model, outputs["lidar_encoder"], outputs["bev_encoder"])
    voxels, outputs, predictions = run(model, points)
    bev = outputs["lidar_encoder"]
    width = bev.shape[-1]
    cells = sampled_cells(bev, NUM_SAMPLED_CELLS, torch.Generator().manual_seed(1))
    pyramid = list(outputs["pyramid"].values())
    strides = [width // level.shape[-1] for level in pyramid]
    maps = head_maps(model, outputs["bev_encoder"])
    if len(predictions["pred_boxes"]) == 0:
        raise RuntimeError("no box decoded: the fixture would not test the decoding")
    fixture = {
        "experiment": EXPERIMENT,
        "unikd_overrides": REDUCED_UNIKD,
        "state_dict": {f"model.{key}": value.clone() for key, value in model.state_dict().items()},
        "points": points,
        "voxel_features": outputs["lidar_encoder.vfe"].clone(),
        "voxel_coords": voxels["coords"].clone(),  # (batch, z, y, x)
        "cells": cells,
        "middle_encoder": at_cells(bev, cells, 1, width),
        "backbone": [at_cells(level, cells, s, width) for level, s in zip(pyramid, strides, strict=True)],
        "backbone_strides": strides,
        "neck": at_cells(outputs["bev_encoder"], cells, 1, width),
        "head": [{name: at_cells(value, cells, 1, width) for name, value in task.items()} for task in maps],
        "boxes": predictions["pred_boxes"].clone(),  # (x, y, z, l, w, h, yaw, vx, vy)
        "scores": predictions["pred_scores"].clone(),
        "labels": predictions["pred_labels"].clone() - 1,  # UniDistill counts classes from 1
        "class_names": list(model.class_names),  # mmdet3d's order, not the devkit's
        "geometry": geometry_probe(model),
    }
    torch.save(fixture, out_dir / "lidar_parity.pt")
    print(f"{len(keys)} full-width keys; reduced: {len(voxels['coords'])} voxels, {len(fixture['boxes'])} boxes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=Path, required=True, help="a key-frame .pcd.bin of the synthetic set")
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="UniDistill's git repository")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/unidistill"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    points = load_points(args.points, NUM_POINTS)
    with tempfile.TemporaryDirectory(prefix="unidistill-") as tmp:
        root = extract(args.repo, Path(tmp))
        install_stubs(root)
        commit = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
        make_fixtures(root, commit.stdout.strip(), points, args.out)


if __name__ == "__main__":
    main()
