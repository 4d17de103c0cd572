"""mmdet3d info files (made by mmdet3d's converter: tools/make_mmdet3d_info_fixtures.py) read as unikd
infos: the same records and dataset items as the devkit path on the synthetic set they were made from,
and clear errors on bad input. mmdet3d is not needed: the fixtures are committed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from unikd.data.infos import SPLITS_BY_VERSION, build_infos, load_nuscenes
from unikd.data.mmdet3d_infos import info_files, read_mmdet3d_infos
from unikd.data.nuscenes_boxes import wrap_angle
from unikd.data.nuscenes_dataset import NuScenesDetectionDataset
from unikd.data.synthetic import generate_synthetic_nuscenes
from unikd.exps.cli import run_cli
from unikd.exps.exp_files import load_exp_class

FIXTURES = Path(__file__).parent / "fixtures" / "mmdet3d_infos"
MADE = json.loads((FIXTURES / "synthetic.json").read_text())
VERSION = MADE["synthetic"]["version"]
SPLITS = SPLITS_BY_VERSION[VERSION]
NUM_SWEEPS = MADE["max_sweeps"] + 1  # every sweep of the files, and the key frame
# fixture folder -> (box convention to name, whether the file stores its matrices in float32)
FOLDERS = {"1.x": (None, True), "1.0rc": ("1.x", False), "0.x": ("0.x", False)}
RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set the fixtures were made from, made again (the same arguments give the same bytes)."""
    return generate_synthetic_nuscenes(tmp_path_factory.mktemp("mmdet3d_infos") / "nuscenes", **MADE["synthetic"])


@pytest.fixture(scope="module")
def devkit_infos(root: Path) -> dict[str, dict[str, dict]]:
    """split -> token -> info of the devkit path."""
    nusc = load_nuscenes(root, VERSION)
    return {split: {info["token"]: info for info in build_infos(nusc, split, NUM_SWEEPS)} for split in SPLITS}


def read(folder: str, split: str, num_sweeps: int = NUM_SWEEPS) -> list[dict]:
    return read_mmdet3d_infos(info_files([FIXTURES / folder], VERSION)[split], VERSION, num_sweeps, FOLDERS[folder][0])


def assert_same_info(ours: dict, devkit: dict, float32: bool) -> None:
    """Field by field; matrices to 1e-6 (relative) where the file stores float32, else to float64 rounding."""
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if float32 else {"rtol": 1e-12, "atol": 1e-9}
    assert set(ours) == set(devkit)
    assert (ours["token"], ours["timestamp"], ours["lidar_path"]) == (devkit["token"], devkit["timestamp"], devkit["lidar_path"])
    assert ours["scene_name"] == ""  # in neither mmdet3d layout
    np.testing.assert_allclose(ours["lidar2global"], devkit["lidar2global"], **tolerance)
    assert [(s["path"], s["time_lag"]) for s in ours["sweeps"]] == [(s["path"], s["time_lag"]) for s in devkit["sweeps"]]
    for sweep, expected in zip(ours["sweeps"], devkit["sweeps"], strict=True):
        np.testing.assert_allclose(sweep["sensor2lidar"], expected["sensor2lidar"], **tolerance)
    assert list(ours["cams"]) == list(devkit["cams"])
    for channel, cam in ours["cams"].items():
        assert cam["path"] == devkit["cams"][channel]["path"]
        np.testing.assert_array_equal(cam["cam2img"], devkit["cams"][channel]["cam2img"])
        np.testing.assert_allclose(cam["lidar2cam"], devkit["cams"][channel]["lidar2cam"], **tolerance)
    assert list(ours["gt_names"]) == list(devkit["gt_names"])
    for name in ("num_lidar_pts", "num_radar_pts"):
        assert ours[name].dtype == np.int64
        np.testing.assert_array_equal(ours[name], devkit[name])
    assert ours["gt_boxes"].dtype == np.float64
    assert np.all((-np.pi <= ours["gt_boxes"][:, 6]) & (ours["gt_boxes"][:, 6] < np.pi))  # the devkit path's range
    assert_same_boxes(ours["gt_boxes"], devkit["gt_boxes"], atol=1e-6)


def assert_same_boxes(boxes: np.ndarray, expected: np.ndarray, atol: float) -> None:
    """Yaw as an angle: near +-pi the two paths' rounding may land on either side."""
    assert boxes.shape == expected.shape
    np.testing.assert_allclose(np.delete(boxes, 6, axis=1), np.delete(expected, 6, axis=1), rtol=0, atol=atol)
    np.testing.assert_allclose(wrap_angle(boxes[:, 6] - expected[:, 6]), 0, atol=atol)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_records_equal_the_devkit_paths(folder: str, split: str, devkit_infos: dict) -> None:
    infos = read(folder, split)
    expected = devkit_infos[split]
    assert sorted(info["token"] for info in infos) == sorted(expected), (
        "the fixtures were made from another synthetic set: remake them with tools/make_mmdet3d_info_fixtures.py"
    )
    for info in infos:
        assert_same_info(info, expected[info["token"]], float32=FOLDERS[folder][1])
    assert max(len(info["sweeps"]) for info in infos) == MADE["max_sweeps"]  # mmdet3d's cut shows
    assert sum(len(info["gt_boxes"]) for info in infos) > 20


@pytest.mark.parametrize("folder", FOLDERS)
def test_dataset_items_equal_the_devkit_paths(folder: str, root: Path) -> None:
    split = SPLITS[-1]
    kwargs = {"num_sweeps": NUM_SWEEPS, "use_camera": True}
    devkit = NuScenesDetectionDataset(root, VERSION, split, RANGE, **kwargs)
    file = info_files([FIXTURES / folder], VERSION)[split]
    ours = NuScenesDetectionDataset(root, VERSION, split, RANGE, **kwargs, infos_file=file, infos_box_convention=FOLDERS[folder][0])
    index_of = {info["token"]: i for i, info in enumerate(devkit.infos)}
    index = max(range(len(ours)), key=lambda i: len(ours.infos[i]["sweeps"]))
    item, expected = ours[index], devkit[index_of[ours.infos[index]["token"]]]
    assert set(item) == set(expected) and item["sample_token"] == expected["sample_token"]
    points, expected_points = item["points"], expected["points"]
    assert points.shape == expected_points.shape and len(torch.unique(points[:, 4])) == NUM_SWEEPS
    torch.testing.assert_close(points, expected_points, rtol=0, atol=1e-5)
    key = points[:, 4] == 0
    assert torch.equal(points[key], expected_points[key])
    assert torch.equal(item["imgs"], expected["imgs"]) and torch.equal(item["cam2img"], expected["cam2img"])
    for name in ("lidar2cam", "lidar2global"):
        torch.testing.assert_close(item[name], expected[name], rtol=1e-6, atol=1e-5)
    assert_same_boxes(item["gt_boxes"].double().numpy(), expected["gt_boxes"].double().numpy(), atol=1e-5)
    assert torch.equal(item["gt_labels"], expected["gt_labels"]) and len(item["gt_labels"]) > 5


def test_info_files_follow_mmdet3d_names(tmp_path: Path) -> None:
    assert info_files([tmp_path], "v1.0-trainval") == {
        "train": tmp_path / "nuscenes_infos_train.pkl",
        "val": tmp_path / "nuscenes_infos_val.pkl",
    }
    assert info_files([tmp_path], "v1.0-test") == {"test": tmp_path / "nuscenes_infos_test.pkl"}
    assert info_files(["a.pkl", "b.pkl"], "v1.0-mini") == {"mini_train": Path("a.pkl"), "mini_val": Path("b.pkl")}
    with pytest.raises(ValueError, match=r"one info file per split of v1.0-mini \(mini_train mini_val\); got a.pkl"):
        info_files(["a.pkl"], "v1.0-mini")


def rewritten(source: Path, target: Path, edit) -> Path:
    """`target`: the committed fixture `source` (read with plain pickle: it is ours) after `edit(data)`."""
    with open(source, "rb") as file:
        data = pickle.load(file)
    edit(data)
    with open(target, "wb") as file:
        pickle.dump(data, file)
    return target


def test_bevfusion_names_and_emergency_vehicles(tmp_path: Path) -> None:
    """BEVFusion names the intrinsics `camera_intrinsics`; a 0.x file keeps vehicle.emergency.* names: cars."""
    source = FIXTURES / "0.x" / "nuscenes_infos_val.pkl"

    police = []

    def bevfusion(data: dict) -> None:
        for info in data["infos"]:
            for cam in info["cams"].values():
                cam["camera_intrinsics"] = cam.pop("cam_intrinsic")
            names = info["gt_names"].tolist()
            if "car" in names:
                names[names.index("car")] = "vehicle.emergency.police"
                police.append(info["token"])
            info["gt_names"] = np.array(names)

    original = read_mmdet3d_infos(source, VERSION, NUM_SWEEPS, "0.x")
    edited = read_mmdet3d_infos(rewritten(source, tmp_path / "bevfusion.pkl", bevfusion), VERSION, NUM_SWEEPS, "0.x")
    assert police
    for ours, theirs in zip(edited, original, strict=True):
        assert_same_info(ours, theirs, float32=False)


def test_1x_warns_about_the_emergency_vehicles_it_left_out(tmp_path: Path) -> None:
    source = FIXTURES / "1.x" / "nuscenes_infos_val.pkl"
    path = rewritten(source, tmp_path / "police.pkl", lambda data: data["metainfo"]["categories"].update({"vehicle.emergency.police": -1}))
    with pytest.warns(UserWarning, match=r"police.pkl labels the boxes of vehicle.emergency.police -1.*as car"):
        read_mmdet3d_infos(path, VERSION, NUM_SWEEPS)


def test_a_run_asking_for_more_sweeps_than_the_file_has_is_warned() -> None:
    with pytest.warns(UserWarning, match=f"at most {MADE['max_sweeps']} sweeps, the run asks for up to 14"):
        infos = read("1.x", SPLITS[-1], num_sweeps=15)
    assert max(len(info["sweeps"]) for info in infos) == MADE["max_sweeps"]


class _RunsCode:
    def __reduce__(self):
        return (print, ("a pickle ran code",))


@pytest.mark.parametrize(
    ("content", "version", "convention", "message"),
    [
        ({"infos": []}, VERSION, "0.x", r"is not an mmdet3d nuScenes info file: expected a dict .* found \['infos'\]"),
        ([{"sample_token": "t"}], VERSION, None, "is not an mmdet3d nuScenes info file: .* found list"),
        ({"metainfo": {"version": "v1.0-trainval"}, "data_list": []}, VERSION, None, "holds nuScenes version 'v1.0-trainval'; this run reads 'v1.0-mini'"),
        ({"metainfo": {"version": VERSION}, "data_list": []}, VERSION, "0.x", "always in box convention 1.x"),
        ({"infos": [], "metadata": {"version": VERSION}}, VERSION, None, "does not say its box convention: name it"),
        ({"metainfo": {"version": VERSION}, "data_list": []}, VERSION, None, "'metainfo' has no 'categories'"),
        ({"infos": {}, "metadata": {"version": VERSION}}, VERSION, "0.x", "'infos' is not a list of records"),
        ({"infos": [{"token": "t"}], "metadata": {"version": VERSION}}, VERSION, "0.x", r"record 0 is not a 0.x nuScenes info record: KeyError\('ego2global_rotation'\)"),
        (
            {"metainfo": {"version": VERSION, "categories": {}}, "data_list": [{"token": "t"}]},
            VERSION,
            None,
            r"record 0 is not a 1.x nuScenes info record: KeyError\('lidar_points'\)",
        ),
        ({"infos": _RunsCode(), "metadata": {}}, VERSION, "0.x", "not an mmdet3d info pickle: refusing to build builtins.print"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, capsys, content, version: str, convention, message: str) -> None:
    path = tmp_path / "nuscenes_infos_val.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=f"{path}.*{message}"):
        read_mmdet3d_infos(path, version, NUM_SWEEPS, convention)
    assert "ran code" not in capsys.readouterr().out


def test_missing_and_non_pickle_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"mmdet3d info file {tmp_path / 'none.pkl'} does not exist"):
        read_mmdet3d_infos(tmp_path / "none.pkl", VERSION)
    (tmp_path / "notes.pkl").write_text("not a pickle")
    with pytest.raises(ValueError, match="notes.pkl is not an mmdet3d info pickle"):
        read_mmdet3d_infos(tmp_path / "notes.pkl", VERSION)


def test_cli_reads_the_infos_it_is_given(root: Path, tmp_path: Path) -> None:
    """--infos FOLDER --infos_box_convention reaches the datasets of a run (here -e on one batch)."""
    lidar = load_exp_class(Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_lidar_exp.py")
    exp = run_cli(
        lidar,
        ["--data_root", str(root), "--output_root", str(tmp_path), "--no_progress_bar", "-e", "--allow_untrained",
         "--limit_val_batches", "1", "--infos", str(FIXTURES / "0.x"), "--infos_box_convention", "0.x",
         "--exp_options", "model_size=small", "num_workers=0", "num_sweeps=2"],
    )
    infos = exp.datamodule.val_dataset().infos
    assert [info["token"] for info in infos] == [info["token"] for info in read("0.x", exp.datamodule.val_split)]
    assert {info["scene_name"] for info in infos} == {""}  # the reader's, not the devkit path's
