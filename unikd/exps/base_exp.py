"""BaseExp: one experiment (data, model, optimisation, evaluation) as a LightningModule."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from unikd.data.collate import collate_batch
from unikd.data.infos import SPLITS_BY_VERSION
from unikd.data.map_targets import MAP_CLASSES, MAP_GRID
from unikd.data.mmdet3d_infos import info_files
from unikd.data.nuscenes_dataset import ImageAugConfig, NuScenesDetectionDataset
from unikd.data.samplers import EpochShuffleSampler, UnpaddedDistributedSampler
from unikd.data.transforms import BEVAugConfig, apply_bda_to_boxes
from unikd.evaluation.predictions import make_prediction
from unikd.exps.checkpoints import METADATA_KEY, checkpoint_metadata, load_camera_init
from unikd.exps.finite_guard import FiniteLossGuard
from unikd.exps.loader_workers import stop_signal_shield
from unikd.exps.options import apply_options
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config

# The image augmentation (a data setting) of each model size: the camera branch reads the images it makes.
# Sizes not listed use ImageAugConfig() (nuScenes: 1600x900 resized and cropped to 256x704).
IMAGE_AUG_BY_SIZE: dict[str, ImageAugConfig] = {
    # the CPU sizes decode their JPEGs at 1/4 or 1/2 scale (reduced_decode): 3x faster, same geometry
    **dict.fromkeys(
        ("small", "small_transfusion", "small_bevfusion", "small_mgfm"),
        ImageAugConfig(final_size=(128, 352), train_resize=(0.2, 0.26), test_resize=0.23, reduced_decode=True),
    ),
    # UniDistill's ida_aug_cfg: resize in (0.386, 0.55) in training, max(256 / 900, 704 / 1600) = 0.44 in testing
    **dict.fromkeys(("unidistill_camera", "unidistill_fusion"), ImageAugConfig(train_resize=(0.386, 0.55), test_resize=0.44)),
}


TASKS = ("detection", "segmentation")


def image_aug_for(model_size: str) -> ImageAugConfig:
    """The image augmentation an experiment at `model_size` uses unless it sets its own."""
    return IMAGE_AUG_BY_SIZE.get(model_size, ImageAugConfig())


def prediction_records(detections: list[dict], batch: dict) -> list[dict]:
    """Global-frame prediction records of decoded boxes, undoing the batch's BEV augmentation."""
    records = []
    for i, det in enumerate(detections):
        unaugment = np.linalg.inv(batch["bda"][i].detach().cpu().double().numpy())
        boxes = apply_bda_to_boxes(det["boxes"].detach().cpu().double().numpy(), unaugment)
        token = batch["sample_token"][i]
        records.append(make_prediction(token, boxes, batch["lidar2global"][i], det["labels"], det["scores"]))
    return records


def one_cycle_factor(step: int, total_steps: int, warmup: float = 0.4, start: float = 0.1, end: float = 1e-3) -> float:
    """Learning-rate factor: cosine rise from `start` to 1 over the warmup fraction, cosine fall to `end`."""
    progress = min(step / total_steps, 1.0)
    if progress < warmup:
        return start + (1 - start) * (1 - math.cos(math.pi * progress / warmup)) / 2
    return end + (1 - end) * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))) / 2


class BaseExp(pl.LightningModule):
    """An experiment file subclasses this and states only what differs.

    Class attributes are the experiment's settings; `--exp_options key=value` overrides them
    (dotted paths reach into `model_config`) before the model is built.
    """

    modalities: tuple[str, ...] = ("lidar",)
    task: str = "detection"  # "detection" (CenterHead, detection metric) or "segmentation" (BEV map, mIoU)
    model_size: str = "nuscenes"  # "nuscenes" (reference sizes), "student" (0.1 m, narrow) or "small" (CPU)
    version: str = "v1.0-mini"
    num_sweeps: int = 3
    infos: tuple[str, ...] = ()  # mmdet3d info files read instead of the devkit (`mmdet3d_infos.info_files`)
    infos_box_convention: str | None = None  # of 0.x-layout info files: "0.x" or "1.x"
    image_aug: ImageAugConfig | None = None  # None: image_aug_for(model_size)
    bev_aug: BEVAugConfig | None = BEVAugConfig()
    max_epochs: int = 20
    lr: float = 2e-3
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    max_nonfinite_steps: int = 20  # mixed precision: non-finite steps in a row skipped before training stops
    num_workers: int = 2
    eval_backend: str = "metric"  # "metric" (fast, identical) or "devkit" (official)
    eval_backends: tuple[str, ...] = ("metric", "devkit")
    drop_modality_at_eval: str = ""  # "lidar" or "camera": a fusion model evaluates with it removed before the fuser
    # a checkpoint whose camera branch initialises this one's backbone, neck and depth net (a depth pretraining
    # run, `unikd.exps.depth_pretrain_exp`; `unikd.exps.checkpoints.load_camera_init`)
    camera_init: str = ""
    num_visualizations: int = 4
    cli_arguments: tuple[str, ...] = ()  # extra CLI arguments passed to __init__ (e.g. teacher_ckpt)

    def __init__(
        self,
        batch_size_per_device: int = 1,
        data_root: str = "data/nuscenes",
        seed: int = 0,
        output_dir: str | None = None,
        exp_options: dict[str, Any] | None = None,
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
        self.model_config = model_config(self.model_size, self.modalities, self.task)
        apply_options(self, model_options)
        self.check_settings()
        self.model = self.build_model()
        if self.camera_init:
            load_camera_init(self.model, self.camera_init)
        self.val_records: list[dict] = []
        self.predict_records: list[dict] = []
        self.checkpoint_epoch: int | None = None  # the epoch of the checkpoint loaded for -e / -p
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches done) of a resumed run
        self._datasets: dict[str, NuScenesDetectionDataset] = {}
        self._metric = None
        self._finite_guard: FiniteLossGuard | None = None  # built at the first step, for the trainer's precision

    def check_settings(self) -> None:
        """Settings that would otherwise fail late, checked when the experiment is built."""
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "segmentation" and self.eval_backend != "metric":
            raise ValueError(
                f"eval_backend {self.eval_backend!r} evaluates detection; segmentation uses 'metric' (map IoU)"
            )
        if self.version not in SPLITS_BY_VERSION:
            raise ValueError(f"unknown nuScenes version {self.version!r}; expected one of {sorted(SPLITS_BY_VERSION)}")
        if self.eval_backend not in self.eval_backends:
            raise ValueError(f"eval_backend must be one of {self.eval_backends}, got {self.eval_backend!r}")
        if self.batch_size_per_device < 1:
            raise ValueError(f"batch size per device must be at least 1, got {self.batch_size_per_device}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(
                f"lr must be a positive finite learning rate, got {self.lr} (a run at lr <= 0 would train nothing; "
                "to evaluate a checkpoint use -e)"
            )
        if self.infos_box_convention is not None and not self.infos:
            raise ValueError("--infos_box_convention is for mmdet3d info files: pass them with --infos")
        if self.num_sweeps < 1:
            raise ValueError(f"num_sweeps must be at least 1 (the key frame), got {self.num_sweeps}")
        if self.camera_init and "camera" not in self.modalities:
            raise ValueError(f"camera_init {self.camera_init} initialises a camera branch; modalities are {self.modalities}")
        if self.drop_modality_at_eval and (len(self.modalities) < 2 or self.drop_modality_at_eval not in self.modalities):
            raise ValueError(
                f"drop_modality_at_eval removes one modality of a fusion experiment ({self.modalities}), "
                f"got {self.drop_modality_at_eval!r}"
            )

    @property
    def exp_name(self) -> str:
        return type(self).__name__

    @property
    def train_split(self) -> str:
        return SPLITS_BY_VERSION[self.version][0]

    @property
    def val_split(self) -> str:
        return SPLITS_BY_VERSION[self.version][-1]

    def build_model(self) -> torch.nn.Module:
        return BEVFusion(copy.deepcopy(self.model_config))

    # ----------------------------------------------------------------------------- data
    @property
    def reads_map_masks(self) -> bool:
        """Whether the datasets give the map targets `gt_masks_bev` (segmentation experiments), on the grid of
        the segmentation head's logits."""
        return self.task == "segmentation"

    def data_modalities(self, training: bool) -> tuple[str, ...]:
        """The sensors a dataset of this experiment reads (a distillation adds its teacher's for training)."""
        return self.modalities

    def dataset(self, split: str, training: bool) -> NuScenesDetectionDataset:
        key = f"{split}:{training}"
        if key not in self._datasets:
            self._datasets[key] = NuScenesDetectionDataset(
                data_root=self.data_root,
                version=self.version,
                split=split,
                point_cloud_range=self.model_config["point_cloud_range"],
                num_sweeps=self.num_sweeps,
                use_camera="camera" in self.data_modalities(training),
                training=training,
                bev_aug=self.bev_aug,
                image_aug=self.image_aug or image_aug_for(self.model_size),
                seed=self.seed,
                infos_file=info_files(self.infos, self.version)[split] if self.infos else None,
                infos_box_convention=self.infos_box_convention,
                map_segmentation=self.reads_map_masks,
                map_grid=self.model.seg_head.output_grid if self.reads_map_masks else MAP_GRID,
            )
        return self._datasets[key]

    def _loader(self, dataset: NuScenesDetectionDataset, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle,  # training
            worker_init_fn=stop_signal_shield(),  # a job-wide SIGTERM leaves the workers to the checkpoint
        )

    def train_dataloader(self) -> DataLoader:
        """Batches in an order fixed by (seed, epoch), sharded over the ranks; a resumed run starts where
        the checkpoint left off, so it sees the same batches as an uninterrupted one."""
        dataset = self.dataset(self.train_split, training=True)
        epoch = self.current_epoch
        dataset.set_epoch(epoch)  # the loader's workers copy the dataset before on_train_epoch_start
        sampler = EpochShuffleSampler(
            len(dataset), self.seed, self.batch_size_per_device, self.global_rank, self.trainer.world_size
        )
        sampler.set_epoch(epoch)
        if self._resume_position is not None:
            sampler.resume(*self._resume_position)
        return self._loader(dataset, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        dataset = self.dataset(self.val_split, training=False)
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnpaddedDistributedSampler(dataset, shuffle=False)
        return self._loader(dataset, shuffle=False, sampler=sampler)

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def setup(self, stage: str) -> None:
        """Open the datasets (their start-up checks), check that training makes full batches, and prepare
        the ground truth that this stage's evaluation will read, so that bad data fails before any
        training time is spent."""
        if stage == "fit":
            self.check_full_batches(len(self.dataset(self.train_split, training=True)))
        self.dataset(self.val_split, training=False)
        if stage in ("fit", "validate") and self.trainer.limit_val_batches != 0:
            self.check_ground_truth()

    def check_full_batches(self, num_samples: int) -> None:
        """An error when no rank gets one full training batch (the incomplete last batch is dropped)."""
        world = self.trainer.world_size
        per_rank = -(-num_samples // world)  # EpochShuffleSampler's shard
        if self.batch_size_per_device > per_rank:
            raise ValueError(
                f"batch size {self.batch_size_per_device} per device is larger than the {per_rank} samples each of the "
                f"{world} process(es) gets from the {num_samples} samples of split {self.train_split!r}: no full "
                "batch, and the incomplete last batch of an epoch is dropped; pass a smaller -b"
            )

    def check_ground_truth(self) -> None:
        """Prepare the ground truth the evaluation backend reads (the tables' annotations for detection, with or
        without --infos), or an error naming what is missing."""
        if self.task == "segmentation":  # map IoU: the masks come with the dataset
            self.metric()
            return
        from unikd.evaluation.ground_truth import prepare_ground_truth

        try:
            if self.eval_backend == "metric":
                self.metric()
            else:  # the devkit reads the same tables at the end of validation
                prepare_ground_truth((self.version, self.data_root), self.val_split)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"the evaluation (--eval_backend {self.eval_backend}) reads the ground truth of split "
                f"{self.val_split!r} from the nuScenes tables, also with --infos: {error}. Without the tables, "
                "train without evaluation (--limit_val_batches 0)"
            ) from error

    def on_train_epoch_start(self) -> None:
        self.dataset(self.train_split, training=True).set_epoch(self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[METADATA_KEY] = checkpoint_metadata(self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Remember the checkpoint's epoch (names -e's outputs) and, for a run resumed part-way into an
        epoch, how many of its batches were done."""
        self.checkpoint_epoch = checkpoint.get("epoch")
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if progress is not None and self.checkpoint_epoch is not None:
            done = 0 if progress["is_last_batch"] else progress["current"]["processed"]
            self._resume_position = (self.checkpoint_epoch, done)

    @property
    def epoch_label(self) -> int:
        """The epoch that outputs are named after: the training epoch, or the loaded checkpoint's for -e."""
        if self.trainer.state.fn != "fit" and self.checkpoint_epoch is not None:
            return self.checkpoint_epoch
        return self.current_epoch

    # ----------------------------------------------------------------------------- training
    def forward(self, batch: dict) -> dict:
        return self.model(batch)

    def outputs_and_losses(self, batch: dict) -> tuple[dict, dict[str, torch.Tensor]]:
        """The model's named outputs on a training batch and its named losses."""
        outputs = self.model(batch)
        return outputs, self.model.loss(outputs, batch)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch; distillation experiments add their own."""
        return self.outputs_and_losses(batch)[1]

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

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.lr, weight_decay=self.weight_decay)
        # The length is read from the trainer at every (re)start and is not saved with the scheduler,
        # so a run resumed with a larger --max_epochs stretches the schedule instead of failing.
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: one_cycle_factor(step, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    # ----------------------------------------------------------------------------- evaluation
    def metric(self):
        """The validation metric (built once): the fast nuScenes detection metric over the validation split's
        ground truth, or for segmentation the map IoU (`MapSegmentationMetric`)."""
        if self._metric is None:
            # --limit_val_batches evaluates a subset on purpose; otherwise every sample must be predicted.
            limit = self.trainer.limit_val_batches  # an int counts batches: 1 means one batch
            whole_split = isinstance(limit, float) and limit == 1.0
            if self.task == "segmentation":
                from unikd.evaluation.map_segmentation import MapSegmentationMetric

                samples = len(self.dataset(self.val_split, training=False)) if whole_split else None
                self._metric = MapSegmentationMetric(MAP_CLASSES, expected_samples=samples).to(self.device)
                return self._metric
            from unikd.evaluation.ground_truth import prepare_ground_truth
            from unikd.evaluation.metric import NuScenesDetectionMetric

            gt = prepare_ground_truth((self.version, self.data_root), self.val_split)
            self._metric = NuScenesDetectionMetric(gt, require_all_samples=whole_split).to(self.device)
        return self._metric

    def detect(self, batch: dict) -> list[dict]:
        """Decoded boxes per sample (LiDAR frame of the batch), without `drop_modality_at_eval`'s modality."""
        return self.model.decode(self.model(batch, absent_modality=self.drop_modality_at_eval or None))

    def segment(self, batch: dict) -> torch.Tensor:
        """Map scores [B, K, H, W]: the sigmoid of the segmentation logits, without `drop_modality_at_eval`'s
        modality."""
        return self.model(batch, absent_modality=self.drop_modality_at_eval or None)["seg"].sigmoid()

    def on_validation_epoch_start(self) -> None:
        self.val_records = []
        if self.eval_backend == "metric":
            self.metric().reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.task == "segmentation":
            self.metric().update(self.segment(batch), batch["gt_masks_bev"])
            return
        detections = self.detect(batch)
        records = prediction_records(detections, batch)
        if self.eval_backend == "metric":
            self.metric().update(records)
        self.val_records.extend(records)
        if batch_idx < self.num_visualizations and self.trainer.is_global_zero:
            self.save_visualization(batch, detections, batch_idx)

    def on_validation_epoch_end(self) -> None:
        if self.task == "segmentation":
            self.report_map_metrics()
            return
        if self.eval_backend == "metric":
            self.metric().compute()
            summary = self.metric().summary
        elif self.eval_backend == "devkit":
            summary = self.devkit_metrics()
        else:
            raise ValueError(f"eval_backend must be 'metric' or 'devkit', got {self.eval_backend!r}")
        if summary is None:  # devkit backend, not rank 0
            return
        self.log("val/mAP", float(summary["mean_ap"]), rank_zero_only=True)
        self.log("val/NDS", float(summary["nd_score"]), rank_zero_only=True)
        self.last_metrics = summary
        if self.trainer.is_global_zero:
            from unikd.evaluation import format_metrics, write_metrics_summary

            print(format_metrics(summary))
            path = self.run_dir() / "eval" / f"metrics_summary_epoch{self.epoch_label}.json"
            write_metrics_summary(summary, path, meta={"backend": self.eval_backend, "split": self.val_split})
            print(f"metrics written to {path}")

    def report_map_metrics(self) -> None:
        """Map IoU of the validation epoch: logged as val/mIoU, printed and written to eval/ on rank 0."""
        self.metric().compute()
        summary = self.metric().summary
        self.log("val/mIoU", summary["mean_iou"], rank_zero_only=True)
        self.last_metrics = summary
        if self.trainer.is_global_zero:
            from unikd.evaluation import format_map_metrics, write_metrics_summary

            print(format_map_metrics(summary))
            path = self.run_dir() / "eval" / f"map_segmentation_epoch{self.epoch_label}.json"
            write_metrics_summary(summary, path, meta={"split": self.val_split})
            print(f"metrics written to {path}")

    def gathered_records(self, records: list[dict]) -> list[dict] | None:
        """All ranks' `records` on rank 0 (None elsewhere)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return records
        # only rank 0 writes the submission or runs the devkit: gather to it alone, not to every rank
        zero = torch.distributed.get_rank() == 0
        gathered = [None] * torch.distributed.get_world_size() if zero else None
        torch.distributed.gather_object(records, gathered, dst=0)
        return [r for part in gathered for r in part] if zero else None

    def devkit_metrics(self) -> dict | None:
        from unikd.evaluation.devkit_eval import evaluate_with_devkit
        from unikd.evaluation.submission import write_submission

        records = self.gathered_records(self.val_records)
        if records is None:
            return None
        out_dir = self.run_dir() / "eval" / f"devkit_epoch{self.epoch_label}"
        path = write_submission(records, out_dir / "submission.json", use_lidar="lidar" in self.modalities, use_camera="camera" in self.modalities)
        return evaluate_with_devkit((self.version, self.data_root), path, self.val_split, out_dir)

    def on_predict_epoch_start(self) -> None:
        self.predict_records = []

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        self.predict_records.extend(prediction_records(self.detect(batch), batch))

    def on_predict_epoch_end(self) -> None:
        """Every rank's records gathered on rank 0 (elsewhere the list is emptied)."""
        self.predict_records = self.gathered_records(self.predict_records) or []

    def run_dir(self) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        return Path(self.trainer.default_root_dir)

    def save_visualization(self, batch: dict, detections: list[dict], batch_idx: int) -> None:
        from unikd.utils.visualization import save_bev_prediction

        out = self.run_dir() / "vis" / f"epoch{self.epoch_label}_{batch_idx}.png"
        save_bev_prediction(batch, detections, self.model_config["point_cloud_range"], out)
