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


def draw_gaussians(
    heatmaps: torch.Tensor,
    map_index: torch.Tensor,
    cols: torch.Tensor,
    rows: torch.Tensor,
    radii: torch.Tensor,
    drawn: torch.Tensor,
) -> None:
    """Max-combine K Gaussians into `heatmaps` [N, H, W] in place, all at once, with no host sync.

    Gaussian k (`drawn[k]` True) goes into map `map_index[k]`, centred at cell (`cols[k]`, `rows[k]`)
    (int64, possibly outside the map), with integer radius r = `radii[k]`: at offset (dx, dy) with
    |dx|, |dy| <= r it is exp(-(dx^2 + dy^2) / (2 sigma^2)), sigma = (2r + 1) / 6, computed in float32
    with 2 sigma^2 rounded from float64 (CenterPoint's `draw_heatmap_gaussian`, peak 1 at the centre);
    it is 0 outside that window. Inside the window it never falls below exp(-9), so CenterPoint's cut
    of values under float32 epsilon never applies. Each Gaussian is evaluated over the whole map
    ([K, H, W] float32 of memory), cells outside its window getting exp(-inf) = 0.
    """
    height, width = heatmaps.shape[-2:]
    dy = torch.arange(height, device=heatmaps.device) - rows[:, None]  # [K, H]
    dx = torch.arange(width, device=heatmaps.device) - cols[:, None]  # [K, W]
    in_y = (dy.abs() <= radii[:, None]) & drawn[:, None]
    in_x = dx.abs() <= radii[:, None]
    # The exponent is kept in [-9, 0] (0 outside the window, whose cells are then multiplied by 0): exp of
    # a large negative argument is several times slower on CPU.
    exponent_y = torch.where(in_y, -(dy * dy).float(), 0.0)
    exponent_x = torch.where(in_x, -(dx * dx).float(), 0.0)
    sigma = (2 * radii + 1).double() / 6
    two_sigma_sq = (2 * sigma * sigma).float()
    values = ((exponent_y[:, :, None] + exponent_x[:, None, :]) / two_sigma_sq[:, None, None]).exp_()
    values = (values * in_y[:, :, None] * in_x[:, None, :]).view(-1, height * width)
    heatmaps.view(-1, height * width).scatter_reduce_(0, map_index[:, None].expand_as(values), values, "amax")
