"""The assembled detector of each modality on real synthetic batches."""

from pathlib import Path

import pytest
import torch

from unikd.data.collate import collate_batch
from unikd.data.nuscenes_dataset import NuScenesDetectionDataset
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import image_aug_for, model_config

MODALITIES = {"lidar": ("lidar",), "camera": ("camera",), "fusion": ("lidar", "camera")}


def batch_for(root: Path, modalities: tuple[str, ...], size: int = 1) -> tuple[dict, dict]:
    config = model_config("small", modalities)
    dataset = NuScenesDetectionDataset(
        root,
        "v1.0-mini",
        "mini_train",
        config["point_cloud_range"],
        num_sweeps=2,
        use_camera="camera" in modalities,
        image_aug=image_aug_for("small"),
    )
    return config, collate_batch([dataset[i] for i in range(size)])


@pytest.mark.parametrize("name", list(MODALITIES))
def test_named_features_and_boxes(synthetic_root: Path, name: str) -> None:
    torch.manual_seed(0)
    config, batch = batch_for(synthetic_root, MODALITIES[name], size=2)
    model = BEVFusion(config).eval()
    with torch.no_grad():
        outputs = model(batch)
    grid = model.grid
    assert outputs["bev"].shape[-2:] == (grid.height, grid.width)
    assert outputs["neck"].shape[-2:] == (grid.height, grid.width)
    assert ("middle_encoder" in outputs) == ("lidar" in MODALITIES[name])
    assert ("camera_bev" in outputs) == ("camera" in MODALITIES[name])
    if "lidar" in MODALITIES[name]:
        assert outputs["voxel_encoder"].coords.shape[1] == 4
        assert set(outputs["voxel_encoder"].coords[:, 0].tolist()) == {0, 1}
    detections = model.decode(outputs)
    assert len(detections) == 2
    assert all(d["boxes"].shape[1] == 9 and len(d["scores"]) == len(d["labels"]) for d in detections)


@pytest.mark.parametrize("name", list(MODALITIES))
def test_loss_is_finite_and_falls_on_a_fixed_batch(synthetic_root: Path, name: str) -> None:
    torch.manual_seed(0)
    config, batch = batch_for(synthetic_root, MODALITIES[name])
    model = BEVFusion(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    totals = []
    for _ in range(6):
        losses = model.loss(model(batch), batch)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert ("depth" in losses) == ("camera" in MODALITIES[name])
    assert totals[-1] < 0.8 * totals[0], totals


def test_camera_model_never_reads_lidar_points(synthetic_root: Path) -> None:
    """LiDAR supervises the camera model's depth but is not an input."""
    config, batch = batch_for(synthetic_root, ("camera",))
    model = BEVFusion(config).eval()
    with torch.no_grad():
        first = model(batch)["head"][0]["heatmap"]
        batch["points"] = [torch.randn(500, 5) for _ in batch["points"]]
        second = model(batch)["head"][0]["heatmap"]
    torch.testing.assert_close(first, second)


def test_mismatched_lidar_grid_is_an_error() -> None:
    config = model_config("small", ("lidar",))
    config["bev_cell"] = 0.8
    with pytest.raises(ValueError, match="does not match the decoder grid"):
        BEVFusion(config)


def test_student_config_runs_on_its_odd_sized_grid(synthetic_root: Path) -> None:
    """The 0.1 m student: 1080 voxels -> 135 BEV cells, whose stride-2 level (68) is cropped back to 135."""
    _, batch = batch_for(synthetic_root, ("lidar",))
    model = BEVFusion(model_config("student", ("lidar",))).eval()
    with torch.no_grad():
        outputs = model(batch)
    assert outputs["bev"].shape[-2:] == outputs["neck"].shape[-2:] == (135, 135)
    assert outputs["head"][0]["heatmap"].shape[-2:] == (135, 135)
    assert [tuple(level.shape[-2:]) for level in outputs["backbone"]] == [(135, 135), (68, 68)]
    assert len(model.decode(outputs)) == 1
