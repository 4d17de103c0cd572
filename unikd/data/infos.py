"""Per-sample records ("infos") built once from a nuScenes database.

An info holds everything a training sample needs, in plain numpy and strings, so that the
dataset never touches the devkit per item and the list can be cached (`write_infos`: an `.npz`
of columns, read without pickle, keyed on what it was built from):

- `token`, `timestamp` (µs), `scene_name`, `location` (the scene's log's: which map it is on)
- `lidar_path`; `sweeps`: list of dicts (`path`, `sensor2lidar` 4x4, `time_lag` s) newest first
- `lidar2global` 4x4 (key-frame LiDAR -> global)
- `cams`: dict channel -> (`path`, `cam2img` 4x4, `lidar2cam` 4x4)
- `gt_boxes` [M, 9] in the key LiDAR frame, `gt_names` [M], `num_lidar_pts` [M], `num_radar_pts` [M]
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from pyquaternion import Quaternion
from tqdm import tqdm

from unikd.data.checks import DataError, quaternion_problem, raise_findings, scene_order_findings
from unikd.data.classes import CAMERAS, CATEGORY_TO_CLASS
from unikd.data.file_stamps import table_stamps
from unikd.data.nuscenes_boxes import nuscenes_to_boxes, transform_boxes

# Bump when the cached content or layout changes.
INFOS_FORMAT = 2

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


def pose_matrix(record: dict, name: str = "pose") -> np.ndarray:
    """4x4 matrix of a calibrated_sensor or ego_pose record (sensor/ego -> parent frame); an error naming
    the record (`name`) when its rotation is not a unit quaternion."""
    problem = quaternion_problem(record["rotation"])
    if problem is not None:
        raise DataError(f"{name}: {problem}")
    matrix = np.eye(4)
    matrix[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    matrix[:3, 3] = record["translation"]
    return matrix


def sensor_to_global(nusc, sample_data_token: str) -> np.ndarray:
    """4x4 transform from a sample_data's sensor frame to global, at its own timestamp."""
    sd = nusc.get("sample_data", sample_data_token)
    calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", sd["ego_pose_token"])
    return pose_matrix(ego, f"ego_pose.json record {ego['token']}") @ pose_matrix(
        calib, f"calibrated_sensor.json record {calib['token']}"
    )


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
    """Infos of every sample of `split`, in scene then time order; an error naming the samples of a scene
    out of time order."""
    scene_tokens = scene_tokens_of_split(nusc, split)
    raise_findings(scene_order_findings(nusc, scene_tokens), f"the sample table of {nusc.dataroot}/{nusc.version}")
    return [sample_info(nusc, *place, max_sweeps) for place in tqdm(samples_of_split(nusc, split), desc=f"infos {split}")]


def samples_of_split(nusc, split: str) -> list[tuple[dict, str, str]]:
    """(sample record, scene name, map location) of every sample of `split`, in scene then time order."""
    scene_tokens = scene_tokens_of_split(nusc, split)
    scenes = {scene["token"]: scene for scene in nusc.scene if scene["token"] in scene_tokens}
    places = {token: (scene["name"], nusc.get("log", scene["log_token"])["location"]) for token, scene in scenes.items()}
    samples = [(s, *places[s["scene_token"]]) for s in nusc.sample if s["scene_token"] in scene_tokens]
    return sorted(samples, key=lambda place: (place[1], place[0]["timestamp"]))


def sample_info(nusc, sample: dict, scene_name: str, location: str, max_sweeps: int) -> dict:
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
        "location": location,
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
    return Path(data_root) / f"unikd_infos_{version}_{split}.npz"


def cache_key(data_root: str | os.PathLike, version: str, split: str, max_sweeps: int) -> dict:
    """What cached infos depend on. Not the root: their paths are relative to it."""
    return {
        "format": INFOS_FORMAT,
        "version": version,
        "split": split,
        "max_sweeps": max_sweeps,
        "tables": table_stamps(Path(data_root) / version, NUSCENES_TABLES),
    }


def load_or_build_infos(data_root: str | os.PathLike, version: str, split: str, max_sweeps: int = 10) -> list[dict]:
    """Infos from the cache of `write_infos` when present, else from the user's cache of `prepare_infos`,
    else built with the devkit (and not cached).

    A cache built with more sweeps serves with each sweep list cut to `max_sweeps - 1`; one built
    with fewer sweeps, for another version or split, or from tables changed since, is an error.
    """
    check_dataroot(data_root, version)
    path = infos_path(data_root, version, split)
    rebuild = f"python tools/create_data.py infos --root {data_root} --version {version} --max-sweeps {max_sweeps}"
    if path.is_file():
        return load_infos(path, cache_key(data_root, version, split, max_sweeps), rebuild)
    prepared = prepared_infos_path(data_root, version, split, max_sweeps)
    if prepared.is_file():
        return load_infos(prepared, cache_key(data_root, version, split, max_sweeps), rebuild)
    pickled = path.with_suffix(".pkl")
    if pickled.is_file():
        warnings.warn(
            f"ignoring {pickled}: pickled infos are no longer read (loading a pickle runs code); "
            f"building the infos with the devkit instead; cache them with `{rebuild}`",
            stacklevel=2,
        )
    return build_infos(load_nuscenes(data_root, version), split, max_sweeps)


def prepared_infos_path(data_root: str | os.PathLike, version: str, split: str, max_sweeps: int) -> Path:
    """The user's cache file of `prepare_infos` for one database (path and tables' stamps), split and sweeps:
    $XDG_CACHE_HOME/unikd/nuscenes_infos (~/.cache by default). Changed tables give another name."""
    root = Path(data_root).resolve()
    key = json.dumps({"root": str(root), **cache_key(root, version, split, max_sweeps)}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unikd" / "nuscenes_infos"
    return cache / f"{version}_{split}_{max_sweeps}sweeps_{digest}.npz"


def prepare_infos(data_root: str | os.PathLike, version: str, splits: tuple[str, ...], max_sweeps: int) -> None:
    """Build the infos of `splits` once into the user's cache, unless the database has its own cache
    (`write_infos`) or they are prepared already: a run's first process does it before every process
    reads them (`load_or_build_infos`), so that the devkit loads the tables once, not once per process."""
    check_dataroot(data_root, version)
    missing = [
        split
        for split in splits
        if not infos_path(data_root, version, split).is_file()
        and not prepared_infos_path(data_root, version, split, max_sweeps).is_file()
    ]
    if not missing:
        return
    keys = {split: cache_key(data_root, version, split, max_sweeps) for split in missing}  # before reading
    nusc = load_nuscenes(data_root, version)
    for split, key in keys.items():
        path = prepared_infos_path(data_root, version, split, max_sweeps)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_infos(path, key, build_infos(nusc, split, max_sweeps))


def write_infos(data_root: str | os.PathLike, version: str, max_sweeps: int = 10) -> list[Path]:
    """Build and cache the infos of every split of `version` next to the database."""
    check_dataroot(data_root, version)
    # Keyed on the tables as they are before reading them: a change during the build shows as stale.
    keys = {split: cache_key(data_root, version, split, max_sweeps) for split in SPLITS_BY_VERSION[version]}
    nusc = load_nuscenes(data_root, version)
    written = []
    for split, key in keys.items():
        path = infos_path(data_root, version, split)
        save_infos(path, key, build_infos(nusc, split, max_sweeps))
        written.append(path)
    return written


def save_infos(path: Path, key: dict, infos: list[dict]) -> None:
    """Write `infos` and their key to `path` through a temporary file of this writer's own."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez_compressed(file, key=np.array(json.dumps(key)), **infos_to_arrays(infos))
        os.chmod(temporary, 0o644)  # mkstemp makes it private to this user
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def load_infos(path: Path, expected: dict, rebuild: str) -> list[dict]:
    """Infos of a file written by `save_infos`, checked against the key this run expects."""
    with np.load(path, allow_pickle=False) as data:
        built = json.loads(str(data["key"]))
        check_cache_key(path, built, expected, rebuild)
        arrays = {name: data[name] for name in data.files if name != "key"}
    return arrays_to_infos(arrays, expected["max_sweeps"])


def check_cache_key(path: Path, built: dict, expected: dict, rebuild: str) -> None:
    """Raise when a cache built under `built` cannot serve a run that expects `expected`."""
    problems = [
        f"built with {name}={built.get(name)!r}, this run asks for {expected[name]!r}"
        for name in ("format", "version", "split")
        if built.get(name) != expected[name]
    ]
    if built.get("max_sweeps", 0) < expected["max_sweeps"]:  # more sweeps serve, cut
        problems.append(f"built with max_sweeps={built.get('max_sweeps')}, this run asks for {expected['max_sweeps']}")
    changed = set(built.get("tables", [])) ^ set(expected["tables"])
    if changed:
        names = ", ".join(sorted({stamp.split(":")[0] + ".json" for stamp in changed}))
        problems.append(f"built from other tables ({names} changed since)")
    if problems:
        raise ValueError(
            f"infos cache {path} does not fit this run: {'; '.join(problems)}. Rebuild it with `{rebuild}`, "
            "or delete it to build the infos at every start"
        )


def infos_to_arrays(infos: list[dict]) -> dict[str, np.ndarray]:
    """Columns of `infos`: per sample, per sweep (`num_sweeps` per sample), per camera, per box (`num_boxes`)."""
    sweeps = [sweep for info in infos for sweep in info["sweeps"]]
    cams = [[info["cams"][channel] for channel in CAMERAS] for info in infos]
    num_cams = len(CAMERAS)

    def per_box(name: str, dtype, width: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate([np.empty((0, *width), dtype)] + [np.asarray(info[name], dtype) for info in infos])

    return {
        "token": np.array([info["token"] for info in infos], dtype=str),
        "timestamp": np.array([info["timestamp"] for info in infos], dtype=np.int64),
        "scene_name": np.array([info["scene_name"] for info in infos], dtype=str),
        "location": np.array([info["location"] for info in infos], dtype=str),
        "lidar_path": np.array([info["lidar_path"] for info in infos], dtype=str),
        "lidar2global": np.array([info["lidar2global"] for info in infos], dtype=np.float64).reshape(-1, 4, 4),
        "num_sweeps": np.array([len(info["sweeps"]) for info in infos], dtype=np.int64),
        "sweep_path": np.array([sweep["path"] for sweep in sweeps], dtype=str),
        "sweep_sensor2lidar": np.array([sweep["sensor2lidar"] for sweep in sweeps], dtype=np.float64).reshape(-1, 4, 4),
        "sweep_time_lag": np.array([sweep["time_lag"] for sweep in sweeps], dtype=np.float64),
        "cam_path": np.array([[cam["path"] for cam in row] for row in cams], dtype=str).reshape(-1, num_cams),
        "cam2img": np.array([[cam["cam2img"] for cam in row] for row in cams], np.float64).reshape(-1, num_cams, 4, 4),
        "lidar2cam": np.array([[cam["lidar2cam"] for cam in row] for row in cams], np.float64).reshape(-1, num_cams, 4, 4),
        "num_boxes": np.array([len(info["gt_boxes"]) for info in infos], dtype=np.int64),
        "gt_boxes": per_box("gt_boxes", np.float64, (9,)),
        "gt_names": per_box("gt_names", str),
        "num_lidar_pts": per_box("num_lidar_pts", np.int64),
        "num_radar_pts": per_box("num_radar_pts", np.int64),
    }


def arrays_to_infos(arrays: dict[str, np.ndarray], max_sweeps: int) -> list[dict]:
    """The infos of `infos_to_arrays`' columns, keeping up to `max_sweeps - 1` sweeps each."""
    sweep_start = np.concatenate([[0], np.cumsum(arrays["num_sweeps"])]).tolist()
    box_start = np.concatenate([[0], np.cumsum(arrays["num_boxes"])]).tolist()
    # Python str, int and float, as `build_infos` gives them.
    names = ("token", "timestamp", "scene_name", "location", "lidar_path", "sweep_path", "sweep_time_lag", "cam_path")
    columns = {name: arrays[name].tolist() for name in names}
    gt_names = arrays["gt_names"].astype(object)
    infos = []
    for i, token in enumerate(columns["token"]):
        first_sweep, boxes = sweep_start[i], slice(box_start[i], box_start[i + 1])
        infos.append(
            {
                "token": token,
                "timestamp": columns["timestamp"][i],
                "scene_name": columns["scene_name"][i],
                "location": columns["location"][i],
                "lidar_path": columns["lidar_path"][i],
                "sweeps": [
                    {
                        "path": columns["sweep_path"][j],
                        "sensor2lidar": arrays["sweep_sensor2lidar"][j],
                        "time_lag": columns["sweep_time_lag"][j],
                    }
                    for j in range(first_sweep, min(sweep_start[i + 1], first_sweep + max_sweeps - 1))
                ],
                "lidar2global": arrays["lidar2global"][i],
                "cams": {
                    channel: {
                        "path": columns["cam_path"][i][c],
                        "cam2img": arrays["cam2img"][i, c],
                        "lidar2cam": arrays["lidar2cam"][i, c],
                    }
                    for c, channel in enumerate(CAMERAS)
                },
                "gt_boxes": arrays["gt_boxes"][boxes],
                "gt_names": gt_names[boxes],
                "num_lidar_pts": arrays["num_lidar_pts"][boxes],
                "num_radar_pts": arrays["num_radar_pts"][boxes],
            }
        )
    return infos
