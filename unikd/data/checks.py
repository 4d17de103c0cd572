"""Checks of the data a run will read, each finding named by its file, table record or sample token.

One place for each check, used at a run's start (`NuScenesDetectionDataset`, `build_infos`, the ground
truth) and by the pre-flight tool `tools/check_data.py`:

- point files (`point_file_problem`): present, a regular file, not empty, a whole number of 5-float32
  points; with `read=True` also every value finite (a run reads that at load, `finite_points`);
- camera images (`image_file_problem`): present, not empty, an image header PIL reads, and for a JPEG
  its end marker (a truncated copy has none); no decoding;
- records (`check_infos`): box sizes positive and box values finite; matrices finite and rigid;
  intrinsics with positive focal lengths; sweeps at or before their key frame, newest first; sample
  timestamps strictly increasing within a scene;
- tables: quaternions of non-zero, finite, unit norm (`quaternion_problem`); each scene's sample chain
  in strictly increasing time (`scene_order_findings`).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

POINT_FILE_DIMS = 5  # x, y, z, intensity, ring index (float32)
POINT_BYTES = POINT_FILE_DIMS * 4
JPEG_END = b"\xff\xd9"
RIGID_TOLERANCE = 1e-3  # |R^T R - I| and |det R - 1|: float32 matrices are far inside it
UNIT_TOLERANCE = 1e-2  # |norm - 1| of a rotation quaternion


@dataclass(frozen=True)
class Finding:
    """One problem: which check found it, about what (a file, a record, a token), and what was expected."""

    check: str
    subject: str
    problem: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.problem}"


class DataError(ValueError):
    """The data a run would read fails its checks; the message lists the findings."""


def raise_findings(findings: Sequence[Finding], what: str, shown: int = 5) -> None:
    """One error listing the first `shown` findings of `what` (and how many more), when there are any."""
    if not findings:
        return
    more = f"; and {len(findings) - shown} more" if len(findings) > shown else ""
    raise DataError(
        f"{len(findings)} problem(s) in {what}: {'; '.join(map(str, findings[:shown]))}{more} "
        "(python tools/check_data.py lists them all)"
    )


# ------------------------------------------------------------------------------------------- files
def point_file_problem(path: str | os.PathLike, read: bool = False) -> str | None:
    """What is wrong with a `.pcd.bin` point file, or None; `read` also reads it for non-finite values."""
    problem = _file_problem(path)
    if problem is not None:
        return problem
    size = os.stat(path).st_size
    if size % POINT_BYTES != 0:
        return f"truncated: {size} bytes is not a multiple of {POINT_FILE_DIMS} float32 per point ({POINT_BYTES} bytes)"
    if read:
        return nonfinite_problem(np.fromfile(path, dtype=np.float32).reshape(-1, POINT_FILE_DIMS))
    return None


def nonfinite_problem(points: np.ndarray) -> str | None:
    """'K of the N points hold a non-finite value', or None."""
    bad = int((~np.isfinite(points)).any(axis=1).sum())
    if bad:
        return f"{bad} of the {len(points)} points hold a non-finite value (NaN or inf); expected finite floats"
    return None


def finite_points(points: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """`points` when every value is finite, else an error naming the file."""
    problem = nonfinite_problem(points)
    if problem is not None:
        raise DataError(f"point cloud {path}: {problem}")
    return points


def image_file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a camera image file, or None, from its header and its last bytes (no decoding)."""
    problem = _file_problem(path)
    if problem is not None:
        return problem
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError) as error:
        return f"not a readable image ({error})"
    if width <= 0 or height <= 0:
        return f"image of size {width}x{height}"
    if kind == "JPEG":
        with open(path, "rb") as file:
            file.seek(-len(JPEG_END), os.SEEK_END)
            if file.read() != JPEG_END:
                return "JPEG without its end marker (a truncated file)"
    return None


def _file_problem(path: str | os.PathLike) -> str | None:
    try:
        status = os.stat(path)
    except OSError as error:
        return error.strerror or "cannot be read"
    if not stat.S_ISREG(status.st_mode):
        return "not a file"
    if status.st_size == 0:
        return "empty (0 bytes)"
    return None


def split_files(infos: Iterable[dict], num_sweeps: int, use_camera: bool) -> tuple[list[str], list[str]]:
    """The point files and the image files (relative paths, each once) that `infos` will read."""
    points, images = {}, {}
    for info in infos:
        points[info["lidar_path"]] = None
        points.update(dict.fromkeys(sweep["path"] for sweep in info["sweeps"][: num_sweeps - 1]))
        if use_camera:
            images.update(dict.fromkeys(cam["path"] for cam in info["cams"].values()))
    return list(points), list(images)


def check_files(
    data_root: str | os.PathLike, points: Iterable[str], images: Iterable[str], read_points: bool = False
) -> list[Finding]:
    """Findings about point files and images (paths relative to `data_root`), each named by its path."""
    root = Path(data_root)
    findings = []
    for relative in points:
        problem = point_file_problem(root / relative, read=read_points)
        if problem is not None:
            findings.append(Finding("point file", str(root / relative), problem))
    for relative in images:
        problem = image_file_problem(root / relative)
        if problem is not None:
            findings.append(Finding("image", str(root / relative), problem))
    return findings


# ----------------------------------------------------------------------------------------- records
def quaternion_problem(rotation: Sequence[float]) -> str | None:
    """What is wrong with a rotation quaternion (w, x, y, z), or None."""
    values = np.asarray(rotation, dtype=np.float64).reshape(-1)
    if values.shape != (4,):
        return f"rotation {values.tolist()} is not a quaternion (w, x, y, z)"
    if not np.isfinite(values).all():
        return f"rotation {values.tolist()} is not finite; expected a unit quaternion (w, x, y, z)"
    norm = float(np.linalg.norm(values))
    if abs(norm - 1) > UNIT_TOLERANCE:
        return f"rotation {values.tolist()} has norm {norm:.6g}; expected a unit quaternion (w, x, y, z)"
    return None


def rigid_problem(matrix: np.ndarray) -> str | None:
    """What is wrong with a 4x4 rigid transform (finite, a rotation block, last row 0 0 0 1), or None."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        return "not a finite 4x4 matrix"
    rotation = matrix[:3, :3]
    if (
        np.abs(rotation.T @ rotation - np.eye(3)).max() > RIGID_TOLERANCE
        or abs(np.linalg.det(rotation) - 1) > RIGID_TOLERANCE
        or np.abs(matrix[3] - [0, 0, 0, 1]).max() > RIGID_TOLERANCE
    ):
        return "not a rigid transform (rotation block not orthonormal with determinant 1)"
    return None


def intrinsic_problem(cam2img: np.ndarray) -> str | None:
    matrix = np.asarray(cam2img, dtype=np.float64)
    if not np.isfinite(matrix).all():
        return "not finite"
    if matrix[0, 0] <= 0 or matrix[1, 1] <= 0:
        return f"focal lengths ({matrix[0, 0]:.6g}, {matrix[1, 1]:.6g}); expected positive"
    return None


def info_findings(info: dict) -> list[Finding]:
    """Findings about one record: its boxes, matrices and sweeps, named by the sample token."""
    token = info["token"]
    findings = []
    boxes = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, 9)
    for index in np.flatnonzero(~np.isfinite(boxes[:, :7]).all(axis=1) | (boxes[:, 3:6] <= 0).any(axis=1)):
        name = info["gt_names"][index]
        findings.append(
            Finding(
                "box",
                f"sample {token}",
                f"box {index} ({name}) has centre {boxes[index, :3].round(3).tolist()}, size (l, w, h) "
                f"{boxes[index, 3:6].round(3).tolist()}, yaw {boxes[index, 6]:.3f}; expected finite values and positive sizes",
            )
        )
    for index in np.flatnonzero(~np.isfinite(boxes[:, 7:9]).all(axis=1)):
        findings.append(Finding("box", f"sample {token}", f"box {index} has a non-finite velocity {boxes[index, 7:9].tolist()}"))
    problem = rigid_problem(info["lidar2global"])
    if problem is not None:
        findings.append(Finding("calibration", f"sample {token}", f"lidar2global is {problem}"))
    for channel, cam in info["cams"].items():
        for name, check in (("lidar2cam", rigid_problem), ("cam2img", intrinsic_problem)):
            problem = check(cam[name])
            if problem is not None:
                findings.append(Finding("calibration", f"sample {token}", f"{channel} {name} is {problem}"))
    previous_lag = 0.0
    for sweep in info["sweeps"]:
        lag = sweep["time_lag"]
        if not math.isfinite(lag) or lag < 0:
            findings.append(
                Finding(
                    "timestamp",
                    f"sample {token}",
                    f"sweep {sweep['path']} is {-lag:.6f} s later than its key frame; expected sweeps at or before it",
                )
            )
        elif lag < previous_lag:
            findings.append(
                Finding("timestamp", f"sample {token}", f"sweep {sweep['path']} is out of order; expected newest first")
            )
        previous_lag = max(previous_lag, lag) if math.isfinite(lag) else previous_lag
        problem = rigid_problem(sweep["sensor2lidar"])
        if problem is not None:
            findings.append(Finding("calibration", f"sample {token}", f"sweep {sweep['path']} sensor2lidar is {problem}"))
    return findings


def check_infos(infos: Sequence[dict]) -> list[Finding]:
    """Findings about every record, and sample timestamps strictly increasing within each named scene
    (records of one scene in the list's order; mmdet3d's files name no scene)."""
    findings = [finding for info in infos for finding in info_findings(info)]
    last: dict[str, dict] = {}
    for info in infos:
        scene = info["scene_name"]
        if not scene:
            continue
        previous = last.get(scene)
        if previous is not None and info["timestamp"] <= previous["timestamp"]:
            findings.append(
                Finding(
                    "timestamp",
                    f"sample {info['token']}",
                    f"timestamp {info['timestamp']} is not after the previous sample {previous['token']} of scene "
                    f"{scene} ({previous['timestamp']}); expected strictly increasing times",
                )
            )
        last[scene] = info
    return findings


def scene_order_findings(nusc, scene_tokens: Iterable[str]) -> list[Finding]:
    """Each scene's samples, in their table order (first_sample_token, next), at strictly increasing times:
    velocities (`box_velocity`) divide by these differences."""
    findings = []
    for scene_token in scene_tokens:
        scene = nusc.get("scene", scene_token)
        previous = nusc.get("sample", scene["first_sample_token"])
        while previous["next"]:
            sample = nusc.get("sample", previous["next"])
            if sample["timestamp"] <= previous["timestamp"]:
                findings.append(
                    Finding(
                        "timestamp",
                        f"sample.json record {sample['token']}",
                        f"timestamp {sample['timestamp']} is not after the previous sample {previous['token']} of "
                        f"scene {scene['name']} ({previous['timestamp']}); expected strictly increasing times",
                    )
                )
            previous = sample
    return findings


def pose_table_findings(nusc) -> list[Finding]:
    """Every calibrated_sensor and ego_pose record whose rotation is not a unit quaternion."""
    findings = []
    for table in ("calibrated_sensor", "ego_pose"):
        for record in getattr(nusc, table):
            problem = quaternion_problem(record["rotation"])
            if problem is not None:
                findings.append(Finding("calibration", f"{table}.json record {record['token']}", problem))
    return findings


# ------------------------------------------------------------------------------------ box contents
def count_points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[M] number of points [N, >=3] inside each box [M, >=7] (x, y, z centre, l, w, h, yaw), borders included."""
    counts = np.zeros(len(boxes), dtype=np.int64)
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    for index, box in enumerate(np.asarray(boxes, dtype=np.float64)):
        offset = xyz - box[:3]
        cos, sin = math.cos(box[6]), math.sin(box[6])
        along, across = offset[:, 0] * cos + offset[:, 1] * sin, -offset[:, 0] * sin + offset[:, 1] * cos
        inside = (np.abs(along) <= box[3] / 2) & (np.abs(across) <= box[4] / 2) & (np.abs(offset[:, 2]) <= box[5] / 2)
        counts[index] = int(inside.sum())
    return counts


def box_point_findings(info: dict, counts: np.ndarray, tolerance: float = 0.2, slack: int = 3) -> list[Finding]:
    """Boxes whose key-frame points inside (`counts`) differ from the annotation's `num_lidar_pts` by more
    than `slack` points and `tolerance` of the recorded count: a box placed, sized or turned wrong, or
    points in another frame."""
    findings = []
    recorded = np.asarray(info["num_lidar_pts"], dtype=np.int64)
    for index in np.flatnonzero(np.abs(counts - recorded) > np.maximum(slack, tolerance * recorded)):
        findings.append(
            Finding(
                "box points",
                f"sample {info['token']}",
                f"box {index} ({info['gt_names'][index]}) holds {counts[index]} key-frame points; the annotation "
                f"records {recorded[index]}",
            )
        )
    return findings
