"""Checkpoints every N training steps: `step=<N>.ckpt`, the newest only, and `last.ckpt`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class NewestStepCheckpoint(ModelCheckpoint):
    """Every `every_n_steps` training steps, save `step=<N>.ckpt` and `last.ckpt` (under that one name: no
    version counter) in `checkpoint_dir`, and remove every other `step=*.ckpt` there: those of earlier saves,
    of the run this one resumed, or of a run that was killed before it could remove them."""

    def __init__(self, checkpoint_dir: Path, every_n_steps: int) -> None:
        super().__init__(
            dirpath=str(checkpoint_dir),
            filename="{step}",
            save_last=True,
            save_top_k=1,
            monitor="step",
            mode="max",
            every_n_train_steps=every_n_steps,
            enable_version_counter=False,
        )
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        if trainer.global_step % self.every_n_steps or not trainer.is_global_zero or not self.best_model_path:
            return
        newest = Path(self.best_model_path)
        for older in newest.parent.glob("step=*.ckpt"):
            if older != newest:
                older.unlink(missing_ok=True)
