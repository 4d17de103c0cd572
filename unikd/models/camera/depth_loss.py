"""BEVDepth-style depth supervision: LiDAR depth per image feature cell, BCE over depth bins.

LiDAR is only used here, for the loss; the camera model never sees it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def num_depth_bins(depth_bins: tuple[float, float, float]) -> int:
    """Number of bins of `(start, stop, step)`: [1, 60, 0.5] -> 118."""
    start, stop, step = depth_bins
    if not 0 < start < stop or step <= 0:
        raise ValueError(
            f"depth bins (start, stop, step) need 0 < start < stop and step > 0, got {depth_bins}"
        )
    return round((stop - start) / step)


def project_points(
    xyz: torch.Tensor,
    lidar2cam: torch.Tensor,
    cam2img: torch.Tensor,
    img_aug: torch.Tensor,
    bda: torch.Tensor | None,
    min_depth: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented-image pixels [Ncam, P, 2] and camera depths (z) [Ncam, P] of one sample's points [P, 3]
    (augmented LiDAR frame; back through `bda` [4, 4], or taken as they are when None) in each camera
    (matrices [Ncam, 4, 4]). The pixel divides by the depth clamped to at least `min_depth`: points
    behind a camera get far-away pixels, and the caller keeps the depths it wants."""
    xyz1 = F.pad(xyz.float(), (0, 1), value=1.0)  # [P, 4]
    to_cam = lidar2cam if bda is None else lidar2cam @ torch.linalg.inv(bda)
    cam = torch.einsum("nij,pj->npi", to_cam, xyz1)  # [Ncam, P, 4]
    depth = cam[..., 2]
    pixel = torch.einsum("nij,npj->npi", cam2img, cam)
    uv = pixel[..., :2] / depth.clamp(min=min_depth).unsqueeze(-1)
    uv01 = torch.cat([uv, torch.zeros_like(uv[..., :1]), torch.ones_like(uv[..., :1])], dim=-1)
    return torch.einsum("nij,npj->npi", img_aug, uv01)[..., :2], depth


def key_frame_points(points: list[torch.Tensor]) -> list[torch.Tensor]:
    """The key frame's points of each sample (time-lag column 4 at 0): the depth targets' points, free of the
    sweeps' motion smear."""
    return [sample[sample[:, 4] == 0] for sample in points]


def depth_targets(
    points: list[torch.Tensor],
    lidar2cam: torch.Tensor,
    cam2img: torch.Tensor,
    img_aug: torch.Tensor,
    bda: torch.Tensor | None,
    image_size: tuple[int, int],
    feature_stride: int,
    depth_bins: tuple[float, float, float],
) -> torch.Tensor:
    """Depth-bin index of the nearest LiDAR point per image feature cell, [B, Ncam, H/s, W/s] int64.

    `points[b]` is [P, >=3] in the augmented LiDAR frame (the batch's points; pass the
    key-frame points only for targets free of motion smear). Each point goes back through
    `bda`, into each camera and its augmented image; the feature cell (i, j) covers the
    augmented pixels [i*s, (i+1)*s) x [j*s, (j+1)*s). A cell's target is the bin of the
    smallest camera depth (z) in [start, stop) among its points, -1 where it has none.
    Bin k covers depths [start + k*step, start + (k+1)*step).
    """
    start, _, step = depth_bins
    bins = num_depth_bins(depth_bins)
    stop = start + bins * step
    batch, num_cams = lidar2cam.shape[:2]
    height, width = image_size[0] // feature_stride, image_size[1] // feature_stride
    targets = torch.full((batch, num_cams, height, width), -1, dtype=torch.long, device=lidar2cam.device)
    for b in range(batch):
        aug, depth = project_points(points[b][:, :3], lidar2cam[b], cam2img[b], img_aug[b], None if bda is None else bda[b])
        col = torch.floor((aug[..., 0] + 0.5) / feature_stride).long()
        row = torch.floor((aug[..., 1] + 0.5) / feature_stride).long()
        keep = (depth >= start) & (depth < stop)
        keep &= (col >= 0) & (col < width) & (row >= 0) & (row < height)
        cam_index = torch.arange(num_cams, device=depth.device).unsqueeze(1).expand_as(depth)
        cell = (cam_index * height + row) * width + col
        nearest = torch.full((num_cams * height * width,), float("inf"), device=depth.device)
        nearest.scatter_reduce_(0, cell[keep], depth[keep], reduce="amin")
        hit = torch.isfinite(nearest)
        bin_index = torch.floor((nearest - start) / step).clamp(0, bins - 1).long()
        targets[b] = torch.where(hit, bin_index, torch.full_like(bin_index, -1)).view(num_cams, height, width)
    return targets


def depth_loss(depth_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between [B, Ncam, D, H, W] depth probabilities and one-hot targets.

    Summed over the D bins, averaged over the cells with a target (`targets >= 0`); zero,
    with a graph, when no cell has one. Computed in float32 outside autocast.
    """
    if depth_probs.shape[:2] + depth_probs.shape[3:] != targets.shape:
        raise ValueError(
            f"depth_probs {tuple(depth_probs.shape)} and targets {tuple(targets.shape)} do not align"
        )
    valid = targets >= 0
    probs = depth_probs.permute(0, 1, 3, 4, 2)[valid]  # [V, D]
    one_hot = F.one_hot(targets[valid], depth_probs.shape[2]).to(torch.float32)
    with torch.autocast(device_type=depth_probs.device.type, enabled=False):
        loss = F.binary_cross_entropy(probs.float(), one_hot, reduction="sum")
    return loss / max(int(valid.sum()), 1)
