"""Deformable attention sampling (Deformable DETR) in pure torch: `grid_sample`, the same code on CPU and GPU.

Locations are normalised (x, y) in [0, 1] over a map's extent: x = 0 is the left edge of column 0,
x = 1 the right edge of the last column, and likewise y over the rows (rows along y, columns along x,
as every BEV map). The centre of cell (row i, column j) of an H x W map is ((j + 0.5) / W, (i + 0.5) / H);
`grid_sample` reads it at grid = 2 * location - 1 with `align_corners=False`; outside the map is zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cell_centres(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """[H * W, 2] normalised (x, y) centres of the cells of an H x W map, in row-major (i * W + j) order."""
    rows = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    cols = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=-1)


def deformable_sample(
    values: Sequence[torch.Tensor | None], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """sum over maps l and points p of weights[b, n, h, l, p] * values[l][b, h, :] read bilinearly at
    locations[b, n, h, l, p].

    values: per map l, [B, heads, D, H_l, W_l] (None: a map no sample has, which adds nothing);
    locations: [B, N, heads, L, P, 2] normalised (x, y); weights: [B, N, heads, L, P].
    Returns [B, N, heads * D] (heads concatenated).
    """
    batch, queries, heads, levels, points, _ = locations.shape
    if len(values) != levels or weights.shape != locations.shape[:-1]:
        raise ValueError(
            f"{len(values)} maps, locations {tuple(locations.shape)} and weights {tuple(weights.shape)} do not agree: "
            "expected L maps, [B, N, heads, L, P, 2] and [B, N, heads, L, P]"
        )
    present = [value for value in values if value is not None]
    if not present:
        raise ValueError("deformable_sample needs at least one map")
    depth = present[0].shape[2]
    total = locations.new_zeros(batch * heads, depth, queries)
    for level, value in enumerate(values):
        if value is None:
            continue
        if value.shape[:3] != (batch, heads, depth):
            raise ValueError(
                f"map {level} is {tuple(value.shape)}; expected [{batch}, {heads}, {depth}, H, W]"
            )
        grid = 2 * locations[:, :, :, level] - 1  # [B, N, heads, P, 2]
        grid = grid.transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(
            value.flatten(0, 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [B * heads, D, N, P]
        level_weights = weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        total = total + (sampled * level_weights).sum(dim=-1)
    return total.view(batch, heads, depth, queries).permute(0, 3, 1, 2).reshape(batch, queries, heads * depth)
