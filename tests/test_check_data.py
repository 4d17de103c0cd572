"""tools/check_data.py on the synthetic set: a clean copy passes with every box's points matching its
annotation; a corrupted copy is reported by file and token, in the summary and in findings.txt."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unikd.data.infos import build_infos, load_nuscenes

TOOL = Path(__file__).resolve().parents[1] / "tools" / "check_data.py"
VERSION = "v1.0-mini"


def load_tool():
    spec = importlib.util.spec_from_file_location("check_data", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return load_tool()


def test_a_clean_set_passes_and_the_overlays_are_drawn(tool, synthetic_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert tool.main(["--data_root", str(synthetic_root), "--num_sweeps", "2", "--out", str(out), "--overlays", "1"]) == 0
    printed = capsys.readouterr().out
    assert "boxes: points vs num_lidar_pts" in printed and (out / "findings.txt").read_text() == ""
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 6  # one sample, one per camera
    with Image.open(overlays[0]) as image:
        assert image.size[0] > 300


def test_a_corrupted_copy_is_reported_by_file_and_token(tool, synthetic_root: Path, tmp_path: Path, capsys) -> None:
    root = Path(shutil.copytree(synthetic_root, tmp_path / "nuscenes", copy_function=os.link))
    infos = build_infos(load_nuscenes(root, VERSION), "mini_val", max_sweeps=2)
    info = infos[3]
    cloud = root / infos[5]["lidar_path"]
    points = np.fromfile(cloud, dtype=np.float32).reshape(-1, 5)
    points[11, 0] = np.nan
    cloud.unlink()
    cloud.write_bytes(points.tobytes())
    table = root / VERSION / "sample_annotation.json"
    annotations = json.loads(table.read_text())
    moved = next(a for a in annotations if a["sample_token"] == info["token"] and a["num_lidar_pts"] > 20)
    moved["translation"] = [moved["translation"][0] + 30.0, *moved["translation"][1:]]  # its points stay behind
    table.unlink()
    table.write_text(json.dumps(annotations))

    out = tmp_path / "report"
    assert tool.main(["--data_root", str(root), "--num_sweeps", "2", "--out", str(out), "--overlays", "0"]) == 1
    findings = (out / "findings.txt").read_text().splitlines()
    assert f"[point file] {cloud}: 1 of the {len(points)} points hold a non-finite value (NaN or inf); expected finite floats" in findings
    moved_box = [line for line in findings if line.startswith(f"[box points] sample {info['token']}: box ")]
    assert len(moved_box) == 1 and f"; the annotation records {moved['num_lidar_pts']}" in moved_box[0]
    assert f"sample {info['token']}" in capsys.readouterr().out
