"""The BEV grid: which metric region a [B, C, H, W] tensor covers and how cells map to metres.

Rows run along y, columns along x: row i covers y in [y_min + i*cell_y, y_min + (i+1)*cell_y),
column j covers x in [x_min + j*cell_x, x_min + (j+1)*cell_x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BEVGrid:
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    height: int  # number of rows (along y)
    width: int  # number of columns (along x)

    @classmethod
    def from_range(cls, point_cloud_range: tuple[float, ...], cell_size: float) -> BEVGrid:
        """Grid over [x_min, y_min, _, x_max, y_max, _] with square cells of `cell_size` metres."""
        x_min, y_min, _, x_max, y_max, _ = point_cloud_range
        width = round((x_max - x_min) / cell_size)
        height = round((y_max - y_min) / cell_size)
        return cls(x_min, y_min, x_max, y_max, height, width)

    @property
    def cell_x(self) -> float:
        return (self.x_max - self.x_min) / self.width

    @property
    def cell_y(self) -> float:
        return (self.y_max - self.y_min) / self.height

    def resized(self, height: int, width: int) -> BEVGrid:
        """The same metric region at another resolution."""
        return BEVGrid(self.x_min, self.y_min, self.x_max, self.y_max, height, width)

    def metric_to_cell(self, xy: torch.Tensor) -> torch.Tensor:
        """Continuous cell coordinates (col, row) of metric points [..., 2] (x, y).

        Cell (j, i) spans [j, j+1) x [i, i+1); its centre is at (j + 0.5, i + 0.5).
        """
        col = (xy[..., 0] - self.x_min) / self.cell_x
        row = (xy[..., 1] - self.y_min) / self.cell_y
        return torch.stack([col, row], dim=-1)

    def metric_to_normalized(self, xy: torch.Tensor) -> torch.Tensor:
        """`grid_sample` coordinates (align_corners=False) of metric points [..., 2] (x, y)."""
        x = 2.0 * (xy[..., 0] - self.x_min) / (self.x_max - self.x_min) - 1.0
        y = 2.0 * (xy[..., 1] - self.y_min) / (self.y_max - self.y_min) - 1.0
        return torch.stack([x, y], dim=-1)

    def cell_centers(self, device: torch.device | None = None) -> torch.Tensor:
        """Metric (x, y) of every cell centre, [H, W, 2]."""
        xs = self.x_min + (torch.arange(self.width, device=device, dtype=torch.float32) + 0.5) * self.cell_x
        ys = self.y_min + (torch.arange(self.height, device=device, dtype=torch.float32) + 0.5) * self.cell_y
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y], dim=-1)
