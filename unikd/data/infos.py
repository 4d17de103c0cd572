"""Per-sample records ("infos") built once from a nuScenes database.

An info holds everything a training sample needs, in plain numpy and strings, so that the
dataset never touches the devkit per item and the list can be cached to a pickle:

- `token`, `timestamp` (µs), `scene_name`
- `lidar_path`; `sweeps`: list of dicts (`path`, `sensor2lidar` 4x4, `time_lag` s) newest first
- `lidar2global` 4x4 (key-frame LiDAR -> global)
- `cams`: dict channel -> (`path`, `cam2img` 4x4, `lidar2cam` 4x4)
- `gt_boxes` [M, 9] in the key LiDAR frame, `gt_names` [M], `num_lidar_pts` [M], `num_radar_pts` [M]
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from pyquaternion import Quaternion
from tqdm import tqdm

from unikd.data.classes import CAMERAS, CATEGORY_TO_CLASS
from unikd.data.nuscenes_boxes import nuscenes_to_boxes, transform_boxes

NUSCENES_TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
SPLITS_BY_VERSION = {
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-trainval": ("train", "val"),
    "v1.0-test": ("test",),
}


def check_dataroot(data_root: str | os.PathLike, version: str) -> None:
    """Raise a clear error when `data_root` is not a nuScenes database of `version`."""
    if version not in SPLITS_BY_VERSION:
        raise ValueError(f"unknown nuScenes version {version!r}; expected one of {sorted(SPLITS_BY_VERSION)}")
    table_root = Path(data_root) / version
    if not Path(data_root).is_dir():
        raise FileNotFoundError(
            f"nuScenes data root {data_root} does not exist; expected a folder holding {version}/ "
            "(make the synthetic set with `python tools/create_data.py synthetic --root DIR`)"
        )
    missing = [name for name in NUSCENES_TABLES if not (table_root / f"{name}.json").is_file()]
    if missing:
        raise FileNotFoundError(f"nuScenes tables missing under {table_root}: {', '.join(name + '.json' for name in missing)}")


def load_nuscenes(data_root: str | os.PathLike, version: str):
    """The devkit's NuScenes object, after checking the folder."""
    from nuscenes.nuscenes import NuScenes

    check_dataroot(data_root, version)
    return NuScenes(version=version, dataroot=str(data_root), verbose=False)


def pose_matrix(record: dict) -> np.ndarray:
    """4x4 matrix of a calibrated_sensor or ego_pose record (sensor/ego -> parent frame)."""
    matrix = np.eye(4)
    matrix[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    matrix[:3, 3] = record["translation"]
    return matrix


def sensor_to_global(nusc, sample_data_token: str) -> np.ndarray:
    """4x4 transform from a sample_data's sensor frame to global, at its own timestamp."""
    sd = nusc.get("sample_data", sample_data_token)
    calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", sd["ego_pose_token"])
    return pose_matrix(ego) @ pose_matrix(calib)


def scene_tokens_of_split(nusc, split: str) -> set[str]:
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(splits)}")
    names = set(splits[split])
    tokens = {scene["token"] for scene in nusc.scene if scene["name"] in names}
    if not tokens:
        raise ValueError(f"no scene of split {split!r} in {nusc.dataroot}/{nusc.version}")
    return tokens


def build_infos(nusc, split: str, max_sweeps: int = 10) -> list[dict]:
    """Infos of every sample of `split`, in scene then time order."""
    scene_tokens = scene_tokens_of_split(nusc, split)
    scene_names = {scene["token"]: scene["name"] for scene in nusc.scene}
    samples = [s for s in nusc.sample if s["scene_token"] in scene_tokens]
    samples.sort(key=lambda s: (scene_names[s["scene_token"]], s["timestamp"]))
    return [sample_info(nusc, s, scene_names[s["scene_token"]], max_sweeps) for s in tqdm(samples, desc=f"infos {split}")]


def sample_info(nusc, sample: dict, scene_name: str, max_sweeps: int) -> dict:
    lidar_token = sample["data"]["LIDAR_TOP"]
    lidar_sd = nusc.get("sample_data", lidar_token)
    lidar2global = sensor_to_global(nusc, lidar_token)
    global2lidar = np.linalg.inv(lidar2global)

    sweeps = []
    sweep_token = lidar_sd["prev"]
    while sweep_token and len(sweeps) < max_sweeps - 1:
        sweep_sd = nusc.get("sample_data", sweep_token)
        sweeps.append(
            {
                "path": sweep_sd["filename"],
                "sensor2lidar": global2lidar @ sensor_to_global(nusc, sweep_token),
                "time_lag": (lidar_sd["timestamp"] - sweep_sd["timestamp"]) * 1e-6,
            }
        )
        sweep_token = sweep_sd["prev"]

    cams = {}
    for channel in CAMERAS:
        cam_token = sample["data"][channel]
        cam_sd = nusc.get("sample_data", cam_token)
        calib = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
        cam2img = np.eye(4)
        cam2img[:3, :3] = np.asarray(calib["camera_intrinsic"])
        lidar2cam = np.linalg.inv(sensor_to_global(nusc, cam_token)) @ lidar2global
        cams[channel] = {"path": cam_sd["filename"], "cam2img": cam2img, "lidar2cam": lidar2cam}

    boxes, names, lidar_pts, radar_pts = [], [], [], []
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        name = CATEGORY_TO_CLASS.get(ann["category_name"])
        if name is None:
            continue
        velocity = nusc.box_velocity(ann_token)[:2]
        global_box = nuscenes_to_boxes(ann["translation"], ann["size"], [Quaternion(ann["rotation"])], velocity)
        boxes.append(transform_boxes(global_box, global2lidar)[0])
        names.append(name)
        lidar_pts.append(ann["num_lidar_pts"])
        radar_pts.append(ann["num_radar_pts"])

    return {
        "token": sample["token"],
        "timestamp": sample["timestamp"],
        "scene_name": scene_name,
        "lidar_path": lidar_sd["filename"],
        "sweeps": sweeps,
        "lidar2global": lidar2global,
        "cams": cams,
        "gt_boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 9),
        "gt_names": np.asarray(names, dtype=object),
        "num_lidar_pts": np.asarray(lidar_pts, dtype=np.int64),
        "num_radar_pts": np.asarray(radar_pts, dtype=np.int64),
    }


def infos_path(data_root: str | os.PathLike, version: str, split: str) -> Path:
    return Path(data_root) / f"unikd_infos_{version}_{split}.pkl"


def load_or_build_infos(data_root: str | os.PathLike, version: str, split: str, max_sweeps: int = 10) -> list[dict]:
    """Infos from the cached pickle when present, else built with the devkit (and not cached)."""
    check_dataroot(data_root, version)
    path = infos_path(data_root, version, split)
    if path.is_file():
        with open(path, "rb") as f:
            payload = pickle.load(f)
        if payload.get("version") != version or payload.get("split") != split:
            raise ValueError(f"{path} holds infos of {payload.get('version')}/{payload.get('split')}, not {version}/{split}")
        return payload["infos"]
    return build_infos(load_nuscenes(data_root, version), split, max_sweeps)


def write_infos(data_root: str | os.PathLike, version: str, max_sweeps: int = 10) -> list[Path]:
    """Build and cache the infos of every split of `version` next to the database."""
    nusc = load_nuscenes(data_root, version)
    written = []
    for split in SPLITS_BY_VERSION[version]:
        path = infos_path(data_root, version, split)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump({"version": version, "split": split, "infos": build_infos(nusc, split, max_sweeps)}, f)
        tmp.replace(path)
        written.append(path)
    return written
