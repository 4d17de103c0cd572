"""Cost of a distillation training step: its time and peak memory against the student's step plus the
teacher's forward, and each term's time alone (`benchmark_distill_step`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pytorch_lightning.utilities import move_data_to_device

from unikd.data.collate import collate_batch
from unikd.exps.base_exp import BaseExp
from unikd.exps.objective import Objective


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


def _term_seconds(exp: BaseExp, batch: dict, repeats: int) -> dict[str, float]:
    """Wall seconds of each term's forward + backward alone, on one step's outputs (student's made leaves)."""
    distiller, teacher_model = exp.objective.distiller, exp.objective.teacher
    with torch.no_grad(), distiller.recording(exp.model, teacher_model):
        student, teacher = exp.model(batch), teacher_model(batch)
    student, teacher = distiller.inputs(student, teacher)
    student = _as_leaves(student)

    def step(name: str) -> Callable[[], None]:
        return lambda: sum(distiller.term_losses(name, student, teacher, batch).values()).backward()

    times = _timed_rounds({name: step(name) for name in distiller.terms}, repeats, exp.device)
    return {f"term_{name}_s": statistics.median(wall for wall, _ in values) for name, values in times.items()}


def benchmark_distill_step(exp: BaseExp, batch: dict | None = None, repeats: int = 3) -> dict[str, float]:
    """Cost of one training step of a distillation experiment (`exp.objective` a `Distillation`) against the
    student step (the detector's own losses, `Objective`) plus the teacher's forward.

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
    own_losses = Objective()

    def distill_step() -> None:
        exp.zero_grad(set_to_none=True)
        sum(exp.training_losses(batch).values()).backward()

    def student_step() -> None:
        exp.zero_grad(set_to_none=True)
        sum(own_losses.losses(exp.model, batch).values()).backward()

    def teacher_forward() -> None:
        with torch.no_grad():
            exp.objective.teacher(batch)

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
