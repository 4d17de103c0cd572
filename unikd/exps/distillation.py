"""Distillation by composition: a student experiment whose `distill` setting names a teacher and terms.

A pairing file subclasses the student's experiment and states what it distils from:

    Student = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_camera_exp.py")
    Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_lidar_exp.py")

    class BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar(Student):
        distill = DistillSettings(teacher=Teacher, teacher_preset="nuscenes",
                                  weights={"feature": 10.0, "relation": 40.0, "response": 10.0})

The experiment then trains with the objective `Distillation` (`unikd.exps.objective`), which holds the frozen
teacher and the distiller: the student's own losses (detection, depth) plus the weighted terms of `terms`
that `weights` turn on (`unikd.distill.distiller`), each logged as train/distill/<name>.

The teacher is the detector that `teacher` (an experiment class) trains, built from its sensors and task at
`teacher_preset` and loaded strictly from `--teacher_ckpt`, which training requires (tests may set
`allow_random_teacher`); evaluation (-e/-p) needs no teacher checkpoint. It is frozen (requires_grad False,
hence outside the optimizer), held in eval mode and run under `torch.no_grad()`; Lightning moves it to the
device with the student.

Checkpoints hold the student experiment's keys only (the objective is left out of the state dict), so a
distilled checkpoint evaluates with the plain student experiment under strict loading. The distiller's own
state (adapters, projectors, queues) travels under the checkpoint key `distiller_state` and is restored when a
distillation run resumes; the teacher comes from `--teacher_ckpt` again.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unikd.distill.distiller import UNIDISTILL_TERMS, Distiller, needs_train_samples
from unikd.distill.losses.learned_mask import LearnedMaskDistillLoss
from unikd.exps.checkpoints import load_detector_weights, nonfinite_tensors
from unikd.exps.objective import Objective
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config

DISTILLER_STATE_KEY = "distiller_state"


@dataclass
class DistillSettings:
    """What an experiment distils from (module doc). A section of the experiment's settings:
    `--exp_options distill.weights.feature=50` (or `distill_weights.feature=50`) and
    `distill.teacher_preset=small` (or `teacher_preset=small`, `teacher_model_size=small`) edit it.

    Every term of `terms` has a weight (0: off), so that any declared term can be switched on by its weight.
    """

    teacher: type  # the experiment that trains the teacher: its sensors and task (tools train it with its file)
    weights: dict[str, float]
    teacher_preset: str = "nuscenes"
    terms: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(UNIDISTILL_TERMS))
    allow_random_teacher: bool = False  # tests only: train without --teacher_ckpt

    def __post_init__(self) -> None:
        self.weights = every_term_weighted(self.terms, self.weights)

    @property
    def teacher_name(self) -> str:
        return self.teacher.__name__


def every_term_weighted(terms: Mapping[str, Any], weights: Mapping[str, float]) -> dict[str, float]:
    """A weight for every term of `terms` (0: off); a weight of a term that is not declared is an error."""
    undeclared = sorted(set(weights) - set(terms))
    if undeclared:
        raise ValueError(f"distill weights of {undeclared}: no such term; the declared terms are {sorted(terms)}")
    return {name: 0.0 for name in terms} | dict(weights)


def check_finite_teacher(model: nn.Module, source: str) -> None:
    """An error naming `source` and the tensors of `model`'s state that hold NaN or inf."""
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"{source} holds non-finite weights (NaN or inf) in {len(bad)} tensors: {', '.join(bad[:5])}{more}; "
            "expected a teacher that trained to finite weights (take an earlier checkpoint of its run)"
        )


def build_teacher(settings: DistillSettings, teacher_ckpt: str | None) -> BEVFusion:
    """The frozen teacher: the detector of `settings.teacher` at `teacher_preset`, weights from `teacher_ckpt`."""
    config = model_config(settings.teacher_preset, tuple(settings.teacher.modalities), settings.teacher.task)
    teacher = BEVFusion(config)
    if teacher_ckpt is not None:
        load_detector_weights(teacher, teacher_ckpt, f"{settings.teacher_name} teacher (teacher_model_size={settings.teacher_preset})")
        check_finite_teacher(teacher, f"--teacher_ckpt {teacher_ckpt}")
    return teacher.requires_grad_(False).eval()


class Distillation(Objective):
    """The student's own losses plus the distiller's weighted terms against a frozen teacher (module doc)."""

    def __init__(
        self,
        settings: DistillSettings,
        student: nn.Module,
        teacher_ckpt: str | None,
        num_train_samples: Callable[[], int],
    ) -> None:
        """`num_train_samples` is called only when a term keeps per-sample state (crd), so that no data is read
        otherwise. Weights must be finite and not negative (a negative weight would reward the student for
        moving away from the teacher)."""
        super().__init__()
        weights = every_term_weighted(settings.terms, settings.weights)  # again: options may replace either dict
        bad = {name: weight for name, weight in weights.items() if not (math.isfinite(weight) and weight >= 0)}
        if bad:
            raise ValueError(f"distill_weights {bad}: expected finite weights >= 0 (0 turns a term off)")
        self.settings = settings
        self.teacher_ckpt = teacher_ckpt
        self.teacher = build_teacher(settings, teacher_ckpt)
        samples = num_train_samples() if needs_train_samples(settings.terms, weights) else None
        self.distiller = Distiller(settings.terms, weights, student, self.teacher, samples)

    def train(self, mode: bool = True) -> Distillation:
        """Set the distiller's mode; the teacher stays in eval mode (BatchNorm running statistics)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def losses(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """The student's losses plus {"distill/<name>": weighted term}."""
        if self.teacher_ckpt is None and not self.settings.allow_random_teacher:
            raise RuntimeError(
                f"this experiment distils from a {self.settings.teacher_name} teacher: "
                "pass --teacher_ckpt with that experiment's checkpoint"
            )
        with self.distiller.recording(model, self.teacher):
            outputs = model(batch)
            losses = model.loss(outputs, batch)
            with torch.no_grad():
                teacher_outputs = self.teacher(batch)
        losses.update(self.distiller(outputs, teacher_outputs, batch))
        return losses

    def set_epoch(self, epoch: int) -> None:
        self.distiller.set_epoch(epoch)

    def before_optimizer_step(self) -> None:
        """Leave the parameters a term froze as they are: without a gradient the optimizer skips them."""
        for term in self.distiller.terms.values():
            if isinstance(term, LearnedMaskDistillLoss):
                for parameter in term.frozen_parameters():
                    parameter.grad = None

    def checkpoint_state(self) -> dict[str, Any]:
        return {DISTILLER_STATE_KEY: self.distiller.state_dict()}

    def load_checkpoint_state(self, checkpoint: Mapping[str, Any]) -> None:
        if DISTILLER_STATE_KEY not in checkpoint:
            raise KeyError(
                f"checkpoint has no {DISTILLER_STATE_KEY!r}: it was not written by a distillation experiment; "
                f"evaluate it with the plain student experiment"
            )
        self.distiller.load_state_dict(checkpoint[DISTILLER_STATE_KEY])
