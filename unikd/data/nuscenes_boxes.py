"""The one place that converts between unikd boxes and nuScenes (and mmdet3d) boxes.

unikd box: [x, y, z, l, w, h, yaw, vx, vy] in the key-frame LiDAR frame.
nuScenes box: translation (centre), size as (w, l, h), rotation quaternion (w, x, y, z), velocity
(vx, vy) — in the global frame for annotations and submissions.
mmdet3d LiDAR box: [x, y, z, dx, dy, dz, yaw(, vx, vy)]; z at a fraction `z_origin` of the height
(0: the bottom, as `LiDARInstance3DBoxes` and model outputs hold it; 0.5: the centre, as info
files store `gt_boxes`). mmdet3d >= 1.0: (dx, dy, dz) = (l, w, h) and unikd's yaw; mmdet3d 0.x:
(w, l, h) and yaw' = -yaw - pi/2.
"""

from __future__ import annotations

import numpy as np
from pyquaternion import Quaternion


def quaternion_yaw(q: Quaternion) -> float:
    """Heading of the box's +x axis, projected to the x-y plane, from +x toward +y."""
    forward = q.rotation_matrix[:, 0]
    return float(np.arctan2(forward[1], forward[0]))


def transform_boxes(boxes: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Move [K, 9] boxes by a rigid 4x4 transform whose rotation is about z (up to float noise).

    Centres are transformed as points, yaw gains the transform's heading, velocities rotate.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    rotation, translation = transform[:3, :3], transform[:3, 3]
    out = boxes.copy()
    out[:, :3] = boxes[:, :3] @ rotation.T + translation
    heading = np.arctan2(rotation[1, 0], rotation[0, 0])
    out[:, 6] = wrap_angle(boxes[:, 6] + heading)
    velocity = np.concatenate([boxes[:, 7:9], np.zeros((len(boxes), 1))], axis=1)
    out[:, 7:9] = (velocity @ rotation.T)[:, :2]
    return out


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Wrap radians to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def boxes_to_nuscenes(boxes: np.ndarray) -> dict[str, np.ndarray]:
    """[K, 9] unikd boxes -> nuScenes fields in the same frame.

    Returns translation [K, 3], size [K, 3] (w, l, h), rotation [K, 4] (w, x, y, z), velocity [K, 2].
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    half = boxes[:, 6] / 2
    rotation = np.stack([np.cos(half), np.zeros_like(half), np.zeros_like(half), np.sin(half)], axis=1)
    return {
        "translation": boxes[:, :3].copy(),
        "size": boxes[:, [4, 3, 5]].copy(),
        "rotation": rotation,
        "velocity": boxes[:, 7:9].copy(),
    }


def nuscenes_to_boxes(
    translation: np.ndarray, size_wlh: np.ndarray, rotations: list[Quaternion], velocity: np.ndarray
) -> np.ndarray:
    """nuScenes fields (one frame) -> [K, 9] unikd boxes in the same frame."""
    translation = np.asarray(translation, dtype=np.float64).reshape(-1, 3)
    size_wlh = np.asarray(size_wlh, dtype=np.float64).reshape(-1, 3)
    velocity = np.nan_to_num(np.asarray(velocity, dtype=np.float64).reshape(-1, 2))
    yaw = np.array([quaternion_yaw(q) for q in rotations], dtype=np.float64)
    return np.concatenate(
        [translation, size_wlh[:, [1, 0, 2]], yaw[:, None], velocity], axis=1
    ).reshape(-1, 9)


def lidar_boxes_to_global(boxes_lidar: np.ndarray, lidar2global: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted LiDAR-frame boxes -> nuScenes global-frame fields (see `boxes_to_nuscenes`)."""
    return boxes_to_nuscenes(transform_boxes(boxes_lidar, np.asarray(lidar2global, dtype=np.float64)))


def mmdet3d_to_boxes(boxes: np.ndarray, convention: str = "1.x", z_origin: float = 0.0) -> np.ndarray:
    """mmdet3d LiDAR boxes [K, 7 or 9] (module docstring) -> [K, 9] unikd boxes (velocity 0 when absent,
    yaw wrapped to [-pi, pi) as the devkit path's)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] not in (7, 9):
        raise ValueError(f"mmdet3d boxes must be [K, 7] or [K, 9], got {boxes.shape}")
    if convention not in ("0.x", "1.x"):
        raise ValueError(f"convention must be '0.x' or '1.x', got {convention!r}")
    out = np.zeros((len(boxes), 9))
    out[:, : boxes.shape[1]] = boxes
    out[:, 2] += (0.5 - z_origin) * boxes[:, 5]
    if convention == "0.x":
        out[:, 3:5] = boxes[:, [4, 3]]
        out[:, 6] = -boxes[:, 6] - np.pi / 2
    out[:, 6] = wrap_angle(out[:, 6])
    return out

