"""The depth pretraining's evaluation (`unikd.exps.depth_pretrain_exp`): the depth loss and the depth-bin
accuracies of the LiDAR-hit image feature cells, registered in `unikd.exps.tasks.EVALUATION_TASKS` as "depth".

It scores the model's `depth_probs_and_targets(batch)` against the batches' own LiDAR points: nothing to prepare
or read before validation, no report file, no pictures, and no predictions (the command line refuses -p of an
experiment whose task is not detection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unikd.exps.evaluation_task import EvaluationTask
from unikd.models.camera.depth_loss import depth_loss

if TYPE_CHECKING:
    from unikd.exps.base_exp import BaseExp


class DepthTask(EvaluationTask):
    """Validation logs `val/depth_loss` (the depth loss averaged over the cells with a LiDAR target),
    `val/depth_bin_acc` (the share of those cells whose most likely bin is the LiDAR one) and `val/depth_bin_acc1`
    (within one bin of it), summed over every process's batches."""

    name = "depth"

    def __init__(self, exp: BaseExp) -> None:
        super().__init__(exp)
        self.sums = torch.zeros(4, dtype=torch.float64)  # loss x cells, cells, exact, within one bin

    def check_settings(self) -> None:
        if self.exp.eval_backend != "metric":
            raise ValueError(
                f"eval_backend {self.exp.eval_backend!r} evaluates detection; depth pretraining uses 'metric' "
                "(its depth loss and bin accuracies)"
            )

    def setup(self) -> None:
        """Nothing to read: validation scores depth against the batches' LiDAR points."""

    def on_validation_epoch_start(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        probs, targets = self.exp.model.depth_probs_and_targets(batch)
        valid = targets >= 0
        cells = int(valid.sum())
        if cells == 0:
            return
        error = (probs.argmax(dim=2) - targets)[valid].abs()
        loss = depth_loss(probs, targets)
        self.sums += torch.tensor(
            [float(loss) * cells, cells, int((error == 0).sum()), int((error <= 1).sum())], dtype=torch.float64
        )

    def on_validation_epoch_end(self) -> None:
        exp = self.exp
        sums = self.sums.to(exp.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        cells = max(float(sums[1]), 1.0)
        metrics = {"depth_loss": float(sums[0]) / cells, "depth_bin_acc": float(sums[2]) / cells,
                   "depth_bin_acc1": float(sums[3]) / cells}
        for name, value in metrics.items():
            exp.log(f"val/{name}", value, rank_zero_only=True)
        exp.last_metrics = metrics
        if exp.trainer.is_global_zero:
            print("depth: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
