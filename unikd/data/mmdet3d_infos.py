"""mmdet3d's nuScenes info files (`nuscenes_infos_<split>.pkl`) read as unikd infos (`unikd.data.infos`).

Two layouts, told apart by their keys:

- "1.x": `metainfo` + `data_list`, written by mmdet3d >= 1.1's `tools/create_data.py nuscenes`;
  always box convention "1.x".
- "0.x": `infos` + `metadata`, written by mmdet3d < 1.1 and BEVFusion. The file does not say its
  box convention: "0.x" for mmdet3d < 1.0 and BEVFusion, "1.x" for mmdet3d 1.0.0rc0-rc6; the caller
  names it (`unikd.data.nuscenes_boxes`). Both store z at the box centre, as the devkit.

What the records hold, against the devkit path (`build_infos`):

- paths: nuScenes's `samples|sweeps/<channel>/<file>` under the data root, whatever folder the
  converter ran from; 1.x names the key frame's LiDAR and image files only, read under
  `samples/LIDAR_TOP/` and `samples/<camera>/` (mmdet3d's default `data_prefix`).
- sweeps: the file's, newest first, cut to `max_sweeps - 1`; the time lag is measured from the
  sample's timestamp, which nuScenes sets to its LIDAR_TOP key frame's.
- 1.x stores its matrices in float32: `lidar2global`, cameras' `lidar2cam` and sweeps' `sensor2lidar`
  carry that rounding (1e-7 relative); 0.x's are float64, as the devkit path's. 1.x timestamps are
  seconds, turned back into exact microseconds.
- boxes: those of the 10 classes, NaN velocities as 0 (as the devkit path's); yaw is mmdet3d's (the box's heading in the LiDAR frame), which
  equals the devkit path's when the LiDAR frame is level and differs at second order in its tilt.
  mmdet3d's class table lacks `vehicle.emergency.*`, which the devkit counts as cars: 0.x keeps their
  category names and they are read as cars; 1.x labels them -1 with other ignored categories, so they
  are left out, with a warning.
- `scene_name` is in neither layout: it is "" here. `location` (the map) is read where the file has
  one (BEVFusion's 0.x files), else "". Records keep the file's order (mmdet3d's is the sample
  table's), not the devkit path's scene order.

Loading a pickle can run code: a file is read only from a path the user names, with an unpickler
that builds plain Python values and numpy arrays and refuses anything else.
"""

from __future__ import annotations

import functools
import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from unikd.data.classes import CAMERAS, CATEGORY_TO_CLASS, CLASSES
from unikd.data.infos import SPLITS_BY_VERSION, pose_matrix
from unikd.data.nuscenes_boxes import mmdet3d_to_boxes

# nuScenes split -> the part of mmdet3d's file name (`nuscenes_infos_<part>.pkl`)
FILE_PART_OF_SPLIT = {"train": "train", "mini_train": "train", "val": "val", "mini_val": "val", "test": "test"}
LAYOUTS = {"1.x": ("metainfo", "data_list"), "0.x": ("infos", "metadata")}
# What an info pickle may build: numpy arrays, scalars and dtypes (numpy 1 and 2 module names), and
# bytes, which pickle protocol 2 (mmengine's) writes as `_codecs.encode(text, "latin1")`.
PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


def info_files(infos: Sequence[str | os.PathLike], version: str) -> dict[str, Path]:
    """Split -> info file of `--infos`: a folder holding mmdet3d's `nuscenes_infos_<train|val|test>.pkl`,
    or one file per split of `version`, in `SPLITS_BY_VERSION` order (train, val)."""
    splits = SPLITS_BY_VERSION[version]
    if len(infos) == 1 and Path(infos[0]).is_dir():
        return {split: Path(infos[0]) / f"nuscenes_infos_{FILE_PART_OF_SPLIT[split]}.pkl" for split in splits}
    if len(infos) != len(splits):
        raise ValueError(
            f"--infos takes a folder holding mmdet3d's nuscenes_infos_<split>.pkl, or one info file per split of "
            f"{version} ({' '.join(splits)}); got {' '.join(map(str, infos))}"
        )
    return {split: Path(path) for split, path in zip(splits, infos, strict=True)}


def read_mmdet3d_infos(
    path: str | os.PathLike, version: str, max_sweeps: int = 10, box_convention: str | None = None
) -> list[dict]:
    """unikd infos of an mmdet3d info file of nuScenes `version`, with up to `max_sweeps - 1` sweeps each.

    `box_convention` ("0.x" or "1.x") is needed for a 0.x-layout file; a 1.x-layout file takes None or "1.x".
    """
    path = Path(path)
    if box_convention not in (None, "0.x", "1.x"):
        raise ValueError(f"box convention must be '0.x' or '1.x', got {box_convention!r}")
    data = load_info_pickle(path)
    layout = next((name for name, keys in LAYOUTS.items() if isinstance(data, dict) and set(keys) <= set(data)), None)
    if layout is None:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path} is not an mmdet3d nuScenes info file: expected a dict with 'metainfo' and 'data_list' "
            f"(mmdet3d >= 1.1) or 'infos' and 'metadata' (mmdet3d < 1.1, BEVFusion); found {found}"
        )
    meta = data["metainfo" if layout == "1.x" else "metadata"]
    if not isinstance(meta, dict) or meta.get("version") != version:
        found = meta.get("version") if isinstance(meta, dict) else meta
        raise ValueError(f"{path} holds nuScenes version {found!r}; this run reads {version!r}")
    if layout == "1.x":
        if box_convention not in (None, "1.x"):
            raise ValueError(f"{path} is a 1.x info file, whose boxes are always in box convention 1.x; got {box_convention!r}")
        names = label_names(path, meta)
        convert = functools.partial(record_from_1x, names=names)
    else:
        if box_convention is None:
            raise ValueError(
                f"{path} is a 0.x info file (infos + metadata), which does not say its box convention: name it "
                "(--infos_box_convention): 0.x for mmdet3d < 1.0 and BEVFusion ((w, l, h), yaw' = -yaw - pi/2), "
                "1.x for mmdet3d 1.0.0rc0-rc6 ((l, w, h), yaw)"
            )
        convert = functools.partial(record_from_0x, box_convention=box_convention)
    records_key = "data_list" if layout == "1.x" else "infos"
    records = data[records_key]
    if not isinstance(records, list):
        raise ValueError(f"{path}: {records_key!r} is not a list of records")
    infos = []
    for index, info in enumerate(records):
        try:
            infos.append(convert(info))
        except (KeyError, TypeError, ValueError) as error:
            token = info.get("token") if isinstance(info, dict) else None
            raise ValueError(
                f"{path}: record {index} is not a {layout} nuScenes info record: {error!r} (sample {token})"
            ) from error
    check_sweeps(path, infos, max_sweeps)
    for info in infos:
        info["sweeps"] = info["sweeps"][: max_sweeps - 1]
    return infos


class _InfoUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to build {module}.{name}: an info file holds only values and numpy arrays")
        return super().find_class(module, name)


def load_info_pickle(path: Path):
    """The object pickled in `path`, built only from plain values and numpy arrays."""
    if not path.is_file():
        raise FileNotFoundError(f"mmdet3d info file {path} does not exist or is not a file")
    with open(path, "rb") as file:
        try:
            return _InfoUnpickler(file).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as error:
            raise ValueError(f"{path} is not an mmdet3d info pickle: {error}") from error


def label_names(path: Path, metainfo: dict) -> dict[int, str]:
    """Label -> class name of a 1.x file; warns about ignored categories that the devkit counts."""
    categories = metainfo.get("categories")
    if not isinstance(categories, dict):
        raise ValueError(f"{path}: 'metainfo' has no 'categories' (class name -> label), which mmdet3d writes")
    dropped = sorted(name for name, label in categories.items() if label < 0 and name in CATEGORY_TO_CLASS)
    if dropped:
        warnings.warn(
            f"{path} labels the boxes of {', '.join(dropped)} -1 (not in mmdet3d's class table) with other "
            "ignored categories, so they are left out, although the devkit counts them as "
            f"{', '.join(sorted({CATEGORY_TO_CLASS[name] for name in dropped}))}; the 0.x file or the devkit path keeps them",
            stacklevel=3,
        )
    return {label: name for name, label in categories.items() if label >= 0}


def record_from_1x(info: dict, names: dict[int, str]) -> dict:
    lidar = info["lidar_points"]
    timestamp = microseconds(info["timestamp"])
    lidar2global = matrix(info["ego2global"]) @ matrix(lidar["lidar2ego"])
    sweeps = [
        {
            "path": nuscenes_path(sweep["lidar_points"]["lidar_path"], "sweeps/LIDAR_TOP"),
            "sensor2lidar": np.linalg.inv(matrix(sweep["lidar_points"]["lidar2sensor"])),
            "time_lag": (timestamp - microseconds(sweep["timestamp"])) * 1e-6,
        }
        for sweep in info.get("lidar_sweeps", [])  # mmdet3d drops an empty list
    ]
    cams = {}
    for channel in CAMERAS:
        image = info["images"][channel]
        cams[channel] = {
            "path": nuscenes_path(image["img_path"], f"samples/{channel}"),
            "cam2img": camera_matrix(image["cam2img"]),
            "lidar2cam": matrix(image["lidar2cam"]),
        }
    instances = [item for item in info["instances"] if names.get(item["bbox_label_3d"]) in CLASSES]
    return {
        "token": info["token"],
        "timestamp": timestamp,
        "scene_name": "",
        "location": str(info.get("location", "")),
        "lidar_path": nuscenes_path(lidar["lidar_path"], "samples/LIDAR_TOP"),
        "sweeps": sweeps,
        "lidar2global": lidar2global,
        "cams": cams,
        "gt_boxes": lidar_boxes(
            [item["bbox_3d"] for item in instances], [item["velocity"] for item in instances], "1.x"
        ),
        "gt_names": np.array([names[item["bbox_label_3d"]] for item in instances], dtype=object),
        "num_lidar_pts": np.array([item["num_lidar_pts"] for item in instances], dtype=np.int64),
        "num_radar_pts": np.array([item["num_radar_pts"] for item in instances], dtype=np.int64),
    }


def record_from_0x(info: dict, box_convention: str) -> dict:
    lidar2global = pose_matrix(
        {"rotation": info["ego2global_rotation"], "translation": info["ego2global_translation"]}, "ego2global"
    ) @ pose_matrix({"rotation": info["lidar2ego_rotation"], "translation": info["lidar2ego_translation"]}, "lidar2ego")
    sweeps = [
        {
            "path": nuscenes_path(sweep["data_path"], "sweeps/LIDAR_TOP"),
            "sensor2lidar": rigid(sweep["sensor2lidar_rotation"], sweep["sensor2lidar_translation"]),
            "time_lag": (info["timestamp"] - sweep["timestamp"]) * 1e-6,
        }
        for sweep in info["sweeps"]
    ]
    cams = {}
    for channel in CAMERAS:
        cam = info["cams"][channel]
        intrinsic = cam["cam_intrinsic"] if "cam_intrinsic" in cam else cam["camera_intrinsics"]  # BEVFusion's name
        cams[channel] = {
            "path": nuscenes_path(cam["data_path"], f"samples/{channel}"),
            "cam2img": camera_matrix(intrinsic),
            "lidar2cam": np.linalg.inv(rigid(cam["sensor2lidar_rotation"], cam["sensor2lidar_translation"])),
        }
    # mmdet3d maps category names to classes, but keeps those its table lacks (vehicle.emergency.*).
    raw_names = info.get("gt_names", [])  # a test-split file has no boxes
    names = [CATEGORY_TO_CLASS.get(name, name if name in CLASSES else None) for name in raw_names]
    keep = np.array([name is not None for name in names], dtype=bool)
    boxes = np.asarray(info.get("gt_boxes", np.zeros((0, 7))), dtype=np.float64).reshape(-1, 7)
    velocity = np.asarray(info.get("gt_velocity", np.zeros((0, 2))), dtype=np.float64).reshape(-1, 2)
    counts = {key: np.asarray(info.get(key, []), dtype=np.int64).reshape(-1) for key in ("num_lidar_pts", "num_radar_pts")}
    if not len(boxes) == len(velocity) == len(names) == len(counts["num_lidar_pts"]) == len(counts["num_radar_pts"]):
        raise ValueError("gt_boxes, gt_names, gt_velocity, num_lidar_pts and num_radar_pts differ in length")
    return {
        "token": info["token"],
        "timestamp": int(info["timestamp"]),
        "scene_name": "",
        "location": str(info.get("location", "")),
        "lidar_path": nuscenes_path(info["lidar_path"], "samples/LIDAR_TOP"),
        "sweeps": sweeps,
        "lidar2global": lidar2global,
        "cams": cams,
        "gt_boxes": lidar_boxes(boxes[keep], velocity[keep], box_convention),
        "gt_names": np.array([name for name in names if name is not None], dtype=object),
        "num_lidar_pts": counts["num_lidar_pts"][keep],
        "num_radar_pts": counts["num_radar_pts"][keep],
    }


def lidar_boxes(boxes, velocity, convention: str) -> np.ndarray:
    """[K, 9] unikd boxes of [K, 7] info boxes (z at the centre) and their [K, 2] velocities."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    velocity = np.nan_to_num(np.asarray(velocity, dtype=np.float64).reshape(-1, 2))
    return mmdet3d_to_boxes(np.concatenate([boxes, velocity], axis=1), convention, z_origin=0.5)


def check_sweeps(path: Path, infos: list[dict], max_sweeps: int) -> None:
    """Warn when no sample of the file has as many sweeps as the run asks for."""
    most = max((len(info["sweeps"]) for info in infos), default=0)
    if infos and most < max_sweeps - 1:
        warnings.warn(
            f"{path}: its samples have at most {most} sweeps, the run asks for up to {max_sweeps - 1} "
            f"(num_sweeps {max_sweeps} with the key frame): they get the file's (was it made with a lower --max-sweeps?)",
            stacklevel=3,
        )


def nuscenes_path(path: str, folder: str) -> str:
    """`samples|sweeps/<channel>/<file>` of a converter's path, or `folder/<file>` of a bare file name."""
    parts = PurePosixPath(path).parts
    if len(parts) == 1:
        return f"{folder}/{path}"
    if len(parts) >= 3 and parts[-3] in ("samples", "sweeps"):
        return "/".join(parts[-3:])
    raise ValueError(f"path {path!r} is not a file name nor under nuScenes's samples/<channel>/ or sweeps/<channel>/")


def microseconds(seconds: float) -> int:
    """A 1.x timestamp (seconds, the microseconds / 1e6) as the exact microseconds: float64 holds them to 0.25 µs."""
    return int(round(float(seconds) * 1e6))


def matrix(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {array.shape}")
    return array


def rigid(rotation, translation) -> np.ndarray:
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = translation
    return transform


def camera_matrix(intrinsic) -> np.ndarray:
    """cam2img 4x4 of a 3x3 intrinsic matrix."""
    cam2img = np.eye(4)
    cam2img[:3, :3] = intrinsic
    return cam2img
