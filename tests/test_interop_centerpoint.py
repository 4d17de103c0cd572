"""mmdet3d CenterPoint checkpoints as unikd detectors: parity with mmdet3d's own outputs (fixtures made
by tools/make_parity_fixtures.py), full-width key lists, spconv layouts, mmdet3d 0.x's box convention,
the export back to mmdet3d, and recognition errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from parity import assert_boxes_match, assert_levels_match, with_overrides

from unikd.data.nuscenes_boxes import mmdet3d_to_boxes
from unikd.exps.checkpoints import check_state_dict
from unikd.interop import CheckpointFormatError, detector_state
from unikd.interop.mmdet3d_centerpoint import (
    PUBLISHED,
    centerpoint_to_unikd,
    convert_box_convention,
    unikd_to_centerpoint,
)
from unikd.interop.spconv_layout import spconv2_kernel
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config

FIXTURES = Path(__file__).parent / "fixtures" / "mmdet3d"
VOXELS = {"0075": "centerpoint_0075", "01": "centerpoint_01"}


def reduced_model(size: str, overrides: dict) -> BEVFusion:
    config = model_config(size, ("lidar",))
    with_overrides(config, overrides)
    return BEVFusion(config).eval()


def load_fixture(voxel: str) -> dict:
    return torch.load(FIXTURES / f"centerpoint_{voxel}_parity.pt", weights_only=True)


def converted(voxel: str, state: dict | None = None) -> tuple[BEVFusion, dict]:
    fixture = load_fixture(voxel)
    model = reduced_model(VOXELS[voxel], fixture["unikd_overrides"])
    checkpoint = {"state_dict": state or fixture["state_dict"], "meta": fixture["meta"]}
    weights, described = detector_state(checkpoint, model.state_dict())
    assert "mmdet3d CenterPoint" in described and "1.x box convention" in described
    check_state_dict(weights, model.state_dict(), "fixture", "reduced CenterPoint", checkpoint)
    model.load_state_dict(weights, strict=True)
    return model, fixture


@pytest.mark.parametrize("voxel", sorted(VOXELS))
def test_converted_centerpoint_matches_mmdet3d_at_every_level(voxel: str) -> None:
    torch.set_num_threads(1)  # spconv's CPU build races with more threads
    model, fixture = converted(voxel)
    with torch.no_grad():
        outputs = model({"points": [fixture["points"]]})
    assert_levels_match(outputs, fixture)
    # decoded boxes: mmdet3d's (bottom-centre z) through the one box conversion
    their_boxes = mmdet3d_to_boxes(fixture["boxes"].numpy(), "1.x", z_origin=0.0)
    assert_boxes_match(model.decode(outputs)[0], their_boxes, fixture, min_count=0)


@pytest.mark.parametrize("voxel", sorted(VOXELS))
def test_spconv1_kernels_convert_to_the_same_model(voxel: str) -> None:
    fixture = load_fixture(voxel)
    kernels = torch.load(FIXTURES / f"centerpoint_{voxel}_spconv1.pt", weights_only=True)["kernels"]
    assert kernels and all(tuple(k.shape) != tuple(fixture["state_dict"][n].shape) for n, k in kernels.items())
    model_2x, _ = converted(voxel)
    model_1x, _ = converted(voxel, {**fixture["state_dict"], **kernels})
    for key, value in model_2x.state_dict().items():
        assert torch.equal(value, model_1x.state_dict()[key]), key


@pytest.mark.parametrize("voxel", sorted(VOXELS))
def test_full_width_key_lists_convert_without_a_missing_unexpected_or_misshaped_key(voxel: str) -> None:
    listed = json.loads((FIXTURES / f"centerpoint_{voxel}_keys.json").read_text())
    assert listed["config"].startswith(PUBLISHED[next(k for k, v in PUBLISHED.items() if v[0] == VOXELS[voxel])][1])
    source = {key: torch.zeros(shape) for key, shape in listed["keys"].items()}
    model = BEVFusion(model_config(VOXELS[voxel], ("lidar",)))
    state, unmapped = centerpoint_to_unikd(source, model.state_dict(), "1.x")
    assert unmapped == []
    check_state_dict(state, model.state_dict(), "key list", VOXELS[voxel], {})  # raises on any mismatch
    exported = unikd_to_centerpoint(state, spconv_version=2)
    assert {k: list(v.shape) for k, v in exported.items()} == listed["keys"]


def test_export_round_trip_is_what_mmdet3d_loads() -> None:
    """unikd -> mmdet3d gives back mmdet3d's own state dict, sparse kernels in the spconv 1.x layout that
    mmdet3d was shown (by the fixture script) to load into the same model."""
    model, fixture = converted("0075")
    kernels = torch.load(FIXTURES / "centerpoint_0075_spconv1.pt", weights_only=True)["kernels"]
    exported = unikd_to_centerpoint(model.state_dict(), spconv_version=1)
    expected = {**fixture["state_dict"], **kernels}
    assert set(exported) == set(expected)
    for key, value in expected.items():
        assert torch.equal(exported[key], value), key


def test_mmdet3d_0x_box_convention_becomes_unikds() -> None:
    """A head whose last convs output mmdet3d 0.x's code of one box (dims (w, l, h), yaw' = -yaw - pi/2)
    outputs unikd's code of the same box after conversion."""
    yaw, (length, width, height) = 0.3, (4.5, 1.9, 1.6)
    old_yaw = -yaw - math.pi / 2
    state = {
        "head.task_heads.0.heads.dim.1.bias": torch.tensor([math.log(width), math.log(length), math.log(height)]),
        "head.task_heads.0.heads.rot.1.bias": torch.tensor([math.sin(old_yaw), math.cos(old_yaw)]),
        "head.task_heads.0.heads.dim.1.weight": torch.arange(3.0)[:, None, None, None].expand(3, 2, 3, 3).clone(),
        "head.task_heads.0.heads.rot.1.weight": torch.arange(2.0)[:, None, None, None].expand(2, 2, 3, 3).clone(),
    }
    convert_box_convention(state)
    dims = state["head.task_heads.0.heads.dim.1.bias"].exp()
    torch.testing.assert_close(dims, torch.tensor([length, width, height]))
    sin, cos = state["head.task_heads.0.heads.rot.1.bias"]
    assert math.atan2(sin, cos) == pytest.approx(yaw, abs=1e-6)
    assert torch.equal(state["head.task_heads.0.heads.dim.1.weight"][:, 0, 0, 0], torch.tensor([1.0, 0.0, 2.0]))
    assert torch.equal(state["head.task_heads.0.heads.rot.1.weight"][:, 0, 0, 0], torch.tensor([-1.0, -0.0]))
    # the same box through the box routine: 0.x (w, l, h) and yaw'
    box = mmdet3d_to_boxes(np.array([[1.0, 2.0, -1.0, width, length, height, old_yaw]]), "0.x", z_origin=0.0)
    np.testing.assert_allclose(box[0, 2:7], [-1.0 + height / 2, length, width, height, yaw], atol=1e-9)


def test_sparse_kernel_layouts() -> None:
    spconv2 = torch.randn(32, 3, 3, 3, 16)
    spconv1 = spconv2.permute(1, 2, 3, 4, 0)
    assert torch.equal(spconv2_kernel(spconv1, (32, 3, 3, 3, 16), "k"), spconv2)
    assert torch.equal(spconv2_kernel(spconv2, (32, 3, 3, 3, 16), "k"), spconv2)
    one_by_one = torch.randn(1, 1, 1, 8, 8)  # spconv 1.x (1, 1, 1, in, out)
    assert torch.equal(spconv2_kernel(one_by_one, (8, 1, 1, 1, 8), "k"), one_by_one.permute(4, 0, 1, 2, 3))
    with pytest.raises(ValueError, match="k: kernel .* fits neither"):
        spconv2_kernel(torch.zeros(3, 3, 3, 16, 33), (32, 3, 3, 3, 16), "k")


def test_unrecognised_or_underspecified_checkpoints_are_clear_errors() -> None:
    model = BEVFusion(model_config("small", ("lidar",)))
    with pytest.raises(CheckpointFormatError, match="unrecognised checkpoint format.*looked for"):
        detector_state({"state_dict": {"encoder.layer.weight": torch.zeros(1)}}, model.state_dict())
    centerpoint = {"pts_middle_encoder.conv_input.0.weight": torch.zeros(1),
                   "pts_bbox_head.task_heads.0.reg.1.bias": torch.zeros(2)}
    with pytest.raises(CheckpointFormatError, match="no mmdet3d_version .*--box-convention"):
        detector_state({"state_dict": centerpoint, "meta": {}}, model.state_dict())
