"""CenterHead (CenterPoint): per-task class heatmaps plus box regression maps on the BEV grid.

Outputs per task: `heatmap` [B, n_classes, H, W] logits and, per `common_heads` name,
`reg` (2), `height` (1), `dim` (3), `rot` (2), `vel` (2) maps, coded as in `box_coder`.

With `iou_rectifier` (UniDistill's CenterHeadIouAware) each task also predicts an `iou` map [B, 1, H, W]:
2 * (BEV IoU of the box decoded at a cell with its object) - 1. Decoding then ranks the detections by
score^(1 - alpha) * clamp(iou / 2 + 0.5, 0, 1)^alpha (alpha per task) for the NMS, while the scores it
returns stay the heatmap's, as UniDistill's IouAwareGenProposals does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unikd.data.classes import CLASSES, HEAD_CLASS_GROUPS
from unikd.models.heads.box_coder import CODE_SIZE, CODE_SLICES, decode_boxes
from unikd.models.heads.center_targets import TaskTargets, build_targets
from unikd.models.registry import HEADS
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.nms import circle_nms, rotated_nms
from unikd.ops.rotated_iou import paired_bev_iou

DEFAULT_COMMON_HEADS: dict[str, int] = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
REQUIRED_HEADS = ("reg", "height", "dim", "rot")
# CenterPoint's nuScenes circle-NMS thresholds on the squared centre distance (m²), per class group
# (task) of HEAD_CLASS_GROUPS.
DEFAULT_NMS_RADIUS = (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)
HEATMAP_INIT_BIAS = -2.19
SIGMOID_CLAMP = 1e-4
NMS_TYPES = ("circle", "rotated")


def gaussian_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0
) -> torch.Tensor:
    """Summed CenterNet focal loss of heatmap logits against a Gaussian target in [0, 1].

    p = sigmoid(logits) clamped to [1e-4, 1 - 1e-4], in float32. Cells where target == 1 add
    -log(p) (1 - p)^alpha; the others add -log(1 - p) p^alpha (1 - target)^gamma.
    """
    prob = logits.float().sigmoid().clamp(SIGMOID_CLAMP, 1 - SIGMOID_CLAMP)
    positive = target.eq(1)
    pos_loss = -torch.log(prob) * (1 - prob).pow(alpha)
    neg_loss = -torch.log(1 - prob) * prob.pow(alpha) * (1 - target).pow(gamma)
    return torch.where(positive, pos_loss, neg_loss).sum()


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _gather(maps: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Values [B, K, C] of maps [B, C, H, W] at flat cell indices [B, K] (row * W + col)."""
    flat = maps.flatten(2)
    return flat.gather(2, indices[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


class SeparateHead(nn.Module):
    """One task's heads: for each output name, conv3x3-BN-ReLU then conv3x3 to its channels."""

    def __init__(self, in_channels: int, heads: dict[str, int], head_conv: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(
                    _conv_bn_relu(in_channels, head_conv), nn.Conv2d(head_conv, channels, 3, padding=1)
                )
                for name, channels in heads.items()
            }
        )
        nn.init.constant_(self.heads["heatmap"][-1].bias, HEATMAP_INIT_BIAS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(x) for name, head in self.heads.items()}


@HEADS.register("center")
class CenterHead(nn.Module):
    """CenterPoint head over a BEV map whose extent and resolution are `grid`.

    `nms_radius[t]` is task t's circle-NMS threshold on the squared BEV centre distance (m²),
    as CenterPoint's `min_radius`. `common_heads` must hold reg, height, dim, rot (vel optional,
    decoded as 0 when absent) with the widths of `box_coder`; `code_weights` weigh its channels
    in that order.

    UniDistill's decoding (module docstring): `iou_rectifier[t]` is task t's alpha (None: no `iou` map),
    trained by an L1 loss weighted `iou_loss_weight`; `nms_type` "rotated" suppresses a box whose BEV
    IoU with a kept one is > `nms_iou_threshold` (instead of circle NMS); `post_center_range`
    (x_min, y_min, z_min, x_max, y_max, z_max) drops decoded centres outside it, bounds included;
    `dim_range` (min, max) clamps the decoded (l, w, h). `max_per_sample` keeps at most that many
    detections per sample over all tasks, the best scored (the nuScenes devkit takes at most 500).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        grid: BEVGrid,
        tasks: Sequence[Sequence[str]] = HEAD_CLASS_GROUPS,
        shared_channels: int = 64,
        head_conv: int = 64,
        common_heads: dict[str, int] | None = None,
        min_overlap: float = 0.1,
        min_radius: int = 2,
        max_objs: int = 500,
        code_weights: Sequence[float] = (1.0,) * 8 + (0.2, 0.2),
        loss_bbox_weight: float = 0.25,
        score_threshold: float = 0.1,
        top_k: int = 500,
        post_max_size: int = 83,
        nms_radius: Sequence[float] = DEFAULT_NMS_RADIUS,
        iou_rectifier: Sequence[float] | None = None,
        iou_loss_weight: float = 1.0,
        nms_type: str = "circle",
        nms_iou_threshold: float = 0.1,
        post_center_range: Sequence[float] | None = None,
        dim_range: Sequence[float] | None = None,
        max_per_sample: int | None = None,
    ) -> None:
        super().__init__()
        common_heads = dict(DEFAULT_COMMON_HEADS if common_heads is None else common_heads)
        self._check_config(tasks, common_heads, code_weights, nms_radius)
        self._check_decoding(len(tasks), iou_rectifier, nms_type, post_center_range, dim_range)
        self.grid = grid
        self.tasks = tuple(tuple(names) for names in tasks)
        self.task_class_ids = tuple(tuple(CLASSES.index(name) for name in names) for names in self.tasks)
        self.common_heads = common_heads
        self.min_overlap = min_overlap
        self.min_radius = min_radius
        self.max_objs = max_objs
        self.register_buffer(
            "code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False
        )
        self.loss_bbox_weight = loss_bbox_weight
        self.score_threshold = score_threshold
        self.top_k = top_k
        self.post_max_size = post_max_size
        self.nms_radius = tuple(nms_radius)
        self.iou_rectifier = None if iou_rectifier is None else tuple(iou_rectifier)
        self.iou_loss_weight = iou_loss_weight
        self.nms_type = nms_type
        self.nms_iou_threshold = nms_iou_threshold
        self.post_center_range = None if post_center_range is None else tuple(post_center_range)
        self.dim_range = None if dim_range is None else tuple(dim_range)
        self.max_per_sample = max_per_sample

        extra_heads = {} if iou_rectifier is None else {"iou": 1}
        self.shared_conv = _conv_bn_relu(in_channels, shared_channels)
        self.task_heads = nn.ModuleList(
            SeparateHead(shared_channels, {"heatmap": len(names), **common_heads, **extra_heads}, head_conv)
            for names in self.tasks
        )

    @staticmethod
    def _check_config(
        tasks: Sequence[Sequence[str]],
        common_heads: dict[str, int],
        code_weights: Sequence[float],
        nms_radius: Sequence[float],
    ) -> None:
        names = [name for task in tasks for name in task]
        if len(set(names)) != len(names) or not set(names) <= set(CLASSES):
            raise ValueError(f"tasks must group distinct names from {CLASSES}, got {tasks}")
        widths = {name: CODE_SLICES[name].stop - CODE_SLICES[name].start for name in CODE_SLICES}
        if any(widths.get(name) != channels for name, channels in common_heads.items()) or not set(
            REQUIRED_HEADS
        ) <= set(common_heads):
            raise ValueError(
                f"common_heads must hold {REQUIRED_HEADS} (vel optional) with widths {widths}, got {common_heads}"
            )
        if len(code_weights) != sum(common_heads.values()):
            raise ValueError(
                f"{len(code_weights)} code_weights for {sum(common_heads.values())} regression channels"
            )
        if len(nms_radius) != len(tasks):
            raise ValueError(f"{len(nms_radius)} nms_radius values for {len(tasks)} tasks")

    @staticmethod
    def _check_decoding(
        num_tasks: int,
        iou_rectifier: Sequence[float] | None,
        nms_type: str,
        post_center_range: Sequence[float] | None,
        dim_range: Sequence[float] | None,
    ) -> None:
        if iou_rectifier is not None and (
            len(iou_rectifier) != num_tasks or not all(0 <= alpha <= 1 for alpha in iou_rectifier)
        ):
            raise ValueError(f"iou_rectifier needs one alpha in [0, 1] per task ({num_tasks}), got {iou_rectifier}")
        if nms_type not in NMS_TYPES:
            raise ValueError(f"nms_type must be one of {NMS_TYPES}, got {nms_type!r}")
        if post_center_range is not None and len(post_center_range) != 6:
            raise ValueError(f"post_center_range is (x_min, y_min, z_min, x_max, y_max, z_max), got {post_center_range}")
        if dim_range is not None and (len(dim_range) != 2 or not 0 < dim_range[0] < dim_range[1]):
            raise ValueError(f"dim_range is (min, max) with 0 < min < max, got {dim_range}")

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per task: dict of `heatmap` logits [B, n_classes, H, W] and the regression maps."""
        if x.ndim != 4 or x.shape[-2:] != (self.grid.height, self.grid.width):
            raise ValueError(
                f"CenterHead expects [B, C, {self.grid.height}, {self.grid.width}] (grid rows, columns), got {tuple(x.shape)}"
            )
        shared = self.shared_conv(x)
        return [head(shared) for head in self.task_heads]

    def get_targets(
        self, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor]
    ) -> list[TaskTargets]:
        """Per-task heatmaps, regression codes, cell indices and masks (see `center_targets`)."""
        return build_targets(
            gt_boxes,
            gt_labels,
            self.grid,
            self.task_class_ids,
            self.min_overlap,
            self.min_radius,
            self.max_objs,
        )

    def loss(
        self,
        preds: list[dict[str, torch.Tensor]],
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """`heatmap_task{i}`: focal loss / max(1, positives); `bbox_task{i}`: weighted L1 of the
        codes at object centres, times `loss_bbox_weight`, / max(1, objects); with `iou_rectifier`,
        `iou_task{i}`: L1 of the `iou` map at object centres against 2 * IoU - 1 of the box the
        (detached) codes decode there with its object, times `iou_loss_weight`, / max(1, objects)."""
        device = preds[0]["heatmap"].device
        targets = self.get_targets([boxes.to(device) for boxes in gt_boxes], gt_labels)
        losses = {}
        for task, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            num_pos = target.heatmap.eq(1).sum().clamp(min=1)
            losses[f"heatmap_task{task}"] = gaussian_focal_loss(pred["heatmap"], target.heatmap) / num_pos

            pred_codes = torch.cat([_gather(pred[name], target.indices) for name in self.common_heads], dim=2)
            target_codes = torch.cat(
                [target.codes[..., CODE_SLICES[name]] for name in self.common_heads], dim=2
            )
            weights = target.mask[..., None] * self.code_weights
            l1 = ((pred_codes - target_codes).abs() * weights).sum()
            num_objects = target.mask.sum().clamp(min=1)
            losses[f"bbox_task{task}"] = self.loss_bbox_weight * l1 / num_objects
            if self.iou_rectifier is not None:
                iou_target = 2 * self._code_iou(pred_codes.detach(), target_codes) - 1
                iou_error = (_gather(pred["iou"], target.indices)[..., 0] - iou_target).abs() * target.mask
                losses[f"iou_task{task}"] = self.iou_loss_weight * iou_error.sum() / num_objects
        return losses

    def _code_iou(self, pred_codes: torch.Tensor, target_codes: torch.Tensor) -> torch.Tensor:
        """BEV IoU [B, K] of the boxes two code tensors [B, K, C] (channels in `common_heads` order)
        decode to at the same cells."""
        pred_slices, start = {}, 0
        for name, channels in self.common_heads.items():
            pred_slices[name] = slice(start, start + channels)
            start += channels
        boxes = []
        for codes in (pred_codes, target_codes):
            full = codes.new_zeros(*codes.shape[:2], CODE_SIZE)
            for name, where in pred_slices.items():
                full[..., CODE_SLICES[name]] = codes[..., where]
            boxes.append(decode_boxes(torch.zeros_like(full[..., :2]), full.float(), self.grid))
        pred_boxes, target_boxes = (b.flatten(0, 1) for b in boxes)
        if self.dim_range is not None:
            pred_boxes[:, 3:6] = pred_boxes[:, 3:6].clamp(*self.dim_range)
        return paired_bev_iou(pred_boxes, target_boxes).view(pred_codes.shape[:2])

    @torch.no_grad()
    def decode(self, preds: list[dict[str, torch.Tensor]], nms: bool = True) -> list[dict[str, torch.Tensor]]:
        """Per sample: `boxes` [K, 9], `scores` [K], `labels` [K] (ids into `CLASSES`).

        Per task: top `top_k` (class, cell) pairs of the sigmoid heatmap, scores above
        `score_threshold` (and centres inside `post_center_range`), NMS of `nms_type` (unless `nms`
        is False) ranked by the score or, with `iou_rectifier`, the rectified score, at most
        `post_max_size` kept; then at most `max_per_sample` per sample. Decoding runs in float32 whatever
        the prediction dtype.
        """
        batch = preds[0]["heatmap"].shape[0]
        per_sample: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in range(batch)]
        for task, pred in enumerate(preds):
            heatmap = pred["heatmap"].float().sigmoid()
            height, width = heatmap.shape[-2:]
            scores, flat = heatmap.flatten(1).topk(min(self.top_k, heatmap[0].numel()), dim=1)
            classes, cell = flat // (height * width), flat % (height * width)
            codes = heatmap.new_zeros(batch, cell.shape[1], CODE_SIZE)
            for name in self.common_heads:
                codes[..., CODE_SLICES[name]] = _gather(pred[name], cell).float()
            cells = torch.stack([cell % width, cell // width], dim=-1).to(codes.dtype)
            boxes = decode_boxes(cells, codes, self.grid)
            if self.dim_range is not None:
                boxes[..., 3:6] = boxes[..., 3:6].clamp(*self.dim_range)
            ranking = scores
            if self.iou_rectifier is not None:
                alpha = self.iou_rectifier[task]
                iou = (_gather(pred["iou"], cell)[..., 0].float() / 2 + 0.5).clamp(0, 1)
                ranking = scores.pow(1 - alpha) * iou.pow(alpha)
            selected = scores > self.score_threshold
            if self.post_center_range is not None:
                low, high = boxes.new_tensor(self.post_center_range).view(2, 3)
                selected &= ((boxes[..., :3] >= low) & (boxes[..., :3] <= high)).all(dim=-1)
            task_ids = torch.tensor(self.task_class_ids[task], device=heatmap.device)
            for sample in range(batch):
                keep = torch.nonzero(selected[sample]).flatten()
                if nms and self.nms_type == "circle":
                    keep = keep[circle_nms(boxes[sample, keep, :2], ranking[sample, keep], self.nms_radius[task])]
                elif nms:
                    keep = keep[rotated_nms(boxes[sample, keep, :7], ranking[sample, keep], self.nms_iou_threshold)]
                keep = keep[: self.post_max_size]
                per_sample[sample].append(
                    (boxes[sample, keep], scores[sample, keep], task_ids[classes[sample, keep]])
                )
        decoded = []
        for results in per_sample:
            boxes, scores, labels = (torch.cat(parts) for parts in zip(*results, strict=True))
            if self.max_per_sample is not None and len(scores) > self.max_per_sample:
                best = scores.topk(self.max_per_sample).indices.sort().values  # tasks' order kept
                boxes, scores, labels = boxes[best], scores[best], labels[best]
            decoded.append({"boxes": boxes, "scores": scores, "labels": labels})
        return decoded
