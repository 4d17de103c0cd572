"""UniDistill's LiDAR checkpoints as unikd detectors: parity with UniDistill's own modules (fixtures made by
tools/make_unidistill_key_lists.py), the full-width key list, sparse-kernel layouts, geometry at an
asymmetric place, its IoU-aware decoding by hand-computed cases, and recognition."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from parity import assert_boxes_match, assert_levels_match, with_overrides

from unikd.data.classes import CLASSES
from unikd.exps.checkpoints import check_state_dict
from unikd.interop import CheckpointFormatError, detector_state, is_unikd_checkpoint, model_size_of
from unikd.interop.spconv_layout import LAYOUTS, spconv2_kernels
from unikd.interop.unidistill import unidistill_to_unikd
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config
from unikd.models.heads import CenterHead
from unikd.ops.bev_grid import BEVGrid

FIXTURES = Path(__file__).parent / "fixtures" / "unidistill"
SIZE = "unidistill_lidar"
HEAD_NAMES = {"hm": "heatmap"}


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURES / "lidar_parity.pt", weights_only=True)


def reduced_model(overrides: dict) -> BEVFusion:
    config = model_config(SIZE, ("lidar",))
    with_overrides(config, overrides)
    return BEVFusion(config).eval()


def converted(fixture: dict, state: dict | None = None) -> BEVFusion:
    model = reduced_model(fixture["unikd_overrides"])
    checkpoint = {"state_dict": state or fixture["state_dict"], "epoch": 19}
    weights, described = detector_state(checkpoint, model.state_dict())
    assert described.startswith("UniDistill BEVFusion (lidar") and "auto_loss.params" in described
    check_state_dict(weights, model.state_dict(), "fixture", "reduced unidistill_lidar", checkpoint)
    model.load_state_dict(weights, strict=True)
    return model


def test_converted_detector_matches_unidistill_at_every_level_and_decodes_its_boxes(fixture: dict) -> None:
    torch.set_num_threads(1)  # spconv's CPU build races with more threads
    model = converted(fixture)
    with torch.no_grad():
        outputs = model({"points": [fixture["points"]]})
    for ours, theirs in zip(outputs["head"], fixture["head"], strict=True):
        assert set(ours) == {HEAD_NAMES.get(name, name) for name in theirs}
    assert_levels_match(outputs, fixture, HEAD_NAMES)
    # UniDistill's whole decoding (top 1500, IoU-rectified ranking, threshold, post-center range, rotated
    # NMS: its nms_gpu as a CPU loop over shapely polygons)
    assert_boxes_match(model.decode(outputs)[0], fixture["boxes"].numpy(), fixture, min_count=10)


def test_one_point_at_an_asymmetric_place_lights_the_same_cells_and_a_peak_decodes_the_same_box(fixture: dict) -> None:
    torch.set_num_threads(1)
    probe = fixture["geometry"]
    model = converted(fixture)
    x, y, z = probe["point"].tolist()
    with torch.no_grad():
        bev = model({"points": [torch.tensor([[x, y, z, 0.5, 0.0]])]})["middle_encoder"]
    ours = torch.nonzero(bev[0].abs().sum(0) > 0)
    assert ours.tolist() == probe["bev_cells"].tolist()
    # the point's own cell: row from y, column from x (0.6 m cells from -54 m); transposed it would not be lit
    row, col = math.floor((y + 54) / 0.6), math.floor((x + 54) / 0.6)
    assert (row, col) == (30, 123) and [row, col] in ours.tolist() and [col, row] not in ours.tolist()

    # a one-peak map through unikd's decoding gives UniDistill's box: x from the column, y from the row,
    # reg = (x, y) offsets from the cell corner, yaw = atan2(rot[0], rot[1]), dims exp((l, w, h))
    height, width = bev.shape[-2:]
    peak_row, peak_col = probe["peak_cell"].tolist()
    maps = {}
    for name, value in probe["peak"].items():
        channels = torch.full((1, len(value), height, width), -10.0 if name == "hm" else 0.0)
        channels[0, :, peak_row, peak_col] = value
        maps[HEAD_NAMES.get(name, name)] = channels
    decoded = model.head.decode([maps] * len(model.head.tasks))[0]  # UniDistill's probe: the first task's box
    torch.testing.assert_close(decoded["boxes"][:1], probe["boxes"], atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded["scores"][:1], probe["scores"])
    expected_x, expected_y = -54 + (peak_col + 0.25) * 0.6, -54 + (peak_row + 0.75) * 0.6
    torch.testing.assert_close(decoded["boxes"][0, :2], torch.tensor([expected_x, expected_y]))


def test_full_width_key_list_converts_without_a_missing_unexpected_or_misshaped_key() -> None:
    listed = json.loads((FIXTURES / "lidar_keys.json").read_text())
    assert listed["experiment"] == "BEVFusion_nuscenes_centerhead_lidar_exp" and listed["unidistill_commit"].startswith("32f02b4")
    source = {key: torch.zeros(shape) for key, shape in listed["keys"].items()}
    model = BEVFusion(model_config(SIZE, ("lidar",)))
    expected = model.state_dict()
    for checkpoint in ({"state_dict": source}, {"model_state": {k.removeprefix("model."): v for k, v in source.items()}}):
        assert model_size_of(checkpoint) == SIZE and not is_unikd_checkpoint(checkpoint)
        state, described = detector_state(checkpoint, expected)
        check_state_dict(state, expected, "key list", SIZE, {})  # raises on any mismatch
        assert "det_head.dense_head.auto_loss.params" in described
    # every UniDistill tensor but the loss weights lands in unikd's model (the conv biases in its BatchNorms)
    _, unmapped, dropped = unidistill_to_unikd({k.removeprefix("model."): v for k, v in source.items()}, expected)
    assert unmapped == [] and dropped == ["det_head.dense_head.auto_loss.params"]


@pytest.mark.parametrize(("size", "camera_list", "modalities"), [
    ("unidistill_camera", "camera_keys.json", ("camera",)),
    ("unidistill_fusion", "fusion_camera_keys.json", ("lidar", "camera")),
])
def test_camera_and_fusion_checkpoints_convert_through_the_camera_rules(size: str, camera_list: str, modalities: tuple) -> None:
    """The camera and fusion experiments' checkpoints: their camera/fusion keys (the camera engineer's key
    lists) with this BEV encoder and head (and, fused, this LiDAR encoder)."""
    lidar = json.loads((FIXTURES / "lidar_keys.json").read_text())["keys"]
    camera = json.loads((FIXTURES / camera_list).read_text())["keys"]
    shared = {key: shape for key, shape in lidar.items() if "lidar" in modalities or not key.startswith("model.lidar_encoder.")}
    source = {**shared, **{f"model.{key}": shape for key, shape in camera.items()}}
    model = BEVFusion(model_config(size, modalities))
    state, described = detector_state({"state_dict": {key: torch.zeros(shape) for key, shape in source.items()}}, model.state_dict())
    assert described.startswith(f"UniDistill BEVFusion ({'+'.join(sorted(modalities))};")
    check_state_dict(state, model.state_dict(), "key lists", size, {})


def test_convert_tool_writes_a_unikd_checkpoint_of_a_unidistill_lightning_checkpoint(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_checkpoint", Path(__file__).parents[1] / "tools/convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    listed = json.loads((FIXTURES / "lidar_keys.json").read_text())["keys"]
    generator = torch.Generator().manual_seed(0)
    source = {key: torch.randn(shape, generator=generator) if shape else torch.tensor(7) for key, shape in listed.items()}
    path = tmp_path / "unidistill_lidar.ckpt"
    torch.save({"state_dict": source, "epoch": 19, "pytorch-lightning_version": "1.5.0"}, path)
    assert tool.convert(path, tmp_path / "unikd.ckpt", None, None, trusted=False) == SIZE
    written = torch.load(tmp_path / "unikd.ckpt", weights_only=True)
    assert written["unikd"]["model_size"] == SIZE and is_unikd_checkpoint(written)
    model = BEVFusion(model_config(SIZE, ("lidar",)))
    direct, _ = detector_state({"state_dict": source}, model.state_dict())
    assert set(written["state_dict"]) == {f"model.{key}" for key in direct}
    for key in ("middle_encoder.stages.1.0.bn1.running_mean", "neck.blocks.0.0.weight", "head.task_heads.5.heads.iou.1.bias"):
        assert torch.equal(written["state_dict"][f"model.{key}"], direct[key]), key
    # the folded bias: running mean minus the SubM conv's bias
    folded = source["model.lidar_encoder.backbone_3d.conv2.1.bn1.running_mean"] - source["model.lidar_encoder.backbone_3d.conv2.1.conv1.bias"]
    assert torch.equal(direct["middle_encoder.stages.1.0.bn1.running_mean"], folded)


def to_layout(kernel: torch.Tensor, layout: str) -> torch.Tensor:
    """A spconv 2.x kernel in another saved layout (the inverse of LAYOUTS[layout])."""
    return kernel.permute(*np.argsort(LAYOUTS[layout]).tolist()).contiguous()


@pytest.mark.parametrize("native_layout", ["RSKC", "RSCK"])
def test_sparse_kernels_in_older_spconv_layouts_convert_to_the_same_model(fixture: dict, native_layout: str) -> None:
    """spconv 2.1 (UniDistill's requirement) saves its Native-algorithm kernels (kD, kH, kW, out, in) and
    the others (conv_out) (out, kD, kH, kW, in); spconv 1.x saves (kD, kH, kW, in, out) throughout."""
    state = dict(fixture["state_dict"])
    kernels = [key for key, value in state.items() if value.ndim == 5]
    assert any(state[key].shape[0] == state[key].shape[-1] for key in kernels)  # square kernels: ambiguous alone
    for key in kernels:
        layout = "KRSC" if native_layout == "RSKC" and ".conv_out." in key else native_layout
        state[key] = to_layout(state[key], layout)
    reference = converted(fixture).state_dict()
    for key, value in converted(fixture, state).state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_sparse_kernel_layout_errors_name_the_kernel() -> None:
    square = torch.randn(8, 3, 3, 3, 8)
    with pytest.raises(ValueError, match="k: kernel .* fits the layouts .*RSCK.*RSKC.* no other kernel"):
        spconv2_kernels({"k": (to_layout(square, "RSKC"), (8, 3, 3, 3, 8))})
    entry = torch.randn(16, 3, 3, 3, 5)
    mixed = {"a": (to_layout(entry, "RSKC"), (16, 3, 3, 3, 5)), "b": (to_layout(entry, "RSCK"), (16, 3, 3, 3, 5))}
    with pytest.raises(ValueError, match="mix the layouts"):
        spconv2_kernels(mixed)
    with pytest.raises(ValueError, match="k: kernel .* fits no sparse-kernel layout"):
        spconv2_kernels({"k": (torch.zeros(3, 3, 3, 4, 9), (8, 3, 3, 3, 8))})
    resolved = spconv2_kernels({"a": (to_layout(entry, "RSKC"), (16, 3, 3, 3, 5)), "k": (to_layout(square, "RSKC"), (8, 3, 3, 3, 8))})
    assert torch.equal(resolved["k"], square) and torch.equal(resolved["a"], entry)


# A small grid for hand-computed decoding: 20 columns of 0.5 m along x, 10 rows of 0.8 m along y.
GRID = BEVGrid(x_min=-5.0, y_min=-4.0, x_max=5.0, y_max=4.0, height=10, width=20)


def iou_aware_head(**options) -> CenterHead:
    settings = {"iou_rectifier": (0.65,), "nms_type": "rotated", "nms_iou_threshold": 0.1, "top_k": 50,
                "post_center_range": (-6.0, -6.0, -10.0, 6.0, 6.0, 10.0), "dim_range": (0.001, 30.0), "nms_radius": (1.0,)}
    return CenterHead(4, grid=GRID, tasks=[["car"]], shared_channels=4, head_conv=4, **{**settings, **options}).eval()


def peak_maps(peaks: list[tuple[int, int, float, float, float]]) -> dict[str, torch.Tensor]:
    """Maps with (row, col, heatmap probability, iou-map value, log length) at the given cells."""
    maps = {name: torch.zeros(1, channels, GRID.height, GRID.width)
            for name, channels in {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2, "iou": 1}.items()}
    maps["heatmap"] = torch.full((1, 1, GRID.height, GRID.width), -20.0)
    maps["rot"][:, 1] = 1.0  # yaw 0
    for row, col, prob, iou, log_length in peaks:
        maps["heatmap"][0, 0, row, col] = math.log(prob / (1 - prob))
        maps["iou"][0, 0, row, col] = iou
        maps["dim"][0, :, row, col] = torch.tensor([log_length, math.log(1.0), math.log(1.5)])
    return maps


def test_iou_aware_decoding_ranks_by_the_rectified_score_and_returns_the_heatmap_score() -> None:
    # A (0.5, iou map -0.8 -> 0.1) and B (0.4, 0.9 -> 0.95) are 2 m boxes one cell (0.5 m) apart: IoU 0.6.
    # Rectified: A 0.5^0.35 * 0.1^0.65 = 0.175, B 0.4^0.35 * 0.95^0.65 = 0.703 -> B kept, A suppressed,
    # B reported with its heatmap score 0.4. A lone C (0.3, iou map 3.0 -> clamped to 1) is kept.
    maps = peak_maps([(5, 10, 0.5, -0.8, math.log(2.0)), (5, 11, 0.4, 0.9, math.log(2.0)), (2, 3, 0.3, 3.0, math.log(2.0))])
    decoded = iou_aware_head().decode([maps])[0]
    torch.testing.assert_close(decoded["scores"], torch.tensor([0.4, 0.3]))
    torch.testing.assert_close(decoded["boxes"][:, :2], torch.tensor([[-5 + 11 * 0.5, -4 + 5 * 0.8], [-5 + 3 * 0.5, -4 + 2 * 0.8]]))
    assert decoded["labels"].tolist() == [CLASSES.index("car")] * 2
    # ranked by the heatmap score alone (alpha 0) A would win
    plain = iou_aware_head(iou_rectifier=(0.0,)).decode([maps])[0]
    torch.testing.assert_close(plain["scores"], torch.tensor([0.5, 0.3]))
    # the iou map is read as iou / 2 + 0.5: D (0.5, 0.2 -> 0.6) ranks 0.563 over E (0.4, 0.3 -> 0.65) 0.549
    # (read as the IoU itself, E would win: 0.332 over 0.276)
    close = peak_maps([(5, 10, 0.5, 0.2, math.log(2.0)), (5, 11, 0.4, 0.3, math.log(2.0))])
    torch.testing.assert_close(iou_aware_head().decode([close])[0]["scores"], torch.tensor([0.5]))


def test_iou_aware_decoding_threshold_range_and_dim_clamp() -> None:
    maps = peak_maps([(5, 10, 0.5, 0.0, math.log(2.0)), (1, 1, 0.09, 0.0, math.log(2.0)), (8, 18, 0.6, 0.0, 5.0)])
    maps["height"][0, 0, 5, 10] = 10.5  # centre above the post-center range's z_max (10)
    decoded = iou_aware_head().decode([maps])[0]
    assert decoded["scores"].tolist() == pytest.approx([0.6])  # 0.09 is below the threshold
    assert decoded["boxes"][0, 3].item() == pytest.approx(30.0)  # exp(5) = 148 m, clamped
    assert iou_aware_head(post_center_range=None).decode([maps])[0]["scores"].tolist() == pytest.approx([0.6, 0.5])
    # at most max_per_sample per sample, the best scored (the devkit's limit is 500; UniDistill's 6 x 100)
    assert iou_aware_head(post_center_range=None, max_per_sample=1).decode([maps])[0]["scores"].tolist() == pytest.approx([0.6])


def test_iou_loss_is_l1_to_twice_the_iou_minus_one() -> None:
    head = iou_aware_head().train()
    gt = torch.tensor([[0.3, 0.5, -1.0, 4.0, 2.0, 1.6, 0.4, 0.0, 0.0]])
    targets = head.get_targets([gt], [torch.tensor([CLASSES.index("car")])])[0]
    index = targets.indices[0, 0].item()
    row, col = divmod(index, GRID.width)
    preds = {name: torch.zeros(1, channels, GRID.height, GRID.width)
             for name, channels in {"heatmap": 1, "reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2, "iou": 1}.items()}
    codes = targets.codes[0, 0]
    for name, where in (("reg", slice(0, 2)), ("height", slice(2, 3)), ("dim", slice(3, 6)), ("rot", slice(6, 8)), ("vel", slice(8, 10))):
        preds[name][0, :, row, col] = codes[where]
    preds["iou"][0, 0, row, col] = 0.25
    loss = head.loss([preds], [gt], [torch.tensor([CLASSES.index("car")])])["iou_task0"]
    assert loss.item() == pytest.approx(0.75, abs=1e-5)  # exact box: IoU 1, target 1
    preds["dim"][0, 0, row, col] = math.log(2.0)  # half the length, same centre: IoU 0.5 -> target 0
    loss = head.loss([preds], [gt], [torch.tensor([CLASSES.index("car")])])["iou_task0"]
    assert loss.item() == pytest.approx(0.25, abs=1e-5)


def test_unrecognised_checkpoints_say_what_was_looked_for() -> None:
    model = BEVFusion(model_config("small", ("lidar",)))
    with pytest.raises(CheckpointFormatError, match="unrecognised checkpoint format.*UniDistill BEVFusion checkpoint"):
        detector_state({"model_state": {"encoder.layer.weight": torch.zeros(1)}}, model.state_dict())
    assert is_unikd_checkpoint({"state_dict": {"model.head.shared_conv.0.weight": torch.zeros(1)}})
