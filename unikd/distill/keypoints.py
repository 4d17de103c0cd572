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
NUM_KEYPOINTS = len(_KEYPOINT_OFFSETS)


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


def sample_bev(feature: torch.Tensor, points: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Bilinearly sample a BEV feature [B, C, H, W] at metric (x, y) points [B, ..., 2] -> [B, C, ...].

    One `grid_sample` call for the whole batch, each sample at its own points. `grid` gives the metric
    region the feature covers (its resolution is the feature's own). Points outside the region read
    zeros (`grid_sample` zero padding, align_corners=False).
    """
    if feature.dim() != 4 or points.dim() < 3 or points.shape[0] != feature.shape[0] or points.shape[-1] != 2:
        raise ValueError(
            f"expected feature [B, C, H, W] with points [B, ..., 2], "
            f"got feature {tuple(feature.shape)} and points {tuple(points.shape)}"
        )
    batch, channels = feature.shape[:2]
    point_shape = points.shape[1:-1]
    normalized = grid.metric_to_normalized(points.reshape(batch, 1, -1, 2).to(feature.dtype))
    sampled = F.grid_sample(feature, normalized, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.reshape(batch, channels, *point_shape)
