"""Benchmark cases of distillation: the distillation training step of the experiments, and the three
UniDistill terms (batched) against their per-sample form."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from unikd.benchmarks.harness import Context, median, peak_memory, synchronize, time_interleaved
from unikd.benchmarks.inputs import TERMS_BATCH, TERMS_BOXES, random_boxes
from unikd.benchmarks.models import reference_draw_gaussian

REPO = Path(__file__).resolve().parents[2]  # the checkout: exps/ holds the experiment files

# Distillation pairings timed by `distill_step` (experiment files). Case "<pair>-<size>": "small" puts
# student and teacher at the small size; "nuscenes" keeps the experiment's own sizes (the real ones).
DISTILL_PAIRS = {
    "camera_from_lidar": "BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar.py",
    "lidar_from_camera": "BEVFusion_nuscenes_centerhead_lidar_exp_distill_camera.py",
    "lidarsmall_from_lidar": "BEVFusion_nuscenes_centerhead_lidarsmall_exp_distill_lidar.py",
}
DISTILL_CASES = (
    "camera_from_lidar-small",
    "lidar_from_camera-small",
    "lidarsmall_from_lidar-small",
    "camera_from_lidar-nuscenes",
    "lidarsmall_from_lidar-nuscenes",
)


# ------------------------------------------------------------------------------------ 7. distillation
def bench_distill_step(ctx: Context, case: str) -> dict:
    from unikd.benchmarks.distill_step import benchmark_distill_step
    from unikd.exps.exp_files import load_exp_class

    pair, size = case.split("-")
    exp_class = load_exp_class(REPO / "exps" / "nuscenes" / "BEVFusion" / DISTILL_PAIRS[pair])
    sizes = {"model_size": "small", "teacher_model_size": "small"} if size == "small" else {}
    torch.manual_seed(0)
    exp = exp_class(
        batch_size_per_device=1,
        data_root=str(ctx.data_root),
        exp_options={**sizes, "version": ctx.require_version(), "allow_random_teacher": True},
    ).to(ctx.device)
    repeats = ctx.repeats(3, 2) if size == "small" else ctx.repeats(2, 1)
    result: dict[str, float] = {}

    def call() -> None:
        result.update(benchmark_distill_step(exp, repeats=repeats))

    memory = peak_memory(call, ctx.device)
    terms = {key: value for key, value in result.items() if key.startswith("term_")}
    return {
        "ratio": result["ratio"],
        "ratio_meaning": "distill step / (student step + teacher no-grad forward)",
        "figures": {
            "distill_s": result["distill_s"],
            "student_s": result["student_s"],
            "teacher_s": result["teacher_s"],
            "cpu_ratio": result["cpu_ratio"],
            **terms,
            "terms_share": sum(terms.values()) / result["distill_s"],
            "distill_peak_bytes": result["distill_peak_bytes"],
            "student_peak_bytes": result["student_peak_bytes"],
            "call_peak_bytes": memory["peak_bytes"],
            "call_peak_upper_bound": memory["upper_bound"],
        },
        "notes": [
            f"{exp_class.__name__} at {'the small size (student and teacher)' if size == 'small' else 'its own sizes'} "
            f"(student {exp.model_size}, teacher {exp.distill.teacher_preset}; random teacher), batch 1 of the train "
            f"split; unikd.benchmarks.distill_step.benchmark_distill_step(repeats={repeats}): steps are forward + losses + "
            "backward (no optimizer), interleaved rounds, median after a warm-up round",
            "term_<name>_s: each distillation term's forward + backward alone on one step's outputs; terms_share: "
            "their sum over the distill step",
            "distill/student_peak_bytes: that function's peaks (on CPU: running sum of the torch profiler's "
            "allocations and frees); call_peak_bytes: this script's measure around the whole call",
        ],
    }


# ------------------------------------------------------------------------------------ 8. distillation terms
# The nuScenes size of the three UniDistill terms' inputs: batch TERMS_BATCH, a 256-channel low-level BEV
# (feature), a 512-channel high-level BEV (relation), the six-task CenterHead (response), all 180 x 180.
TERMS_CELLS = 180
TERMS_CHANNELS = {"feature": 256, "relation": 512}


def terms_inputs(device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Random maps and boxes of the nuScenes size (TERMS_*): student maps require grad."""
    from unikd.data.classes import HEAD_CLASS_GROUPS
    from unikd.ops.bev_grid import BEVGrid

    gen = torch.Generator().manual_seed(seed)
    size = (TERMS_BATCH, TERMS_CELLS, TERMS_CELLS)

    def maps(channels: int, grad: bool) -> torch.Tensor:
        return torch.randn(size[0], channels, *size[1:], generator=gen).to(device).requires_grad_(grad)

    def head(grad: bool) -> list[dict[str, torch.Tensor]]:
        heads = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
        return [{"heatmap": maps(len(task), grad), **{k: maps(c, grad) for k, c in heads.items()}}
                for task in HEAD_CLASS_GROUPS]

    boxes = [random_boxes(gen, TERMS_BOXES)[0].to(device) for _ in range(TERMS_BATCH)]
    return {
        "grid": BEVGrid.from_range((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), 0.6),
        "student": {name: maps(c, True) for name, c in TERMS_CHANNELS.items()} | {"response": head(True)},
        "teacher": {name: maps(c, False) for name, c in TERMS_CHANNELS.items()} | {"response": head(False)},
        "gt_boxes": boxes,
    }


def reference_sample(feature: torch.Tensor, points: torch.Tensor, grid: Any) -> torch.Tensor:
    """One sample's map [C, H, W] bilinearly read at metric points [M, 9, 2]: [M, 9, C]."""
    import torch.nn.functional as F

    normalized = grid.metric_to_normalized(points.reshape(1, 1, -1, 2))
    sampled = F.grid_sample(feature[None], normalized, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled[0, :, 0].t().reshape(*points.shape[:2], -1)


def reference_mask(gt_boxes: list[torch.Tensor], grid: Any, min_overlap: float, min_radius: int) -> torch.Tensor:
    """The Gaussian GT mask drawn box by box (`reference_draw_gaussian`), as the detection targets did."""
    from unikd.ops.gaussian import gaussian_radius

    mask = torch.zeros(len(gt_boxes), grid.height, grid.width, device=gt_boxes[0].device)
    for sample, boxes in enumerate(gt_boxes):
        for box in boxes.tolist():
            col, row = math.floor((box[0] - grid.x_min) / grid.cell_x), math.floor((box[1] - grid.y_min) / grid.cell_y)
            if 0 <= col < grid.width and 0 <= row < grid.height:
                radius = max(min_radius, int(gaussian_radius(box[3] / grid.cell_x, box[4] / grid.cell_y, min_overlap)))
                reference_draw_gaussian(mask[sample], col, row, radius)
    return mask


def reference_terms(student: dict, teacher: dict, gt_boxes: list[torch.Tensor], grid: Any) -> dict[str, torch.Tensor]:
    """The three UniDistill terms in their per-sample form (each sample's map sliced, boxes per sample),
    with the same formulas and defaults as unikd's."""
    import torch.nn.functional as F

    from unikd.distill.keypoints import box_keypoints_bev
    from unikd.distill.losses.response import REGRESSION_KEYS, class_max_heatmap

    def regression_maps(head: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([task[key] for task in head for key in REGRESSION_KEYS], dim=1)

    feature = relation = student["feature"].new_zeros(())
    for b, boxes in enumerate(gt_boxes):
        points = box_keypoints_bev(boxes)
        s, t = reference_sample(student["feature"][b], points, grid), reference_sample(teacher["feature"][b], points, grid)
        feature = feature + (s - t).abs().mean(dim=(1, 2)).sum()
        s = F.normalize(reference_sample(student["relation"][b], points, grid), dim=-1)
        t = F.normalize(reference_sample(teacher["relation"][b], points, grid), dim=-1)
        relation = relation + (s @ s.transpose(1, 2) - t @ t.transpose(1, 2)).abs().mean(dim=(1, 2)).sum()
    count = float(sum(len(boxes) for boxes in gt_boxes))
    mask = reference_mask(gt_boxes, grid, 0.7, 0)
    normalizer = mask.sum() + 1e-4
    heat = (class_max_heatmap(student["response"], 1.0) - class_max_heatmap(teacher["response"], 2.0)).abs()
    reg = (regression_maps(student["response"]) - regression_maps(teacher["response"])).abs().mean(dim=1)
    return {
        "feature": feature / (count + 1e-4),
        "relation": relation / count,
        "response": ((mask * heat).sum() + (mask * reg).sum()) / normalizer,
    }


def bench_distill_terms(ctx: Context, case: str) -> dict:
    from unikd.distill.losses import FeatureDistillLoss, RelationDistillLoss, ResponseDistillLoss

    data = terms_inputs(ctx.device)
    grid, student, teacher, boxes = data["grid"], data["student"], data["teacher"], data["gt_boxes"]
    terms = {
        "feature": FeatureDistillLoss(grid),
        "relation": RelationDistillLoss(grid),
        "response": ResponseDistillLoss(grid),
    }
    leaves = [student["feature"], student["relation"], *(m for task in student["response"] for m in task.values())]

    def ours() -> dict[str, torch.Tensor]:
        return {name: term(student[name], teacher[name], boxes) for name, term in terms.items()}

    def reference() -> dict[str, torch.Tensor]:
        return reference_terms(student, teacher, boxes, grid)

    def zero_fill() -> None:  # the floor: a dense zero gradient for every map the terms read
        for leaf in leaves:
            torch.zeros_like(leaf)

    def gradients(losses: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        for leaf in leaves:
            leaf.grad = None
        sum(losses.values()).backward()
        return [leaf.grad for leaf in leaves]

    ours_values, reference_values = ours(), reference()
    value_error = max(
        abs(ours_values[n].item() - reference_values[n].item()) / abs(reference_values[n].item()) for n in terms
    )
    grad_error = max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        for a, b in zip(gradients(ours_values), gradients(reference_values), strict=True)
    )

    calls = {"ours": ours, "reference": reference}
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "backward": []} for name in calls}
    floor: list[float] = []
    repeats = ctx.repeats(5, 2)
    for round_index in range(repeats + 1):  # round 0 warms up
        for name, call in calls.items():
            for leaf in leaves:
                leaf.grad = None
            synchronize(ctx.device)
            start = time.perf_counter()
            losses = call()
            synchronize(ctx.device)
            middle = time.perf_counter()
            sum(losses.values()).backward()
            synchronize(ctx.device)
            end = time.perf_counter()
            if round_index:
                times[name]["forward"].append(middle - start)
                times[name]["backward"].append(end - middle)
        synchronize(ctx.device)
        start = time.perf_counter()
        zero_fill()
        synchronize(ctx.device)
        if round_index:
            floor.append(time.perf_counter() - start)
    total = {name: median([f + b for f, b in zip(t["forward"], t["backward"], strict=True)]) for name, t in times.items()}
    per_term = {}
    for name, term in terms.items():  # each term alone, ours (interleaved rounds, forward + backward)

        def step(name: str = name, term: Any = term) -> None:
            for leaf in leaves:
                leaf.grad = None
            term(student[name], teacher[name], boxes).backward()

        per_term[f"{name}_s"] = median(time_interleaved({name: step}, repeats, ctx.device)[name])
    floor_s = median(floor)
    return {
        "ratio": total["reference"] / total["ours"],
        "ratio_meaning": "per-sample reference / ours, forward + backward of the three UniDistill terms",
        "figures": {
            "ours_s": total["ours"],
            "ours_forward_s": median(times["ours"]["forward"]),
            "ours_backward_s": median(times["ours"]["backward"]),
            "reference_s": total["reference"],
            "reference_forward_s": median(times["reference"]["forward"]),
            "reference_backward_s": median(times["reference"]["backward"]),
            "floor_s": floor_s,
            "ours_over_floor": total["ours"] / floor_s,
            **{f"ours_{key}": value for key, value in per_term.items()},
            "value_rel_error": value_error,
            "grad_rel_error": grad_error,
        },
        "notes": [
            f"batch {TERMS_BATCH}, {TERMS_BOXES} boxes per sample (nuScenes-like sizes, random places and yaws), "
            f"feature on [B, 256, 180, 180], relation on [B, 512, 180, 180], response on the six-task head at "
            "180 x 180, random maps; defaults (student T 1, teacher T 2, mask radius max(0, int(r)))",
            "reference: the same formulas per sample (a slice of each map, boxes of that sample, the mask drawn "
            f"box by box); forward and backward timed in interleaved rounds, median of {repeats} after a warm-up",
            "floor: zeros_like of every map the terms read (the dense gradients a backward must fill); "
            "ours_<term>_s: each term alone, forward + backward",
            "value/grad_rel_error: largest relative difference of the losses and of the gradients (max-abs "
            "normalised) between ours and the reference",
        ],
    }
