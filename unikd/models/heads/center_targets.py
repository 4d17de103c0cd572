"""CenterHead training targets: Gaussian heatmaps per task and regression codes at box centres.

A box is assigned to the cell holding its centre (`box_coder.center_cells`; rows along y,
columns along x). Boxes whose centre falls outside the grid are ignored. The Gaussian radius
is CenterPoint's: the CornerNet radius of the box footprint in cells (l / cell_x, w / cell_y),
floored, and at least `min_radius`; overlapping Gaussians combine by max.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from unikd.data.classes import CLASSES
from unikd.models.heads.box_coder import CODE_SIZE, center_cells, encode_boxes
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.boxes import pad_boxes
from unikd.ops.checks import value_checks
from unikd.ops.gaussian import draw_gaussians, gaussian_radius


@dataclass
class TaskTargets:
    """The targets of one task for a batch of B samples."""

    heatmap: torch.Tensor  # [B, n_classes, H, W], 1 at each object's centre cell
    codes: torch.Tensor  # [B, max_objs, 10] regression codes (box_coder layout)
    indices: torch.Tensor  # [B, max_objs] int64 flat cell index row * W + col
    mask: torch.Tensor  # [B, max_objs] bool, True where a slot holds an object
    classes: torch.Tensor  # [B, max_objs] int64 class index within the task


def _radii(boxes: torch.Tensor, grid: BEVGrid, min_overlap: float, min_radius: int) -> torch.Tensor:
    """The Gaussian radius in cells of every box [..., 9], from its (length, width) footprint in cells, rounded
    down and at least `min_radius`: a float64 tensor [...]."""
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

    The same Gaussians as the targets' heatmaps (`draw_gaussians`, to float32 rounding), built for the whole
    batch at once on the boxes' device: each Gaussian is the product of a row and a column profile cut at its
    radius, then the maximum over boxes. Boxes are not checked here (the detection targets check them).
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


@functools.lru_cache(maxsize=16)
def _class_tables(task_class_ids: tuple[tuple[int, ...], ...], device: torch.device) -> torch.Tensor:
    """Per class id of `CLASSES`: [4, n_classes] int64 rows (task or -1, position in the task, the task's
    first class among all tasks' classes, the task's class count), on `device` (copied there once)."""
    table = [[-1] * len(CLASSES), [0] * len(CLASSES), [0] * len(CLASSES), [1] * len(CLASSES)]
    first = 0
    for task, ids in enumerate(task_class_ids):
        for local, class_id in enumerate(ids):
            table[0][class_id], table[1][class_id] = task, local
            table[2][class_id], table[3][class_id] = first, len(ids)
        first += len(ids)
    return torch.tensor(table, dtype=torch.long, device=device)


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
    position in that list. A task's object slots hold its boxes inside the grid in their input order.
    Raises if a task of one sample has more than `max_objs` objects.

    All boxes of the batch are handled at once by tensor operations: no host sync unless a sample has
    more than `max_objs` boxes (then the per-task counts are read back) or the input checks run
    (`unikd.ops.checks.value_checks`: on CPU tensors, or with UNIKD_SYNC_CHECKS=1).
    """
    if len(gt_boxes) == 0 or len(gt_boxes) != len(gt_labels):
        raise ValueError(f"need one label tensor per box tensor, got {len(gt_boxes)} and {len(gt_labels)}")
    batch, device = len(gt_boxes), gt_boxes[0].device
    task_class_ids = tuple(tuple(ids) for ids in task_class_ids)
    for boxes, labels in zip(gt_boxes, gt_labels, strict=True):
        if value_checks(boxes):
            check_boxes(boxes.float())
        if labels.shape != boxes.shape[:1] or (
            value_checks(labels) and ((labels < 0) | (labels >= len(CLASSES))).any()
        ):
            raise ValueError(
                f"gt labels must be [M] ids in [0, {len(CLASSES)}) for {len(boxes)} boxes, got {labels.tolist()}"
            )
    boxes = pad_sequence([b.to(device, torch.float32) for b in gt_boxes], batch_first=True)  # [B, M, 9]
    labels = pad_sequence([b.to(device) for b in gt_labels], batch_first=True)  # [B, M]
    valid = pad_sequence([torch.ones(len(b), dtype=torch.bool, device=device) for b in gt_boxes], batch_first=True)
    task, local, first_class, task_classes = _class_tables(task_class_ids, device)[:, labels]  # padding: class 0
    cells, offsets = center_cells(boxes, grid)
    col, row = cells.unbind(-1)
    selected = valid & (task >= 0) & (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)

    # Heatmaps: one [sum over tasks of B * n_classes, H, W] buffer, task t's block [B, n_t, H, W] after the
    # blocks of the earlier tasks; a box's Gaussian goes into row B * first_class + b * n_t + local.
    num_classes = sum(len(ids) for ids in task_class_ids)
    heatmaps = torch.zeros(batch * num_classes, grid.height, grid.width, device=device)
    sample_index = torch.arange(batch, device=device)[:, None]
    heat_row = batch * first_class + sample_index * task_classes + local
    radii = _radii(boxes, grid, min_overlap, min_radius).long()
    draw_gaussians(heatmaps, heat_row.flatten(), col.flatten(), row.flatten(), radii.flatten(), selected.flatten())

    # Object slots: a box's slot is the number of selected boxes of its task before it in its sample.
    num_tasks = len(task_class_ids)
    of_task = selected[..., None] & (task[..., None] == torch.arange(num_tasks, device=device))  # [B, M, T]
    if boxes.shape[1] > max_objs:
        counts = of_task.sum(dim=1)  # [B, T]
        if (counts > max_objs).any():
            sample, t = (counts > max_objs).nonzero()[0].tolist()
            raise ValueError(
                f"task {t} has {int(counts[sample, t])} objects in sample {sample}, more than max_objs={max_objs}"
            )
    slot = (of_task.cumsum(dim=1) - 1).gather(2, task.clamp(min=0)[..., None])[..., 0]
    # One buffer of T * B * max_objs slots plus a last one where the unselected boxes are written.
    dump = num_tasks * batch * max_objs
    where = torch.where(selected, (task * batch + sample_index) * max_objs + slot, dump).flatten()

    def slots(values: torch.Tensor) -> torch.Tensor:  # [B, M, ...] -> [T, B, max_objs, ...]
        buffer = values.new_zeros(dump + 1, *values.shape[2:])
        buffer[where] = values.flatten(0, 1)
        return buffer[:dump].view(num_tasks, batch, max_objs, *values.shape[2:])

    codes = slots(encode_boxes(boxes.flatten(0, 1), offsets.flatten(0, 1)).view(*boxes.shape[:2], CODE_SIZE))
    indices = slots(row * grid.width + col)
    mask = slots(selected)
    classes = slots(local)
    targets, first = [], 0
    for t, ids in enumerate(task_class_ids):
        block = heatmaps[batch * first : batch * (first + len(ids))]
        targets.append(
            TaskTargets(
                heatmap=block.view(batch, len(ids), grid.height, grid.width),
                codes=codes[t],
                indices=indices[t],
                mask=mask[t],
                classes=classes[t],
            )
        )
        first += len(ids)
    return targets
