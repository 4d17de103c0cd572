"""Nominal sensor rig of the synthetic car: a LIDAR_TOP and six cameras placed like nuScenes.

Translations (metres, ego frame: x forward, y left, z up), yaws and intrinsics approximate the
real nuScenes rig; the cameras are level (no pitch or roll) and capture 1600x900 images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyquaternion import Quaternion

IMAGE_WIDTH = 1600
IMAGE_HEIGHT = 900

LIDAR_CHANNEL = "LIDAR_TOP"
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)
LIDAR_YAW = -np.pi / 2  # like nuScenes: LiDAR x points right, y forward
LIDAR_SPIN_PERIOD_US = 50_000  # the sensor spins at 20 Hz


@dataclass(frozen=True)
class CameraSpec:
    """One camera: where it sits, where it looks, and its pinhole intrinsics."""

    channel: str
    translation: tuple[float, float, float]
    yaw_deg: float  # optical axis heading in the ego frame, from +x toward +y
    focal: float
    principal_point: tuple[float, float]

    @property
    def intrinsic(self) -> np.ndarray:
        """3x3 camera matrix K."""
        cx, cy = self.principal_point
        return np.array([[self.focal, 0.0, cx], [0.0, self.focal, cy], [0.0, 0.0, 1.0]])

    @property
    def rotation_matrix(self) -> np.ndarray:
        """Camera -> ego rotation; camera axes are x right, y down, z forward (optical axis)."""
        yaw = np.deg2rad(self.yaw_deg)
        forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        return np.stack([right, down, forward], axis=1)

    @property
    def timestamp_offset_us(self) -> int:
        """Capture time relative to the LiDAR key frame: the camera fires as the spinning
        LiDAR (clockwise seen from above, starting at the front) sweeps across its view."""
        clockwise_deg = (-self.yaw_deg + 180.0) % 360.0 - 180.0
        return int(round(clockwise_deg / 360.0 * LIDAR_SPIN_PERIOD_US))


CAMERA_SPECS: tuple[CameraSpec, ...] = (
    CameraSpec("CAM_FRONT", (1.70, 0.02, 1.51), 0.0, 1266.4, (816.3, 491.5)),
    CameraSpec("CAM_FRONT_RIGHT", (1.55, -0.49, 1.50), -56.0, 1260.8, (808.0, 495.3)),
    CameraSpec("CAM_FRONT_LEFT", (1.52, 0.49, 1.51), 55.0, 1272.6, (826.6, 479.8)),
    CameraSpec("CAM_BACK", (0.03, 0.00, 1.58), 180.0, 809.2, (829.2, 481.8)),
    CameraSpec("CAM_BACK_LEFT", (1.04, 0.48, 1.59), 109.0, 1256.7, (792.1, 492.8)),
    CameraSpec("CAM_BACK_RIGHT", (1.01, -0.48, 1.56), -111.0, 1259.5, (807.3, 501.2)),
)


def yaw_quaternion(yaw: float) -> list[float]:
    """Rotation about +z as a nuScenes quaternion list (w, x, y, z)."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def lidar_calibration() -> dict:
    """Fields of the LIDAR_TOP calibrated_sensor record."""
    return {
        "translation": list(LIDAR_TRANSLATION),
        "rotation": yaw_quaternion(LIDAR_YAW),
        "camera_intrinsic": [],
    }


def camera_calibration(spec: CameraSpec) -> dict:
    """Fields of a camera's calibrated_sensor record."""
    rotation = Quaternion(matrix=spec.rotation_matrix).elements
    if rotation[0] < 0:  # q and -q are the same rotation; keep w >= 0 like nuScenes
        rotation = -rotation
    return {
        "translation": list(spec.translation),
        "rotation": [float(v) for v in rotation],
        "camera_intrinsic": spec.intrinsic.tolist(),
    }
