"""Hard voxelization in pure torch (the same code runs on CPU and GPU).

A point (x, y, z, ...) falls in voxel (iz, iy, ix) with i = floor((p - p_min) / voxel_size), computed
in the points' dtype, float32 for 16-bit points, with autocast off (`in_float32`: float16 coordinates
would put points in the wrong voxel); it is kept when 0 <= i < grid size on every axis, where the grid size is
round((p_max - p_min) / voxel_size). So the range is half-open: [p_min, p_max).

Voxels are listed in order of their first point in the input, at most `max_voxels` of them, and each
keeps its first `max_points_per_voxel` points in input order; the rest are dropped. The result is
deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unikd.ops.precision import in_float32


def grid_size(voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> tuple[int, int, int]:
    """Number of voxels along (x, y, z)."""
    sizes = []
    for axis in range(3):
        extent = point_cloud_range[axis + 3] - point_cloud_range[axis]
        if extent <= 0 or voxel_size[axis] <= 0:
            raise ValueError(
                f"point_cloud_range {tuple(point_cloud_range)} and voxel_size {tuple(voxel_size)} "
                "must give a positive extent and voxel size on every axis"
            )
        sizes.append(round(extent / voxel_size[axis]))
    return sizes[0], sizes[1], sizes[2]


@in_float32
def voxelize(
    points: torch.Tensor,
    voxel_size: Sequence[float],
    point_cloud_range: Sequence[float],
    max_points_per_voxel: int,
    max_voxels: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group points [N, C] (x, y, z first) into voxels.

    Returns voxels [V, K, C] (zero-padded), num_points [V] int64 and coords [V, 3] int32 as (z, y, x).
    """
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be [N, C] with C >= 3 (x, y, z first), got {tuple(points.shape)}")
    if max_points_per_voxel < 1:
        raise ValueError(f"max_points_per_voxel must be >= 1, got {max_points_per_voxel}")
    num_channels = points.shape[1]
    device = points.device
    nx, ny, nz = grid_size(voxel_size, point_cloud_range)
    pc_min = torch.tensor(point_cloud_range[:3], dtype=points.dtype, device=device)
    size = torch.tensor(voxel_size, dtype=points.dtype, device=device)
    cells = torch.tensor([nx, ny, nz], dtype=torch.int64, device=device)

    ijk = torch.floor((points[:, :3] - pc_min) / size).long()  # (ix, iy, iz)
    inside = ((ijk >= 0) & (ijk < cells)).all(dim=1)
    points = points[inside]
    ijk = ijk[inside]
    if points.shape[0] == 0 or max_voxels <= 0:
        return (
            points.new_zeros((0, max_points_per_voxel, num_channels)),
            torch.zeros(0, dtype=torch.int64, device=device),
            torch.zeros((0, 3), dtype=torch.int32, device=device),
        )

    key = (ijk[:, 2] * ny + ijk[:, 1]) * nx + ijk[:, 0]
    # A stable sort groups the points of a voxel together and keeps their input order.
    sorted_key, order = torch.sort(key, stable=True)
    is_first = torch.ones_like(sorted_key, dtype=torch.bool)
    is_first[1:] = sorted_key[1:] != sorted_key[:-1]
    group = torch.cumsum(is_first.long(), dim=0) - 1  # voxel id (in key order) of each sorted point
    group_start = torch.nonzero(is_first).squeeze(1)
    counts = torch.diff(group_start, append=group_start.new_tensor([key.shape[0]]))
    slot = torch.arange(key.shape[0], device=device) - group_start[group]  # position within its voxel

    # Rank voxels by their first point in the input; keep the first max_voxels.
    by_appearance = torch.argsort(order[group_start])
    rank = torch.empty_like(by_appearance)
    rank[by_appearance] = torch.arange(by_appearance.shape[0], device=device)
    point_rank = rank[group]
    keep = (slot < max_points_per_voxel) & (point_rank < max_voxels)

    kept = by_appearance[:max_voxels]
    voxels = points.new_zeros((kept.shape[0], max_points_per_voxel, num_channels))
    voxels[point_rank[keep], slot[keep]] = points[order[keep]]
    num_points = counts[kept].clamp(max=max_points_per_voxel)
    voxel_key = sorted_key[group_start[kept]]
    coords = torch.stack([voxel_key // (ny * nx), (voxel_key // nx) % ny, voxel_key % nx], dim=1)
    return voxels, num_points, coords.int()


def voxelize_batch(
    points_list: Sequence[torch.Tensor],
    voxel_size: Sequence[float],
    point_cloud_range: Sequence[float],
    max_points_per_voxel: int,
    max_voxels: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxelize each sample (at most `max_voxels` per sample) and concatenate.

    Returns voxels [V, K, C], num_points [V] int64 and coords [V, 4] int32 as (batch, z, y, x).
    """
    if len(points_list) == 0:
        raise ValueError("voxelize_batch needs at least one point cloud")
    all_voxels, all_counts, all_coords = [], [], []
    for index, points in enumerate(points_list):
        voxels, num_points, coords = voxelize(
            points, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels
        )
        batch_column = torch.full((coords.shape[0], 1), index, dtype=torch.int32, device=coords.device)
        all_voxels.append(voxels)
        all_counts.append(num_points)
        all_coords.append(torch.cat([batch_column, coords], dim=1))
    return torch.cat(all_voxels), torch.cat(all_counts), torch.cat(all_coords)
