"""Save and stop on SIGTERM / SIGUSR1 (preemption, a cluster's warning signal) at the end of the current batch."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException


class TrainingInterrupted(SystemExit):
    """Training stopped by a signal after saving `checkpoint`; the exit status is 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: Path, epoch: int, step: int) -> None:
        super().__init__(128 + signum)
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step

    def __str__(self) -> str:
        return (
            f"{signal.Signals(self.signum).name} received: stopped at epoch {self.epoch} step {self.step} and saved "
            f"{self.checkpoint}; resume with --ckpt_path {self.checkpoint}"
        )


class CheckpointOnSignal(Callback):
    """On one of `signals`, finish the batch, save `last.ckpt` (all ranks agree, in DDP) and stop.

    The handlers run before any that were installed (Lightning's own, which under SLURM requeues the
    job on SIGUSR1, is kept by leaving SIGUSR1 out of `signals` there). A resumed run replays the same
    batches (`EpochShuffleSampler`).
    """

    def __init__(self, checkpoint_dir: Path, signals: tuple[int, ...]) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.signals = signals
        self.received: int | None = None
        self._saved = False
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            self._save_and_stop(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Lightning stops DDP ranks itself when SIGTERM lands between two batches: save there too."""
        if isinstance(exception, SIGTERMException):
            self._save_and_stop(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _save_and_stop(self, trainer: pl.Trainer) -> None:
        if self._saved:
            return
        self._saved = True
        path = self.checkpoint_dir / "last.ckpt"
        trainer.save_checkpoint(path)
        raise TrainingInterrupted(self.received or signal.SIGTERM, path, trainer.current_epoch, trainer.global_step)
