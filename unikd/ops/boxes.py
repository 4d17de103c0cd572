"""Bird's-eye-view geometry of [x, y, z, l, w, h, yaw, ...] boxes."""

from __future__ import annotations

import torch


def bev_corners(boxes: torch.Tensor) -> torch.Tensor:
    """BEV corners [M, 4, 2] (x, y) of boxes [M, >=7].

    Order, counter-clockwise seen from above: front-left, rear-left, rear-right, front-right,
    where "front" is +l/2 along the heading and "left" is +w/2 to its left (CCW side).
    """
    half_l, half_w = boxes[:, 3] / 2, boxes[:, 4] / 2
    local_x = torch.stack([half_l, -half_l, -half_l, half_l], dim=1)
    local_y = torch.stack([half_w, half_w, -half_w, -half_w], dim=1)
    cos, sin = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    x = boxes[:, 0:1] + cos * local_x - sin * local_y
    y = boxes[:, 1:2] + sin * local_x + cos * local_y
    return torch.stack([x, y], dim=-1)
