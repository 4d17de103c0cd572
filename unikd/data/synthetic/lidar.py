"""A 32-beam spinning LiDAR, simulated by casting rays against the ground plane and the boxes.

Everything here is in the LiDAR sensor frame; the ground is the plane z = -sensor_height. Each ray
returns its nearest hit (vectorised slab test per box, over only the beams and azimuth columns that
can reach the box).
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
    windows = _windows(centres, sizes, yaws, azimuth_start, step)
    for i in [*np.flatnonzero(solid), *np.flatnonzero(~solid)]:
        for window in windows[i]:
            t_in, t_out, cos_in, hit = _slab(dirs[window], centres[i], sizes[i] / 2, yaws[i])
            potential[i] += int(hit.sum())
            if not solid[i]:
                transparent_hits.append((i, window, t_in, hit))
                continue
            closer = hit & (t_in < t_best[window])
            np.copyto(t_best[window], t_in, where=closer)
            np.copyto(t_exit[window], t_out, where=closer)
            np.copyto(cos_incidence[window], cos_in, where=closer)
            np.copyto(hit_id[window], i, where=closer)

    valid = np.isfinite(t_best)
    on_box = valid & (hit_id >= 0)
    visible = np.bincount(hit_id[on_box], minlength=num_boxes)
    for i, window, t_in, hit in transparent_hits:
        visible[i] += int((hit & (t_in < t_best[window])).sum())

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


def _windows(
    centres: np.ndarray, sizes: np.ndarray, yaws: np.ndarray, start: float, step: float
) -> list[list[tuple[slice, slice]]]:
    """Per box, the (beam, azimuth column) slices of the rays that can reach it (none when out of
    range; two when the columns wrap around). Conservative: from the box's distance and extent."""
    radius = np.hypot(sizes[:, 0], sizes[:, 1]) / 2
    distance = np.hypot(centres[:, 0], centres[:, 1])
    near, far = np.maximum(distance - radius, 0.0), distance + radius
    bottom, top = centres[:, 2] - sizes[:, 2] / 2, centres[:, 2] + sizes[:, 2] / 2
    lowest = np.arctan2(bottom, np.where(bottom < 0, near, far))
    highest = np.arctan2(top, np.where(top > 0, near, far))
    first_beam = np.searchsorted(BEAM_ELEVATIONS, lowest - 1e-9, side="left")
    last_beam = np.searchsorted(BEAM_ELEVATIONS, highest + 1e-9, side="right")  # exclusive

    cos, sin = np.cos(yaws)[:, None], np.sin(yaws)[:, None]
    half_l, half_w = (
        sizes[:, 0:1] / 2 * np.array([1, 1, -1, -1]),
        sizes[:, 1:2] / 2 * np.array([1, -1, 1, -1]),
    )
    corner_x = centres[:, 0:1] + cos * half_l - sin * half_w
    corner_y = centres[:, 1:2] + sin * half_l + cos * half_w
    middle = np.arctan2(centres[:, 1], centres[:, 0])
    relative = (np.arctan2(corner_y, corner_x) - middle[:, None] + np.pi) % (2 * np.pi) - np.pi
    first_column = np.floor((middle + relative.min(axis=1) - start) / step).astype(np.int64)
    last_column = np.ceil((middle + relative.max(axis=1) - start) / step).astype(np.int64) + 1  # exclusive
    everywhere = (distance <= radius) | (last_column - first_column >= AZIMUTH_STEPS)

    windows: list[list[tuple[slice, slice]]] = []
    for i in range(len(centres)):
        beams = slice(int(first_beam[i]), int(last_beam[i]))
        if distance[i] - radius[i] > MAX_RANGE or beams.start >= beams.stop:
            windows.append([])
        elif everywhere[i]:
            windows.append([(beams, slice(0, AZIMUTH_STEPS))])
        else:
            first = int(first_column[i]) % AZIMUTH_STEPS
            last = int(last_column[i]) - (int(first_column[i]) - first)
            if last <= AZIMUTH_STEPS:
                windows.append([(beams, slice(first, last))])
            else:
                windows.append(
                    [(beams, slice(first, AZIMUTH_STEPS)), (beams, slice(0, last - AZIMUTH_STEPS))]
                )
    return windows


def _slab(
    dirs: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rays from the origin along dirs [..., 3] against one box: entry and exit distances, |cos| of
    the incidence angle on the entry face, and whether the ray enters the box in front of it."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    local = (
        cos * dirs[..., 0] + sin * dirs[..., 1],
        -sin * dirs[..., 0] + cos * dirs[..., 1],
        dirs[..., 2],
    )
    origin = (-cos * centre[0] - sin * centre[1], sin * centre[0] - cos * centre[1], -centre[2])
    entries, exits = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for direction, start, extent in zip(local, origin, half, strict=True):
            t1 = (-extent - start) / direction
            t2 = (extent - start) / direction
            entries.append(np.minimum(t1, t2))
            exits.append(np.maximum(t1, t2))
    t_in = np.maximum(np.maximum(entries[0], entries[1]), entries[2])
    t_out = np.minimum(np.minimum(exits[0], exits[1]), exits[2])
    cos_in = np.where(t_in == entries[0], local[0], np.where(t_in == entries[1], local[1], local[2]))
    hit = (t_in <= t_out) & (t_in > 0) & (t_in < MAX_RANGE)
    return t_in, t_out, np.abs(cos_in), hit


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
    by_x = np.argsort(xyz[0], kind="stable")
    sorted_x = xyz[0, by_x]
    counts = []
    for translation, size, rotation in boxes:
        reach = np.linalg.norm(size) / 2 + 0.01
        lo, hi = np.searchsorted(sorted_x, [translation[0] - reach, translation[0] + reach])
        near = by_x[lo:hi]
        near = near[np.abs(xyz[1, near] - translation[1]) <= reach]
        box = Box(translation, size, Quaternion(rotation))
        counts.append(int(points_in_box(box, xyz[:, near]).sum()))
    return counts
