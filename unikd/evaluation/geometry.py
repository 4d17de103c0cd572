"""Box geometry with the nuScenes devkit's conventions and roundings (global frame, wlh, quaternions)."""

from __future__ import annotations

import numpy as np
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion


def quaternions_to_yaw(rotation: np.ndarray) -> np.ndarray:
    """[K, 4] quaternions (w, x, y, z) -> [K] heading of the rotated +x axis in the x-y plane."""
    w, x, y, z = np.asarray(rotation, dtype=np.float64).reshape(-1, 4).T
    return np.arctan2(x * y + z * w + w * z + x * y, x * x + w * w - z * z - y * y)


def row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products of matching rows of [..., n] arrays, rounded as the devkit's `np.dot(x, y)` rounds them.

    A (1, n) @ (n, 1) matmul runs numpy's dot routine of two vectors (BLAS ddot), the one `np.dot`
    and `np.linalg.norm` of 1-D arrays run. Elementwise products and sums (`np.sum(a * b, -1)`,
    `np.einsum`, `np.linalg.norm(..., axis=-1)`) round differently where ddot fuses multiply-adds.
    """
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return np.matmul(a[..., None, :], b[..., :, None])[..., 0, 0]


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row of [..., n], bit-identical to the devkit's `np.linalg.norm` of one row."""
    return np.sqrt(row_dots(vectors, vectors))


def box_corners(center: np.ndarray, size: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """[K, 3, 8] corners of K boxes (centre, w l h, quaternion w x y z), in the devkit's corner order.

    Computed box by box by the devkit's own `Box.corners`, so that they are bit-identical to the
    corners its bicycle-rack test uses (its rotation matrix and matrix products round their own way).
    """
    corners = [
        Box(c, s, Quaternion(r)).corners()
        for c, s, r in zip(
            np.asarray(center, dtype=np.float64).reshape(-1, 3).tolist(),
            np.asarray(size, dtype=np.float64).reshape(-1, 3).tolist(),
            np.asarray(rotation, dtype=np.float64).reshape(-1, 4).tolist(),
            strict=True,
        )
    ]
    return np.array(corners, dtype=np.float64).reshape(-1, 3, 8)


def points_in_boxes(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Whether point i lies in box i (borders included), with the arithmetic of the devkit's `points_in_box`.

    points [K, 3]; corners [K, 3, 8] from `box_corners`. The point, relative to corner 0, is projected
    onto the edges from corner 0 to corners 4, 1 and 3; it is inside when every projection p satisfies
    0 <= p <= the edge's squared length.
    """
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 3, 8)
    origin = corners[:, :, 0]
    edges = np.stack(
        [corners[:, :, 4] - origin, corners[:, :, 1] - origin, corners[:, :, 3] - origin], axis=1
    )
    offset = np.asarray(points, dtype=np.float64).reshape(-1, 3) - origin
    projection = row_dots(edges, np.broadcast_to(offset[:, None, :], edges.shape))
    length_sq = row_dots(edges, edges)
    return np.all((0 <= projection) & (projection <= length_sq), axis=1)
