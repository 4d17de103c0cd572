"""BaseExp: the LightningModule that trains a detector, with its data module, its evaluation task and its objective.

The experiment's class attributes are its settings. It builds the detector and trains it (optimizer, schedule,
checkpoint metadata); its data (`unikd.data.datamodule.NuScenesDataModule`, `datamodule`), its evaluation
(`unikd.exps.tasks`, `evaluation`) and what it minimises (`unikd.exps.objective`, `objective`: the detector's own
losses, or with the `distill` setting `unikd.exps.distillation.Distillation`) are built from those settings.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from unikd.data.datamodule import DataSettings, NuScenesDataModule
from unikd.data.image_aug import ImageAugConfig
from unikd.data.transforms import BEVAugConfig
from unikd.exps.checkpoints import METADATA_KEY, checkpoint_metadata, load_camera_init
from unikd.exps.distillation import Distillation, DistillSettings
from unikd.exps.finite_guard import FiniteLossGuard
from unikd.exps.objective import Objective
from unikd.exps.optimization import one_cycle_adamw
from unikd.exps.options import apply_options
from unikd.exps.settings_checks import check_experiment_settings
from unikd.exps.tasks import EVALUATION_TASKS, EvaluationTask, gathered_records, prediction_records
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import image_aug_for, model_config
from unikd.ops.memory_format import to_channels_last


class BaseExp(pl.LightningModule):
    """An experiment file subclasses this and states only what differs.

    Class attributes are the experiment's settings; `--exp_options key=value` overrides them
    (dotted paths reach into `model_config`) before the model is built. The data module is built from
    them at its first use (`datamodule`), the evaluation task with the experiment (`evaluation`).
    """

    modalities: tuple[str, ...] = ("lidar",)
    task: str = "detection"  # a name of EVALUATION_TASKS: "detection" (boxes, detection metric), "segmentation", "depth"
    model_size: str = "nuscenes"  # "nuscenes" (reference sizes), "student" (0.1 m, narrow) or "small" (CPU)
    version: str = "v1.0-mini"
    num_sweeps: int = 3
    infos: tuple[str, ...] = ()  # mmdet3d info files read instead of the devkit (`mmdet3d_infos.info_files`)
    infos_box_convention: str | None = None  # of 0.x-layout info files: "0.x" or "1.x"
    image_aug: ImageAugConfig | None = None  # None: that of the preset whose images are read (`default_image_aug`)
    bev_aug: BEVAugConfig | None = BEVAugConfig()
    max_epochs: int = 20
    lr: float = 2e-3
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    max_nonfinite_steps: int = 20  # mixed precision: non-finite steps in a row skipped before training stops
    num_workers: int | None = None  # loader workers per process; None: the CPU cores per device, at most 8
    eval_backend: str = "metric"  # "metric" (fast, identical) or "devkit" (official)
    eval_backends: tuple[str, ...] = ("metric", "devkit")
    channels_last: bool = False  # 4D weights channels-last: a faster step, results equal to rounding (BENCHMARKS.md)
    drop_modality_at_eval: str = ""  # "lidar" or "camera": a fusion model evaluates with it removed before the fuser
    # a checkpoint whose camera branch initialises this one's backbone, neck and depth net (a depth pretraining
    # run, `unikd.exps.depth_pretrain_exp`; `unikd.exps.checkpoints.load_camera_init`)
    camera_init: str = ""
    num_visualizations: int = 4
    distill: DistillSettings | None = None  # a teacher and terms to distil from (`unikd.exps.distillation`)

    def __init__(
        self,
        batch_size_per_device: int = 1,
        data_root: str = "data/nuscenes",
        seed: int = 0,
        output_dir: str | None = None,
        exp_options: dict[str, Any] | None = None,
        teacher_ckpt: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size_per_device = batch_size_per_device
        self.data_root = data_root
        self.seed = seed
        self.output_dir = Path(output_dir) if output_dir else None
        options = dict(exp_options or {})
        model_options = {k: options.pop(k) for k in list(options) if k.startswith("model_config.")}
        apply_options(self, options)
        evaluation_task = EVALUATION_TASKS.lookup(self.task)
        self.model_config = model_config(self.model_size, self.modalities, self.task)
        apply_options(self, model_options)
        if teacher_ckpt is not None and self.distill is None:
            raise ValueError(f"teacher_ckpt {teacher_ckpt}: {type(self).__name__} distils from no teacher")
        self.image_aug = self.image_aug or self.default_image_aug()
        self.evaluation: EvaluationTask = evaluation_task(self)
        self.check_settings()
        self.model = self.build_model()
        if self.camera_init:
            load_camera_init(self.model, self.camera_init)
        self._datamodule: NuScenesDataModule | None = None
        self.objective = self.build_objective(teacher_ckpt)
        if self.channels_last:
            to_channels_last(self)  # the student, and a teacher and adapters if any
        self.predict_records: list[dict] = []
        self.checkpoint_epoch: int | None = None  # the epoch of the checkpoint loaded for -e / -p
        self._finite_guard: FiniteLossGuard | None = None  # built at the first step, for the trainer's precision

    def check_settings(self) -> None:
        """Settings that would otherwise fail late, checked when the experiment is built."""
        self.evaluation.check_settings()
        check_experiment_settings(self)

    @property
    def exp_name(self) -> str:
        return type(self).__name__

    def build_model(self) -> torch.nn.Module:
        return BEVFusion(copy.deepcopy(self.model_config))

    def build_objective(self, teacher_ckpt: str | None) -> Objective:
        """The detector's own losses, or with `distill` its distillation from the teacher of `teacher_ckpt`."""
        if self.distill is None:
            return Objective()
        return Distillation(self.distill, self.model, teacher_ckpt, lambda: len(self.datamodule.train_dataset()))

    def default_image_aug(self) -> ImageAugConfig:
        """The image augmentation of the preset whose camera branch reads the images: the experiment's, or for a
        student without cameras its teacher's."""
        if "camera" not in self.modalities and self.distill is not None:
            return image_aug_for(self.distill.teacher_preset)
        return image_aug_for(self.model_size)

    # ----------------------------------------------------------------------------- data
    def data_modalities(self, training: bool) -> tuple[str, ...]:
        """The sensors a dataset of this experiment reads; a distillation also trains on its teacher's."""
        if not training or self.distill is None:
            return self.modalities
        return self.modalities + tuple(m for m in self.distill.teacher.modalities if m not in self.modalities)

    def data_settings(self) -> DataSettings:
        """The experiment's data: its database, sensors, augmentation and batches."""
        return DataSettings(
            data_root=self.data_root,
            version=self.version,
            point_cloud_range=tuple(self.model_config["point_cloud_range"]),
            batch_size=self.batch_size_per_device,
            num_sweeps=self.num_sweeps,
            seed=self.seed,
            image_aug=self.image_aug,
            bev_aug=self.bev_aug,
            train_modalities=self.data_modalities(training=True),
            eval_modalities=self.data_modalities(training=False),
            num_workers=self.num_workers,
            infos=tuple(self.infos),
            infos_box_convention=self.infos_box_convention,
            map_grid=self.model.seg_head.output_grid if self.evaluation.reads_map_masks else None,
        )

    def build_datamodule(self) -> NuScenesDataModule:
        return NuScenesDataModule(self.data_settings())

    @property
    def datamodule(self) -> NuScenesDataModule:
        """The data module, built from the settings at its first use (after the experiment's __init__)."""
        if self._datamodule is None:
            self._datamodule = self.build_datamodule()
        return self._datamodule

    def prepare_data(self) -> None:
        """On the first process of each machine: what this stage's evaluation reads (the ground truth)."""
        if self.evaluates():
            self.evaluation.prepare_data()

    def setup(self, stage: str) -> None:
        """Every process reads what the evaluation needs (the data module has opened the datasets), so that
        bad data fails before any training time is spent."""
        if self.evaluates():
            self.evaluation.setup()

    def evaluates(self) -> bool:
        """Whether this run validates (not with --limit_val_batches 0, nor -p)."""
        return self.trainer.state.fn in ("fit", "validate") and self.trainer.limit_val_batches != 0

    def state_dict(self, *, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> dict:
        """The experiment's state without its objective's (a teacher and distiller are not the trained detector's)."""
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [key for key in state if key.startswith(prefix + "objective.")]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load the experiment's state, strictly over its keys; the objective's comes from `on_load_checkpoint`."""
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"state dict does not match {type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}"
            )
        own_state = {key: value for key, value in state_dict.items() if key in expected}
        return super().load_state_dict(own_state, strict=False, assign=assign)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[METADATA_KEY] = checkpoint_metadata(self)
        checkpoint.update(self.objective.checkpoint_state())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Remember the checkpoint's epoch (names -e's outputs) and, for a run resumed part-way into an
        epoch, how many of its batches were done."""
        self.checkpoint_epoch = checkpoint.get("epoch")
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if progress is not None and self.checkpoint_epoch is not None:
            done = 0 if progress["is_last_batch"] else progress["current"]["processed"]
            self.datamodule.resume(self.checkpoint_epoch, done)
        self.objective.load_checkpoint_state(checkpoint)

    @property
    def epoch_label(self) -> int:
        """The epoch that outputs are named after: the training epoch, or the loaded checkpoint's for -e."""
        if self.trainer.state.fn != "fit" and self.checkpoint_epoch is not None:
            return self.checkpoint_epoch
        return self.current_epoch

    # ----------------------------------------------------------------------------- training
    def forward(self, batch: dict) -> dict:
        return self.model(batch)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch: the objective's."""
        return self.objective.losses(self.model, batch)

    def on_train_epoch_start(self) -> None:
        self.objective.set_epoch(self.current_epoch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.objective.before_optimizer_step()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.training_losses(batch)
        total = sum(losses.values())
        if self._finite_guard is None:
            self._finite_guard = FiniteLossGuard("mixed" in str(self.trainer.precision), self.max_nonfinite_steps)
        last = self.run_dir() / "checkpoints" / "last.ckpt"
        where = f"at epoch {self.current_epoch} step {self.global_step} (samples {batch['sample_token']})"
        if not self._finite_guard.check(losses, where, last if last.is_file() else None):
            return total  # mixed precision: its non-finite gradients make the grad scaler skip the update, on every rank
        batch_size = len(batch["sample_token"])
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        return total

    def configure_optimizers(self) -> dict[str, Any]:
        steps = int(self.trainer.estimated_stepping_batches)
        return one_cycle_adamw(self.trainable_parameters(), self.lr, self.weight_decay, steps)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    # ----------------------------------------------------------------------------- evaluation
    def detect(self, batch: dict) -> list[dict]:
        """Decoded boxes per sample (LiDAR frame of the batch), without `drop_modality_at_eval`'s modality."""
        return self.model.decode(self.model(batch, absent_modality=self.drop_modality_at_eval or None))

    def on_validation_epoch_start(self) -> None:
        self.evaluation.on_validation_epoch_start()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.evaluation.on_validation_epoch_end()

    def on_predict_epoch_start(self) -> None:
        self.predict_records = []

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        self.predict_records.extend(prediction_records(self.detect(batch), batch))

    def on_predict_epoch_end(self) -> None:
        """Every rank's records gathered on rank 0 (elsewhere the list is emptied)."""
        self.predict_records = gathered_records(self.predict_records) or []

    def run_dir(self) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        return Path(self.trainer.default_root_dir)
