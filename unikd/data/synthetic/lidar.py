"""A 32-beam spinning LiDAR, simulated by casting rays against the ground plane and the boxes.

Everything here is in the LiDAR sensor frame; the ground is the plane z = -sensor_height. Each ray
returns its nearest hit (vectorised slab test per box, over the azimuth columns the box covers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from nuscenes.utils.data_classes import Box, LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

NUM_BEAMS = 32
BEAM_ELEVATIONS = np.deg2rad(np.linspace(-30.0, 10.0, NUM_BEAMS))  # ring index 0 is the lowest beam
AZIMUTH_STEPS = 1084
MAX_RANGE = 100.0
SURFACE_DEPTH = 0.03  # a box return lies this far (at most) inside the surface it hit
DROPOUT = 0.02  # fraction of returns lost when noise is on


@dataclass(frozen=True)
class LidarScan:
    """One sweep: the points and, per box, how many rays see it."""

    points: np.ndarray  # [P, 5] float32: x, y, z, intensity (0..255), ring index
    visible_rays: np.ndarray  # [N] rays whose nearest hit is the box
    potential_rays: np.ndarray  # [N] rays that would hit the box were nothing else in the way


def cast_lidar(
    centres: np.ndarray,
    sizes: np.ndarray,
    yaws: np.ndarray,
    solid: np.ndarray,
    reflectivity: np.ndarray,
    sensor_height: float,
    ground_reflectivity: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    noise_std: float,
) -> LidarScan:
    """Ray-cast one sweep against boxes given in the sensor frame.

    centres [N, 3], sizes [N, 3] (l, w, h), yaws [N]; only `solid` boxes stop rays (the others are
    counted for visibility but are transparent). `ground_reflectivity` maps sensor-frame ground xy
    [M, 2] to reflectivity [M]. `noise_std` (metres) jitters ranges and drops a few returns; 0 is exact.
    """
    step = 2 * np.pi / AZIMUTH_STEPS
    azimuth_start = rng.uniform(0.0, step)
    azimuths = azimuth_start + step * np.arange(AZIMUTH_STEPS)
    elevation = BEAM_ELEVATIONS[:, None]
    dirs = np.stack(
        np.broadcast_arrays(
            np.cos(elevation) * np.cos(azimuths), np.cos(elevation) * np.sin(azimuths), np.sin(elevation)
        ),
        axis=-1,
    )  # [beams, azimuths, 3] unit vectors
    with np.errstate(divide="ignore"):
        t_best = np.where(dirs[..., 2] < 0, sensor_height / -dirs[..., 2], np.inf)
    t_best[t_best > MAX_RANGE] = np.inf
    hit_id = np.full(t_best.shape, -1, dtype=np.int64)  # -1: ground (or nothing where t is inf)
    t_exit = np.zeros_like(t_best)
    cos_incidence = np.abs(dirs[..., 2])

    num_boxes = len(centres)
    potential = np.zeros(num_boxes, dtype=np.int64)
    transparent_hits = []
    for i in [*np.flatnonzero(solid), *np.flatnonzero(~solid)]:
        columns = _columns(centres[i], sizes[i], yaws[i], azimuth_start, step)
        if columns is None:
            continue
        t_in, t_out, cos_in, hit = _slab(dirs[:, columns], centres[i], sizes[i] / 2, yaws[i])
        potential[i] = int(hit.sum())
        if not solid[i]:
            transparent_hits.append((i, columns, t_in, hit))
            continue
        closer = hit & (t_in < t_best[:, columns])
        for array, value in ((t_best, t_in), (t_exit, t_out), (cos_incidence, cos_in)):
            array[:, columns] = np.where(closer, value, array[:, columns])
        hit_id[:, columns] = np.where(closer, i, hit_id[:, columns])

    valid = np.isfinite(t_best)
    on_box = valid & (hit_id >= 0)
    visible = np.bincount(hit_id[on_box], minlength=num_boxes)
    for i, columns, t_in, hit in transparent_hits:
        visible[i] = int((hit & (t_in < t_best[:, columns])).sum())

    ranges = t_best.copy()
    depth = np.zeros_like(ranges)
    depth[on_box] = np.minimum(SURFACE_DEPTH, (t_exit[on_box] - t_best[on_box]) / 2)
    ranges += depth
    if noise_std > 0:
        jitter = rng.normal(0.0, noise_std, size=ranges.shape)
        jitter = np.where(on_box, np.clip(jitter, -0.8 * depth, 0.8 * depth), jitter)
        ranges = np.where(valid, ranges + jitter, ranges)
        valid &= rng.random(ranges.shape) >= DROPOUT

    xyz = dirs[valid] * ranges[valid][:, None]
    box_index = hit_id[valid]
    reflect = np.empty(len(xyz), dtype=np.float64)
    reflect[box_index >= 0] = reflectivity[box_index[box_index >= 0]]
    reflect[box_index < 0] = ground_reflectivity(xyz[box_index < 0, :2])
    intensity = np.round(255.0 * reflect * (0.2 + 0.8 * cos_incidence[valid]))
    ring = np.broadcast_to(np.arange(NUM_BEAMS)[:, None], valid.shape)[valid]
    points = np.concatenate([xyz, intensity[:, None], ring[:, None]], axis=1).astype(np.float32)
    return LidarScan(points, visible, potential)


def _columns(centre: np.ndarray, size: np.ndarray, yaw: float, start: float, step: float) -> np.ndarray | None:
    """Azimuth columns whose rays can reach the box footprint; None when out of range."""
    radius = np.hypot(size[0], size[1]) / 2
    distance = np.hypot(centre[0], centre[1])
    if distance - radius > MAX_RANGE:
        return None
    if distance <= radius:
        return np.arange(AZIMUTH_STEPS)
    cos, sin = np.cos(yaw), np.sin(yaw)
    corners = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]]) * size[:2] / 2
    xy = centre[:2] + corners @ np.array([[cos, sin], [-sin, cos]])
    middle = np.arctan2(centre[1], centre[0])
    relative = (np.arctan2(xy[:, 1], xy[:, 0]) - middle + np.pi) % (2 * np.pi) - np.pi
    first = int(np.floor((middle + relative.min() - start) / step))
    last = int(np.ceil((middle + relative.max() - start) / step))
    if last - first + 1 >= AZIMUTH_STEPS:
        return np.arange(AZIMUTH_STEPS)
    return np.arange(first, last + 1) % AZIMUTH_STEPS


def _slab(
    dirs: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rays from the origin along dirs [..., 3] against one box: entry and exit distances, |cos| of
    the incidence angle on the entry face, and whether the ray enters the box in front of it."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    local = np.stack(
        [cos * dirs[..., 0] + sin * dirs[..., 1], -sin * dirs[..., 0] + cos * dirs[..., 1], dirs[..., 2]], axis=0
    )
    origin = np.array([-cos * centre[0] - sin * centre[1], sin * centre[0] - cos * centre[1], -centre[2]])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half[:, None, None] - origin[:, None, None]) / local
        t2 = (half[:, None, None] - origin[:, None, None]) / local
    near = np.minimum(t1, t2)
    entry_axis = np.argmax(near, axis=0)
    t_in = np.take_along_axis(near, entry_axis[None], axis=0)[0]
    t_out = np.maximum(t1, t2).min(axis=0)
    cos_in = np.abs(np.take_along_axis(local, entry_axis[None], axis=0)[0])
    hit = (t_in <= t_out) & (t_in > 0) & (t_in < MAX_RANGE)
    return t_in, t_out, cos_in, hit


def count_points_in_boxes(
    points: np.ndarray, calibration: dict, ego_pose: dict, boxes: list[tuple[list, list, list]]
) -> list[int]:
    """Number of points [P, >=3] (sensor frame) inside each global box (translation, size wlh,
    rotation), computed the way the nuScenes devkit does: sensor -> ego -> global, points_in_box."""
    cloud = LidarPointCloud(np.ascontiguousarray(points[:, :4].T))
    cloud.rotate(Quaternion(calibration["rotation"]).rotation_matrix)
    cloud.translate(np.array(calibration["translation"]))
    cloud.rotate(Quaternion(ego_pose["rotation"]).rotation_matrix)
    cloud.translate(np.array(ego_pose["translation"]))
    xyz = cloud.points[:3]
    counts = []
    for translation, size, rotation in boxes:
        reach = np.linalg.norm(size) / 2 + 0.01
        near = np.flatnonzero(np.hypot(xyz[0] - translation[0], xyz[1] - translation[1]) <= reach)
        box = Box(translation, size, Quaternion(rotation))
        counts.append(int(points_in_box(box, xyz[:, near]).sum()))
    return counts
