"""Depth pretraining of a camera branch: its image backbone, neck and depth net learn LiDAR depth alone.

A camera detector trained from scratch spends most of its early steps learning where things are
along each ray; this experiment trains only that part (no splat, no BEV decoder: about a fifth of a
detector step at the small size), on the same images, augmentation and depth targets as the
detector's depth loss. A camera experiment starts from its checkpoint with
`--exp_options camera_init=<run>/checkpoints/last.ckpt` (`unikd.exps.checkpoints.load_camera_init`): the
backbone, neck and depth net are loaded, the rest of the detector keeps its own initialisation. Validation reports the
depth loss and the share of LiDAR-hit feature cells whose most likely bin is the LiDAR one
(`val/depth_bin_acc`) or within one bin of it (`val/depth_bin_acc1`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from unikd.exps.base_exp import BaseExp
from unikd.models.camera.depth_loss import depth_loss
from unikd.models.camera.depth_pretrain import CameraDepthModel


class CameraDepthPretrainExp(BaseExp):
    """Depth pretraining (module doc). The camera branch is that of `model_size`."""

    modalities = ("camera",)
    num_sweeps: int = 1  # the depth targets read the key frame's points only
    max_epochs: int = 4

    def build_model(self) -> nn.Module:
        return CameraDepthModel(copy.deepcopy(self.model_config))

    def prepare_data(self) -> None:
        """Nothing to prepare: validation scores depth against the LiDAR points (no ground-truth boxes)."""

    def setup(self, stage: str) -> None:
        """Nothing to read but the datasets, which the data module opens."""

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"depth": depth_loss(*self.model.depth_probs_and_targets(batch))}

    def on_validation_epoch_start(self) -> None:
        self._depth_sums = torch.zeros(4, dtype=torch.float64)  # loss x cells, cells, exact, within one bin

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        probs, targets = self.model.depth_probs_and_targets(batch)
        valid = targets >= 0
        cells = int(valid.sum())
        if cells == 0:
            return
        error = (probs.argmax(dim=2) - targets)[valid].abs()
        loss = depth_loss(probs, targets)
        self._depth_sums += torch.tensor(
            [float(loss) * cells, cells, int((error == 0).sum()), int((error <= 1).sum())], dtype=torch.float64
        )

    def on_validation_epoch_end(self) -> None:
        sums = self._depth_sums.to(self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        cells = max(float(sums[1]), 1.0)
        metrics = {"depth_loss": float(sums[0]) / cells, "depth_bin_acc": float(sums[2]) / cells,
                   "depth_bin_acc1": float(sums[3]) / cells}
        for name, value in metrics.items():
            self.log(f"val/{name}", value, rank_zero_only=True)
        self.last_metrics = metrics
        if self.trainer.is_global_zero:
            print("depth: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
