"""LSS splat: sum point features into the cells of a BEV grid, in pure torch.

The sum is one `index_add_` over flat cell indices, so the same code runs on CPU and GPU,
the forward is the exact sum and the backward is the exact gather of the output gradient.
Reduced-precision features (fp16/bf16) are accumulated in float32 and cast back.
"""

from __future__ import annotations

import torch

from unikd.ops.checks import value_checks


def flat_cell_index(coords: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flat index `(batch * height + row) * width + col` of [P, 3] (batch, row, col) coords."""
    coords = coords.long()
    return (coords[:, 0] * height + coords[:, 1]) * width + coords[:, 2]


def bev_pool(
    features: torch.Tensor, coords: torch.Tensor, batch_size: int, height: int, width: int
) -> torch.Tensor:
    """Sum [P, C] point features into a [B, C, H, W] BEV map (rows along y, columns along x).

    `coords` is either [P, 3] integer (batch, row, col) or a [P] flat cell index as given by
    `flat_cell_index`. The caller filters out points outside the grid; an index out of range
    is a ValueError here (a flat index cannot reveal a row or column overflow into the next
    row, so [P, 3] coords are checked per axis) where `unikd.ops.checks.value_checks` runs the
    check (CPU tensors, or UNIKD_SYNC_CHECKS=1: it is a host sync on a GPU).
    """
    if features.dim() != 2 or features.shape[0] != coords.shape[0]:
        raise ValueError(f"features must be [P, C] with P = {coords.shape[0]}, got {tuple(features.shape)}")
    if coords.dim() == 2:
        if coords.shape[1] != 3:
            raise ValueError(f"coords must be [P, 3] (batch, row, col) or [P], got {tuple(coords.shape)}")
        limits = torch.tensor([batch_size, height, width], device=coords.device)
        if coords.numel() and value_checks(coords) and ((coords < 0).any() or (coords >= limits).any()):
            raise ValueError(f"coords outside the grid (batch < {batch_size}, row < {height}, col < {width})")
        index = flat_cell_index(coords, height, width)
    elif coords.dim() == 1:
        index = coords.long()
        num_cells = batch_size * height * width
        if index.numel() and value_checks(index) and ((index < 0).any() or (index >= num_cells).any()):
            raise ValueError(f"flat cell index outside [0, {num_cells})")
    else:
        raise ValueError(f"coords must be [P, 3] (batch, row, col) or [P], got {tuple(coords.shape)}")

    accumulate = torch.float32 if features.dtype in (torch.float16, torch.bfloat16) else features.dtype
    out = features.new_zeros(batch_size * height * width, features.shape[1], dtype=accumulate)
    out = out.index_add(0, index, features.to(accumulate))
    out = out.to(features.dtype)
    return out.view(batch_size, height, width, -1).permute(0, 3, 1, 2).contiguous()
