"""mmdet3d BEVFusion-L and BEVFusion-LC checkpoints as unikd detectors: parity with mmdet3d's own models at every
level and in the decoded boxes (fixtures made by tools/make_bevfusion_fixtures.py; BEVFusion's BEV is x-major,
unikd's y-major), the full-width key lists in mmdet3d's and mit-han-lab's names, and mit-han-lab's 0.x box
convention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from parity import assert_close, at_cells, with_overrides

from unikd.data.classes import CLASSES
from unikd.exps.checkpoints import check_state_dict
from unikd.interop import detector_state
from unikd.interop.bevfusion import (
    bevfusion_to_unikd,
    is_mit_han_lab_state,
    is_mmdet3d_bevfusion_state,
    mit_han_lab_to_mmdet3d,
)
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config
from unikd.models.heads.transfusion_head import HEATMAP_CLASSES

FIXTURES = Path(__file__).parent / "fixtures" / "bevfusion"


def reduced_model(size: str, modalities: tuple[str, ...], overrides: dict) -> BEVFusion:
    config = model_config(size, modalities)
    with_overrides(config, overrides)
    return BEVFusion(config).eval()


MODELS = {"lidar": ("bevfusion_lidar", ("lidar",)), "fusion": ("bevfusion_fusion", ("lidar", "camera"))}


def float32(value):
    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value


@pytest.fixture(scope="module", params=sorted(MODELS))
def converted(request) -> tuple[BEVFusion, dict, dict]:
    """A reduced BEVFusion-L or -LC converted from its fixture's mmdet3d state dict, the fixture, its outputs."""
    fixture = torch.load(FIXTURES / f"{request.param}_parity.pt", weights_only=True)
    size, modalities = MODELS[request.param]
    model = reduced_model(size, modalities, fixture["unikd_overrides"])
    checkpoint = {"state_dict": {key: float32(value) for key, value in fixture["state_dict"].items()}, "meta": fixture["meta"]}
    weights, described = detector_state(checkpoint, model.state_dict(), config=model.config)
    assert described.startswith("mmdet3d BEVFusion, mmdet3d 1.4.0 (1.x box convention)")
    check_state_dict(weights, model.state_dict(), "fixture", f"reduced {size}", checkpoint)
    model.load_state_dict(weights, strict=True)
    batch = {"points": [fixture["points"]], "bda": fixture["bda"][None] if "bda" in fixture else torch.eye(4)[None]}
    if "camera" in modalities:
        batch.update({key: float32(fixture[key])[None] for key in ("imgs", "lidar2cam", "cam2img", "img_aug")})
    with torch.no_grad():
        outputs = model(batch)
    return model, fixture, outputs


def test_bevfusion_matches_mmdet3d_at_every_level(converted) -> None:
    _, fixture, outputs = converted
    voxels = outputs["voxel_encoder"]
    ours = voxels.coords[:, [0, 3, 2, 1]]  # (b, z, y, x) -> BEVFusion's (b, x, y, z)
    order_ours = np.lexsort(ours.numpy().T[::-1])
    order_theirs = np.lexsort(fixture["voxel_coords"].numpy().T[::-1])
    assert torch.equal(ours[order_ours].int(), fixture["voxel_coords"][order_theirs].int())
    assert_close(voxels.features[order_ours], fixture["voxel_features"][order_theirs], "voxel_encoder")

    cells, width = fixture["cells"], outputs["middle_encoder"].shape[-1]
    assert_close(at_cells(outputs["middle_encoder"], cells, 1, width), fixture["middle_encoder"], "middle_encoder")
    if "camera_bev" in fixture:
        camera_cells = fixture["camera_cells"].long()
        assert_close(at_cells(outputs["camera_bev"], camera_cells, 1, width), fixture["camera_bev"], "camera_bev")
        assert_close(at_cells(outputs["bev"], cells, 1, width), fixture["bev"], "fused bev")
    for level, (ours, theirs, stride) in enumerate(
        zip(outputs["backbone"], fixture["backbone"], fixture["backbone_strides"], strict=True)
    ):
        assert_close(at_cells(ours, cells, stride, width), theirs, f"backbone[{level}]")
    assert_close(at_cells(outputs["neck"], cells, 1, width), fixture["neck"], "neck")
    head = outputs["head"]
    assert_close(at_cells(head["dense_heatmap"], cells, 1, width), fixture["dense_heatmap"], "dense_heatmap")

    # the same queries in the same order: labels (heatmap channels) and every prediction
    assert torch.equal(head["query_labels"], fixture["query_labels"].long())
    queries = fixture["queries"]
    layer = head["layers"][-1]
    for name in ("center", "height", "dim", "rot", "vel", "heatmap"):
        assert_close(layer[name], queries[name], f"query {name}")
    their_scores = queries["query_heatmap_score"].gather(1, head["query_labels"][:, None])[:, 0]
    assert_close(head["query_scores"], their_scores, "query score")


def test_bevfusion_boxes_match_mmdet3d(converted) -> None:
    model, fixture, outputs = converted
    detections = model.decode(outputs)[0]
    theirs = fixture["boxes"].clone()
    theirs[:, 2] += theirs[:, 5] / 2  # mmdet3d's bottom-centre z -> unikd's geometric centre
    ours = torch.cat([detections["boxes"], detections["scores"][:, None]], dim=1)
    theirs = torch.cat([theirs, fixture["scores"][:, None]], dim=1)
    assert len(ours) == len(theirs) >= 20
    # the same queries in the same order decode to the same boxes, labels and scores
    assert detections["labels"].tolist() == [CLASSES.index(HEATMAP_CLASSES[label]) for label in fixture["labels"]]
    np.testing.assert_allclose(ours[:, :6].numpy(), theirs[:, :6].numpy(), atol=1e-3)
    assert np.abs(np.angle(np.exp(1j * (ours[:, 6] - theirs[:, 6]).numpy()))).max() < 1e-3
    np.testing.assert_allclose(ours[:, 7:].numpy(), theirs[:, 7:].numpy(), atol=1e-3, rtol=1e-4)
    # boxes at asymmetric places (x != y): a transposed BEV would put them at (y, x)
    assert (ours[:, 0] - ours[:, 1]).abs().max() > 1.0
    assert len(set(detections["labels"].tolist())) >= 5


@pytest.mark.parametrize("name", sorted(MODELS))
def test_full_width_bevfusion_keys_convert_in_both_namings(name: str) -> None:
    listing = json.loads((FIXTURES / f"{name}_keys.json").read_text())
    source = {key: torch.zeros(shape) for key, shape in listing["keys"].items()}
    model = BEVFusion(model_config(*MODELS[name]))
    expected = model.state_dict()
    assert is_mmdet3d_bevfusion_state(source)
    mit_han_lab = mit_han_lab_state(source)
    assert is_mit_han_lab_state(mit_han_lab) and not is_mmdet3d_bevfusion_state(mit_han_lab)
    for state in (source, mit_han_lab_to_mmdet3d(mit_han_lab)):
        converted, unmapped = bevfusion_to_unikd(state, expected)
        assert unmapped == []
        assert sorted(converted) == sorted(expected)
        assert all(converted[key].shape == expected[key].shape for key in expected), [
            key for key in expected if converted[key].shape != expected[key].shape
        ]


def mit_han_lab_state(state: dict) -> dict:
    """An mmdet3d BEVFusion state dict under mit-han-lab's names, written out independently of the converter:
    its decoder layer is torch's layout (`self_attn`, `multihead_attn`, `linear1`, `linear2`, `norm1`-`norm3`)."""
    modules = {"pts_middle_encoder.": "encoders.lidar.backbone.", "pts_backbone.": "decoder.backbone.",
               "pts_neck.": "decoder.neck.", "bbox_head.": "heads.object.", "fusion_layer.": "fuser.",
               "img_backbone.": "encoders.camera.backbone.", "img_neck.": "encoders.camera.neck.",
               "view_transform.": "encoders.camera.vtransform."}
    decoder = {"self_attn.attn.": "self_attn.", "cross_attn.attn.": "multihead_attn.", "ffn.layers.0.0.": "linear1.",
               "ffn.layers.1.": "linear2.", "norms.0.": "norm1.", "norms.1.": "norm2.", "norms.2.": "norm3."}
    renamed = {}
    for key, value in state.items():
        for ours, theirs in modules.items():
            if key.startswith(ours):
                key = theirs + key.removeprefix(ours)
                break
        for mm, mit in decoder.items():
            key = key.replace(f".decoder.0.{mm}", f".decoder.0.{mit}")
        renamed[key] = value
    return renamed


def test_mit_han_lab_checkpoint_in_the_0x_box_convention_decodes_the_same_boxes() -> None:
    """mit-han-lab's code base regresses mmdet3d 0.x's boxes: dims (w, l, h), yaw' = -yaw - pi / 2. The fixture's
    head rewritten into that convention (by hand: rows swapped, sin' = -cos, cos' = -sin) and named as mit-han-lab
    names it converts back to the same detector."""
    fixture = torch.load(FIXTURES / "lidar_parity.pt", weights_only=True)
    state = {key: float32(value) for key, value in fixture["state_dict"].items()}
    for part in ("weight", "bias"):
        dim, rot = f"bbox_head.prediction_heads.0.dim.1.{part}", f"bbox_head.prediction_heads.0.rot.1.{part}"
        state[dim] = state[dim][[1, 0, 2]]
        state[rot] = torch.stack([-state[rot][1], -state[rot][0]])
    model = reduced_model("bevfusion_lidar", ("lidar",), fixture["unikd_overrides"])
    weights, described = detector_state({"state_dict": mit_han_lab_state(state)}, model.state_dict())
    assert described == "mit-han-lab BEVFusion (0.x box convention)"
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        detections = model.decode(model({"points": [fixture["points"]], "bda": torch.eye(4)[None]}))[0]
    theirs = fixture["boxes"].clone()
    theirs[:, 2] += theirs[:, 5] / 2
    np.testing.assert_allclose(detections["boxes"][:, :6].numpy(), theirs[:, :6].numpy(), atol=1e-3)
    assert np.abs(np.angle(np.exp(1j * (detections["boxes"][:, 6] - theirs[:, 6]).numpy()))).max() < 1e-3
