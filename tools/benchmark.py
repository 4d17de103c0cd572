"""Speed and memory measurements of unikd (the only place where the project measures them).

    python tools/benchmark.py [--only NAME ...] [--data_root DIR] [--quick] [--device cpu|cuda]
                              [--precision 32|16-mixed|bf16-mixed] [--json out.json]

Entries: voxelize, data_loading, image_decode, lidar_train_step, bev_pool, camera_train_step, camera_forward,
metric, head_step, fuser_step, distill_step, distill_terms, center_targets, data_throughput
(defined in unikd/benchmarks/, registered in unikd.benchmarks.entries.ENTRIES).
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
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import torch  # noqa: E402

from unikd.benchmarks.entries import ENTRIES  # noqa: E402
from unikd.benchmarks.harness import Context, machine_info, print_case, summary_table  # noqa: E402
from unikd.benchmarks.inputs import SYNTHETIC, SYNTHETIC_QUICK, build_synthetic, resolve_version  # noqa: E402
from unikd.ops.precision import enable_tf32  # noqa: E402


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
