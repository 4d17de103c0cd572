"""The camera branch alone, trained on LiDAR depth (`unikd.exps.depth_pretrain_exp`): the model of a depth
pretraining run, and the parts of it that a camera detector's `camera_init` loads."""

from __future__ import annotations

import torch
from torch import nn

from unikd.models.camera.depth_loss import key_frame_points
from unikd.models.camera.lss import CameraBEVEncoder
from unikd.ops.bev_grid import BEVGrid

# The parts of a camera branch that depth pretraining trains and `camera_init` loads (prefixes of
# CameraBEVEncoder's state dict; `unikd.exps.checkpoints.load_camera_init`).
CAMERA_INIT_PARTS = ("backbone.", "neck.", "view_transform.depth_net.")


class CameraDepthModel(nn.Module):
    """The camera branch of a detector configuration, named `camera` as in `BEVFusion`. Only the parts that
    `camera_init` loads (CAMERA_INIT_PARTS) train; the splat's downsampling has no gradient here and is frozen
    (data-parallel training refuses parameters that get none)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        if config.get("camera") is None:
            raise ValueError("depth pretraining needs a camera branch (config 'camera')")
        self.config = config
        point_range = tuple(config["point_cloud_range"])
        grid = BEVGrid.from_range(point_range, config["bev_cell"])
        self.camera = CameraBEVEncoder(point_cloud_range=point_range, output_grid=grid, **config["camera"])
        for name, parameter in self.camera.named_parameters():
            parameter.requires_grad_(name.startswith(CAMERA_INIT_PARTS))

    def depth_probs_and_targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth probabilities [B, Ncam, D, H_f, W_f] and the key-frame LiDAR bin of every feature cell."""
        matrices = (batch["lidar2cam"], batch["cam2img"], batch["img_aug"], batch["bda"])
        probs = self.camera.image_depth(batch["imgs"], *matrices, batch["points"])
        return probs, self.camera.depth_targets(probs, key_frame_points(batch["points"]), *matrices)
