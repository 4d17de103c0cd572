"""CenterHead training targets: Gaussian heatmaps per task and regression codes at box centres.

A box is assigned to the cell holding its centre (`box_coder.center_cells`; rows along y,
columns along x). Boxes whose centre falls outside the grid are ignored. The Gaussian radius
is CenterPoint's: the CornerNet radius of the box footprint in cells (l / cell_x, w / cell_y),
floored, and at least `min_radius`; overlapping Gaussians combine by max.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unikd.data.classes import CLASSES
from unikd.models.heads.box_coder import CODE_SIZE, center_cells, encode_boxes
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.boxes import pad_boxes
from unikd.ops.gaussian import draw_gaussian, gaussian_radius


@dataclass
class TaskTargets:
    """The targets of one task for a batch of B samples."""

    heatmap: torch.Tensor  # [B, n_classes, H, W], 1 at each object's centre cell
    codes: torch.Tensor  # [B, max_objs, 10] regression codes (box_coder layout)
    indices: torch.Tensor  # [B, max_objs] int64 flat cell index row * W + col
    mask: torch.Tensor  # [B, max_objs] bool, True where a slot holds an object
    classes: torch.Tensor  # [B, max_objs] int64 class index within the task


def heatmap_radius(length_cells: float, width_cells: float, min_overlap: float, min_radius: int) -> int:
    """Gaussian radius in cells of a box footprint of (length, width) cells."""
    return max(min_radius, int(gaussian_radius(length_cells, width_cells, min_overlap)))


def _radii(boxes: torch.Tensor, grid: BEVGrid, min_overlap: float, min_radius: int) -> torch.Tensor:
    """`heatmap_radius` of every box [..., 9] as a float64 tensor [...]."""
    boxes = boxes.double()
    radius = gaussian_radius(boxes[..., 3] / grid.cell_x, boxes[..., 4] / grid.cell_y, min_overlap)
    return radius.floor().clamp_min(min_radius)


def check_boxes(boxes: torch.Tensor) -> None:
    """Raise unless `boxes` is [M, 9], finite, with positive l, w, h."""
    if boxes.ndim != 2 or boxes.shape[1] != 9:
        raise ValueError(f"gt boxes must be [M, 9] (x, y, z, l, w, h, yaw, vx, vy), got {tuple(boxes.shape)}")
    bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 3:6] <= 0).any(dim=1)
    if bad.any():
        raise ValueError(f"gt boxes must be finite with positive l, w, h; invalid: {boxes[bad].tolist()}")


def _inside(cells: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    col, row = cells[:, 0], cells[:, 1]
    return (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)


def gaussian_gt_mask(
    gt_boxes: Sequence[torch.Tensor], grid: BEVGrid, min_overlap: float = 0.7, min_radius: int = 2
) -> torch.Tensor:
    """Class-agnostic Gaussian mask [B, H, W] of the boxes [M_b, 9] of each sample (max-combined).

    The same Gaussians as the targets' heatmaps (`draw_gaussian`), built for the whole batch at once on
    the boxes' device: each Gaussian is the product of a row and a column profile cut at its radius, then
    the maximum over boxes. Inside its window a Gaussian never falls below exp(-9) (sigma = (2r + 1) / 6),
    so `gaussian_kernel`'s cut of values under float32 epsilon never applies. Boxes are not checked here
    (the detection targets check them).
    """
    if len(gt_boxes) == 0:
        raise ValueError("gaussian_gt_mask needs at least one sample")
    boxes, valid = pad_boxes(gt_boxes, gt_boxes[0].device)
    cells, _ = center_cells(boxes, grid)
    col, row = cells[..., 0], cells[..., 1]  # [B, M]
    drawn = valid & (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)
    radius = _radii(boxes, grid, min_overlap, min_radius).float()
    sigma = (2 * radius + 1) / 6

    def profile(offsets: torch.Tensor) -> torch.Tensor:  # [B, M, n]
        inside = (offsets.abs() <= radius[..., None]) & drawn[..., None]
        return torch.exp(-offsets.square() / (2 * sigma[..., None] ** 2)) * inside

    rows = profile(torch.arange(grid.height, device=boxes.device) - row[..., None].float())
    cols = profile(torch.arange(grid.width, device=boxes.device) - col[..., None].float())
    return (rows[..., :, None] * cols[..., None, :]).amax(dim=1)  # max over the boxes of [B, M, H, W]


def build_targets(
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    grid: BEVGrid,
    task_class_ids: Sequence[Sequence[int]],
    min_overlap: float,
    min_radius: int,
    max_objs: int,
) -> list[TaskTargets]:
    """Per-task targets for boxes [M_b, 9] with labels [M_b] (indices into `CLASSES`).

    `task_class_ids[t]` lists the global class ids of task t; a label maps to its task and its
    position in that list. Raises if a task of one sample has more than `max_objs` objects.
    """
    if len(gt_boxes) == 0 or len(gt_boxes) != len(gt_labels):
        raise ValueError(f"need one label tensor per box tensor, got {len(gt_boxes)} and {len(gt_labels)}")
    batch, device = len(gt_boxes), gt_boxes[0].device
    task_of = torch.full((len(CLASSES),), -1, dtype=torch.long, device=device)
    local_of = torch.zeros(len(CLASSES), dtype=torch.long, device=device)
    for task, ids in enumerate(task_class_ids):
        task_of[list(ids)] = task
        local_of[list(ids)] = torch.arange(len(ids), device=device)

    targets = [
        TaskTargets(
            heatmap=torch.zeros(batch, len(ids), grid.height, grid.width, device=device),
            codes=torch.zeros(batch, max_objs, CODE_SIZE, device=device),
            indices=torch.zeros(batch, max_objs, dtype=torch.long, device=device),
            mask=torch.zeros(batch, max_objs, dtype=torch.bool, device=device),
            classes=torch.zeros(batch, max_objs, dtype=torch.long, device=device),
        )
        for ids in task_class_ids
    ]
    for sample, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        boxes, labels = boxes.to(device, torch.float32), labels.to(device)
        check_boxes(boxes)
        if labels.shape != boxes.shape[:1] or ((labels < 0) | (labels >= len(CLASSES))).any():
            raise ValueError(
                f"gt labels must be [M] ids in [0, {len(CLASSES)}) for {len(boxes)} boxes, got {labels.tolist()}"
            )
        cells, offsets = center_cells(boxes, grid)
        inside = _inside(cells, grid)
        codes = encode_boxes(boxes, offsets)
        radii = _radii(boxes, grid, min_overlap, min_radius).long().tolist()
        task, local = task_of[labels], local_of[labels]
        cell_list, local_list = cells.tolist(), local.tolist()
        for t, target in enumerate(targets):
            selected = torch.nonzero(inside & (task == t)).flatten()
            count = len(selected)
            if count > max_objs:
                raise ValueError(
                    f"task {t} has {count} objects in sample {sample}, more than max_objs={max_objs}"
                )
            target.codes[sample, :count] = codes[selected]
            target.indices[sample, :count] = cells[selected, 1] * grid.width + cells[selected, 0]
            target.mask[sample, :count] = True
            target.classes[sample, :count] = local[selected]
            for i in selected.tolist():
                col, row = cell_list[i]
                draw_gaussian(target.heatmap[sample, local_list[i]], col, row, radii[i])
    return targets
