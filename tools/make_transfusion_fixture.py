"""Parity fixture: mmdet3d's own TransFusionHead (projects/BEVFusion), built from the head settings of its
BEVFusion-L nuScenes config at reduced width, with random weights and BatchNorm statistics (fixed seeds),
run on fixed random BEV inputs; tests/test_transfusion_head.py converts its state dict to unikd's head and
compares every output.

`projects/BEVFusion` is not part of the mmdet3d pip package: pass a source tree of mmdetection3d v1.4.0
(`git archive v1.4.0 projects/BEVFusion configs/_base_ | tar x -C <dir>` in a clone; the config
inherits from configs/_base_). Only its transformer.py, utils.py and
transfusion_head.py are imported (the package's __init__ also imports its compiled ops, which the head does
not use). Run in an environment with mmdet3d (docs/INTEROP.md says how to make one), from the repository root:

    python tools/make_transfusion_fixture.py --source <mmdetection3d tree>

It writes tests/fixtures/bevfusion/transfusion_parity.pt, everything in mmdet3d's layout and conventions (BEV
maps [B, C, X, Y], flat cells x * Y + y, boxes with bottom-centre z):

- `keys`: the key names and shapes of the full-width head as the config builds it (no tensors);
- `forward`: a head with 2 decoder layers on a 24 (x) x 20 (y) grid of 0.6 m cells, batch 2, 30 queries,
  post_center_range cutting the grid's edges: its config, state dict, input, the raw outputs (the
  dense heatmap, the query labels and cells, the per-query maps of both layers concatenated along the
  queries as mmdet3d returns them) and the decoded boxes, scores and labels per sample;
- `loss`: a head with 1 decoder layer (mmdet3d's loss takes one: its get_targets indexes a list of
  per-layer dicts that its forward returns as one) on a square 20 x 20 grid, batch 2, with 4 and 3 boxes
  placed near decoded queries (so that the IoU cost matters; its assigner fails on a sample without boxes), in eval
  mode (no dropout): the input, boxes, labels, the state dict, the loss values, and get_targets' class
  targets per query (the assignment) and dense heatmap targets.

A rerun writes the same file, byte for byte.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from make_parity_fixtures import randomise  # noqa: E402

CONFIG = "projects/BEVFusion/configs/bevfusion_lidar_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d.py"
VOXEL = 0.075
OUT_SIZE_FACTOR = 8  # cells of 0.6 m
IN_CHANNELS = 16
REDUCED = {"in_channels": IN_CHANNELS, "hidden_channel": 16, "num_heads": 2}
DECODER_LAYER = {
    "self_attn_cfg": {"embed_dims": 16, "num_heads": 2},
    "cross_attn_cfg": {"embed_dims": 16, "num_heads": 2},
    "ffn_cfg": {"embed_dims": 16, "feedforward_channels": 32},
    "pos_encoding_cfg": {"input_channel": 2, "num_pos_feats": 16},
}
CASES = {
    "forward": {
        "cells": (24, 20),
        "num_proposals": 30,
        "num_decoder_layers": 2,
        "post_center_range": (-6.6, -5.4, -10.0, 6.6, 5.4, 10.0),
    },
    "loss": {
        "cells": (20, 20),
        "num_proposals": 30,
        "num_decoder_layers": 1,
        "post_center_range": (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
    },
}
BATCH = 2
NUM_GT = (4, 3)  # boxes per sample (mmdet3d's loss fails on a sample without boxes)


def import_head_modules(source: Path) -> None:
    """Register projects/BEVFusion's head modules without running the package's __init__ (module doc)."""
    from mmdet3d.utils import register_all_modules

    register_all_modules()
    package = types.ModuleType("bevfusion_sources")
    package.__path__ = [str(source / "projects" / "BEVFusion" / "bevfusion")]
    sys.modules[package.__name__] = package
    for name in ("transformer", "utils", "transfusion_head"):
        importlib.import_module(f"{package.__name__}.{name}")


def head_config(source: Path, case: dict | None) -> dict:
    """The config's bbox_head; at reduced width on the case's grid unless `case` is None."""
    from mmengine import Config

    head = copy.deepcopy(Config.fromfile(str(source / CONFIG), import_custom_modules=False).model.bbox_head)
    if case is None:
        return head
    x_cells, y_cells = case["cells"]
    low = [-x_cells * VOXEL * OUT_SIZE_FACTOR / 2, -y_cells * VOXEL * OUT_SIZE_FACTOR / 2]
    grid_size = [x_cells * OUT_SIZE_FACTOR, y_cells * OUT_SIZE_FACTOR, 41]
    point_cloud_range = [low[0], low[1], -5.0, -low[0], -low[1], 3.0]
    head.update(REDUCED, num_proposals=case["num_proposals"], num_decoder_layers=case["num_decoder_layers"])
    for part, override in DECODER_LAYER.items():
        head.decoder_layer[part].update(override)
    head.train_cfg.update(grid_size=grid_size, point_cloud_range=point_cloud_range)
    head.test_cfg.update(grid_size=grid_size, pc_range=low)
    head.bbox_coder.update(pc_range=low, post_center_range=list(case["post_center_range"]))
    return head


def build_head(config: dict) -> torch.nn.Module:
    from mmdet3d.registry import MODELS

    return MODELS.build(config)


def randomise_head(head: torch.nn.Module, seed: int) -> None:
    """`randomise`, and the attention input projections it does not reach (no `weight`; biases start at 0)."""
    randomise(head, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    for name, parameter in head.named_parameters():
        if ".attn.in_proj_" in name:
            scale = parameter.shape[-1] ** -0.5 if parameter.ndim > 1 else 0.1
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def forward_case(source: Path) -> dict:
    from mmdet3d.structures import LiDARInstance3DBoxes

    case = CASES["forward"]
    config = head_config(source, case)
    head = build_head(config).eval()
    randomise_head(head, seed=0)
    x_cells, y_cells = case["cells"]
    bev = torch.randn(BATCH, IN_CHANNELS, x_cells, y_cells, generator=torch.Generator().manual_seed(1))
    metas = [{"box_type_3d": LiDARInstance3DBoxes}] * BATCH
    with torch.no_grad():
        outputs = head([bev], metas)[0][0]
        raw = {name: value.clone() for name, value in outputs.items()}  # decoding rewrites the maps in place
        results = head.predict_by_feat([[outputs]], metas)
    counts = [len(result.scores_3d) for result in results]
    if not all(0 < count < case["num_proposals"] for count in counts):
        raise RuntimeError(
            f"post_center_range should keep some queries of each sample and drop others, kept {counts}"
        )
    return {
        "case": case,
        "state_dict": {key: value.clone() for key, value in head.state_dict().items()},
        "bev": bev,
        "outputs": raw,
        "query_labels": head.query_labels.clone(),
        "boxes": [result.bboxes_3d.tensor.clone() for result in results],
        "scores": [result.scores_3d.clone() for result in results],
        "labels": [result.labels_3d.clone() for result in results],
    }


def near_query_boxes(
    head: torch.nn.Module, outputs: dict, sample: int, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` boxes (mmdet3d convention) near decoded queries of `sample`, with random labels."""
    maps = {
        name: outputs[name][sample : sample + 1].clone()
        for name in ("heatmap", "rot", "dim", "center", "height", "vel")
    }
    decoded = head.bbox_coder.decode(
        maps["heatmap"], maps["rot"], maps["dim"], maps["center"], maps["height"], maps["vel"]
    )
    queries = torch.randperm(outputs["center"].shape[-1], generator=generator)[:count]
    boxes = decoded[0]["bboxes"][queries].clone()
    boxes[:, :2] += torch.randn(count, 2, generator=generator) * 0.3
    boxes[:, 3:6] = boxes[:, 3:6].clamp(0.5, 5.0) * (1 + 0.2 * torch.rand(count, 3, generator=generator))
    boxes[:, 6] += torch.randn(count, generator=generator) * 0.3
    return boxes, torch.randint(0, 10, (count,), generator=generator)


def loss_case(source: Path) -> dict:
    from mmdet3d.structures import LiDARInstance3DBoxes
    from mmengine.structures import InstanceData

    case = CASES["loss"]
    config = head_config(source, case)
    head = build_head(config).eval()
    randomise_head(head, seed=2)
    x_cells, y_cells = case["cells"]
    generator = torch.Generator().manual_seed(3)
    bev = torch.randn(BATCH, IN_CHANNELS, x_cells, y_cells, generator=generator)
    metas = [{"box_type_3d": LiDARInstance3DBoxes}] * BATCH
    with torch.no_grad():
        outputs = head([bev], metas)[0][0]
        boxes, labels = zip(
            *(near_query_boxes(head, outputs, b, count, generator) for b, count in enumerate(NUM_GT)),
            strict=True,
        )
        gt = [
            InstanceData(bboxes_3d=LiDARInstance3DBoxes(sample_boxes, box_dim=9), labels_3d=sample_labels)
            for sample_boxes, sample_labels in zip(boxes, labels, strict=True)
        ]
        losses = head.loss_by_feat(([outputs],), gt)
        class_targets, _, _, _, _, num_matched, _, heatmap_targets = head.get_targets(gt, [outputs])
    if num_matched != sum(NUM_GT):
        raise RuntimeError(f"expected every box matched, got {num_matched}")
    return {
        "case": case,
        "state_dict": {key: value.clone() for key, value in head.state_dict().items()},
        "bev": bev,
        "gt_boxes": list(boxes),
        "gt_labels": list(labels),
        "losses": {name: float(value) for name, value in losses.items()},
        "class_targets": class_targets.clone(),
        "heatmap_targets": heatmap_targets.clone(),
    }


def make_fixture(source: Path, out: Path) -> None:
    import_head_modules(source)
    full = build_head(head_config(source, None))
    fixture = {
        "config": CONFIG,
        "meta": {"mmdet3d_version": __import__("mmdet3d").__version__},
        "keys": {key: list(value.shape) for key, value in full.state_dict().items()},
        "forward": forward_case(source),
        "loss": loss_case(source),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, out)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB; losses {fixture['loss']['losses']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="an mmdetection3d v1.4.0 source tree")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/bevfusion/transfusion_parity.pt"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    make_fixture(args.source.resolve(), args.out)


if __name__ == "__main__":
    main()
