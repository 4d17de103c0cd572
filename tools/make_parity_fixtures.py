"""Parity fixtures: mmdet3d's own CenterPoint, built from its published nuScenes configs, run on one
synthetic LiDAR sweep; its answers are what tests/test_interop_centerpoint.py compares unikd against.

Run in an environment with mmdet3d (docs/INTEROP.md says how to make one; about 10 minutes on 2
cores for mmcv's source build), from the repository root:

    python tools/make_parity_fixtures.py --points data/synthetic/samples/LIDAR_TOP/<key frame>.pcd.bin

For each published voxel size (0.075 m and 0.1 m) it writes under tests/fixtures/mmdet3d/:

- `centerpoint_<v>_keys.json`: key names and shapes of the full-width model as mmdet3d builds it;
- `centerpoint_<v>_parity.pt`: the model at reduced width (random weights, fixed seed, BatchNorm
  statistics randomised, heatmap convolutions steered so that only cells reached by points score above
  the threshold and the decoded boxes depend on the converted weights), its state dict (spconv
  2.x layout), the input points, the voxels, every level's output (sampled at fixed cells: the
  maps are too large to store whole) and the decoded boxes;
- `centerpoint_<v>_spconv1.pt`: the same model's sparse kernels in spconv 1.x layout, checked here
  to load into mmdet3d (which permutes kernels of a state dict without spconv-2 metadata) and give
  the same boxes.

torch runs on one thread: spconv's CPU build writes wrong rows intermittently with more.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

CONFIGS = {
    "0075": "centerpoint_voxel0075_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d.py",
    "01": "centerpoint_voxel01_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d.py",
}
# reduced widths, as mmdet3d config overrides and as the matching unikd model-config overrides: the LiDAR
# branch and decoder (BEVFusion-L's too, tools/make_bevfusion_fixtures.py), then CenterPoint's head
REDUCED_LIDAR_MMDET3D = {
    "pts_middle_encoder": {
        "base_channels": 4,
        "encoder_channels": ((4, 4, 8), (8, 8, 16), (16, 16, 32), (32, 32)),
        "output_channels": 16,
    },
    "pts_backbone": {"in_channels": 32, "out_channels": [16, 32]},
    "pts_neck": {"in_channels": [16, 32], "out_channels": [16, 16]},
}
REDUCED_LIDAR_UNIKD = {
    "lidar.sparse_encoder.base_channels": 4,
    "lidar.sparse_encoder.encoder_channels": ((4, 4, 8), (8, 8, 16), (16, 16, 32), (32, 32)),
    "lidar.sparse_encoder.output_channels": 16,
    "backbone.out_channels": (16, 32),
    "neck.out_channels": (16, 16),
}
REDUCED_MMDET3D = {**REDUCED_LIDAR_MMDET3D, "pts_bbox_head": {"in_channels": 32, "share_conv_channel": 8}}
REDUCED_UNIKD = {**REDUCED_LIDAR_UNIKD, "head.shared_channels": 8, "head.head_conv": 8}
HEAD_CONV = 8
NUM_POINTS = 6000
NUM_SAMPLED_CELLS = 256
SCORE_MARGIN = 0.5  # logit margin below the threshold for cells that no point reaches
TARGETS_PER_CLASS = 3
PEAK_ABOVE_EMPTY = 3.0  # logits: best cell reached by points over the best one not reached


def build_model(config_path: Path, reduced: bool) -> torch.nn.Module:
    from mmdet3d.registry import MODELS
    from mmdet3d.utils import register_all_modules
    from mmengine import Config

    register_all_modules()
    cfg = Config.fromfile(str(config_path))
    model_cfg = copy.deepcopy(cfg.model)
    if reduced:
        for module, override in REDUCED_MMDET3D.items():
            model_cfg[module].update(override)
        model_cfg["pts_bbox_head"]["separate_head"]["head_conv"] = HEAD_CONV
    return MODELS.build(model_cfg).eval()


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics (eval-mode BN is then not an identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.1)
        elif hasattr(module, "weight") and isinstance(module.weight, torch.nn.Parameter):
            fan_in = module.weight[0].numel() if module.weight.ndim > 1 else 1
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in**0.5)
            if getattr(module, "bias", None) is not None:
                module.bias.data.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


class Recorder:
    """Forward outputs of named submodules while in the `with` block (the hooks are removed after it)."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        self.model, self.names = model, names
        self.outputs: dict = {}
        self._handles: list = []

    def __enter__(self) -> Recorder:
        for name in self.names:
            self._handles.append(self.model.get_submodule(name).register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.outputs[name] = output

        return hook


LEVELS = ["pts_voxel_encoder", "pts_middle_encoder", "pts_backbone", "pts_neck", "pts_bbox_head"]


def run(model: torch.nn.Module, points: torch.Tensor, names: list[str] = LEVELS) -> tuple[dict, dict, list]:
    """(voxel dict, outputs of the named submodules, decoded InstanceData list) of one sample."""
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes

    sample = Det3DDataSample(metainfo={"box_type_3d": LiDARInstance3DBoxes})
    with torch.no_grad(), Recorder(model, names) as recorder:
        voxels = model.data_preprocessor.voxelize([points], [sample])
        features = model.extract_pts_feat(voxels, points=[points], batch_input_metas=[sample.metainfo])
        predictions = model.pts_bbox_head(features)
        results = model.pts_bbox_head.predict_by_feat(predictions, [sample.metainfo])
    return voxels, recorder.outputs, results


def steer_heatmaps(model: torch.nn.Module, points: torch.Tensor, generator: torch.Generator) -> None:
    """Make each task's heatmap peak at cells that points reach (`steer_final_conv`), its bias putting the
    best cell no point reaches SCORE_MARGIN below the score threshold. (With plain random weights the best
    scores sit at the map edges, where the zero padding differs, and the boxes would test the decoding but
    not the converted weights.)"""
    heads = model.pts_bbox_head.task_heads
    inputs = [f"pts_bbox_head.task_heads.{task}.heatmap.0" for task in range(len(heads))]  # of the last convs
    _, outputs, _ = run(model, points, ["pts_middle_encoder", *inputs])
    occupied = outputs["pts_middle_encoder"].abs().sum(1)[0] > 0
    threshold = float(np.log(0.1 / 0.9))
    for task, head in enumerate(heads):
        steer_final_conv(head.heatmap[-1], outputs[inputs[task]][0], occupied, generator, threshold - SCORE_MARGIN)


def steer_final_conv(
    final: torch.nn.Conv2d, features: torch.Tensor, occupied: torch.Tensor, generator: torch.Generator, bias_offset: float
) -> None:
    """The last 3x3 convolution `final` of a heatmap, over `features` [C, H, W], made to peak at the cells that
    `occupied` [H, W] reaches: per class the contrast between the features around TARGETS_PER_CLASS occupied
    cells and those of an empty one (`separating_kernel`), scaled so that the best reached cell is
    PEAK_ABOVE_EMPTY logits above the best cell not reached, whose logit the bias puts at `bias_offset` minus
    a distinct per-class offset (no two classes tie at a cell: the label would be arbitrary)."""
    reached = torch.nn.functional.max_pool2d(occupied[None, None].float(), 9, 1, 4)[0, 0] > 0
    inner = torch.zeros_like(occupied)
    inner[2:-2, 2:-2] = True
    candidates = torch.nonzero(occupied & inner)
    empty_row, empty_col = torch.nonzero(~reached & inner)[0].tolist()
    empty = features[:, empty_row - 1 : empty_row + 2, empty_col - 1 : empty_col + 2]
    for cls in range(final.weight.shape[0]):
        picks = candidates[torch.randperm(len(candidates), generator=generator)[:TARGETS_PER_CLASS]]
        contrast = sum(features[:, r - 1 : r + 2, c - 1 : c + 2] - empty for r, c in picks.tolist())
        final.weight.data[cls] = separating_kernel(features, contrast, reached)
    logits = torch.nn.functional.conv2d(features[None], final.weight, padding=1)[0]
    gap = logits[:, reached].amax(dim=1) - logits[:, ~reached].amax(dim=1)
    if (gap <= 0).any():
        raise RuntimeError("no cell reached by points outscores the empty ones")
    final.weight.data *= (PEAK_ABOVE_EMPTY / gap)[:, None, None, None]
    logits = torch.nn.functional.conv2d(features[None], final.weight, padding=1)[0]
    offsets = 0.05 * torch.arange(len(logits), dtype=logits.dtype)
    final.bias.data = -logits[:, ~reached].amax(dim=1) + bias_offset - offsets


def separating_kernel(features: torch.Tensor, start: torch.Tensor, reached: torch.Tensor) -> torch.Tensor:
    """A unit-norm 3x3 kernel over `features` [C, H, W], from `start`, whose best response over the cells
    points reach exceeds its best response elsewhere (a few hundred steps of gradient ascent)."""
    kernel = (start / start.norm()).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([kernel], lr=0.02)
    for _ in range(400):
        response = torch.nn.functional.conv2d(features[None], (kernel / kernel.norm())[None], padding=1)[0, 0]
        gap = torch.logsumexp(response[reached] / 0.01, 0) - torch.logsumexp(response[~reached] / 0.01, 0)
        optimizer.zero_grad()
        (-gap).backward()
        optimizer.step()
    return (kernel / kernel.norm()).detach()


def sampled_cells(bev: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """[count] flat cell indices: half among occupied cells, half anywhere."""
    flat = bev.abs().sum(1)[0].flatten()
    occupied = torch.nonzero(flat > 0).flatten()
    near = occupied[torch.randperm(len(occupied), generator=generator)[: count // 2]]
    anywhere = torch.randperm(flat.numel(), generator=generator)[: count - len(near)]
    return torch.cat([near, anywhere])


def at_cells(maps: torch.Tensor, cells: torch.Tensor, stride: int, width: int) -> torch.Tensor:
    """[C, K] values of maps [1, C, H', W'] at the first level's flat cells, on a level `stride` coarser."""
    rows, cols = cells // width // stride, cells % width // stride
    return maps[0][:, rows, cols].clone()


def make_fixture(voxel: str, config_dir: Path, points: torch.Tensor, out_dir: Path) -> None:
    config_path = config_dir / "centerpoint" / CONFIGS[voxel]
    full = build_model(config_path, reduced=False)
    keys = {key: list(value.shape) for key, value in full.state_dict().items()}
    (out_dir / f"centerpoint_{voxel}_keys.json").write_text(json.dumps({"config": CONFIGS[voxel], "keys": keys}, indent=0))

    model = build_model(config_path, reduced=True)
    randomise(model, seed=0)
    steer_heatmaps(model, points, torch.Generator().manual_seed(2))
    voxels, outputs, results = run(model, points)
    bev = outputs["pts_middle_encoder"]
    width = bev.shape[-1]
    cells = sampled_cells(bev, NUM_SAMPLED_CELLS, torch.Generator().manual_seed(1))
    backbone = outputs["pts_backbone"]
    strides = [width // level.shape[-1] for level in backbone]
    heads = [
        {name: at_cells(maps, cells, 1, width) for name, maps in task[0].items()}
        for task in outputs["pts_bbox_head"]
    ]
    result = results[0]
    boxes = result.bboxes_3d.tensor.clone()  # mmdet3d LiDAR boxes: bottom-centre z
    if len(boxes) == 0:
        raise RuntimeError("no box decoded: the fixture would not test the converted weights")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    fixture = {
        "config": CONFIGS[voxel],
        "unikd_overrides": REDUCED_UNIKD,
        "state_dict": state,
        "meta": {"mmdet3d_version": __import__("mmdet3d").__version__},
        "points": points,
        "voxel_features": outputs["pts_voxel_encoder"].clone(),
        "voxel_coords": voxels["coors"].clone(),
        "cells": cells,
        "middle_encoder": at_cells(bev, cells, 1, width),
        "backbone": [at_cells(level, cells, s, width) for level, s in zip(backbone, strides, strict=True)],
        "backbone_strides": strides,
        "neck": at_cells(outputs["pts_neck"][0], cells, 1, width),
        "head": heads,
        "boxes": boxes,
        "scores": result.scores_3d.clone(),
        "labels": result.labels_3d.clone(),  # indices into class_names
        "class_names": [name for task in model.pts_bbox_head.class_names for name in task],
    }
    torch.save(fixture, out_dir / f"centerpoint_{voxel}_parity.pt")

    # spconv 1.x layout: a plain dict (no spconv-2 metadata) that mmdet3d permutes on load
    kernels = {key: value.permute(1, 2, 3, 4, 0).contiguous() for key, value in state.items() if value.ndim == 5}
    reloaded = build_model(config_path, reduced=True)
    reloaded.load_state_dict({**{k: v for k, v in state.items() if v.ndim != 5}, **kernels}, strict=True)
    _, _, again = run(reloaded, points)
    if not torch.equal(again[0].bboxes_3d.tensor, boxes):
        raise RuntimeError("mmdet3d did not read the spconv 1.x kernels back to the same model")
    torch.save({"kernels": kernels}, out_dir / f"centerpoint_{voxel}_spconv1.pt")
    print(f"{voxel}: {len(boxes)} boxes, {len(voxels['coors'])} voxels, {len(cells)} sampled cells")


def load_points(path: Path, count: int) -> torch.Tensor:
    """A key frame's points (x, y, z, intensity, time lag 0), `count` of them chosen with a fixed seed."""
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    points[:, 4] = 0.0
    keep = np.sort(np.random.default_rng(0).permutation(len(points))[:count])
    return torch.from_numpy(points[keep].copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=Path, required=True, help="a key-frame .pcd.bin of the synthetic set")
    parser.add_argument("--configs", type=Path, default=None, help="mmdet3d's configs/ (default: the installed package's)")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/mmdet3d"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.configs is None:
        import mmdet3d

        args.configs = Path(mmdet3d.__file__).parent / ".mim" / "configs"
    args.out.mkdir(parents=True, exist_ok=True)
    points = load_points(args.points, NUM_POINTS)
    for voxel in CONFIGS:
        make_fixture(voxel, args.configs, points, args.out)


if __name__ == "__main__":
    main()
