"""DistillExp: a student experiment that also learns from a frozen teacher (cross-modality distillation).

An experiment file combines it with the plain student experiment and names the teacher's:

    Student = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_camera_exp.py")
    Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_lidar_exp.py")

    class BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar(DistillExp, Student):
        teacher_exp_class = Teacher
        teacher_model_size = "nuscenes"
        distill_weights = {"feature": 100.0, "relation": 40.0, "response": 10.0}

The class is a subclass of the student experiment, so its training loss is the student's own
(detection, depth) plus the weighted terms of `distill_terms` turned on by `distill_weights`
(`unikd.distill.distiller`), each logged as train/distill/<name>.

Teacher placement: the teacher is the submodule `teacher`, so Lightning moves it to the device
with the student, but it is frozen (requires_grad False, hence outside the optimizer), held in eval
mode by `train()`, and run under `torch.no_grad()`. It is built by the teacher experiment class at
`teacher_model_size` and loaded strictly from `--teacher_ckpt`, which training requires (tests may
set `allow_random_teacher`). Evaluation (-e/-p) needs no teacher checkpoint.

Checkpoints: `state_dict()` holds the student experiment's keys only (teacher and distiller left
out), so a distilled checkpoint evaluates with the plain student experiment under strict loading.
The distiller's own state (adapters, projectors, queues) travels under the checkpoint key
`distiller_state`, which `on_load_checkpoint` restores when a distillation run resumes; the teacher
comes from `--teacher_ckpt` again.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from unikd.distill.distiller import UNIDISTILL_TERMS, Distiller, needs_train_samples
from unikd.distill.losses.masked import LearnedMaskDistillLoss
from unikd.exps.base_exp import BaseExp, image_aug_for
from unikd.exps.checkpoints import load_detector_weights

DISTILLER_STATE_KEY = "distiller_state"
DISTILL_PREFIXES = ("teacher.", "distiller.")  # state left out of the student's state dict


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """An error naming `source` and the tensors of `model`'s state that hold NaN or inf."""
    bad = [name for name, value in model.state_dict().items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"{source} holds non-finite weights (NaN or inf) in {len(bad)} tensors: {', '.join(bad[:5])}{more}; "
            "expected a teacher that trained to finite weights (take an earlier checkpoint of its run)"
        )


def load_exp_class(path: str | Path) -> type[BaseExp]:
    """The experiment class of an experiment file: the class named like the file, imported once."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    name = path.stem
    module = sys.modules.get(name)
    if module is None or Path(module.__file__).resolve() != path:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    if not hasattr(module, name):
        raise AttributeError(f"experiment file {path} defines no class named {name}")
    return getattr(module, name)


class DistillExp(BaseExp):
    """Distillation mixin placed before the student experiment class (module doc).

    Class attributes: `teacher_exp_class` (the teacher's experiment class), `teacher_model_size`,
    `distill_terms` (the spec, UniDistill's placements by default) and `distill_weights` (which
    terms are on and their weights). `--exp_options distill_weights.feature=50` overrides a weight.
    """

    teacher_exp_class: type[BaseExp] | None = None
    teacher_model_size: str = "nuscenes"
    distill_terms: dict[str, dict[str, Any]] = UNIDISTILL_TERMS
    distill_weights: dict[str, float] = {}
    allow_random_teacher: bool = False  # tests only: train without --teacher_ckpt
    cli_arguments = ("teacher_ckpt",)

    def __init__(
        self,
        batch_size_per_device: int = 1,
        data_root: str = "data/nuscenes",
        seed: int = 0,
        output_dir: str | None = None,
        exp_options: dict[str, Any] | None = None,
        teacher_ckpt: str | None = None,
    ) -> None:
        # every term of the spec has a weight (0: off), so that `distill_weights.<term>=w` can switch any on
        self.distill_weights = {name: 0.0 for name in self.distill_terms} | dict(self.distill_weights)
        super().__init__(batch_size_per_device, data_root, seed, output_dir, exp_options)
        if self.teacher_exp_class is None:
            raise TypeError(f"{type(self).__name__} must set teacher_exp_class")
        self.teacher_ckpt = teacher_ckpt
        self.teacher = self.teacher_exp_class(exp_options={"model_size": self.teacher_model_size}).model
        if teacher_ckpt is not None:
            load_detector_weights(
                self.teacher,
                teacher_ckpt,
                f"{self.teacher_exp_class.__name__} teacher (teacher_model_size={self.teacher_model_size})",
            )
            check_finite_weights(self.teacher, f"--teacher_ckpt {teacher_ckpt}")
        self.teacher.requires_grad_(False).eval()
        if "camera" not in self.modalities and self.image_aug is None:
            self.image_aug = image_aug_for(self.teacher_model_size)  # the camera teacher's images
        self.distiller = Distiller(
            self.distill_terms, self.distill_weights, self.model, self.teacher, self.num_train_samples_if_needed()
        )

    def check_settings(self) -> None:
        """The student experiment's settings, and distillation weights that are finite and not negative
        (a negative weight would reward the student for moving away from the teacher)."""
        super().check_settings()
        bad = {name: weight for name, weight in self.distill_weights.items() if not (math.isfinite(weight) and weight >= 0)}
        if bad:
            raise ValueError(f"distill_weights {bad}: expected finite weights >= 0 (0 turns a term off)")

    def num_train_samples_if_needed(self) -> int | None:
        """The training set's size when a term keeps per-sample state (crd), else None (no data read)."""
        if needs_train_samples(self.distill_terms, self.distill_weights):
            return len(self.datamodule.train_dataset())
        return None

    def train(self, mode: bool = True) -> DistillExp:
        """Set the student and distiller's mode; the teacher stays in eval mode (BN running statistics)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.distiller.set_epoch(self.current_epoch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Leave the parameters a term froze as they are: without a gradient the optimizer skips them."""
        for term in self.distiller.terms.values():
            if isinstance(term, LearnedMaskDistillLoss):
                for parameter in term.frozen_parameters():
                    parameter.grad = None

    def data_modalities(self, training: bool) -> tuple[str, ...]:
        """Training batches also carry what the teacher reads (e.g. the images of a camera teacher)."""
        student = super().data_modalities(training)
        if not training:
            return student
        return student + tuple(m for m in self.teacher_exp_class.modalities if m not in student)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The student experiment's losses plus {"distill/<name>": weighted term}."""
        if self.teacher_ckpt is None and not self.allow_random_teacher:
            raise RuntimeError(
                f"{type(self).__name__} distills from a {self.teacher_exp_class.__name__} teacher: "
                "pass --teacher_ckpt with that experiment's checkpoint"
            )
        with self.distiller.recording(self.model, self.teacher):
            outputs, losses = self.outputs_and_losses(batch)
            with torch.no_grad():
                teacher_outputs = self.teacher(batch)
        losses.update(self.distiller(outputs, teacher_outputs, batch))
        return losses

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self, *, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> dict:
        """The student experiment's state only (teacher and distiller left out)."""
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        excluded = tuple(prefix + name for name in DISTILL_PREFIXES)
        for key in [key for key in state if key.startswith(excluded)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load the student experiment's state, strictly over its keys; the distiller comes from
        `on_load_checkpoint`, the teacher from --teacher_ckpt."""
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"state dict does not match {type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}"
            )
        student_state = {key: value for key, value in state_dict.items() if key in expected}
        return super().load_state_dict(student_state, strict=False, assign=assign)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[DISTILLER_STATE_KEY] = self.distiller.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if DISTILLER_STATE_KEY not in checkpoint:
            raise KeyError(
                f"checkpoint has no {DISTILLER_STATE_KEY!r}: it was not written by a distillation experiment; "
                f"evaluate it with the plain student experiment"
            )
        self.distiller.load_state_dict(checkpoint[DISTILLER_STATE_KEY])
