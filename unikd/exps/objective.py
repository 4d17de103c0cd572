"""What an experiment's training step minimises: `Objective`, the detector's own losses.

An experiment holds one objective as its submodule `objective`; distillation
(`unikd.exps.distillation.Distillation`) and depth pretraining (`DepthObjective`) are other objectives with the
same hooks. The experiment calls every hook whatever the objective, so its training has no distillation
branches: it trains `objective.losses(model, batch)`, calls `set_epoch` at each training epoch and
`before_optimizer_step` before each update, and keeps `checkpoint_state()` in its checkpoints. The objective's
own weights (a teacher, a distiller) are not the experiment's: its state dict leaves them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from unikd.models.camera.depth_loss import depth_loss


class Objective(nn.Module):
    """The detector's own losses; no state."""

    def losses(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Named losses of one training batch."""
        return model.loss(model(batch), batch)

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of each training epoch."""

    def before_optimizer_step(self) -> None:
        """Called before each optimizer update, after the backward."""

    def checkpoint_state(self) -> dict[str, Any]:
        """Entries added to the experiment's checkpoints."""
        return {}

    def load_checkpoint_state(self, checkpoint: Mapping[str, Any]) -> None:
        """Restore what `checkpoint_state` saved, when a run resumes."""


class DepthObjective(Objective):
    """Depth pretraining's loss (`unikd.exps.depth_pretrain_exp`): the depth loss of the camera branch's depth
    probabilities against the key frame's LiDAR bins, named "depth"."""

    def losses(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"depth": depth_loss(*model.depth_probs_and_targets(batch))}
