"""The benchmark harness: what a case knows of its run (`Context`), an entry of the registry (`Entry`),
interleaved timing, peak memory, the machine, and the printed figures and summary table.

The method (wall times, peaks, one subprocess per case) is described in tools/benchmark.py's docstring.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unikd.data.infos import SPLITS_BY_VERSION

MIB = 1024 * 1024


# ------------------------------------------------------------------------------------ context
@dataclass
class Context:
    """What a case needs to know about the run."""

    device: torch.device
    quick: bool
    data_root: Path | None
    version: str | None
    synthetic: bool  # data_root is the dataset this run built
    metric_samples: int
    precision: str = "32"  # the training step's: "32", "16-mixed" or "bf16-mixed" (autocast, as --precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training step's autocast for `precision` (none for 32)."""
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "16-mixed" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def repeats(self, default: int, quick: int) -> int:
        return quick if self.quick else default

    @property
    def eval_split(self) -> str:
        return SPLITS_BY_VERSION[self.require_version()][-1]

    def require_version(self) -> str:
        if self.data_root is None or self.version is None:
            raise RuntimeError(
                "this entry needs a dataset (--data_root, or the synthetic one the run builds)"
            )
        return self.version


@dataclass
class Entry:
    """A benchmark: a function of (context, case) per case; each case runs in its own subprocess."""

    run: Callable[[Context, str], dict]
    cases: Callable[[bool], list[str]]  # quick -> case names
    needs_data: bool
    description: str


# ------------------------------------------------------------------------------------ measuring
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each call per repeat: `warmup` untimed rounds, then `repeats` rounds of every call in turn."""
    for _ in range(warmup):
        for call in calls.values():
            call()
        synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """The process's resident high water mark (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_free_memory() -> None:
    """Collect garbage and hand glibc's free heap back to the OS, so that RSS counts live data."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(call: Callable[[], object], device: torch.device) -> dict[str, Any]:
    """Peak memory of one call above what the process held just before it (module doc)."""
    if device.type == "cuda":
        synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - start, "upper_bound": False}
    release_free_memory()
    rss_before = current_rss_bytes()
    high_water_before = max_rss_bytes()
    call()
    high_water_after = max_rss_bytes()
    return {
        "peak_bytes": high_water_after - rss_before,
        "upper_bound": high_water_after <= high_water_before,
    }


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated above the start"
    return "ru_maxrss after the call minus RSS before it (fresh subprocess)"


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors of a batch (nested in dicts and lists) on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [to_device(item, device) for item in value]
    return value


# ------------------------------------------------------------------------------------ reporting
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average": os.getloadavg(),
        "peak_memory": memory_method(device),
    }
    try:
        from importlib.metadata import distributions

        info["spconv"] = [
            f"{d.metadata['Name']} {d.version}" for d in distributions() if "spconv" in d.metadata["Name"]
        ]
    except Exception:  # noqa: BLE001 - information only
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def format_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if key.endswith("_bytes") or "_bytes@" in key:
        return f"{value / MIB:.1f} MiB"
    if key.endswith("_s") or "_s@" in key:
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def format_figures(figures: dict[str, Any]) -> str:
    """`key=value` pairs; a peak marked as an upper bound gets '<='."""
    parts = []
    for key, value in figures.items():
        if key.endswith("_upper_bound"):
            continue
        bound = figures.get(key.removesuffix("_bytes") + "_upper_bound", False)
        parts.append(f"{key}={'<=' if bound else ''}{format_value(key, value)}")
    return ", ".join(parts)


def print_case(name: str, case: str, result: dict) -> None:
    label = f"[{name}/{case}]"
    if "skipped" in result or "error" in result:
        print(
            f"{label} {'SKIPPED' if 'skipped' in result else 'ERROR'}: {result.get('skipped') or result.get('error')}"
        )
        return
    print(f"{label} ratio {result['ratio']:.3g} ({result['ratio_meaning']})")
    print(f"{label} {format_figures(result['figures'])}")
    for note in result.get("notes", []):
        print(f"{label}   - {note}")
    load = ", ".join(f"{x:.2f}" for x in result["load_average_before"])
    print(f"{label} load average before: {load}; case wall time {result['wall_s']:.1f} s")


def summary_table(results: list[dict]) -> str:
    lines = ["| entry | case | ratio | ratio is | absolute figures |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        if "ratio" not in r:
            reason = r.get("skipped") or r.get("error")
            lines.append(
                f"| {r['entry']} | {r['case']} | - | {'skipped' if 'skipped' in r else 'error'}: {reason} | |"
            )
            continue
        lines.append(
            f"| {r['entry']} | {r['case']} | {r['ratio']:.3g} | {r['ratio_meaning']} | {format_figures(r['figures'])} |"
        )
    return "\n".join(lines)
