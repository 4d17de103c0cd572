"""Combined multi-level InfoNCE (student learns from teacher) with real negatives at any batch size: kind "infonce".

For sample i: z_S,i = P_S(concat_levels normalize(pool_level(f_S))) and z_T,i likewise with the
teacher's projector P_T on the teacher's (detached) features; both are unit vectors. With the keys
K = [all current teacher embeddings, gathered across processes; the memory queue]:

    L = -mean_i log( exp(z_S,i . z_T,i / tau) / sum_{k in K} exp(z_S,i . k / tau) ),  tau = 0.07

Samples ("objects" mode, the default) are the GT boxes plus `num_background` random background
locations per BEV sample (cells of `grid` whose centre lies in no GT box, each pooled as an
axis-aligned square of `background_size` metres). Pooling inside a box:
- dense BEV levels [B, C, H, W] (and each map of a list level such as `backbone`): the mean of
  the features bilinearly sampled at the box's 9 key points;
- sparse voxel levels (`.features` [V, C], `.coords` [V, 4] as (b, z, y, x) voxel indices): the
  mean of the voxels whose centre falls inside the box (zeros when none does).
"global" mode keeps the plain variant: one sample per BEV sample (global average pool).

Each level's pooled vector is L2-normalised before concatenation so that no level dominates by
scale. Gradient reaches the student's features and both projectors; the teacher's network gets
none (teacher pooling runs without autograd). The teacher projector is trained through the
current local keys only; gathered keys of other processes and queued keys are constants. The
queue (FIFO, teacher embeddings of every process) is updated in training mode only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unikd.distill.keypoints import box_keypoints_bev, points_in_boxes_bev, sample_bev
from unikd.distill.losses.distributed import gather_across_processes
from unikd.distill.losses.projector import Projector
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.boxes import pad_boxes
from unikd.ops.precision import in_float32


def info_nce(
    queries: torch.Tensor, keys: torch.Tensor, positives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """-mean_i log softmax_k(q_i . k / temperature)[positives_i]; queries [N, D], keys [K, D], positives [N]."""
    return F.cross_entropy(queries @ keys.t() / temperature, positives)


class MemoryQueue(nn.Module):
    """FIFO of `size` embeddings [D]; the oldest entries are overwritten first."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.embeddings.shape[0]

    def contents(self) -> torch.Tensor:
        """The stored embeddings [min(count, size), D] (in slot order)."""
        return self.embeddings[: int(self.count)]

    @torch.no_grad()
    def enqueue(self, rows: torch.Tensor) -> None:
        rows = rows.detach().to(self.embeddings.dtype)[-self.size :]
        slots = (int(self.pointer) + torch.arange(rows.shape[0], device=rows.device)) % self.size
        self.embeddings[slots] = rows
        self.pointer.fill_((int(self.pointer) + rows.shape[0]) % self.size)
        self.count.fill_(min(int(self.count) + rows.shape[0], self.size))


def _is_sparse(feature: Any) -> bool:
    return hasattr(feature, "features") and hasattr(feature, "coords")


def _voxel_centres(coords: torch.Tensor, voxel_grid: BEVGrid) -> torch.Tensor:
    """Metric (x, y) of voxel centres from (b, z, y, x) indices: [V, 2]."""
    x = voxel_grid.x_min + (coords[:, 3].float() + 0.5) * voxel_grid.cell_x
    y = voxel_grid.y_min + (coords[:, 2].float() + 0.5) * voxel_grid.cell_y
    return torch.stack([x, y], dim=-1)


def pool_sparse(
    feature: Any, boxes: Sequence[torch.Tensor] | None, voxel_grid: BEVGrid | None, batch: int
) -> torch.Tensor:
    """Mean of the voxel features whose centre lies inside each box: [sum_b K_b, C], sample-major.

    `feature` has `.features` [V, C] and `.coords` [V, 4] (b, z, y, x voxel indices); `boxes` holds
    [K_b, 9] per sample and `voxel_grid` has one cell per voxel column. A box without voxels pools
    to zeros. With boxes None: the mean over each sample's voxels, [batch, C].
    """
    values, coords = feature.features, feature.coords
    pooled = []
    for b in range(batch):
        in_sample = coords[:, 0] == b
        if boxes is None:
            weights = in_sample[:, None].to(values.dtype)
        else:
            weights = torch.zeros(values.shape[0], len(boxes[b]), dtype=values.dtype, device=values.device)
            inside = points_in_boxes_bev(_voxel_centres(coords[in_sample], voxel_grid), boxes[b].to(values))
            weights[in_sample] = inside.to(values.dtype)
        pooled.append((weights.t() @ values) / weights.sum(0)[:, None].clamp_min(1))
    return torch.cat(pooled)


def pool_dense(
    feature: torch.Tensor, boxes: Sequence[torch.Tensor] | None, grid: BEVGrid | None
) -> torch.Tensor:
    """Mean of a BEV feature [B, C, H, W] over each box's 9 key points: [sum_b K_b, C], sample-major.

    `boxes` holds [K_b, 9] per sample; `grid` is the feature's metric region. With boxes None:
    the global average pool, [B, C].
    """
    if boxes is None:
        return feature.mean(dim=(2, 3))
    padded, valid = pad_boxes(boxes, feature.device, feature.dtype)
    pooled = sample_bev(feature, box_keypoints_bev(padded), grid).mean(dim=3)  # [B, C, M]
    return pooled.transpose(1, 2)[valid]


def level_channels(shape: Any) -> int:
    """Channels of a level for pooling: C of (C, ...), or the sum over a list level's maps."""
    if isinstance(shape, list):
        return sum(level[0] for level in shape)
    return shape[0]


@register_term("infonce")
class MultiLevelInfoNCE(DistillTerm):
    """Combined multi-level InfoNCE (formula and sampling in the module doc).

    `student_channels` / `teacher_channels` map each shared level name (e.g. voxel_encoder,
    middle_encoder, backbone, neck) to its channel count (the sum over maps for a list level);
    both must name the same levels. Objects mode needs the BEV `grid` (metric region; background
    cells are drawn at its resolution) and, for sparse levels, each network's voxel grid (a BEVGrid
    whose cells are the voxels in x, y).
    """

    reads = "levels"

    def __init__(
        self,
        student_channels: Mapping[str, int],
        teacher_channels: Mapping[str, int],
        grid: BEVGrid | None = None,
        student_voxel_grid: BEVGrid | None = None,
        teacher_voxel_grid: BEVGrid | None = None,
        embed_dim: int = 128,
        hidden_dim: int = 512,
        temperature: float = 0.07,
        queue_size: int = 4096,
        mode: str = "objects",
        num_background: int = 32,
        background_size: float = 4.0,
    ) -> None:
        super().__init__()
        if set(student_channels) != set(teacher_channels):
            raise ValueError(
                f"levels differ: student {sorted(student_channels)} vs teacher {sorted(teacher_channels)}"
            )
        if mode not in ("objects", "global"):
            raise ValueError(f"mode must be 'objects' or 'global', got {mode!r}")
        if mode == "objects" and num_background < 1:
            raise ValueError("objects mode needs num_background >= 1 so that every batch has samples")
        if mode == "objects" and grid is None:
            raise ValueError("objects mode needs the BEV grid")
        self.grid = grid
        self.student_voxel_grid = student_voxel_grid
        self.teacher_voxel_grid = teacher_voxel_grid
        self.levels = list(student_channels)
        self.student_channels = dict(student_channels)
        self.teacher_channels = dict(teacher_channels)
        self.temperature = temperature
        self.mode = mode
        self.num_background = num_background
        self.background_size = background_size
        self.student_projector = Projector(sum(student_channels.values()), embed_dim, hidden_dim)
        self.teacher_projector = Projector(sum(teacher_channels.values()), embed_dim, hidden_dim)
        self.queue = MemoryQueue(queue_size, embed_dim)

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> MultiLevelInfoNCE:
        return cls(
            {level: level_channels(shape) for level, shape in setup.student_shape.items()},
            {level: level_channels(shape) for level, shape in setup.teacher_shape.items()},
            setup.grid,
            setup.student.voxel_grid,
            setup.teacher.voxel_grid,
            **options,
        )

    def distill(self, student: Mapping[str, Any], teacher: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        return self(student, teacher, batch["gt_boxes"])

    def sample_boxes(self, gt_boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per BEV sample, the GT boxes [M, 9] followed by random background squares [K, 9]."""
        samples = []
        for boxes in gt_boxes:
            centres = self.grid.cell_centers(boxes.device).reshape(-1, 2)
            free = torch.nonzero(~points_in_boxes_bev(centres, boxes).any(dim=1)).squeeze(1)
            chosen = free[torch.randperm(free.numel(), device=boxes.device)[: self.num_background]]
            background = boxes.new_zeros(chosen.numel(), 9)
            background[:, :2] = centres[chosen]
            background[:, 3:5] = self.background_size
            samples.append(torch.cat([boxes[:, :9], background]))
        return samples

    def _embed(
        self,
        features: Mapping[str, Any],
        channels: Mapping[str, int],
        boxes: Sequence[torch.Tensor] | None,
        voxel_grid: BEVGrid | None,
        batch: int,
    ) -> torch.Tensor:
        pooled_levels = []
        for level in self.levels:
            if level not in features:
                raise KeyError(f"level {level!r} missing from features {sorted(features)}")
            feature = features[level]
            if _is_sparse(feature):
                if boxes is not None and voxel_grid is None:
                    raise ValueError(f"sparse level {level!r} needs its voxel grid to pool inside boxes")
                pooled = pool_sparse(feature, boxes, voxel_grid, batch)
            elif isinstance(feature, (list, tuple)):
                pooled = torch.cat([pool_dense(f, boxes, self.grid) for f in feature], dim=1)
            else:
                pooled = pool_dense(feature, boxes, self.grid)
            if pooled.shape[1] != channels[level]:
                raise ValueError(
                    f"level {level!r}: expected {channels[level]} channels, got {pooled.shape[1]}"
                )
            pooled_levels.append(F.normalize(pooled, dim=1))
        return torch.cat(pooled_levels, dim=1)

    @in_float32
    def forward(
        self, student: Mapping[str, Any], teacher: Mapping[str, Any], gt_boxes: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """student/teacher: level name -> feature; objects mode needs gt_boxes (per sample [M, 9])."""
        if self.mode == "objects":
            if gt_boxes is None:
                raise ValueError("objects mode needs gt_boxes")
            boxes, batch = self.sample_boxes(gt_boxes), len(gt_boxes)
        else:
            boxes = None
            batch = len(gt_boxes) if gt_boxes is not None else self._batch_size(student)
        student_vectors = self._embed(student, self.student_channels, boxes, self.student_voxel_grid, batch)
        with torch.no_grad():
            teacher_vectors = self._embed(teacher, self.teacher_channels, boxes, self.teacher_voxel_grid, batch)
        queries = self.student_projector(student_vectors)
        current, offset = gather_across_processes(self.teacher_projector(teacher_vectors))
        keys = torch.cat([current, self.queue.contents().to(current)])
        positives = offset + torch.arange(queries.shape[0], device=queries.device)
        loss = info_nce(queries, keys, positives, self.temperature)
        if self.training:
            self.queue.enqueue(current)
        return loss

    def _batch_size(self, features: Mapping[str, Any]) -> int:
        for level in self.levels:
            feature = features[level]
            if _is_sparse(feature):
                continue
            return (feature[0] if isinstance(feature, (list, tuple)) else feature).shape[0]
        return int(features[self.levels[0]].coords[:, 0].max()) + 1
