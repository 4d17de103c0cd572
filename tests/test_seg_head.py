"""The BEV map segmentation head: metric resampling, focal loss, and the detector built with it."""

import json
import math
from pathlib import Path

import pytest
import torch

from unikd.data.map_targets import MAP_CLASSES
from unikd.exps.cli import run_cli
from unikd.exps.exp_files import load_exp_class
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config
from unikd.models.heads.seg_head import (
    BEVGridResample,
    BEVSegmentationHead,
    segmentation_grid,
    sigmoid_focal_loss,
)
from unikd.ops.bev_grid import BEVGrid

MAP_GRID = segmentation_grid((-50.0, -50.0, 50.0, 50.0), 0.5)
EXP_DIR = Path(__file__).resolve().parents[1] / "exps" / "nuscenes" / "BEVFusion"


def hat(distance: torch.Tensor, cell: float) -> torch.Tensor:
    """The bilinear weight of a cell centre at `distance` metres."""
    return (1 - distance.abs() / cell).clamp_min(0)


def test_resampling_puts_a_feature_at_its_metric_position() -> None:
    """One lit cell of a 180 x 180 grid over +-54 m, at the asymmetric (x, y) = (20.1, -33.3): every output cell
    of the +-50 m, 0.5 m map reads the bilinear weight of its own centre's distance from (20.1, -33.3)."""
    source = BEVGrid.from_range((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), 0.6)
    row, col = 34, 123  # centre y = -54 + 34.5 * 0.6 = -33.3, x = -54 + 123.5 * 0.6 = 20.1
    bev = torch.zeros(2, 1, 180, 180)
    bev[1, 0, row, col] = 1.0
    out = BEVGridResample(source, MAP_GRID)(bev)
    assert out.shape == (2, 1, 200, 200)
    centres = MAP_GRID.cell_centers()
    expected = hat(centres[..., 0] - 20.1, 0.6) * hat(centres[..., 1] + 33.3, 0.6)
    torch.testing.assert_close(out[1, 0], expected, atol=1e-5, rtol=0)
    assert out[0].abs().max() == 0
    peak = divmod(int(out[1, 0].argmax()), 200)
    assert peak == (
        33,
        140,
    )  # row along y: (-33.3 + 50) / 0.5 = 33.4; column along x: (20.1 + 50) / 0.5 = 140.2


def test_resampling_reproduces_a_linear_field_and_reads_zeros_outside() -> None:
    """f = x + 2y sampled on a +-40 m grid of 0.8 m is f at each map cell centre inside it, 0 beyond it."""
    source = BEVGrid.from_range((-40.0, -40.0, -5.0, 40.0, 40.0, 3.0), 0.8)
    xy = source.cell_centers()
    field = (xy[..., 0] + 2 * xy[..., 1])[None, None]
    out = BEVGridResample(source, MAP_GRID)(field)[0, 0]
    centres = MAP_GRID.cell_centers()
    inside = (centres.abs() < 39.6).all(dim=-1)  # between the outermost input cell centres
    torch.testing.assert_close(
        out[inside], (centres[..., 0] + 2 * centres[..., 1])[inside], atol=1e-4, rtol=0
    )
    outside = (centres.abs() > 40.4).any(dim=-1)
    assert outside.any() and out[outside].abs().max() == 0


def test_focal_loss_by_hand() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 0.0])
    expected = []
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        p = 1 / (1 + math.exp(-z))
        p_t = p if y else 1 - p
        expected.append(-math.log(p_t) * (1 - p_t) ** 2)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    alpha = [0.25, 0.75, 0.75]  # alpha for positives, 1 - alpha for negatives
    weighted = sum(a * e for a, e in zip(alpha, expected, strict=True)) / 3
    assert sigmoid_focal_loss(logits, targets, alpha=0.25).item() == pytest.approx(weighted, rel=1e-6)


def test_head_losses_per_class_and_gradients_reach_the_bev() -> None:
    torch.manual_seed(0)
    source = BEVGrid.from_range((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), 6.4)  # 16 x 16
    head = BEVSegmentationHead(
        8, source, MAP_CLASSES, channels=4, output_range=(-50, -50, 50, 50), output_cell=5.0
    )
    bev = torch.randn(2, 8, 16, 16, requires_grad=True)
    logits = head(bev)
    assert logits.shape == (2, 6, 20, 20) == (2, *head.output_shape)
    masks = torch.rand(2, 6, 20, 20) > 0.7
    losses = head.loss(logits, masks)
    assert list(losses) == [f"seg_{name}" for name in MAP_CLASSES]
    for index, name in enumerate(MAP_CLASSES):
        assert losses[f"seg_{name}"].item() == pytest.approx(
            sigmoid_focal_loss(logits[:, index], masks[:, index].float()).item(), rel=1e-6
        )
    sum(losses.values()).backward()
    assert bev.grad.abs().sum() > 0 and head.classifier[0].weight.grad.abs().sum() > 0
    xent = BEVSegmentationHead(8, source, MAP_CLASSES, channels=4, output_cell=5.0, loss="xent")
    value = xent.loss(logits, masks)["seg_walkway"]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 2], masks[:, 2].float())
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="does not match the segmentation logits"):
        head.loss(logits, masks[..., :10])
    with pytest.raises(ValueError, match="does not cover the input grid"):
        head(torch.randn(1, 8, 15, 16))
    with pytest.raises(ValueError, match="loss must be one of"):
        BEVSegmentationHead(8, source, MAP_CLASSES, loss="dice")


def lidar_batch(size: int) -> dict:
    torch.manual_seed(0)
    points = []
    for _ in range(size):
        xyz = torch.rand(3000, 3) * torch.tensor([80.0, 80.0, 4.0]) - torch.tensor([40.0, 40.0, 3.0])
        points.append(torch.cat([xyz, torch.rand(3000, 1), torch.zeros(3000, 1)], dim=1))
    boxes = torch.tensor([[10.0, -5.0, -1.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0]])
    return {
        "points": points,
        "gt_boxes": [boxes] * size,
        "gt_labels": [torch.zeros(1, dtype=torch.int64)] * size,
        "gt_masks_bev": torch.rand(size, len(MAP_CLASSES), 200, 200) > 0.8,
    }


def test_segmentation_only_detector() -> None:
    config = model_config("small", ("lidar",), "segmentation")
    assert "head" not in config and "seg_head" in config
    model = BEVFusion(config).train()
    assert model.head is None
    batch = lidar_batch(2)
    outputs = model(batch)
    assert "head" not in outputs and outputs["seg"].shape == (2, 6, 200, 200)
    shapes = model.output_shapes()
    assert "head" not in shapes and shapes["seg"] == (6, 200, 200)
    losses = model.loss(outputs, batch)
    assert set(losses) == {f"seg_{name}" for name in MAP_CLASSES}
    sum(losses.values()).backward()
    assert model.middle_encoder.conv_input[0].weight.grad.abs().sum() > 0
    decoded = model.decode(outputs)
    assert len(decoded) == 2 and set(decoded[0]) == {"seg_scores"}
    torch.testing.assert_close(decoded[1]["seg_scores"], outputs["seg"][1].sigmoid())
    del batch["gt_masks_bev"]
    with pytest.raises(KeyError, match="gt_masks_bev"):
        model.loss(outputs, batch)


def test_detection_and_segmentation_heads_together() -> None:
    config = model_config("small", ("lidar",))
    assert "seg_head" not in config
    config["seg_head"] = model_config("small", ("lidar",), "segmentation")["seg_head"]
    model = BEVFusion(config).eval()
    batch = lidar_batch(1)
    with torch.no_grad():
        outputs = model(batch)
    assert {"head", "seg"} <= set(outputs) and {"head", "seg"} <= set(model.output_shapes())
    losses = model.loss(outputs, batch)
    assert "heatmap_task0" in losses and "seg_divider" in losses
    decoded = model.decode(outputs)
    assert {"boxes", "scores", "labels", "seg_scores"} == set(decoded[0])
    del config["head"], config["seg_head"]
    with pytest.raises(ValueError, match="needs a head"):
        BEVFusion(config)


def test_segmentation_sizes() -> None:
    """nuscenes_seg is BEVFusion's map configuration: 128 x 128 BEV of 0.8 m, 512-channel neck and head layers."""
    model = BEVFusion(model_config("nuscenes_seg", ("lidar",), "segmentation"))
    assert (model.grid.height, model.grid.width, model.grid.cell_x) == (128, 128, 0.8)
    assert (
        model.seg_head.classifier[0].in_channels == 512 and model.seg_head.classifier[0].out_channels == 512
    )
    assert model.output_shapes()["seg"] == (6, 200, 200)
    assert model_config("nuscenes_seg", ("camera",), "segmentation")["camera"]["bev_cell"] == 0.4
    with pytest.raises(ValueError, match="has no segmentation head"):
        model_config("nuscenes", ("lidar",), "segmentation")
    with pytest.raises(ValueError, match="has no detection head"):
        model_config("nuscenes_seg", ("lidar",))
    with pytest.raises(ValueError, match="unknown task"):
        model_config("small", ("lidar",), "tracking")


@pytest.mark.slow
def test_segmentation_experiment_trains_and_evaluates(synthetic_root: Path, tmp_path: Path) -> None:
    """The LiDAR map experiment through the CLI: map losses logged, val/mIoU logged and written, -e, no -p."""
    exp_file = EXP_DIR / "BEVFusion_nuscenes_seg_lidar_exp.py"
    common = [
        "--data_root",
        str(synthetic_root),
        "--output_root",
        str(tmp_path),
        "--no_progress_bar",
        "-b",
        "2",
    ]
    small = ["--exp_options", "model_size=small", "num_workers=0", "num_sweeps=2"]
    limits = ["--limit_train_batches", "1", "--limit_val_batches", "1", "--log_every_n_steps", "1"]
    exp = run_cli(load_exp_class(exp_file), [*common, "--max_epochs", "1", *limits, *small])
    header = (exp.output_dir / "csv/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/mIoU", "train/seg_drivable_area", "train/seg_divider"} <= set(header)
    written = json.loads((exp.output_dir / "eval/map_segmentation_epoch0.json").read_text())
    assert written["mean_iou"] == exp.last_metrics["mean_iou"] and written["num_samples"] == 2
    assert set(written["class_iou"]) == set(MAP_CLASSES)
    checkpoint = str(exp.output_dir / "checkpoints/last.ckpt")
    evaluated = run_cli(
        load_exp_class(exp_file),
        [*common, "-e", "--ckpt_path", checkpoint, "--limit_val_batches", "2", *small],
    )
    assert evaluated.last_metrics["num_samples"] == 4 and 0 <= evaluated.last_metrics["mean_iou"] <= 1
    with pytest.raises(SystemExit):
        run_cli(load_exp_class(exp_file), [*common, "-p", "--ckpt_path", checkpoint, *small])
