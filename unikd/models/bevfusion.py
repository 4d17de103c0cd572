"""BEVFusion-style detector of any modality: LiDAR, camera or both, with a CenterHead."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from unikd.models.camera import CameraBEVEncoder
from unikd.models.decoder import SECOND, SECONDFPN
from unikd.models.fuser import ConvFuser
from unikd.models.heads.center_head import CenterHead
from unikd.models.lidar import MeanVFE, SparseEncoder
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.voxelize import voxelize_batch

POINT_FEATURES = 5  # x, y, z, intensity, time lag


class SparseFeatures(NamedTuple):
    """Per-voxel features [V, C] with their coordinates [V, 4] (batch, z, y, x)."""

    features: torch.Tensor
    coords: torch.Tensor


class BEVFusion(nn.Module):
    """LiDAR branch and/or camera branch -> (fuser) -> SECOND -> SECONDFPN -> CenterHead.

    `forward` returns the named features of ARCHITECTURE.md so that distillation never guesses:
    voxel_encoder, middle_encoder (LiDAR), camera_bev and depth_probs (camera), bev, backbone,
    neck, head; `output_shapes` gives their shapes without running the network.
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
            bev_channels.insert(0, self.camera.out_channels)
        if not bev_channels:
            raise ValueError("a detector needs a LiDAR or a camera branch (config 'lidar' and/or 'camera')")

        self.fuser = None
        if len(bev_channels) > 1:
            self.fuser = ConvFuser(bev_channels, config["fuser_channels"], config.get("fuser_attention", False))
            decoder_in = config["fuser_channels"]
        else:
            decoder_in = bev_channels[0]
        self.backbone = SECOND(in_channels=decoder_in, **config["backbone"])
        self.neck = SECONDFPN(in_channels=config["backbone"]["out_channels"], **config["neck"])
        self.head = CenterHead(sum(config["neck"]["out_channels"]), grid=self.grid, **config["head"])

    def forward(self, batch: dict) -> dict:
        outputs: dict = {}
        bevs = []
        if self.camera is not None:
            camera = self.camera(batch["imgs"], batch["lidar2cam"], batch["cam2img"], batch["img_aug"], batch["bda"])
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
        outputs["bev"] = self.fuser(bevs) if self.fuser is not None else bevs[0]
        outputs["backbone"] = self.backbone(outputs["bev"])
        outputs["neck"] = self.neck(outputs["backbone"])
        outputs["head"] = self.head(outputs["neck"])
        return outputs

    def output_shapes(self) -> dict[str, Any]:
        """Shapes of the named outputs of `forward` with the batch left out (depth_probs aside).

        Dense BEV maps (middle_encoder, camera_bev, bev, neck) are (C, H, W); `backbone` is a list of them;
        `voxel_encoder` is (C,); `head` is (H, W), the grid the head runs on.
        """
        size = (self.grid.height, self.grid.width)
        shapes: dict[str, Any] = {}
        if self.lidar is not None:
            shapes["voxel_encoder"] = (self.voxel_encoder.out_channels,)
            shapes["middle_encoder"] = (self.middle_encoder.out_channels, *size)
        if self.camera is not None:
            shapes["camera_bev"] = (self.camera.out_channels, *size)
        shapes["bev"] = (self.backbone.in_channels, *size)
        stride, backbone = 1, []
        for channels, layer_stride in zip(self.backbone.out_channels, self.backbone.layer_strides, strict=True):
            stride *= layer_stride  # a stride-s 3x3 conv with padding 1 gives ceil(n / s) cells
            backbone.append((channels, math.ceil(size[0] / stride), math.ceil(size[1] / stride)))
        shapes["backbone"] = backbone
        shapes["neck"] = (self.neck.out_channels, *size)
        shapes["head"] = size
        return shapes

    def loss(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Detection losses by name, plus the camera depth loss when the config weighs it."""
        losses = self.head.loss(outputs["head"], batch["gt_boxes"], batch["gt_labels"])
        weight = self.config.get("depth_loss_weight", 0.0)
        if self.camera is not None and weight > 0:
            key_frame_points = [points[points[:, 4] == 0] for points in batch["points"]]  # sweeps smear movers
            depth = self.camera.depth_loss(
                outputs["depth_probs"], key_frame_points, batch["lidar2cam"], batch["cam2img"], batch["img_aug"], batch["bda"]
            )
            losses["depth"] = weight * depth
        return losses

    def decode(self, outputs: dict) -> list[dict[str, torch.Tensor]]:
        """Per sample: boxes [K, 9], scores [K], labels [K] in the batch's LiDAR frame."""
        return self.head.decode(outputs["head"])
