"""Bird's-eye-view IoU of rotated boxes [x, y, z, l, w, h, yaw, ...] in pure torch (no compiled op).

The overlap of two convex quadrilaterals is the convex polygon whose vertices are the corners of each
box inside the other and the crossings of their edges (at most 4 + 4 + 16 candidates). Its area is the
shoelace sum over the valid candidates sorted by angle around their mean; candidates that are not
vertices (duplicates, points on an edge) add zero area. Everything is vectorised over box pairs;
pairs whose circumscribed circles do not meet are skipped (their IoU is 0).
"""

from __future__ import annotations

import torch

from unikd.ops.boxes import bev_corners

_EPS = 1e-6
_CHUNK = 1 << 16  # pairs per vectorised step (about 25 MB of float32 candidates)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Whether points [P, K, 2] lie in (or on) the counter-clockwise quadrilaterals corners [P, 4, 2]."""
    edges = torch.roll(corners, -1, dims=1) - corners  # [P, 4, 2]
    relative = points[:, :, None, :] - corners[:, None, :, :]  # [P, K, 4, 2]
    return (_cross(edges[:, None], relative) >= -_EPS * edges.norm(dim=-1)[:, None]).all(dim=-1)


def _edge_crossings(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Crossing points [P, 16, 2] of every edge of a [P, 4, 2] with every edge of b, and which exist."""
    a_start, a_dir = a[:, :, None, :], (torch.roll(a, -1, dims=1) - a)[:, :, None, :]
    b_start, b_dir = b[:, None, :, :], (torch.roll(b, -1, dims=1) - b)[:, None, :, :]
    denominator = _cross(a_dir, b_dir)  # [P, 4, 4]
    offset = b_start - a_start
    parallel = denominator.abs() < _EPS
    safe = torch.where(parallel, torch.ones_like(denominator), denominator)
    t = _cross(offset, b_dir) / safe  # along a's edge
    u = _cross(offset, a_dir) / safe  # along b's edge
    valid = ~parallel & (t >= -_EPS) & (t <= 1 + _EPS) & (u >= -_EPS) & (u <= 1 + _EPS)
    points = a_start + t[..., None] * a_dir
    return points.flatten(1, 2), valid.flatten(1)


def _polygon_area(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Area [P] of the convex polygons whose vertices are the valid ones of points [P, K, 2]."""
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    center = (points * valid[..., None]).sum(dim=1, keepdim=True) / count[..., None]
    relative = points - center
    angle = torch.atan2(relative[..., 1], relative[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid ones last
    order = angle.argsort(dim=1)
    relative = relative.gather(1, order[..., None].expand_as(relative))
    valid = valid.gather(1, order)
    # invalid slots repeat the first vertex, so the closing edge and the padding add nothing
    relative = torch.where(valid[..., None], relative, relative[:, :1])
    return 0.5 * _cross(relative, torch.roll(relative, -1, dims=1)).sum(dim=1).abs()


def paired_bev_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """BEV IoU [P] of the aligned pairs (boxes_a[i], boxes_b[i]), boxes [P, >=7]."""
    if boxes_a.shape[0] != boxes_b.shape[0]:
        raise ValueError(f"paired_bev_iou needs as many boxes on each side, got {boxes_a.shape[0]} and {boxes_b.shape[0]}")
    ious = []
    for start in range(0, boxes_a.shape[0], _CHUNK):
        a = bev_corners(boxes_a[start : start + _CHUNK])
        b = bev_corners(boxes_b[start : start + _CHUNK])
        crossings, crossing_valid = _edge_crossings(a, b)
        points = torch.cat([a, b, crossings], dim=1)
        valid = torch.cat([_inside(a, b), _inside(b, a), crossing_valid], dim=1)
        overlap = _polygon_area(points, valid)
        area_a = boxes_a[start : start + _CHUNK, 3] * boxes_a[start : start + _CHUNK, 4]
        area_b = boxes_b[start : start + _CHUNK, 3] * boxes_b[start : start + _CHUNK, 4]
        ious.append(overlap / (area_a + area_b - overlap).clamp(min=_EPS))
    return torch.cat(ious) if ious else boxes_a.new_zeros(0)


def rotated_bev_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """BEV IoU [N, M] of every box of boxes_a [N, >=7] with every box of boxes_b [M, >=7]."""
    if boxes_a.ndim != 2 or boxes_b.ndim != 2 or boxes_a.shape[1] < 7 or boxes_b.shape[1] < 7:
        raise ValueError(
            f"rotated_bev_iou expects boxes [N, >=7] (x, y, z, l, w, h, yaw), got {tuple(boxes_a.shape)} and {tuple(boxes_b.shape)}"
        )
    iou = boxes_a.new_zeros(boxes_a.shape[0], boxes_b.shape[0])
    radius_a = 0.5 * boxes_a[:, 3:5].norm(dim=1)
    radius_b = 0.5 * boxes_b[:, 3:5].norm(dim=1)
    distance = torch.cdist(boxes_a[:, :2], boxes_b[:, :2])
    rows, cols = torch.nonzero(distance < radius_a[:, None] + radius_b[None, :], as_tuple=True)
    iou[rows, cols] = paired_bev_iou(boxes_a[rows], boxes_b[cols])
    return iou
