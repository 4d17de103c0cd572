"""Bad data and bad settings are refused when a run starts, before any training step, naming the file,
table record or sample token and what was expected. Each case corrupts one file or record of a
hard-linked copy of the synthetic set and runs the experiment's CLI (in this process)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unikd.data.checks import DataError
from unikd.data.infos import build_infos, load_nuscenes
from unikd.data.nuscenes_dataset import NuScenesDetectionDataset
from unikd.data.synthetic import generate_synthetic_nuscenes
from unikd.exps.cli import run_cli
from unikd.exps.exp_files import load_exp_class

EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"
LIDAR = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_lidar_exp.py")
CAMERA = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_camera_exp.py")
DISTILL = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_lidarsmall_exp_distill_lidar.py")
FIXTURES = Path(__file__).parent / "fixtures" / "mmdet3d_infos"
VERSION = "v1.0-mini"
RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def linked_copy(root: Path, destination: Path) -> Path:
    """A copy of a dataset made of hard links: change a file with `replace_file`, never in place."""
    return Path(shutil.copytree(root, destination, copy_function=os.link))


def replace_file(path: Path, data: bytes) -> None:
    """New content at `path`, leaving the file it was linked to as it is."""
    path.unlink()
    path.write_bytes(data)


def edit_table(root: Path, name: str, edit) -> None:
    table = root / VERSION / f"{name}.json"
    records = json.loads(table.read_text())
    edit(records)
    replace_file(table, json.dumps(records).encode())


def train(exp_class: type, root: Path, out: Path, *args: str, options: tuple[str, ...] = ()) -> None:
    run_cli(exp_class, [
        "--data_root", str(root), "--output_root", str(out), "--no_progress_bar", "-b", "1", "--max_epochs", "1",
        "--limit_train_batches", "1", "--limit_val_batches", "1", *args,
        "--exp_options", "model_size=small", "num_workers=0", "num_sweeps=2", *options,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def train_infos(synthetic_root: Path) -> list[dict]:
    return build_infos(load_nuscenes(synthetic_root, VERSION), "mini_train", max_sweeps=2)


@pytest.fixture
def root(synthetic_root: Path, tmp_path: Path) -> Path:
    return linked_copy(synthetic_root, tmp_path / "nuscenes")


def test_an_empty_point_file_is_refused_at_start(root: Path, train_infos: list[dict], tmp_path: Path) -> None:
    empty = root / train_infos[5]["lidar_path"]
    replace_file(empty, b"")  # 0 % 20 == 0: passed the size check and failed in spconv
    with pytest.raises(OSError, match=re.escape(f"{empty} (empty (0 bytes))")):
        train(LIDAR, root, tmp_path / "out")


def test_non_finite_points_name_their_file_when_loaded(root: Path, train_infos: list[dict]) -> None:
    """A finiteness scan of every point file at start would read the whole set; it is checked at load."""
    sweep = root / train_infos[3]["sweeps"][0]["path"]
    points = np.fromfile(sweep, dtype=np.float32).reshape(-1, 5)
    points[[2, 7], 1] = [np.nan, np.inf]
    replace_file(sweep, points.tobytes())
    dataset = NuScenesDetectionDataset(root, VERSION, "mini_train", RANGE, num_sweeps=2)
    with pytest.raises(DataError, match=re.escape(f"point cloud {sweep}: 2 of the {len(points)} points hold a non-finite value")):
        dataset[3]
    dataset[4]  # the others load


def test_unreadable_images_are_refused_at_start(root: Path, train_infos: list[dict], tmp_path: Path) -> None:
    empty = root / train_infos[1]["cams"]["CAM_BACK"]["path"]
    truncated = root / train_infos[6]["cams"]["CAM_FRONT_LEFT"]["path"]
    replace_file(empty, b"")
    replace_file(truncated, truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(OSError, match="2 of the .* files of split 'mini_train' are missing, truncated or unreadable") as error:
        train(CAMERA, root, tmp_path / "out")
    assert f"{empty} (empty (0 bytes))" in str(error.value)
    assert f"{truncated} (JPEG without its end marker (a truncated file))" in str(error.value)


def test_a_non_positive_box_size_names_the_sample(root: Path, train_infos: list[dict], tmp_path: Path) -> None:
    info = train_infos[9]
    nusc = load_nuscenes(root, VERSION)
    ann_token = nusc.get("sample", info["token"])["anns"][2]

    def shrink(records: list[dict]) -> None:
        record = next(r for r in records if r["token"] == ann_token)
        record["size"] = [record["size"][0], -record["size"][1], record["size"][2]]  # w, -l, h

    edit_table(root, "sample_annotation", shrink)
    with pytest.raises(DataError, match=rf"sample {info['token']}: box \d+ \(\w+\) has .*size \(l, w, h\) \[-"):
        train(LIDAR, root, tmp_path / "out")


def test_a_zero_quaternion_names_the_calibration_record(root: Path, train_infos: list[dict], tmp_path: Path) -> None:
    nusc = load_nuscenes(root, VERSION)
    lidar = nusc.get("sample_data", nusc.get("sample", train_infos[0]["token"])["data"]["LIDAR_TOP"])
    calib_token = lidar["calibrated_sensor_token"]

    def zero(records: list[dict]) -> None:
        next(r for r in records if r["token"] == calib_token)["rotation"] = [0.0, 0.0, 0.0, 0.0]

    edit_table(root, "calibrated_sensor", zero)
    with pytest.raises(DataError, match=rf"calibrated_sensor.json record {calib_token}: rotation \[0.0, 0.0, 0.0, 0.0\] has norm 0; expected a unit quaternion"):
        train(LIDAR, root, tmp_path / "out")


def test_samples_out_of_time_order_name_the_sample(root: Path, train_infos: list[dict], tmp_path: Path) -> None:
    first, second = train_infos[10], train_infos[11]  # consecutive samples of one scene
    assert first["scene_name"] == second["scene_name"]

    def duplicate(records: list[dict]) -> None:  # velocities divide by the difference
        next(r for r in records if r["token"] == second["token"])["timestamp"] = first["timestamp"]

    edit_table(root, "sample", duplicate)
    with pytest.raises(DataError, match=rf"sample.json record {second['token']}: timestamp {first['timestamp']} is not after the previous sample {first['token']}"):
        train(LIDAR, root, tmp_path / "out")


def test_a_sweep_later_than_its_key_frame_names_it(root: Path, train_infos: list[dict], tmp_path: Path) -> None:
    info = train_infos[13]
    sweep_path = info["sweeps"][0]["path"]

    def later(records: list[dict]) -> None:
        sweep = next(r for r in records if r["filename"] == sweep_path)
        sweep["timestamp"] = info["timestamp"] + 20_000  # 0.02 s after the key frame

    edit_table(root, "sample_data", later)
    with pytest.raises(DataError, match=re.escape(f"sample {info['token']}: sweep {sweep_path} is 0.020000 s later than its key frame")):
        train(LIDAR, root, tmp_path / "out")


def test_a_teacher_with_non_finite_weights_is_refused(tmp_path: Path) -> None:
    teacher = LIDAR(exp_options={"model_size": "nuscenes"}).model
    state = {f"model.{name}": value.clone() for name, value in teacher.state_dict().items()}
    state["model.head.shared_conv.0.weight"][0, 0] = float("nan")
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match=re.escape(f"--teacher_ckpt {path}") + r" holds non-finite weights \(NaN or inf\) in 1 tensors: head.shared_conv.0.weight"):
        DISTILL(exp_options={"model_size": "small"}, teacher_ckpt=str(path))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("distill_weights.feature=-10",), r"distill_weights \{'feature': -10.0\}: expected finite weights >= 0"),
        (("lr=0",), r"lr must be a positive finite learning rate, got 0"),
    ],
)
def test_bad_optimisation_settings_are_refused(
    synthetic_root: Path, tmp_path: Path, options: tuple[str, ...], message: str
) -> None:
    teacher = tmp_path / "teacher.ckpt"  # refused before the teacher is read
    teacher.write_bytes(b"unread")
    with pytest.raises(ValueError, match=message):
        train(DISTILL, synthetic_root, tmp_path / "out", "--teacher_ckpt", str(teacher), options=options)


def test_a_batch_larger_than_the_training_split_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"batch size 1000 per device is larger than the 64 samples each of the 1 process\(es\) gets from the 64 samples of split 'mini_train'"):
        train(LIDAR, synthetic_root, tmp_path / "out", "-b", "1000")


@pytest.mark.parametrize("backend", ["metric", "devkit"])
def test_the_ground_truth_is_checked_at_start_with_infos(tmp_path_factory, tmp_path: Path, backend: str) -> None:
    """--infos reads no table for training; the evaluation still needs them: said at start, by unikd."""
    made = json.loads((FIXTURES / "synthetic.json").read_text())
    root = generate_synthetic_nuscenes(tmp_path / "nuscenes", **made["synthetic"])
    shutil.rmtree(root / VERSION)
    with pytest.raises(FileNotFoundError, match=rf"the evaluation \(--eval_backend {backend}\) reads the ground truth of split 'mini_val' from the nuScenes tables, also with --infos: nuScenes tables missing under .*{VERSION}"):
        train(LIDAR, root, tmp_path / "out", "--infos", str(FIXTURES / "1.x"), "--eval_backend", backend)
