"""CenterNet-style Gaussian heatmaps (CornerNet radius formula)."""

from __future__ import annotations

import torch


def gaussian_radius(
    height: float | torch.Tensor, width: float | torch.Tensor, min_overlap: float = 0.5
) -> torch.Tensor:
    """Largest radius r such that a box of (height, width) shifted by r keeps IoU >= min_overlap.

    The CornerNet formula: the minimum over its three quadratic cases. Elementwise over tensors,
    in float64 (a 0-d tensor for floats).
    """
    height = torch.as_tensor(height, dtype=torch.float64)
    width = torch.as_tensor(width, dtype=torch.float64, device=height.device)
    a1 = 1.0
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + (b1**2 - 4 * a1 * c1).sqrt()) / 2

    a2 = 4.0
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + (b2**2 - 4 * a2 * c2).sqrt()) / 2

    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + (b3**2 - 4 * a3 * c3).sqrt()) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def gaussian_kernel(radius: int, device: torch.device | None = None) -> torch.Tensor:
    """[2r+1, 2r+1] Gaussian with sigma = (2r+1)/6 and peak 1."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    kernel = torch.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
    kernel[kernel < torch.finfo(torch.float32).eps * kernel.max()] = 0
    return kernel


def draw_gaussian(heatmap: torch.Tensor, center_col: int, center_row: int, radius: int) -> None:
    """Max-combine a Gaussian of `radius` centred at (col, row) into `heatmap` [H, W], in place."""
    kernel = gaussian_kernel(radius, heatmap.device)
    height, width = heatmap.shape
    left, right = min(center_col, radius), min(width - center_col, radius + 1)
    top, bottom = min(center_row, radius), min(height - center_row, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return
    region = heatmap[center_row - top : center_row + bottom, center_col - left : center_col + right]
    patch = kernel[radius - top : radius + bottom, radius - left : radius + right]
    torch.maximum(region, patch, out=region)
