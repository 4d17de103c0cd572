"""Each modality memorises one training sample: after a short run on that sample alone, its decoded
boxes (BatchNorm statistics re-estimated on the sample, as a model in eval mode reads them) lie on
the ground-truth boxes. Targets and decoding that disagree (cells, offsets, box codes), or a branch
that passes no gradient, keep the boxes off the objects however long it trains."""

from __future__ import annotations

import pytest
import torch

from unikd.data.collate import collate_batch
from unikd.data.nuscenes_dataset import NuScenesDetectionDataset
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import image_aug_for, model_config


def reestimate_batchnorm(model: torch.nn.Module, batch: dict) -> None:
    """Replace every BatchNorm's running statistics by those of `batch` (cumulative average of one pass)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()


def matched_distances(detection: dict, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, min_score: float) -> torch.Tensor:
    """Per ground-truth box: the BEV centre distance to the nearest same-class box scoring >= `min_score`."""
    keep = detection["scores"] >= min_score
    boxes, labels = detection["boxes"][keep], detection["labels"][keep]
    if not len(boxes):
        return torch.full((len(gt_boxes),), float("inf"))
    distances = torch.cdist(gt_boxes[:, :2].double(), boxes[:, :2].double())
    distances[gt_labels[:, None] != labels[None, :]] = float("inf")
    return distances.min(dim=1).values


@pytest.mark.parametrize(
    ("modalities", "steps"),
    [(("lidar",), 60), (("camera",), 150), (("lidar", "camera"), 60)],
    ids=["lidar", "camera", "fusion"],
)
def test_one_sample_is_memorised(synthetic_root, modalities: tuple[str, ...], steps: int) -> None:
    torch.manual_seed(0)
    config = model_config("small", modalities)
    dataset = NuScenesDetectionDataset(
        data_root=str(synthetic_root),
        version="v1.0-mini",
        split="mini_train",
        point_cloud_range=config["point_cloud_range"],
        num_sweeps=1,
        use_camera="camera" in modalities,
        training=False,
        image_aug=image_aug_for("small"),
    )
    batch = collate_batch([dataset[5]])
    gt_boxes, gt_labels = batch["gt_boxes"][0], batch["gt_labels"][0]
    assert len(gt_boxes) >= 10

    model = BEVFusion(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        sum(model.loss(model(batch), batch).values()).backward()
        optimizer.step()

    reestimate_batchnorm(model, batch)
    with torch.no_grad():
        detection = model.decode(model(batch))[0]
    distances = matched_distances(detection, gt_boxes, gt_labels, min_score=0.3)
    assert (distances < 1.0).float().mean() >= 0.9, distances
