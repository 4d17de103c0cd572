"""Speed and memory measurements of unikd (the only place where the project measures them).

    python tools/benchmark.py [--only NAME ...] [--data_root DIR] [--quick] [--device cpu|cuda]
                              [--precision 32|16-mixed|bf16-mixed] [--json out.json]

Entries: voxelize, data_loading, image_decode, lidar_train_step, bev_pool, camera_train_step, camera_forward,
metric, head_step, fuser_step, distill_step, distill_terms, center_targets, data_throughput.
Each entry prints a RATIO against a reference measured in the same run (its meaning is printed with
it), next to the absolute figures, and the run starts by printing the machine (CPU model, cores,
torch version and threads, GPU name, load average).

Method:
- Times are `time.perf_counter` wall times, the median of a few repeats after a warm-up
  (CUDA is synchronised before and after each timed call). Where two things are compared,
  their repeats are interleaved so that a load change on a shared machine hits both alike.
- Every case of an entry runs in a fresh Python subprocess, so that one case's allocations
  never hide another's.
- CPU peak memory: `resource.getrusage(RUSAGE_SELF).ru_maxrss` (the process's resident high
  water mark) after the measured call, minus the resident size just before it (read from
  /proc/self/statm after `gc.collect()` and glibc `malloc_trim(0)`). This sees every allocation,
  torch's included (tracemalloc does not see torch's). The high water mark only moves up: when
  the call did not raise it above the process's earlier peak, the figure is an upper bound
  (printed with "<=").
- CUDA peak memory: `torch.cuda.max_memory_allocated` minus the memory allocated before the call.
- Entries that need data use --data_root (a nuScenes root: real, or synthetic from
  tools/create_data.py); without it a small synthetic nuScenes-format dataset is built in a
  temporary folder first (timed and printed) and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import torch  # noqa: E402

from unikd.benchmarks.data import (  # noqa: E402
    THROUGHPUT_MODALITIES,
    bench_data_loading,
    bench_data_throughput,
    bench_image_decode,
    bench_voxelize,
)
from unikd.benchmarks.harness import (  # noqa: E402
    Context,
    Entry,
    machine_info,
    median,
    peak_memory,
    print_case,
    summary_table,
    synchronize,
    time_interleaved,
)
from unikd.benchmarks.inputs import (  # noqa: E402
    SYNTHETIC,
    SYNTHETIC_QUICK,
    build_synthetic,
    random_boxes,
    resolve_version,
)
from unikd.benchmarks.metric import bench_metric  # noqa: E402
from unikd.benchmarks.models import (  # noqa: E402
    bench_bev_pool,
    bench_camera_forward,
    bench_camera_train_step,
    bench_center_targets,
    bench_fuser_step,
    bench_head_step,
    bench_lidar_train_step,
    reference_draw_gaussian,
)
from unikd.ops.precision import enable_tf32  # noqa: E402

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
    import unikd.exps.distill_exp as distill_exp
    from unikd.benchmarks.distill_step import benchmark_distill_step

    pair, size = case.split("-")
    exp_class = distill_exp.load_exp_class(REPO / "exps" / "nuscenes" / "BEVFusion" / DISTILL_PAIRS[pair])
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
            f"(student {exp.model_size}, teacher {exp.teacher_model_size}; random teacher), batch 1 of the train "
            f"split; unikd.benchmarks.distill_step.benchmark_distill_step(repeats={repeats}): steps are forward + losses + "
            "backward (no optimizer), interleaved rounds, median after a warm-up round",
            "term_<name>_s: each distillation term's forward + backward alone on one step's outputs; terms_share: "
            "their sum over the distill step",
            "distill/student_peak_bytes: that function's peaks (on CPU: running sum of the torch profiler's "
            "allocations and frees); call_peak_bytes: this script's measure around the whole call",
        ],
    }


# ------------------------------------------------------------------------------------ 8. distillation terms
# nuScenes size of the three UniDistill terms' inputs: batch 2, a 256-channel low-level BEV (feature),
# a 512-channel high-level BEV (relation), the six-task CenterHead (response), all 180 x 180.
TERMS_BATCH, TERMS_CELLS, TERMS_BOXES = 2, 180, 60
TERMS_CHANNELS = {"feature": 256, "relation": 512}
def terms_inputs(device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Random maps and boxes of the nuScenes size (TERMS_*): student maps require grad."""
    from unikd.data.classes import TASKS
    from unikd.ops.bev_grid import BEVGrid

    gen = torch.Generator().manual_seed(seed)
    size = (TERMS_BATCH, TERMS_CELLS, TERMS_CELLS)

    def maps(channels: int, grad: bool) -> torch.Tensor:
        return torch.randn(size[0], channels, *size[1:], generator=gen).to(device).requires_grad_(grad)

    def head(grad: bool) -> list[dict[str, torch.Tensor]]:
        heads = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
        return [{"heatmap": maps(len(task), grad), **{k: maps(c, grad) for k, c in heads.items()}} for task in TASKS]

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


ENTRIES: dict[str, Entry] = {
    "voxelize": Entry(bench_voxelize, lambda quick: ["nuscenes"], True, "unikd.ops.voxelize.voxelize"),
    "data_loading": Entry(
        bench_data_loading, lambda quick: ["lidar", "lidar+camera"], True, "dataset + DataLoader + collate"
    ),
    "image_decode": Entry(
        bench_image_decode, lambda quick: ["small", "nuscenes"], True, "camera images: full vs reduced JPEG decode"
    ),
    "lidar_train_step": Entry(
        bench_lidar_train_step,
        lambda quick: ["small"] if quick else ["small", "nuscenes"],
        True,
        "BEVFusion LiDAR training step",
    ),
    "bev_pool": Entry(
        bench_bev_pool, lambda quick: ["small", "nuscenes"], True, "unikd.ops.bev_pool.bev_pool"
    ),
    "camera_train_step": Entry(
        bench_camera_train_step, lambda quick: ["small"], True, "BEVFusion camera training step"
    ),
    "camera_forward": Entry(
        bench_camera_forward, lambda quick: ["nuscenes"], True, "camera branch forward: Swin-T vs ResNet-50"
    ),
    "metric": Entry(bench_metric, lambda quick: ["synthetic"], True, "nuScenes metric: ours vs the devkit"),
    "head_step": Entry(bench_head_step, lambda quick: ["nuscenes"], False, "TransFusionHead vs CenterHead"),
    "fuser_step": Entry(
        bench_fuser_step, lambda quick: ["small"] if quick else ["small", "nuscenes"], False, "MGFM vs ConvFuser"
    ),
    "distill_step": Entry(
        bench_distill_step,
        lambda quick: ["camera_from_lidar-small"] if quick else list(DISTILL_CASES),
        True,
        "distillation training step",
    ),
    "distill_terms": Entry(
        bench_distill_terms, lambda quick: ["nuscenes"], False, "UniDistill terms: batched vs per-sample"
    ),
    "center_targets": Entry(
        bench_center_targets, lambda quick: ["batch1", "batch4"], False, "CenterHead targets: batched vs box loop"
    ),
    "data_throughput": Entry(
        bench_data_throughput,
        lambda quick: list(THROUGHPUT_MODALITIES),
        True,
        "one data worker vs the training step, nuScenes size",
    ),
}


# ------------------------------------------------------------------------------------ running
def run_case(
    args: argparse.Namespace,
    name: str,
    case: str,
    data_root: Path | None,
    version: str | None,
    synthetic: bool,
    tmp: Path,
) -> dict:
    """Run one case in a fresh interpreter and read back its result."""
    result_path = tmp / f"{name}-{case}.json".replace("+", "_")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_child",
        f"{name}:{case}",
        "--_result",
        str(result_path),
        "--device",
        args.device,
        "--metric_samples",
        str(args.metric_samples),
        "--precision",
        args.precision,
    ]
    if args.quick:
        command.append("--quick")
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if data_root is not None:
        command += ["--data_root", str(data_root), "--version", str(version)]
    if synthetic:
        command.append("--_synthetic")
    load_before = os.getloadavg()
    start = time.perf_counter()
    completed = subprocess.run(command, check=False)
    wall_s = time.perf_counter() - start
    if completed.returncode != 0 or not result_path.is_file():
        result: dict = {
            "error": f"the case's process exited with code {completed.returncode} (its output is above)"
        }
    else:
        result = json.loads(result_path.read_text())
    result.update(
        {
            "entry": name,
            "case": case,
            "wall_s": wall_s,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        }
    )
    return result


def run_child(args: argparse.Namespace) -> None:
    name, case = args._child.split(":", 1)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ctx = Context(
        device=torch.device(args.device),
        quick=args.quick,
        data_root=Path(args.data_root) if args.data_root else None,
        version=args.version,
        synthetic=args._synthetic,
        metric_samples=args.metric_samples,
        precision=args.precision,
    )
    if ctx.device.type == "cuda":
        enable_tf32()  # as training on GPUs
    result = ENTRIES[name].run(ctx, case)
    Path(args._result).write_text(json.dumps(result, indent=1, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=sorted(ENTRIES), help="entries to run (default: all)")
    parser.add_argument(
        "--data_root", help="nuScenes root (default: build a small synthetic one in a temp folder)"
    )
    parser.add_argument("--version", default=None, help="nuScenes version under --data_root (default: auto)")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, smaller sets, no nuScenes-size train step"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--precision",
        default="32",
        choices=("32", "16-mixed", "bf16-mixed"),
        help="the training steps' precision, as the experiments' --precision (the mixed ones with --device cuda)",
    )
    parser.add_argument("--json", help="also write every result to this JSON file")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads in every case (default: torch's default); on a shared, loaded machine "
        "1 avoids measuring OpenMP threads waiting for each other",
    )
    parser.add_argument(
        "--metric_samples",
        type=int,
        default=320,
        help="samples of the metric's larger synthetic set (built by the run; default 320, nuScenes val: 6019)",
    )
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_result", help=argparse.SUPPRESS)
    parser.add_argument("--_synthetic", action="store_true", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args._child:
        run_child(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if args.device == "cpu" and args.precision != "32":
        raise SystemExit(f"--precision {args.precision} needs --device cuda: the CPU build of spconv computes float32 only")
    names = args.only or list(ENTRIES)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python tools/benchmark.py " + " ".join(sys.argv[1:])
    machine = machine_info(torch.device(args.device))
    print(f"command: {command.strip()}")
    for key, value in machine.items():
        print(f"{key}: {value}")
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="unikd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data_root = Path(args.data_root) if args.data_root else None
        version = resolve_version(data_root, args.version) if data_root else None
        synthetic = False
        if data_root is None and any(ENTRIES[name].needs_data for name in names):
            data_root, version, synthetic = tmp / "nuscenes", SYNTHETIC["version"], True
            settings = SYNTHETIC_QUICK if args.quick else SYNTHETIC
            print(f"building the synthetic dataset ({settings}) in {data_root} ...", flush=True)
            build_s = build_synthetic(data_root, args.quick)
            print(f"synthetic dataset built in {build_s:.1f} s", flush=True)
            machine["synthetic_dataset"] = {**settings, "build_s": round(build_s, 1)}
        for name in names:
            for case in ENTRIES[name].cases(args.quick):
                print(f"--- {name}/{case}: {ENTRIES[name].description}", flush=True)
                result = run_case(args, name, case, data_root, version, synthetic, tmp)
                print_case(name, case, result)
                results.append(result)
    machine["load_average_end"] = os.getloadavg()
    machine["total_s"] = round(time.perf_counter() - start, 1)
    print()
    print(summary_table(results))
    print(f"\ntotal {machine['total_s']:.0f} s; load average at the end: {machine['load_average_end']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"command": command.strip(), "machine": machine, "results": results}, indent=1, default=str
            )
        )


if __name__ == "__main__":
    main()
