"""Circle NMS: greedy suppression by bird's-eye-view centre distance (CenterPoint)."""

from __future__ import annotations

import torch


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
    suppresses = torch.triu(sq_dist <= sq_dist_threshold, diagonal=1)
    keep = torch.ones(len(order), dtype=torch.bool, device=centers.device)
    while True:
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return order[keep]
        keep = new_keep
