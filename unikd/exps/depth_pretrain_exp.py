"""Depth pretraining of a camera branch: its image backbone, neck and depth net learn LiDAR depth alone.

A camera detector trained from scratch spends most of its early steps learning where things are
along each ray; this experiment trains only that part (no splat, no BEV decoder: about a fifth of a
detector step at the small size), on the same images, augmentation and depth targets as the
detector's depth loss. A camera experiment starts from its checkpoint with
`--exp_options camera_init=<run>/checkpoints/last.ckpt` (`unikd.exps.checkpoints.load_camera_init`): the
backbone, neck and depth net are loaded, the rest of the detector keeps its own initialisation. It trains the
depth loss (`unikd.exps.objective.DepthObjective`); validation (`unikd.exps.depth_task.DepthTask`) reports the
depth loss and the share of LiDAR-hit feature cells whose most likely bin is the LiDAR one
(`val/depth_bin_acc`) or within one bin of it (`val/depth_bin_acc1`).
"""

from __future__ import annotations

import copy

from torch import nn

from unikd.exps.base_exp import BaseExp
from unikd.exps.objective import DepthObjective
from unikd.models.camera.depth_pretrain import CameraDepthModel


class CameraDepthPretrainExp(BaseExp):
    """Depth pretraining (module doc). The camera branch is that of `model_size`; the objective is the depth
    loss (`DepthObjective`) and the task scores depth (`unikd.exps.depth_task.DepthTask`)."""

    modalities = ("camera",)
    task = "depth"
    num_sweeps: int = 1  # the depth targets read the key frame's points only
    max_epochs: int = 4

    def build_model(self) -> nn.Module:
        return CameraDepthModel(copy.deepcopy(self.model_config))

    def build_objective(self, teacher_ckpt: str | None) -> DepthObjective:
        return DepthObjective()
