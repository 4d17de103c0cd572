"""TransFusionHead (BEVFusion's head, mmdet3d `projects/BEVFusion`): object queries seeded by a dense class
heatmap and refined by a transformer decoder over the BEV.

Forward, on a BEV x [B, C_in, H, W] (unikd's layout: rows along y, columns along x):

1. `shared_conv` (3x3, with bias) gives f; `heatmap_head` (3x3 conv-BN-ReLU, 3x3 conv) gives the dense
   heatmap logits [B, 10, H, W], in float32. Its channels are the classes in mmdet3d's order
   (`HEATMAP_CLASSES`, which is CenterHead's task order, not CLASSES'); ground-truth labels (indices into
   CLASSES) are mapped to channels for the loss and decoded labels back to CLASSES.
2. Query initialisation (`initial_queries`), without gradient, on p = sigmoid(dense heatmap): a cell of a
   class is a peak when it equals the maximum of the `nms_kernel_size` window centred on it; windows must
   lie inside the grid, so the border kernel // 2 cells wide has no peaks. The classes of
   `single_cell_classes` (nuScenes: pedestrian, traffic_cone) take every cell as a peak (kernel 1). The
   `num_proposals` highest peaks over classes and cells are the queries, in descending order: each has a
   class (its heatmap channel), a cell (flat index row * W + col) and a score (its peak value).
3. Query features: f at the query's cell plus `class_encoding` (1x1 conv) of its class's one-hot. Query
   positions: the cell centre in cell units, (col + 0.5, row + 0.5) = (x, y); every BEV cell is a key at
   its own position.
4. Each decoder layer (mmdet3d's TransformerDecoderLayer, post-norm, dropout in training):
       q = norms[0](q + attn_self(q + e_q, q + e_q, q + e_q))
       q = norms[1](q + attn_cross(q + e_q, f + e_k, f + e_k))
       q = norms[2](q + ffn(q))
   e_q = self_posembed(query positions), e_k = cross_posembed(key positions) (conv1x1-BN-ReLU-conv1x1 of
   (x, y)); the values carry the positional encoding too, as in mmdet3d. After each layer its prediction
   head (per output conv1x1-BN-ReLU-conv1x1): `center` (2: x, y in cells, added to the query positions),
   `height` (1: z centre), `dim` (3: log l, w, h), `rot` (2: sin, cos yaw), `vel` (2: vx, vy), `heatmap`
   (10 class logits). The next layer's query positions are these centres (detached).

Outputs: `dense_heatmap` [B, 10, H, W]; `query_labels` (heatmap channels, as mmdet3d's, not CLASSES
indices) and `query_cells` [B, P] int64, `query_scores` [B, P]; `layers`: per decoder layer a dict of
center [B, 2, P], height [B, 1, P], dim [B, 3, P], rot [B, 2, P], vel [B, 2, P] and heatmap [B, 10, P]
(logits).

The box code is CenterHead's (`box_coder`) with the cell at the grid origin: center = (x - x_min) / cell_x,
(y - y_min) / cell_y; z is the geometric centre (mmdet3d's coder codes the gravity centre too).

Decoding (last layer): score = sigmoid(the query's logit of its class) * query score (mmdet3d multiplies by
the one-hot of the initial class); label = the query's class (as an index into CLASSES); every query whose
(x, y, bottom z = z - h / 2) lies in `post_center_range` (bounds included) and whose score is above
`score_threshold` (None: no threshold) is a detection. mmdet3d's nuScenes config: no NMS, and its `score_threshold=0.0`
applies no threshold (falsy), so all queries within the range are kept.

Loss (mmdet3d's, `auxiliary=True`: every layer): `heatmap` = Gaussian focal loss of the dense heatmap
against CenterHead-style targets (all classes in one map, `gaussian_overlap` 0.1, `min_radius` 2) /
max(1, peaks); per layer i, each sample's queries are matched to its boxes (`transfusion_assigner`), then
`cls_layer{i}` = sigmoid focal loss (alpha 0.25, gamma 2) of every query's logits against the one-hot of
its box's class (zeros for background), and `bbox_layer{i}` = 0.25 * L1 of the matched queries' codes
weighted by `code_weights`; both divided by max(1, number of matched queries of all layers and samples).

Converting an mmdet3d checkpoint (`bbox_head.<key>` -> `head.<key>`): every key has the same name and shape
here (this module builds the same layers in the same order, its class channels in the same order).
mmdet3d's BEV is x-major ([B, C, X, Y]), so the 3x3 kernels are transposed in their two spatial dimensions, `w.transpose(-1, -2)`:
`shared_conv.weight`, `heatmap_head.0.conv.weight`, `heatmap_head.1.weight`. Every other tensor is copied
as it is: the positional encodings take (x, y) in cell units (mmdet3d's `create_2D_grid` gives
(x + 0.5, y + 0.5) too), the `center` channels are (x, y) in both, attention does not depend on the order
of the keys, and the queries come in descending score order in both. The keys: `shared_conv.{weight,bias}`;
`heatmap_head.0.conv.weight`, `heatmap_head.0.bn.*`, `heatmap_head.1.{weight,bias}`;
`class_encoding.{weight,bias}`; `decoder.<i>.{self_attn,cross_attn}.attn.{in_proj_weight,in_proj_bias,
out_proj.weight,out_proj.bias}`, `decoder.<i>.ffn.layers.0.0.*` (first linear), `decoder.<i>.ffn.layers.1.*`
(second), `decoder.<i>.norms.{0,1,2}.*`, `decoder.<i>.{self_posembed,cross_posembed}.position_embedding_head.
{0,1,3}.*` (conv, BN, conv); `prediction_heads.<i>.{center,height,dim,rot,vel,heatmap}.{0.conv.weight,0.bn.*,
1.weight,1.bias}`. mmdet3d's decoded boxes are LiDARInstance3DBoxes: (l, w, h) and yaw from +x toward +y as
here, z the bottom: unikd z = z + h / 2.

Differences from mmdet3d: a decoded box's label is its query's class (mmdet3d takes the argmax of the
score vector: the same class unless the score is 0); a sample without boxes is all background (mmdet3d's
assigner fails on one); mmdet3d's loss runs with one decoder layer only (its get_targets indexes per-layer
dicts that its forward returns as one), this one with any number; `nms_kernel_size` 1 keeps every cell
(mmdet3d's slice `[0:-0]` would suppress all); heatmap targets skip boxes whose centre is outside the grid
(mmdet3d truncates their cell toward zero).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unikd.data.classes import CLASSES
from unikd.models.heads.box_coder import CODE_SIZE, decode_boxes, encode_boxes
from unikd.models.heads.center_head import HEATMAP_INIT_BIAS, gaussian_focal_loss
from unikd.models.heads.center_targets import build_targets
from unikd.models.heads.transfusion_assigner import HungarianAssigner
from unikd.models.registry import HEADS
from unikd.ops.bev_grid import BEVGrid

# mmdet3d's nuScenes class_names: the channels of the heatmaps and the class encoding
HEATMAP_CLASSES = (
    "car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)  # fmt: skip
QUERY_OUTPUTS: dict[str, int] = {"center": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
DEFAULT_POST_CENTER_RANGE = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)


def check_kernel_size(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"nms_kernel_size must be odd and positive, got {kernel_size}")


def local_peaks(
    probs: torch.Tensor, kernel_size: int, single_cell_classes: Sequence[int] = ()
) -> torch.Tensor:
    """probs [B, K, H, W] with every value that is not a peak set to 0 (peaks as in the module doc)."""
    check_kernel_size(kernel_size)
    window_max = probs
    if kernel_size > 1:
        pad = kernel_size // 2
        pooled = F.max_pool2d(probs, kernel_size, stride=1)
        window_max = F.pad(pooled, (pad, pad, pad, pad))  # 0 on the border, where no window fits
        window_max[:, list(single_cell_classes)] = probs[:, list(single_cell_classes)]
    return probs * (probs == window_max)


def initial_queries(
    probs: torch.Tensor, num_proposals: int, kernel_size: int, single_cell_classes: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `num_proposals` highest peaks of probs [B, K, H, W]: scores, channels, flat cells (row * W + col), [B, P]."""
    cells_per_map = probs.shape[-2] * probs.shape[-1]
    scores, flat = local_peaks(probs, kernel_size, single_cell_classes).flatten(1).topk(num_proposals, dim=1)
    return scores, flat // cells_per_map, flat % cells_per_map


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Elementwise sigmoid focal loss: BCE(logits, targets) (alpha t + (1 - alpha)(1 - t)) |t - p|^gamma."""
    prob = logits.sigmoid()
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * (targets - prob).abs().pow(gamma)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU, named as mmcv's ConvModule (`conv`, `bn`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dims: int) -> None:
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv = conv(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = norm(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class PositionEmbedding(nn.Module):
    """Learned encoding of positions [B, N, 2] -> [B, N, C]: conv1x1-BN-ReLU-conv1x1 (mmdet3d's PositionEncodingLearned)."""

    def __init__(self, channels: int, in_channels: int = 2) -> None:
        super().__init__()
        self.position_embedding_head = nn.Sequential(
            nn.Conv1d(in_channels, channels, 1),
            nn.BatchNorm1d(channels),
            nn.ReLU(inplace=True),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.position_embedding_head(positions.transpose(1, 2)).transpose(1, 2)


class ResidualAttention(nn.Module):
    """query + dropout(attention(query + query_pos, key + key_pos, key + key_pos)), tensors [B, N, C]."""

    def __init__(self, channels: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor
    ) -> torch.Tensor:
        key = key + key_pos
        return query + self.dropout(self.attn(query + query_pos, key, key, need_weights=False)[0])


class FeedForward(nn.Module):
    """x + (linear-ReLU-dropout-linear-dropout)(x), with mmcv FFN's names (`layers.0.0`, `layers.1`)."""

    def __init__(self, channels: int, hidden_channels: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(channels, hidden_channels), nn.ReLU(inplace=True), nn.Dropout(dropout)),
            nn.Linear(hidden_channels, channels),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class DecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention to the BEV, FFN, each followed by a LayerNorm (module doc)."""

    def __init__(self, channels: int, num_heads: int, ffn_channels: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = ResidualAttention(channels, num_heads, dropout)
        self.cross_attn = ResidualAttention(channels, num_heads, dropout)
        self.ffn = FeedForward(channels, ffn_channels, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(3))
        self.self_posembed = PositionEmbedding(channels)
        self.cross_posembed = PositionEmbedding(channels)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor
    ) -> torch.Tensor:
        """Queries [B, C, P] updated from keys [B, C, N]; positions [B, P, 2] and [B or 1, N, 2] (x, y) in cells."""
        query_embed, key_embed = self.self_posembed(query_pos), self.cross_posembed(key_pos)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        query = self.norms[0](self.self_attn(query, query, query_embed, query_embed))
        query = self.norms[1](self.cross_attn(query, key, query_embed, key_embed))
        query = self.norms[2](self.ffn(query))
        return query.transpose(1, 2)


class QueryPredictionHead(nn.Module):
    """Per output name: conv1x1-BN-ReLU to `head_conv` channels, then conv1x1 (mmdet3d's SeparateHead on queries)."""

    def __init__(self, in_channels: int, outputs: dict[str, int], head_conv: int) -> None:
        super().__init__()
        self.output_names = tuple(outputs)
        for name, channels in outputs.items():
            self.add_module(
                name,
                nn.Sequential(
                    ConvBNReLU(in_channels, head_conv, 1, dims=1), nn.Conv1d(head_conv, channels, 1)
                ),
            )

    def forward(self, query: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name)(query) for name in self.output_names}


@HEADS.register("transfusion")
class TransFusionHead(nn.Module):
    """TransFusion head over a BEV map whose extent and resolution are `grid` (module doc).

    Interface as CenterHead: `forward(x) -> outputs`, `loss(outputs, gt_boxes, gt_labels) -> {name: loss}`,
    `decode(outputs) -> [{boxes [K, 9], scores [K], labels [K]}]`. Defaults are mmdet3d's BEVFusion nuScenes
    head (bevfusion_lidar_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d) but for the width of the input.
    `post_center_range` is (x_min, y_min, z_min, x_max, y_max, z_max) of (x, y, bottom z), or None.
    """

    class_names: tuple[str, ...] = HEATMAP_CLASSES

    def __init__(
        self,
        in_channels: int,
        *,
        grid: BEVGrid,
        num_proposals: int = 200,
        hidden_channels: int = 128,
        num_heads: int = 8,
        ffn_channels: int = 256,
        num_decoder_layers: int = 1,
        dropout: float = 0.1,
        head_conv: int = 64,
        nms_kernel_size: int = 3,
        single_cell_classes: Sequence[str] = ("pedestrian", "traffic_cone"),
        gaussian_overlap: float = 0.1,
        min_radius: int = 2,
        code_weights: Sequence[float] = (1.0,) * 8 + (0.2, 0.2),
        cls_cost_weight: float = 0.15,
        reg_cost_weight: float = 0.25,
        iou_cost_weight: float = 0.25,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_loss_weight: float = 1.0,
        bbox_loss_weight: float = 0.25,
        heatmap_loss_weight: float = 1.0,
        score_threshold: float | None = None,
        post_center_range: Sequence[float] | None = DEFAULT_POST_CENTER_RANGE,
    ) -> None:
        super().__init__()
        num_classes = len(self.class_names)
        if not 0 < num_proposals <= num_classes * grid.height * grid.width:
            raise ValueError(
                f"num_proposals must be in [1, {num_classes} x {grid.height} x {grid.width}], got {num_proposals}"
            )
        if hidden_channels % num_heads != 0:
            raise ValueError(
                f"hidden_channels ({hidden_channels}) must be a multiple of num_heads ({num_heads})"
            )
        if num_decoder_layers < 1:
            raise ValueError(f"num_decoder_layers must be at least 1, got {num_decoder_layers}")
        if not set(single_cell_classes) <= set(self.class_names):
            raise ValueError(
                f"single_cell_classes must be names from {self.class_names}, got {single_cell_classes}"
            )
        if len(code_weights) != CODE_SIZE:
            raise ValueError(
                f"code_weights needs {CODE_SIZE} values (center, height, dim, rot, vel), got {len(code_weights)}"
            )
        if post_center_range is not None and len(post_center_range) != 6:
            raise ValueError(
                f"post_center_range is (x_min, y_min, z_min, x_max, y_max, z_max), got {post_center_range}"
            )
        check_kernel_size(nms_kernel_size)
        self.grid = grid
        self.num_proposals = num_proposals
        self.nms_kernel_size = nms_kernel_size
        self.single_cell_class_ids = tuple(self.class_names.index(name) for name in single_cell_classes)
        self.register_buffer(  # heatmap channel -> index into CLASSES
            "channel_labels",
            torch.tensor([CLASSES.index(name) for name in self.class_names]),
            persistent=False,
        )
        self.register_buffer("label_channels", self.channel_labels.argsort(), persistent=False)  # the inverse
        self.gaussian_overlap = gaussian_overlap
        self.min_radius = min_radius
        self.register_buffer(
            "code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False
        )
        self.assigner = HungarianAssigner(
            grid, cls_cost_weight, reg_cost_weight, iou_cost_weight, focal_alpha, focal_gamma
        )
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.cls_loss_weight = cls_loss_weight
        self.bbox_loss_weight = bbox_loss_weight
        self.heatmap_loss_weight = heatmap_loss_weight
        self.score_threshold = score_threshold
        self.post_center_range = None if post_center_range is None else tuple(post_center_range)

        self.shared_conv = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.heatmap_head = nn.Sequential(
            ConvBNReLU(hidden_channels, hidden_channels, 3, dims=2),
            nn.Conv2d(hidden_channels, num_classes, 3, padding=1),
        )
        self.class_encoding = nn.Conv1d(num_classes, hidden_channels, 1)
        self.decoder = nn.ModuleList(
            DecoderLayer(hidden_channels, num_heads, ffn_channels, dropout) for _ in range(num_decoder_layers)
        )
        self.prediction_heads = nn.ModuleList(
            QueryPredictionHead(hidden_channels, {**QUERY_OUTPUTS, "heatmap": num_classes}, head_conv)
            for _ in range(num_decoder_layers)
        )
        rows, cols = torch.meshgrid(torch.arange(grid.height), torch.arange(grid.width), indexing="ij")
        # (x, y) in cells of the centre of cell row * W + col
        positions = torch.stack([cols.flatten(), rows.flatten()], dim=1).float() + 0.5
        self.register_buffer("bev_positions", positions, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """mmdet3d's: Xavier-uniform decoder matrices; both heatmaps start at CenterHead's focal prior."""
        for parameter in self.decoder.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        nn.init.constant_(self.heatmap_head[-1].bias, HEATMAP_INIT_BIAS)
        for head in self.prediction_heads:
            nn.init.constant_(head.heatmap[-1].bias, HEATMAP_INIT_BIAS)

    def forward(self, x: torch.Tensor) -> dict:
        """The outputs of the module doc for a BEV [B, C_in, H, W]."""
        if x.ndim != 4 or x.shape[-2:] != (self.grid.height, self.grid.width):
            raise ValueError(
                f"TransFusionHead expects [B, C, {self.grid.height}, {self.grid.width}] (grid rows, columns), got {tuple(x.shape)}"
            )
        shared = self.shared_conv(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            dense_heatmap = self.heatmap_head(shared.float())
        scores, classes, cells = initial_queries(
            dense_heatmap.detach().sigmoid(),
            self.num_proposals,
            self.nms_kernel_size,
            self.single_cell_class_ids,
        )
        keys = shared.flatten(2)  # [B, C, H * W]
        one_hot = F.one_hot(classes, len(self.class_names)).transpose(1, 2).to(keys.dtype)
        query = keys.gather(2, cells[:, None, :].expand(-1, keys.shape[1], -1)) + self.class_encoding(one_hot)
        query_pos, key_pos = self.bev_positions[cells], self.bev_positions[None]
        layers = []
        for decoder_layer, prediction_head in zip(self.decoder, self.prediction_heads, strict=True):
            query = decoder_layer(query, keys, query_pos, key_pos)
            prediction = prediction_head(query)
            prediction["center"] = prediction["center"] + query_pos.transpose(1, 2)
            layers.append(prediction)
            query_pos = prediction["center"].detach().transpose(1, 2)
        return {
            "dense_heatmap": dense_heatmap,
            "query_labels": classes,
            "query_cells": cells,
            "query_scores": scores,
            "layers": layers,
        }

    def query_codes(self, layer: dict[str, torch.Tensor]) -> torch.Tensor:
        """One layer's box codes [B, P, 10] in `box_coder` order."""
        return torch.cat([layer[name] for name in QUERY_OUTPUTS], dim=1).transpose(1, 2).float()

    def query_boxes(self, layer: dict[str, torch.Tensor]) -> torch.Tensor:
        """One layer's boxes [B, P, 9] in unikd's convention."""
        codes = self.query_codes(layer)
        return decode_boxes(codes.new_zeros(*codes.shape[:2], 2), codes, self.grid)

    def encode(self, boxes: torch.Tensor) -> torch.Tensor:
        """Codes [M, 10] of boxes [M, 9]."""
        return encode_boxes(boxes, self.grid.metric_to_cell(boxes[:, :2]))

    def heatmap_targets(
        self, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Gaussian class heatmaps [B, 10, H, W] of the boxes (CenterHead's targets, all classes in one map)."""
        all_classes = (tuple(CLASSES.index(name) for name in self.class_names),)  # channel_labels, not read back
        max_objs = max([1, *map(len, gt_boxes)])
        targets = build_targets(
            gt_boxes, gt_labels, self.grid, all_classes, self.gaussian_overlap, self.min_radius, max_objs
        )
        return targets[0].heatmap

    def loss(
        self, outputs: dict, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """`heatmap`, and per decoder layer i `cls_layer{i}` and `bbox_layer{i}` (module doc)."""
        dense_heatmap = outputs["dense_heatmap"]
        device = dense_heatmap.device
        gt_boxes = [boxes.to(device, torch.float32) for boxes in gt_boxes]
        target = self.heatmap_targets(gt_boxes, gt_labels)
        gt_channels = [self.label_channels[labels.to(device)] for labels in gt_labels]
        heatmap = gaussian_focal_loss(dense_heatmap, target) / target.eq(1).sum().clamp(min=1)
        losses = {"heatmap": self.heatmap_loss_weight * heatmap}

        assignments = []
        for layer in outputs["layers"]:
            logits, boxes = layer["heatmap"].detach().transpose(1, 2), self.query_boxes(layer).detach()
            assignments.append(
                torch.stack(
                    [
                        self.assigner.assign(*sample)
                        for sample in zip(logits, boxes, gt_boxes, gt_channels, strict=True)
                    ]
                )
            )
        num_matched = max(1, sum(int((assigned >= 0).sum()) for assigned in assignments))
        for index, (layer, assigned) in enumerate(zip(outputs["layers"], assignments, strict=True)):
            logits = layer["heatmap"].transpose(1, 2).float()  # [B, P, K]
            codes = self.query_codes(layer)
            class_targets = torch.zeros_like(logits)
            pred_codes, target_codes = [], []
            for sample, (boxes, channels) in enumerate(zip(gt_boxes, gt_channels, strict=True)):
                matched = torch.nonzero(assigned[sample] >= 0).flatten()
                box_ids = assigned[sample, matched]
                class_targets[sample, matched, channels[box_ids]] = 1.0
                pred_codes.append(codes[sample, matched])
                target_codes.append(self.encode(boxes[box_ids]))
            focal = sigmoid_focal_loss(logits, class_targets, self.focal_alpha, self.focal_gamma).sum()
            l1 = ((torch.cat(pred_codes) - torch.cat(target_codes)).abs() * self.code_weights).sum()
            losses[f"cls_layer{index}"] = self.cls_loss_weight * focal / num_matched
            losses[f"bbox_layer{index}"] = self.bbox_loss_weight * l1 / num_matched
        return losses

    @torch.no_grad()
    def decode(self, outputs: dict) -> list[dict[str, torch.Tensor]]:
        """Per sample: boxes [K, 9], scores [K], labels [K] of the last layer's queries (module doc)."""
        layer, classes = outputs["layers"][-1], outputs["query_labels"]
        class_prob = layer["heatmap"].float().sigmoid().gather(1, classes[:, None, :])[:, 0]
        labels = self.channel_labels[classes]
        scores = class_prob * outputs["query_scores"]
        boxes = self.query_boxes(layer)
        keep = torch.ones_like(scores, dtype=torch.bool)
        if self.score_threshold is not None:
            keep &= scores > self.score_threshold
        if self.post_center_range is not None:
            low, high = boxes.new_tensor(self.post_center_range).view(2, 3)
            anchor = torch.cat([boxes[..., :2], boxes[..., 2:3] - boxes[..., 5:6] / 2], dim=-1)
            keep &= ((anchor >= low) & (anchor <= high)).all(dim=-1)
        return [
            {"boxes": boxes[sample, kept], "scores": scores[sample, kept], "labels": labels[sample, kept]}
            for sample, kept in enumerate(keep)
        ]
