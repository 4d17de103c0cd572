"""BEVFusion-style detector of any modality: LiDAR, camera or both, with a detection head and/or a map head.

It composes parts chosen by name from the registries of `unikd.models.registry` (camera backbone and depth net,
fuser, detection head) as its configuration (`unikd.models.configs`) names them."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from unikd.data.map_targets import MAP_CLASSES
from unikd.models import heads  # noqa: F401  (registers the detection heads)
from unikd.models.camera import CameraBEVEncoder
from unikd.models.camera.depth_loss import key_frame_points
from unikd.models.decoder import SECOND, SECONDFPN
from unikd.models.fuser import build_fuser
from unikd.models.heads.seg_head import BEVSegmentationHead
from unikd.models.lidar import MeanVFE, SparseEncoder
from unikd.models.mgfm import FusionOutput, ModalityGeneralFusion
from unikd.models.registry import HEADS
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.voxelize import voxelize_batch

POINT_FEATURES = 5  # x, y, z, intensity, time lag
FUSER_INPUTS = ("camera", "lidar")  # the order of the fuser's inputs


class SparseFeatures(NamedTuple):
    """Per-voxel features [V, C] with their coordinates [V, 4] (batch, z, y, x)."""

    features: torch.Tensor
    coords: torch.Tensor


class BEVFusion(nn.Module):
    """LiDAR branch and/or camera branch -> (fuser) -> SECOND -> SECONDFPN -> detection head and/or map head.

    `forward` returns the named features of ARCHITECTURE.md so that distillation never guesses:
    voxel_encoder, middle_encoder (LiDAR), camera_bev and depth_probs (camera), fusion_queries (an
    MGFM fuser's query map), bev, backbone, neck, head (config `head`: a registered head), seg (config
    `seg_head`: map logits); `output_shapes` gives their shapes without running the network.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = config
        point_range = tuple(config["point_cloud_range"])
        self.grid = BEVGrid.from_range(point_range, config["bev_cell"])
        bev_channels = []

        self.lidar = config.get("lidar")
        self.voxel_grid = None  # LiDAR only: the BEV grid of the voxel columns (one cell per voxel in x, y)
        if self.lidar is not None:
            self.voxel_encoder = MeanVFE(POINT_FEATURES)
            self.middle_encoder = SparseEncoder(
                in_channels=POINT_FEATURES,
                point_cloud_range=point_range,
                voxel_size=self.lidar["voxel_size"],
                **self.lidar["sparse_encoder"],
            )
            if self.middle_encoder.bev_grid != self.grid:
                raise ValueError(
                    f"the LiDAR BEV {self.middle_encoder.bev_grid} does not match the decoder grid {self.grid}: "
                    "set bev_cell to voxel size x encoder stride"
                )
            bev_channels.append(self.middle_encoder.out_channels)
            _, rows, cols = self.middle_encoder.sparse_shape
            self.voxel_grid = self.grid.resized(rows, cols)

        self.camera = None
        if config.get("camera") is not None:
            self.camera = CameraBEVEncoder(point_cloud_range=point_range, output_grid=self.grid, **config["camera"])
            if self.camera.needs_points and self.lidar is None:
                raise ValueError(
                    "camera.depth_net 'depth_lss' reads the LiDAR depth image: a camera-only detector has no LiDAR "
                    "to give it (use it with the lidar branch, or another depth_net)"
                )
            bev_channels.insert(0, self.camera.out_channels)
        if not bev_channels:
            raise ValueError("a detector needs a LiDAR or a camera branch (config 'lidar' and/or 'camera')")

        self.fuser = None
        if len(bev_channels) > 1:
            self.fuser = build_fuser(bev_channels, config, (self.grid.height, self.grid.width))
            decoder_in = config["fuser_channels"]
        else:
            decoder_in = bev_channels[0]
        self.backbone = SECOND(in_channels=decoder_in, **config["backbone"])
        self.neck = SECONDFPN(in_channels=config["backbone"]["out_channels"], **config["neck"])
        neck_channels = sum(config["neck"]["out_channels"])
        self.head = None
        if config.get("head") is not None:
            head_config = dict(config["head"])
            self.head = HEADS.build(head_config.pop("type", "center"), neck_channels, grid=self.grid, **head_config)
        self.seg_head = None
        if config.get("seg_head") is not None:
            self.seg_head = BEVSegmentationHead(neck_channels, self.grid, MAP_CLASSES, **config["seg_head"])
        if self.head is None and self.seg_head is None:
            raise ValueError(
                "a detector needs a head: config 'head' (detection) and/or 'seg_head' (map); the configuration of "
                "task 'depth' has neither: depth pretraining builds a camera branch alone "
                "(unikd.exps.depth_pretrain_exp, BEVFusion_nuscenes_camera_depth_pretrain_exp.py)"
            )

    def forward(self, batch: dict, absent_modality: str | None = None) -> dict:
        """The named outputs; `absent_modality` ("camera" or "lidar", fusion only) is removed before the
        fuser (None for it: the MGFM attends to the other alone, the ConvFuser reads zeros)."""
        if absent_modality is not None and (self.fuser is None or absent_modality not in FUSER_INPUTS):
            raise ValueError(f"absent_modality is one of {FUSER_INPUTS} of a fusion detector, got {absent_modality!r}")
        outputs: dict = {}
        bevs = []
        if self.camera is not None:
            camera = self.camera(
                batch["imgs"], batch["lidar2cam"], batch["cam2img"], batch["img_aug"], batch["bda"], batch["points"]
            )
            outputs["camera_bev"] = camera.bev
            outputs["depth_probs"] = camera.depth_probs
            bevs.append(camera.bev)
        if self.lidar is not None:
            points = batch["points"]
            voxels, num_points, coords = voxelize_batch(
                points,
                self.lidar["voxel_size"],
                self.config["point_cloud_range"],
                self.lidar["max_points_per_voxel"],
                self.lidar["max_voxels"],
            )
            voxel_features = self.voxel_encoder(voxels, num_points)
            outputs["voxel_encoder"] = SparseFeatures(voxel_features, coords)
            outputs["middle_encoder"] = self.middle_encoder(voxel_features, coords, len(points))
            bevs.append(outputs["middle_encoder"])
        if self.fuser is None:
            outputs["bev"] = bevs[0]
        else:
            if absent_modality is not None:
                bevs[FUSER_INPUTS.index(absent_modality)] = None
            fused = self.fuser(bevs)
            if isinstance(fused, FusionOutput):
                outputs["fusion_queries"] = fused.queries
                fused = fused.bev
            outputs["bev"] = fused
        outputs["backbone"] = self.backbone(outputs["bev"])
        outputs["neck"] = self.neck(outputs["backbone"])
        if self.head is not None:
            outputs["head"] = self.head(outputs["neck"])
        if self.seg_head is not None:
            outputs["seg"] = self.seg_head(outputs["neck"])
        return outputs

    def output_shapes(self) -> dict[str, Any]:
        """Shapes of the named outputs of `forward` with the batch left out (depth_probs aside).

        Dense BEV maps (middle_encoder, camera_bev, fusion_queries, bev, neck) are (C, H, W); `backbone` is a list of them;
        `voxel_encoder` is (C,); `head` is (H, W), the grid the head runs on; `seg` (K, H, W) on the map grid.
        """
        size = (self.grid.height, self.grid.width)
        shapes: dict[str, Any] = {}
        if self.lidar is not None:
            shapes["voxel_encoder"] = (self.voxel_encoder.out_channels,)
            shapes["middle_encoder"] = (self.middle_encoder.out_channels, *size)
        if self.camera is not None:
            shapes["camera_bev"] = (self.camera.out_channels, *size)
        if isinstance(self.fuser, ModalityGeneralFusion):
            shapes["fusion_queries"] = (self.fuser.embed_dims, *size)
        shapes["bev"] = (self.backbone.in_channels, *size)
        stride, backbone = 1, []
        for channels, layer_stride in zip(self.backbone.out_channels, self.backbone.layer_strides, strict=True):
            stride *= layer_stride  # a stride-s 3x3 conv with padding 1 gives ceil(n / s) cells
            backbone.append((channels, math.ceil(size[0] / stride), math.ceil(size[1] / stride)))
        shapes["backbone"] = backbone
        shapes["neck"] = (self.neck.out_channels, *size)
        if self.head is not None:
            shapes["head"] = size
        if self.seg_head is not None:
            shapes["seg"] = self.seg_head.output_shape
        return shapes

    def loss(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Detection and/or map losses by name, plus the camera depth loss when the config weighs it."""
        losses = {}
        if self.head is not None:
            losses.update(self.head.loss(outputs["head"], batch["gt_boxes"], batch["gt_labels"]))
        if self.seg_head is not None:
            if "gt_masks_bev" not in batch:
                raise KeyError("the segmentation head needs the map masks 'gt_masks_bev'; the batch has none")
            losses.update(self.seg_head.loss(outputs["seg"], batch["gt_masks_bev"]))
        weight = self.config.get("depth_loss_weight", 0.0)
        if self.camera is not None and weight > 0:
            depth = self.camera.depth_loss(
                outputs["depth_probs"], key_frame_points(batch["points"]), batch["lidar2cam"], batch["cam2img"],
                batch["img_aug"], batch["bda"],
            )
            losses["depth"] = weight * depth
        return losses

    def decode(self, outputs: dict) -> list[dict[str, torch.Tensor]]:
        """Per sample, in the batch's LiDAR frame: boxes [K, 9], scores [K], labels [K] (detection head) and
        seg_scores [K_map, H, W], the map classes' sigmoid probabilities (segmentation head)."""
        decoded = self.head.decode(outputs["head"]) if self.head is not None else [{} for _ in outputs["bev"]]
        if self.seg_head is not None:
            for sample, scores in zip(decoded, outputs["seg"].sigmoid(), strict=True):
                sample["seg_scores"] = scores
        return decoded
