"""Bird's-eye-view geometry of [x, y, z, l, w, h, yaw, ...] boxes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence


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


def pad_boxes(
    gt_boxes: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's boxes [M_b, 9] as one tensor [B, M, 9] and which rows hold a box, `valid` [B, M] bool.

    M is the largest M_b and at least 1; padding rows are zeros. Counts come from the list, so nothing
    is read back from the device.
    """
    rows = [boxes[:, :9].to(device, dtype) for boxes in gt_boxes]
    padded = pad_sequence(rows + [rows[0].new_zeros(1, 9)], batch_first=True)[:-1]
    counts = torch.tensor([len(boxes) for boxes in gt_boxes], device=device)
    valid = torch.arange(padded.shape[1], device=device) < counts[:, None]
    return padded, valid
