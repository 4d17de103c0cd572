"""CenterHead box coding: a box <-> its centre cell and a 10-value regression code.

Code layout (`CODE_SLICES`): reg (2) = centre offset from the integer cell index, in cells
(x, y); height (1) = z centre; dim (3) = log(l, w, h); rot (2) = (sin yaw, cos yaw);
vel (2) = (vx, vy). A centre at continuous cell coordinate (col, row) lies in cell
(floor(col), floor(row)) and decodes back as x = x_min + (floor(col) + reg_x) * cell_x
(likewise y with rows), so there is no half-cell shift anywhere.
"""

from __future__ import annotations

import torch

from unikd.ops.bev_grid import BEVGrid

CODE_SLICES: dict[str, slice] = {
    "reg": slice(0, 2),
    "height": slice(2, 3),
    "dim": slice(3, 6),
    "rot": slice(6, 8),
    "vel": slice(8, 10),
}
CODE_SIZE = 10


def center_cells(boxes: torch.Tensor, grid: BEVGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer cell (col, row) [..., 2] int64 of each box [..., 9+] centre and its offset in cells [..., 2]."""
    cells = grid.metric_to_cell(boxes[..., :2])
    cell_index = torch.floor(cells)
    return cell_index.long(), cells - cell_index


def encode_boxes(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Regression codes [M, 10] of boxes [M, 9] given their centre offsets [M, 2] (`center_cells`)."""
    yaw = boxes[:, 6:7]
    return torch.cat(
        [offsets, boxes[:, 2:3], torch.log(boxes[:, 3:6]), torch.sin(yaw), torch.cos(yaw), boxes[:, 7:9]],
        dim=1,
    )


def decode_boxes(cells: torch.Tensor, codes: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Boxes [..., 9] from integer cells [..., 2] (col, row) and regression codes [..., 10]."""
    reg = codes[..., CODE_SLICES["reg"]]
    rot = codes[..., CODE_SLICES["rot"]]
    x = grid.x_min + (cells[..., 0] + reg[..., 0]) * grid.cell_x
    y = grid.y_min + (cells[..., 1] + reg[..., 1]) * grid.cell_y
    yaw = torch.atan2(rot[..., 0], rot[..., 1])
    return torch.cat(
        [
            torch.stack([x, y], dim=-1),
            codes[..., CODE_SLICES["height"]],
            torch.exp(codes[..., CODE_SLICES["dim"]]),
            yaw[..., None],
            codes[..., CODE_SLICES["vel"]],
        ],
        dim=-1,
    )
