"""The ground returns of a synthetic LiDAR key frame and the material each one hit, for checking the
semantic map against what the sensors see.

The generator's LiDAR intensity is round(255 * r * (0.2 + 0.8 cos)), r the reflectivity of the
surface hit and cos the incidence; for the flat ground, cos = -z / |p| of the point p in the sensor
frame (the range noise moves p along its ray, which keeps that ratio). So the reflectivity of a
ground return is known to about 0.5 / (255 * 0.2), and it names the material.
"""

from __future__ import annotations

import numpy as np

# Reflectivity of each ground material of the synthetic world.
GROUND_MATERIALS = {"asphalt": 0.08, "bike_or_parking": 0.1, "paving": 0.25, "grass": 0.3, "marking": 0.8}
MAX_RANGE = 40.0  # metres: farther, grazing returns tell 0.08 from 0.1 less surely


def ground_returns(points: np.ndarray, lidar2global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Key-frame points [N, >=4] (LiDAR frame: x, y, z, intensity) -> the ground returns within MAX_RANGE
    (global z within 2 cm of 0) [M, 3] in the LiDAR frame, and the material name of each ("" when its
    reflectivity is none of GROUND_MATERIALS')."""
    xyz = points[:, :3].astype(np.float64)
    global_z = xyz @ lidar2global[2, :3] + lidar2global[2, 3]
    keep = (np.abs(global_z) < 0.02) & (np.linalg.norm(xyz[:, :2], axis=1) < MAX_RANGE)
    xyz, intensity = xyz[keep], points[keep, 3].astype(np.float64)
    cos = -xyz[:, 2] / np.linalg.norm(xyz, axis=1)
    reflectivity = intensity / (255.0 * (0.2 + 0.8 * cos))
    names = np.array(list(GROUND_MATERIALS))
    distance = np.abs(reflectivity[:, None] - np.array(list(GROUND_MATERIALS.values()))[None])
    material = np.where(distance.min(axis=1) < 0.009, names[distance.argmin(axis=1)], "")
    return xyz, material
