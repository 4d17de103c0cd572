"""The synthetic nuScenes-format generator, checked with the nuScenes devkit."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box, view_points
from nuscenes.utils.splits import create_splits_scenes
from PIL import Image
from pyquaternion import Quaternion

from unikd.data.classes import CAMERAS, CLASSES
from unikd.data.synthetic import generate_synthetic_nuscenes
from unikd.data.synthetic.appearance import CLASS_COLOURS
from unikd.data.synthetic.scene import Road

VERSION = "v1.0-mini"
TINY = {
    "train_scenes": 1,
    "val_scenes": 1,
    "keyframes_per_scene": 2,
    "sweeps_per_keyframe": 1,
    "objects_per_scene": 20,
}


@pytest.fixture(scope="module")
def nusc(synthetic_root: Path) -> NuScenes:
    return NuScenes(VERSION, str(synthetic_root), verbose=False)


def val_samples(nusc: NuScenes) -> list[dict]:
    names = set(create_splits_scenes()["mini_val"])
    return [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in names]


def test_devkit_loads_it_with_consistent_chains(nusc: NuScenes, synthetic_root: Path) -> None:
    assert len(nusc.scene) == 10 and len(nusc.sensor) == 7 and len(nusc.sample) == 80
    assert all(set(sample["data"]) == {"LIDAR_TOP", *CAMERAS} for sample in nusc.sample)
    for scene in nusc.scene:
        first = nusc.get("sample", scene["first_sample_token"])
        record = nusc.get("sample_data", first["data"]["LIDAR_TOP"])
        assert record["prev"] == ""
        keys, sweeps, last_time = [], 0, -1
        while True:
            assert record["timestamp"] > last_time
            assert nusc.get("ego_pose", record["ego_pose_token"])["timestamp"] == record["timestamp"]
            folder = "samples" if record["is_key_frame"] else "sweeps"
            assert record["filename"].startswith(f"{folder}/LIDAR_TOP/") and record["filename"].endswith(
                ".pcd.bin"
            )
            assert (synthetic_root / record["filename"]).stat().st_size % 20 == 0  # 5 float32 per point
            if record["is_key_frame"]:
                keys.append(record["sample_token"])
            else:
                sweeps += 1
                sample = nusc.get("sample", record["sample_token"])  # sweeps belong to the next key frame
                assert (
                    nusc.get("sample", sample["prev"])["timestamp"]
                    < record["timestamp"]
                    < sample["timestamp"]
                )
            last_time = record["timestamp"]
            if record["next"] == "":
                break
            record = nusc.get("sample_data", record["next"])
        sample_tokens = [scene["first_sample_token"]]
        while nusc.get("sample", sample_tokens[-1])["next"]:
            sample_tokens.append(nusc.get("sample", sample_tokens[-1])["next"])
        assert keys == sample_tokens and len(keys) == scene["nbr_samples"] == 8
        assert sweeps == 2 * (len(keys) - 1)
    lidar = nusc.get(
        "calibrated_sensor",
        nusc.get("sample_data", nusc.sample[0]["data"]["LIDAR_TOP"])["calibrated_sensor_token"],
    )
    np.testing.assert_allclose(lidar["translation"], [0.94, 0.0, 1.84], atol=0.05)
    assert Quaternion(lidar["rotation"]).yaw_pitch_roll[0] == pytest.approx(-np.pi / 2, abs=0.02)
    for channel in CAMERAS:
        record = nusc.get("sample_data", nusc.sample[3]["data"][channel])
        with Image.open(synthetic_root / record["filename"]) as image:
            assert image.format == "JPEG" and image.size == (record["width"], record["height"]) == (1600, 900)


def test_split_scene_names_exist(nusc: NuScenes) -> None:
    splits = create_splits_scenes()
    names = {scene["name"] for scene in nusc.scene}
    assert set(splits["mini_train"]) | set(splits["mini_val"]) == names
    assert len(splits["mini_train"]) == 8 and len(splits["mini_val"]) == 2


def test_instances_persist_and_attributes_match_motion(nusc: NuScenes) -> None:
    for instance in nusc.instance:
        token, count = instance["first_annotation_token"], 1
        while nusc.get("sample_annotation", token)["next"]:
            token, count = nusc.get("sample_annotation", token)["next"], count + 1
        assert token == instance["last_annotation_token"] and count == instance["nbr_annotations"] == 8
    categories = set()
    for ann in nusc.sample_annotation:
        categories.add(ann["category_name"])
        speed = np.linalg.norm(nusc.box_velocity(ann["token"])[:2])
        attributes = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        assert ann["num_radar_pts"] == 0 and ann["visibility_token"] in {"1", "2", "3", "4"}
        if attributes in (["vehicle.moving"], ["pedestrian.moving"]):
            assert speed > 0.1
        elif (
            attributes in (["vehicle.parked"], ["cycle.without_rider"], ["pedestrian.standing"])
            or not attributes
        ):
            assert speed < 1e-6
    detection_classes = {category_to_detection_name(name) for name in categories}
    assert detection_classes == {*CLASSES, None} and "static_object.bicycle_rack" in categories


def test_ground_truth_as_submission_scores_perfectly(nusc: NuScenes, tmp_path: Path) -> None:
    results = {}
    for sample in val_samples(nusc):
        boxes = []
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            name = category_to_detection_name(ann["category_name"])
            if name is None or ann["num_lidar_pts"] == 0:
                continue
            attributes = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
            boxes.append(
                {
                    "sample_token": sample["token"],
                    "translation": ann["translation"],
                    "size": ann["size"],
                    "rotation": ann["rotation"],
                    "velocity": nusc.box_velocity(token)[:2].tolist(),
                    "detection_name": name,
                    "detection_score": 1.0,
                    "attribute_name": attributes[0] if attributes else "",
                }
            )
        results[sample["token"]] = boxes
    meta = {
        "use_camera": False,
        "use_lidar": True,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": meta, "results": results}))
    evaluation = DetectionEval(
        nusc,
        config_factory("detection_cvpr_2019"),
        str(path),
        "mini_val",
        str(tmp_path / "eval"),
        verbose=False,
    )
    metrics, _ = evaluation.evaluate()
    assert set(metrics.mean_dist_aps) == set(CLASSES)
    assert min(metrics.mean_dist_aps.values()) > 0.99  # every class is present in mini_val
    assert metrics.mean_ap > 0.99 and metrics.nd_score > 0.99


def test_num_lidar_pts_counts_the_points_inside_each_box(nusc: NuScenes, synthetic_root: Path) -> None:
    seen_near = 0
    for sample in val_samples(nusc):
        record = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        raw = np.fromfile(synthetic_root / record["filename"], dtype=np.float32).reshape(-1, 5)
        assert len(raw) > 20000
        assert raw[:, 3].min() >= 0 and raw[:, 3].max() <= 255
        assert set(np.unique(raw[:, 4])) <= set(range(32))
        cloud = LidarPointCloud.from_file(str(synthetic_root / record["filename"]))
        calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", record["ego_pose_token"])
        cloud.rotate(Quaternion(calibration["rotation"]).rotation_matrix)
        cloud.translate(np.array(calibration["translation"]))
        cloud.rotate(Quaternion(pose["rotation"]).rotation_matrix)
        cloud.translate(np.array(pose["translation"]))
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            inside = int(points_in_box(nusc.get_box(token), cloud.points[:3]).sum())
            assert inside == ann["num_lidar_pts"], ann["category_name"]
            distance = np.linalg.norm(np.array(ann["translation"][:2]) - pose["translation"][:2])
            if distance < 30 and ann["visibility_token"] == "4":  # seen by the generator's own rays
                assert inside > 0
                seen_near += 1
    assert seen_near > 50


def test_boxes_project_onto_their_rendered_colour(nusc: NuScenes, synthetic_root: Path) -> None:
    """The pixel at a static, unoccluded box's projected centre has the colour of its class."""
    names = list(CLASS_COLOURS)
    chroma = np.array([CLASS_COLOURS[n] for n in names])
    chroma /= chroma.sum(axis=1, keepdims=True)
    checked, matched = 0, 0
    for sample in val_samples(nusc)[::2]:
        for channel in CAMERAS:
            token = sample["data"][channel]
            _, boxes, intrinsic = nusc.get_sample_data(token)
            image = np.asarray(Image.open(nusc.get_sample_data_path(token)), dtype=np.float64)
            solid = [b for b in boxes if category_to_detection_name(b.name) is not None]
            for box in solid:
                ann = nusc.get("sample_annotation", box.token)
                u, v = view_points(box.center[:, None], intrinsic, normalize=True)[:2, 0]
                static = np.linalg.norm(nusc.box_velocity(box.token)[:2]) < 1e-6
                if not (static and ann["visibility_token"] == "4" and 3 < box.center[2] < 30):
                    continue
                if not (10 <= u < 1590 and 10 <= v < 890):
                    continue
                in_front = [
                    other
                    for other in solid
                    if other.center[2] < box.center[2]
                    and (other.corners()[2] > 0.1).all()
                    and _covers(other, intrinsic, u, v)
                ]
                if in_front:
                    continue
                colour = np.median(
                    image[int(v) - 2 : int(v) + 3, int(u) - 2 : int(u) + 3].reshape(-1, 3), axis=0
                )
                nearest = names[int(np.argmin(np.linalg.norm(chroma - colour / colour.sum(), axis=1)))]
                checked += 1
                matched += nearest == category_to_detection_name(box.name)
    assert checked >= 10 and matched >= 0.9 * checked, (checked, matched)


def _covers(box, intrinsic: np.ndarray, u: float, v: float) -> bool:
    corners = view_points(box.corners(), intrinsic, normalize=True)
    return corners[0].min() <= u <= corners[0].max() and corners[1].min() <= v <= corners[1].max()


def _digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("curvature", [0.0, 1 / 300, -1 / 450])
def test_road_coordinates_round_trip(curvature: float) -> None:
    road = Road(origin=(800.0, 300.0), heading=2.5, curvature=curvature)
    rng = np.random.default_rng(0)
    s, d = rng.uniform(-300, 300, 500), rng.uniform(-40, 40, 500)
    xy, heading = road.pose(s, d)
    np.testing.assert_allclose(road.coords(xy), (s, d), atol=1e-9)
    step, _ = road.pose(s + 1e-3, d)  # the heading is the direction of travel along s
    direction = np.arctan2(step[:, 1] - xy[:, 1], step[:, 0] - xy[:, 0])
    np.testing.assert_allclose(np.angle(np.exp(1j * (direction - heading))), 0, atol=1e-4)


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    first = _digest(generate_synthetic_nuscenes(tmp_path / "a", seed=0, **TINY))
    parallel = _digest(generate_synthetic_nuscenes(tmp_path / "b", seed=0, workers=2, **TINY))
    other = _digest(generate_synthetic_nuscenes(tmp_path / "c", seed=1, **TINY))
    assert len(first) > 20 and first == parallel
    assert other[f"{VERSION}/sample_annotation.json"] != first[f"{VERSION}/sample_annotation.json"]
    assert not set(other.values()) & {h for name, h in first.items() if name.endswith((".jpg", ".pcd.bin"))}


def test_bad_targets_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown nuScenes version"):
        generate_synthetic_nuscenes(tmp_path / "new", version="v1.0-test")
    with pytest.raises(ValueError, match="has 2 val scenes"):
        generate_synthetic_nuscenes(tmp_path / "new", val_scenes=3)
    other = tmp_path / "other"
    (other / "v1.0-trainval").mkdir(parents=True)
    (other / "v1.0-trainval" / "scene.json").write_text("[]")
    with pytest.raises(FileExistsError, match="v1.0-trainval"):
        generate_synthetic_nuscenes(other, version=VERSION)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic_nuscenes(tmp_path / "busy")
    assert not (tmp_path / "new").exists()


def test_command_line_builds_a_loadable_dataset(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "create_data", Path(__file__).parents[1] / "tools" / "create_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = tmp_path / "cli"
    module.main(
        [
            "synthetic",
            "--root",
            str(root),
            "--seed",
            "3",
            "--train-scenes",
            "1",
            "--val-scenes",
            "0",
            "--keyframes-per-scene",
            "2",
            "--sweeps-per-keyframe",
            "0",
            "--objects-per-scene",
            "13",
            "--workers",
            "1",
        ]
    )
    nusc = NuScenes(VERSION, str(root), verbose=False)
    assert [scene["name"] for scene in nusc.scene] == ["scene-0061"] and len(nusc.sample) == 2
