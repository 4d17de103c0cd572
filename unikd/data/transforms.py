"""Global (BEV) augmentation of points and boxes together, recorded as the `bda` matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BEVAugConfig:
    """Ranges of the random global transform (BEVFusion's nuScenes defaults)."""

    rotation: tuple[float, float] = (-0.785398, 0.785398)
    scale: tuple[float, float] = (0.9, 1.1)
    translation_std: float = 0.5
    flip_x_prob: float = 0.5  # mirror x -> -x
    flip_y_prob: float = 0.5  # mirror y -> -y


def bda_matrix(rotation: float, scale: float, translation: np.ndarray, flip_x: bool, flip_y: bool) -> np.ndarray:
    """4x4 map from the original to the augmented LiDAR frame: translate . flip . scale . rotate."""
    cos, sin = np.cos(rotation), np.sin(rotation)
    rotate = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    flip = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = flip @ (scale * rotate)
    matrix[:3, 3] = translation
    return matrix


def sample_bda(config: BEVAugConfig, rng: np.random.Generator) -> np.ndarray:
    return bda_matrix(
        rotation=rng.uniform(*config.rotation),
        scale=rng.uniform(*config.scale),
        translation=rng.normal(0.0, config.translation_std, size=3),
        flip_x=rng.random() < config.flip_x_prob,
        flip_y=rng.random() < config.flip_y_prob,
    )


def apply_bda_to_points(points: np.ndarray, bda: np.ndarray) -> np.ndarray:
    """Transform the xyz columns of [N, C] points; other columns are kept."""
    out = points.copy()
    out[:, :3] = points[:, :3] @ bda[:3, :3].T + bda[:3, 3]
    return out


def apply_bda_to_boxes(boxes: np.ndarray, bda: np.ndarray) -> np.ndarray:
    """Transform [M, 9] boxes by a bda matrix (rotation about z, uniform scale, mirror, translation).

    Centres move as points, sizes and velocities scale, the heading vector maps through the
    linear part (so a mirror reflects the yaw), velocities map through the linear part.
    """
    linear = bda[:3, :3]
    scale = float(np.cbrt(abs(np.linalg.det(linear))))
    out = boxes.copy()
    out[:, :3] = boxes[:, :3] @ linear.T + bda[:3, 3]
    out[:, 3:6] = boxes[:, 3:6] * scale
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], axis=1) @ linear[:2, :2].T
    out[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])
    out[:, 7:9] = boxes[:, 7:9] @ linear[:2, :2].T
    return out


def boxes_in_range(boxes: np.ndarray, point_cloud_range: tuple[float, ...]) -> np.ndarray:
    """Mask of boxes whose BEV centre lies inside [x_min, x_max) x [y_min, y_max)."""
    x_min, y_min, _, x_max, y_max, _ = point_cloud_range
    return (boxes[:, 0] >= x_min) & (boxes[:, 0] < x_max) & (boxes[:, 1] >= y_min) & (boxes[:, 1] < y_max)


def points_in_range(points: np.ndarray, point_cloud_range: tuple[float, ...]) -> np.ndarray:
    lower, upper = np.asarray(point_cloud_range[:3]), np.asarray(point_cloud_range[3:])
    return np.all((points[:, :3] >= lower) & (points[:, :3] < upper), axis=1)
