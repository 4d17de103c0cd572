"""tools/benchmark.py as users run it: a quick run's printed and JSON figures, and an unknown entry refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unikd.benchmarks.entries import ENTRIES

TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def run_tool(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, env=ENV, timeout=timeout, check=False
    )


def test_quick_run_reports_each_case_with_its_ratio(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    completed = run_tool(
        "--only", "voxelize", "center_targets", "--quick", "--threads", "1",
        "--data_root", str(synthetic_root), "--json", str(out),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["torch_threads"] == 1
    results = {(r["entry"], r["case"]): r for r in report["results"]}
    assert list(results) == [("voxelize", "nuscenes"), ("center_targets", "batch1"), ("center_targets", "batch4")]

    voxelize = results["voxelize", "nuscenes"]
    figures = voxelize["figures"]
    assert set(figures) == {
        "points", "sweeps", "voxels", "ours_s", "reference_scaled_s", "reference_subsample_points",
        "reference_subsample_s", "ours_subsample_s", "subsample_speedup", "subsample_voxel_agreement",
        "ours_peak_bytes", "ours_peak_upper_bound",
    }  # fmt: skip
    # The reference is timed on a subsample and scaled by the points: the ratio is that scaled time over ours.
    scaled = figures["reference_subsample_s"] * figures["points"] / figures["reference_subsample_points"]
    assert figures["reference_scaled_s"] == pytest.approx(scaled, rel=1e-12)
    assert voxelize["ratio"] == pytest.approx(figures["reference_scaled_s"] / figures["ours_s"], rel=1e-12)
    assert figures["subsample_speedup"] == pytest.approx(
        figures["reference_subsample_s"] / figures["ours_subsample_s"], rel=1e-12
    )
    assert figures["sweeps"] == 10  # the key frame and 9 of its 14 earlier sweeps (8 key frames a scene)
    assert figures["reference_subsample_points"] == min(figures["points"], 10000)  # --quick subsample

    for batch in (1, 4):
        targets = results["center_targets", f"batch{batch}"]
        figures = targets["figures"]
        assert set(figures) == {
            "batch", "boxes_per_sample", "batched_s", "loop_s", "batched_ops", "loop_ops",
            "batched_host_reads", "loop_host_reads", "equal",
        }  # fmt: skip
        assert figures["batch"] == batch and figures["boxes_per_sample"] == 40 and figures["equal"] is True
        assert targets["ratio"] == pytest.approx(figures["loop_s"] / figures["batched_s"], rel=1e-12)
        assert targets["ratio_meaning"] == "box loop / batched, time per call"
        # Printed as in the JSON: the case's ratio line and its row of the summary table.
        assert f"[center_targets/batch{batch}] ratio {targets['ratio']:.3g} (box loop / batched" in completed.stdout
        assert f"| center_targets | batch{batch} | {targets['ratio']:.3g} |" in completed.stdout
    assert f"| voxelize | nuscenes | {voxelize['ratio']:.3g} |" in completed.stdout


def test_an_unknown_entry_is_refused_with_the_known_ones() -> None:
    completed = run_tool("--only", "voxelise", timeout=60)
    assert completed.returncode == 2
    assert "argument --only: invalid choice: 'voxelise'" in completed.stderr
    for name in ENTRIES:
        assert name in completed.stderr
    assert "machine" not in completed.stdout and "cpu:" not in completed.stdout  # nothing ran
