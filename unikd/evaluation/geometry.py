"""Vectorised box geometry with the nuScenes devkit's conventions (global frame, wlh, quaternions)."""

from __future__ import annotations

import numpy as np


def quaternions_to_yaw(rotation: np.ndarray) -> np.ndarray:
    """[K, 4] quaternions (w, x, y, z) -> [K] heading of the rotated +x axis in the x-y plane."""
    w, x, y, z = np.asarray(rotation, dtype=np.float64).reshape(-1, 4).T
    return np.arctan2(x * y + z * w + w * z + x * y, x * x + w * w - z * z - y * y)


def quaternions_to_matrices(rotation: np.ndarray) -> np.ndarray:
    """[K, 4] quaternions (w, x, y, z), normalised first -> [K, 3, 3] rotation matrices."""
    q = np.asarray(rotation, dtype=np.float64).reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=1),
            np.stack([2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)], axis=1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z], axis=1),
        ],
        axis=1,
    )


def points_in_boxes(
    points: np.ndarray, center: np.ndarray, size: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Whether point i lies in box i (borders included), as the devkit's `points_in_box` decides it.

    points, center [K, 3]; size [K, 3] (w, l, h); rotation [K, 4] (w, x, y, z). The test projects the
    point, relative to the box's first corner, onto the three edges leaving that corner.
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1, 3)
    w, length, h = np.asarray(size, dtype=np.float64).reshape(-1, 3).T
    # Corners 0 (front-left-top), 4 (back), 1 (right), 3 (bottom) of the devkit's corner order.
    local = np.stack(
        [
            np.stack([length / 2, w / 2, h / 2], axis=1),
            np.stack([-length / 2, w / 2, h / 2], axis=1),
            np.stack([length / 2, -w / 2, h / 2], axis=1),
            np.stack([length / 2, w / 2, -h / 2], axis=1),
        ],
        axis=2,
    )  # [K, 3, 4]
    corners = quaternions_to_matrices(rotation) @ local + center[:, :, None]
    origin = corners[:, :, 0]
    edges = corners[:, :, 1:] - origin[:, :, None]  # [K, 3, 3], one edge per column
    offset = np.asarray(points, dtype=np.float64).reshape(-1, 3) - origin
    projection = np.einsum("kde,kd->ke", edges, offset)
    length_sq = np.einsum("kde,kde->ke", edges, edges)
    return np.all((projection >= 0) & (projection <= length_sq), axis=1)
