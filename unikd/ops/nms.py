"""Greedy NMS in the bird's-eye view: by centre distance (circle NMS, CenterPoint) or by the IoU of
rotated boxes (UniDistill / OpenPCDet's `nms_gpu`)."""

from __future__ import annotations

import torch

from unikd.ops.rotated_iou import paired_bev_iou


def circle_nms(centers: torch.Tensor, scores: torch.Tensor, sq_dist_threshold: float) -> torch.Tensor:
    """Indices of the detections kept by greedy circle NMS, highest score first.

    Detections are visited by decreasing score (ties keep input order); one is suppressed when
    its squared BEV centre distance to an already kept detection is <= `sq_dist_threshold` (m²),
    CenterPoint's convention.

    centers: [N, 2] (x, y); scores: [N]. Returns int64 indices [K] into the inputs.

    The greedy result is computed without a Python loop over boxes: with `suppresses[i, j]`
    (i ranked before j and within the threshold), the kept set is the unique fixed point of
    keep[j] = not any_i(keep[i] and suppresses[i, j]). Iterating that map from "keep all"
    fixes at least one more rank per step, so it ends after at most N steps (in practice a few).
    """
    if centers.ndim != 2 or centers.shape[1] != 2 or scores.shape != centers.shape[:1]:
        raise ValueError(
            f"circle_nms expects centers [N, 2] and scores [N], got {tuple(centers.shape)} and {tuple(scores.shape)}"
        )
    order = torch.argsort(scores, descending=True, stable=True)
    ranked = centers[order]
    delta = ranked[:, None, :] - ranked[None, :, :]
    sq_dist = delta[..., 0] ** 2 + delta[..., 1] ** 2
    return order[_greedy_keep(torch.triu(sq_dist <= sq_dist_threshold, diagonal=1))]


def rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS on the BEV IoU of rotated boxes, highest score first.

    Boxes [N, >=7] (x, y, z, l, w, h, yaw, ...) are visited by decreasing score (ties keep input order);
    one is suppressed when its BEV IoU with an already kept box is > `iou_threshold` (strictly, as
    OpenPCDet's `nms_gpu`). Returns int64 indices [K] into the inputs.
    """
    if boxes.ndim != 2 or boxes.shape[1] < 7 or scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"rotated_nms expects boxes [N, >=7] and scores [N], got {tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    order = torch.argsort(scores, descending=True, stable=True)
    ranked = boxes[order]
    # only pairs (i ranked before j) whose circumscribed circles meet can overlap
    radius = 0.5 * ranked[:, 3:5].norm(dim=1)
    near = torch.cdist(ranked[:, :2], ranked[:, :2]) < radius[:, None] + radius[None, :]
    rows, cols = torch.nonzero(torch.triu(near, diagonal=1), as_tuple=True)
    suppresses = torch.zeros_like(near)
    suppresses[rows, cols] = paired_bev_iou(ranked[rows], ranked[cols]) > iou_threshold
    return order[_greedy_keep(suppresses)]


def _greedy_keep(suppresses: torch.Tensor) -> torch.Tensor:
    """Kept mask [N] of greedy suppression over ranked detections, `suppresses[i, j]` meaning i (ranked
    before j) suppresses j when i is kept; computed as the fixed point of circle_nms's docstring."""
    keep = torch.ones(suppresses.shape[0], dtype=torch.bool, device=suppresses.device)
    while True:
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep
