"""BEV map segmentation head (BEVFusion's BEVSegmentationHead): per-class binary logits on the map grid.

The decoder's BEV (e.g. 180 x 180 cells over +-54 m) is resampled to the segmentation grid (200 x 200
cells of 0.5 m over +-50 m) by bilinear `grid_sample` at the metric centre of every output cell, then
`num_layers` conv3x3-BN-ReLU layers and a 1x1 classifier give one logit map per class [B, K, H, W].
Both grids keep unikd's layout (rows along y, columns along x). Each class is its own binary problem;
the loss per class is the mean over batch and cells of a sigmoid focal loss (alpha off, gamma 2:
BEVFusion's "focal") or of the binary cross-entropy ("xent").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unikd.ops.bev_grid import BEVGrid

SEG_LOSSES = ("focal", "xent")


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = -1.0
) -> torch.Tensor:
    """Mean over all elements of BCE(logits, targets) * (1 - p_t)^gamma, times alpha_t when alpha >= 0.

    p_t = p where the target is 1 and 1 - p where it is 0 (p = sigmoid(logits)); computed in float32.
    """
    logits, targets = logits.float(), targets.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob = logits.sigmoid()
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean()


def segmentation_grid(region: Sequence[float], cell: float) -> BEVGrid:
    """The grid of square `cell`-metre cells over `region` = (x_min, y_min, x_max, y_max)."""
    x_min, y_min, x_max, y_max = (float(v) for v in region)
    return BEVGrid.from_range((x_min, y_min, 0.0, x_max, y_max, 0.0), cell)


class BEVGridResample(nn.Module):
    """Bilinear resampling of a BEV map [B, C, H_in, W_in] on `input_grid` to `output_grid`.

    Each output cell takes the input's value at its metric centre (`grid_sample`, align_corners=False);
    cells outside the input region read zeros.
    """

    def __init__(self, input_grid: BEVGrid, output_grid: BEVGrid) -> None:
        super().__init__()
        self.input_grid = input_grid
        self.output_grid = output_grid
        sample_at = input_grid.metric_to_normalized(output_grid.cell_centers())  # [H_out, W_out, 2] (x, y)
        self.register_buffer("sample_at", sample_at, persistent=False)

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        expected = (self.input_grid.height, self.input_grid.width)
        if tuple(bev.shape[-2:]) != expected:
            raise ValueError(
                f"BEV map of {tuple(bev.shape)} does not cover the input grid's {expected} cells"
            )
        grid = self.sample_at.to(bev.dtype).expand(bev.shape[0], -1, -1, -1)
        return F.grid_sample(bev, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BEVSegmentationHead(nn.Module):
    """Resample to the map grid, `num_layers` x (conv3x3-BN-ReLU), 1x1 conv to one logit per class.

    `channels` is the width of the conv layers (default: `in_channels`, as BEVFusion); the output grid
    is `output_range` (x_min, y_min, x_max, y_max) at `output_cell` metres.
    """

    def __init__(
        self,
        in_channels: int,
        input_grid: BEVGrid,
        classes: Sequence[str],
        output_range: Sequence[float] = (-50.0, -50.0, 50.0, 50.0),
        output_cell: float = 0.5,
        channels: int | None = None,
        num_layers: int = 2,
        loss: str = "focal",
        focal_gamma: float = 2.0,
        focal_alpha: float = -1.0,
    ) -> None:
        super().__init__()
        if loss not in SEG_LOSSES:
            raise ValueError(f"seg_head loss must be one of {SEG_LOSSES}, got {loss!r}")
        if not classes:
            raise ValueError("seg_head needs at least one map class")
        self.classes = tuple(classes)
        self.loss_type = loss
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha
        self.output_grid = segmentation_grid(output_range, output_cell)
        self.transform = BEVGridResample(input_grid, self.output_grid)
        channels = channels or in_channels
        layers: list[nn.Module] = []
        for index in range(num_layers):
            layers += [
                nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(channels if num_layers else in_channels, len(self.classes), 1))
        self.classifier = nn.Sequential(*layers)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(K, H, W) of the logits."""
        return len(self.classes), self.output_grid.height, self.output_grid.width

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, H, W] on the map grid."""
        return self.classifier(self.transform(bev))

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"seg_<class>": loss} of logits [B, K, H, W] against binary masks of the same shape."""
        if masks.shape != logits.shape:
            raise ValueError(
                f"gt_masks_bev of {tuple(masks.shape)} does not match the segmentation logits {tuple(logits.shape)} "
                f"({len(self.classes)} classes over {self.output_grid})"
            )
        losses = {}
        for index, name in enumerate(self.classes):
            pred, target = logits[:, index], masks[:, index]
            if self.loss_type == "focal":
                losses[f"seg_{name}"] = sigmoid_focal_loss(pred, target, self.focal_gamma, self.focal_alpha)
            else:
                losses[f"seg_{name}"] = F.binary_cross_entropy_with_logits(pred.float(), target.float())
        return losses
