"""Box key points in BEV and bilinear sampling of BEV features at metric points.

The 9 key points of a box (UniDistill), in this order, with (forward, left) offsets in the
box frame (forward = along the heading, left = 90 degrees counter-clockwise from it):

    0 front-left corner  (+l/2, +w/2)      5 front midpoint  (+l/2, 0)
    1 rear-left corner   (-l/2, +w/2)      6 left midpoint   (0, +w/2)
    2 rear-right corner  (-l/2, -w/2)      7 rear midpoint   (-l/2, 0)
    3 front-right corner (+l/2, -w/2)      8 right midpoint  (0, -w/2)
    4 centre             (0, 0)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unikd.ops.bev_grid import BEVGrid

# (forward, left) offsets in units of (l/2, w/2), in the order documented above.
_KEYPOINT_OFFSETS = (
    (1.0, 1.0),
    (-1.0, 1.0),
    (-1.0, -1.0),
    (1.0, -1.0),
    (0.0, 0.0),
    (1.0, 0.0),
    (0.0, 1.0),
    (-1.0, 0.0),
    (0.0, -1.0),
)


def box_keypoints_bev(boxes: torch.Tensor) -> torch.Tensor:
    """Metric (x, y) of the 9 BEV key points of each box: [..., 9+] -> [..., 9, 2] (order in the module doc)."""
    offsets = torch.tensor(_KEYPOINT_OFFSETS, dtype=boxes.dtype, device=boxes.device)  # [9, 2]
    forward = offsets[:, 0] * boxes[..., 3:4] / 2  # [..., 9]
    left = offsets[:, 1] * boxes[..., 4:5] / 2
    cos, sin = torch.cos(boxes[..., 6:7]), torch.sin(boxes[..., 6:7])
    x = boxes[..., 0:1] + forward * cos - left * sin
    y = boxes[..., 1:2] + forward * sin + left * cos
    return torch.stack([x, y], dim=-1)


def points_in_boxes_bev(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Whether each metric point [P, 2] lies inside each box's rotated BEV rectangle: [P, M] bool."""
    dx = points[:, None, 0] - boxes[None, :, 0]
    dy = points[:, None, 1] - boxes[None, :, 1]
    cos, sin = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    forward = dx * cos + dy * sin
    left = -dx * sin + dy * cos
    return (forward.abs() <= boxes[:, 3] / 2) & (left.abs() <= boxes[:, 4] / 2)


class _BilinearSample(torch.autograd.Function):
    """`grid_sample`'s bilinear read (zero padding, align_corners=False) of [B, C, H, W] at normalised
    points [B, 1, P, 2], with a backward that adds each point's four weighted corners into the map's
    gradient one channel plane at a time (`scatter_add_`): on CPU about half the time of
    `grid_sample`'s backward, which walks all channels of a point at once (one plane apart each)."""

    @staticmethod
    def forward(ctx: Any, feature: torch.Tensor, normalized: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(normalized)
        ctx.map_shape = feature.shape
        return F.grid_sample(feature, normalized, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (normalized,) = ctx.saved_tensors
        batch, channels, height, width = ctx.map_shape
        # continuous pixel coordinates (align_corners=False), then the four corners and their weights
        x = ((normalized[:, 0, :, 0] + 1) * width - 1) / 2  # [B, P]
        y = ((normalized[:, 0, :, 1] + 1) * height - 1) / 2
        x0, y0 = x.floor(), y.floor()
        cells, weights = [], []
        for dy in (0, 1):
            for dx in (0, 1):
                col, row = x0 + dx, y0 + dy
                inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
                weight = (1 - (x - col).abs()) * (1 - (y - row).abs()) * inside
                cells.append((row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).long())
                weights.append(weight.to(grad_output.dtype))
        cells = torch.stack(cells, dim=-1).flatten(1)  # [B, 4P]
        values = (grad_output[:, :, 0, :, None] * torch.stack(weights, dim=-1)[:, None]).flatten(2)  # [B, C, 4P]
        grad = grad_output.new_zeros(batch, channels, height * width)
        grad.scatter_add_(2, cells[:, None].expand(batch, channels, -1), values)
        return grad.view(batch, channels, height, width), None


def sample_bev(feature: torch.Tensor, points: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Bilinearly sample a BEV feature [B, C, H, W] at metric (x, y) points [B, ..., 2] -> [B, C, ...].

    One `grid_sample` call for the whole batch, each sample at its own points. `grid` gives the metric
    region the feature covers (its resolution is the feature's own). Points outside the region read
    zeros (`grid_sample` zero padding, align_corners=False). The gradient reaches the feature only.
    """
    if feature.dim() != 4 or points.dim() < 3 or points.shape[0] != feature.shape[0] or points.shape[-1] != 2:
        raise ValueError(
            f"expected feature [B, C, H, W] with points [B, ..., 2], "
            f"got feature {tuple(feature.shape)} and points {tuple(points.shape)}"
        )
    batch, channels = feature.shape[:2]
    point_shape = points.shape[1:-1]
    normalized = grid.metric_to_normalized(points.reshape(batch, 1, -1, 2).to(feature.dtype)).detach()
    return _BilinearSample.apply(feature, normalized).reshape(batch, channels, *point_shape)
