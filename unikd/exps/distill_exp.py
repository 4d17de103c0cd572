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
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import move_data_to_device

from unikd.data.collate import collate_batch
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


# --------------------------------------------------------------------------------- benchmark
def _timed_rounds(
    steps: Mapping[str, Callable[[], None]], repeats: int, device: torch.device
) -> dict[str, list[tuple[float, float]]]:
    """(wall, process CPU) seconds of each step over `repeats` rounds after a warm-up round; the steps
    run interleaved so that a change of machine load hits all of them alike."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for round_index in range(repeats + 1):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index > 0:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def _peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak tensor memory allocated by `step` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as profiler:
        step()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def _as_leaves(value: Any) -> Any:
    """Nested outputs whose floating tensors are new autograd leaves (a backward stops at them)."""
    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(value.is_floating_point())
    if isinstance(value, dict):
        return {key: _as_leaves(item) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple such as SparseFeatures
        return type(value)(*(_as_leaves(item) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_as_leaves(item) for item in value)
    return value


def _term_seconds(exp: DistillExp, batch: dict, repeats: int) -> dict[str, float]:
    """Wall seconds of each term's forward + backward alone, on one step's outputs (student's made leaves)."""
    distiller = exp.distiller
    with torch.no_grad(), distiller.recording(exp.model, exp.teacher):
        student, teacher = exp.model(batch), exp.teacher(batch)
    student, teacher = distiller.inputs(student, teacher)
    student = _as_leaves(student)

    def step(name: str) -> Callable[[], None]:
        return lambda: sum(distiller.term_losses(name, student, teacher, batch).values()).backward()

    times = _timed_rounds({name: step(name) for name in distiller.terms}, repeats, exp.device)
    return {f"term_{name}_s": statistics.median(wall for wall, _ in values) for name, values in times.items()}


def benchmark_distill_step(exp: DistillExp, batch: dict | None = None, repeats: int = 3) -> dict[str, float]:
    """Cost of one distillation training step against the student step plus the teacher's forward.

    A step is forward, losses and backward (no optimizer update), on the first training samples when
    `batch` is None. The three parts run interleaved for `repeats` rounds after a warm-up round.
    Returns the median wall seconds of each part (`distill_s`, `student_s`, `teacher_s`), `ratio` = the
    median over rounds of distill / (student + teacher), the same from process CPU time (`*_cpu_s`,
    `cpu_ratio`: on CPU it is robust to other processes' load; on GPU it only counts host work), and
    the peak memory (bytes) of the distillation and student steps: CUDA's max_memory_allocated above
    the start, or on CPU the peak of the running sum of tensor allocations and frees that the torch
    profiler records during the step; and `term_<name>_s`, each term's forward + backward alone on the
    outputs of one step (the student's outputs made autograd leaves), median of `repeats` rounds.
    """
    if batch is None:
        dataset = exp.datamodule.train_dataset()
        batch = collate_batch([dataset[i] for i in range(exp.batch_size_per_device)])
    batch = move_data_to_device(batch, exp.device)
    exp.train()

    def distill_step() -> None:
        exp.zero_grad(set_to_none=True)
        sum(exp.training_losses(batch).values()).backward()

    def student_step() -> None:
        exp.zero_grad(set_to_none=True)
        sum(super(DistillExp, exp).training_losses(batch).values()).backward()

    def teacher_forward() -> None:
        with torch.no_grad():
            exp.teacher(batch)

    times = _timed_rounds(
        {"distill": distill_step, "student": student_step, "teacher": teacher_forward}, repeats, exp.device
    )
    result = {}
    for clock, prefix in ((0, ""), (1, "cpu_")):
        for name, values in times.items():
            result[f"{name}_{prefix}s"] = statistics.median(value[clock] for value in values)
        rounds = zip(times["distill"], times["student"], times["teacher"], strict=True)
        result[f"{prefix}ratio"] = statistics.median(d[clock] / (s[clock] + t[clock]) for d, s, t in rounds)
    result["distill_peak_bytes"] = _peak_bytes(distill_step, exp.device)
    result["student_peak_bytes"] = _peak_bytes(student_step, exp.device)
    result.update(_term_seconds(exp, batch, repeats))
    exp.zero_grad(set_to_none=True)
    return result
