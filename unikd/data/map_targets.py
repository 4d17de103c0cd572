"""Map-segmentation targets: BEV masks of nuScenes map layers (`maps/expansion/<location>.json`, the
devkit's map expansion) in the key LiDAR frame after the BEV augmentation (`bda`).

The masks are `[len(MAP_CLASSES), H, W]` bool on a `BEVGrid` (rows along y, columns along x, row 0 at
y_min), BEVFusion's 200 x 200 cells of 0.5 m over [-50, 50] m by default. A cell is set when its
centre lies inside a polygon of the class (even-odd over the polygon's rings, so holes stay clear);
a divider line counts as the strip DIVIDER_WIDTH wide around it.

The map is the ground plane z = 0 of the global frame (nuScenes ego poses lie on it). A map point
goes global -> key LiDAR (the inverse of `lidar2global` = ego2global @ lidar2ego) -> `bda`, as the
points do. BEVFusion's `LoadBEVSegmentation` (mit-han-lab/bevfusion) asks the devkit's
`get_map_mask` for the same region: a patch centred at the LiDAR, turned by its yaw, which its
x-major layout then transposes; there the bda's scale is left out, a mirror is applied to the
finished masks, vertices are rounded to whole cells and lines drawn 2 pixels wide.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unikd.ops.bev_grid import BEVGrid

MAP_CLASSES = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")
CLASS_LAYERS = {name: (name,) for name in MAP_CLASSES} | {"divider": ("road_divider", "lane_divider")}
LINE_LAYERS = ("road_divider", "lane_divider")
MAP_GRID = BEVGrid(-50.0, -50.0, 50.0, 50.0, 200, 200)
DIVIDER_WIDTH = 1.0  # metres: about the devkit's 2-pixel lines on BEVFusion's 0.5 m grid


def map_expansion_path(data_root: str | os.PathLike, location: str) -> Path:
    return Path(data_root) / "maps" / "expansion" / f"{location}.json"


@dataclass(frozen=True)
class Shapes:
    """Polygons as their edges: edge k runs from `start[k]` to `end[k]` ([E, 2], global xy) and belongs
    to polygon `polygon[k]` (the edges of all its rings); `bounds` [P, 4] are (x_min, y_min, x_max, y_max)."""

    start: np.ndarray
    end: np.ndarray
    polygon: np.ndarray
    bounds: np.ndarray

    @classmethod
    def from_rings(cls, polygons: list[list[np.ndarray]]) -> Shapes:
        """Shapes of polygons given as lists of rings [K, 2] (the first vertex not repeated)."""
        starts, ends, owners, bounds = [np.zeros((0, 2))], [np.zeros((0, 2))], [np.zeros(0, np.int64)], []
        for index, rings in enumerate(polygons):
            for ring in rings:
                starts.append(ring)
                ends.append(np.roll(ring, -1, axis=0))
                owners.append(np.full(len(ring), index))
            vertices = np.concatenate(rings)
            bounds.append([*vertices.min(axis=0), *vertices.max(axis=0)])
        return cls(
            np.concatenate(starts),
            np.concatenate(ends),
            np.concatenate(owners),
            np.array(bounds).reshape(-1, 4),
        )


class LocationMap:
    """The polygons of each of MAP_CLASSES on one map-expansion file (dividers as strips)."""

    def __init__(self, path: Path) -> None:
        with open(path) as file:
            layers = json.load(file)
        try:
            self.shapes = {name: Shapes.from_rings(_MapFile(layers).rings(name)) for name in MAP_CLASSES}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a nuScenes map-expansion file: {error!r}") from error

    def masks(self, global_to_cells: np.ndarray, height: int, width: int) -> np.ndarray:
        """[len(MAP_CLASSES), height, width] bool; `global_to_cells` [2, 3] maps global xy to
        continuous cell coordinates (col, row), cell (j, i) spanning [j, j+1) x [i, i+1)."""
        corners = np.array([[0.0, 0.0], [width, 0.0], [0.0, height], [width, height]])
        linear, shift = global_to_cells[:, :2], global_to_cells[:, 2]
        region = (corners - shift) @ np.linalg.inv(linear).T  # the grid's corners in global xy
        low, high = region.min(axis=0), region.max(axis=0)
        out = np.zeros((len(MAP_CLASSES), height, width), dtype=bool)
        for c, name in enumerate(MAP_CLASSES):
            shapes = self.shapes[name]
            near = np.all((shapes.bounds[:, :2] <= high) & (shapes.bounds[:, 2:] >= low), axis=1)
            edges = near[shapes.polygon]
            out[c] = fill_polygons(
                shapes.start[edges] @ linear.T + shift,
                shapes.end[edges] @ linear.T + shift,
                shapes.polygon[edges],
                height,
                width,
            )
        return out


class MapTargets:
    """`gt_masks_bev` of samples of the given map locations (all maps read once, at construction)."""

    def __init__(
        self, data_root: str | os.PathLike, locations: Iterable[str], grid: BEVGrid = MAP_GRID
    ) -> None:
        self.grid = grid
        paths = {location: map_expansion_path(data_root, location) for location in sorted(set(locations))}
        missing = [str(path) for path in paths.values() if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"map segmentation reads the nuScenes map expansion; missing: {', '.join(missing)} "
                "(the devkit's maps/expansion/<location>.json, from nuScenes's map expansion download)"
            )
        self.maps = {location: LocationMap(path) for location, path in paths.items()}

    def __call__(self, location: str, lidar2global: np.ndarray, bda: np.ndarray) -> np.ndarray:
        """[len(MAP_CLASSES), H, W] bool masks around the key LiDAR (`lidar2global` 4x4), in the frame
        of the augmentation `bda` (4x4: key LiDAR -> augmented)."""
        return self.maps[location].masks(
            global_to_cells(lidar2global, bda, self.grid), self.grid.height, self.grid.width
        )


def global_to_cells(lidar2global: np.ndarray, bda: np.ndarray, grid: BEVGrid) -> np.ndarray:
    """[2, 3] affine map from global ground points (x, y, z = 0) to the grid's cell coordinates (col, row)
    in the augmented LiDAR frame."""
    to_augmented = np.asarray(bda, np.float64) @ np.linalg.inv(np.asarray(lidar2global, np.float64))
    per_cell = np.array([1.0 / grid.cell_x, 1.0 / grid.cell_y])
    linear = to_augmented[:2, :2] * per_cell[:, None]
    shift = (to_augmented[:2, 3] - [grid.x_min, grid.y_min]) * per_cell
    return np.concatenate([linear, shift[:, None]], axis=1)


def fill_polygons(
    start: np.ndarray, end: np.ndarray, polygon: np.ndarray, height: int, width: int
) -> np.ndarray:
    """[height, width] bool: the cells whose centre (j + 0.5, i + 0.5) lies inside any of the polygons
    given by their edges ([E, 2] in cell coordinates, owner [E]), each by the even-odd rule.

    A scanline fill: each edge crosses the rows whose centre y lies in [y_low, y_high); sorted per
    polygon and row, the crossings pair up into spans [x_a, x_b) of cell centres."""
    y0, y1 = start[:, 1], end[:, 1]
    low, high = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(low - 0.5), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(high - 0.5), 0, height).astype(np.int64)
    counts = np.maximum(stop - first, 0)
    edge = np.repeat(np.arange(len(start)), counts)
    row = first[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts, counts)
    t = (row + 0.5 - y0[edge]) / (y1[edge] - y0[edge])
    x = start[edge, 0] + t * (end[edge, 0] - start[edge, 0])
    order = np.lexsort((x, row, polygon[edge]))
    x, row = x[order].reshape(-1, 2), row[order][::2]
    columns = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)
    coverage = np.zeros((height, width + 1), dtype=np.int64)
    np.add.at(coverage, (row, columns[:, 0]), 1)
    np.add.at(coverage, (row, columns[:, 1]), -1)
    return np.cumsum(coverage, axis=1)[:, :width] > 0


class _MapFile:
    """The geometric tables of a map-expansion file, for reading its layers' polygons."""

    def __init__(self, layers: dict) -> None:
        self.layers = layers
        self.nodes = {node["token"]: (node["x"], node["y"]) for node in layers["node"]}
        self.lines = {line["token"]: line["node_tokens"] for line in layers["line"]}
        self.polygons = {polygon["token"]: polygon for polygon in layers["polygon"]}

    def rings(self, name: str) -> list[list[np.ndarray]]:
        """The polygons (lists of rings [K, 2]) of a class's layers; a line becomes the strip
        DIVIDER_WIDTH wide around each of its segments."""
        polygons = []
        for layer in CLASS_LAYERS[name]:
            for record in self.layers[layer]:
                if layer in LINE_LAYERS:
                    points = self._points(self.lines[record["line_token"]])
                    polygons.extend([strip] for strip in _strips(points, DIVIDER_WIDTH / 2))
                    continue
                tokens = record["polygon_tokens"] if layer == "drivable_area" else [record["polygon_token"]]
                for token in tokens:
                    polygon = self.polygons[token]
                    rings = [
                        polygon["exterior_node_tokens"],
                        *(hole["node_tokens"] for hole in polygon["holes"]),
                    ]
                    polygons.append([self._points(ring) for ring in rings if len(ring) >= 3])
        return [rings for rings in polygons if rings]

    def _points(self, tokens: list[str]) -> np.ndarray:
        return np.array([self.nodes[token] for token in tokens], np.float64).reshape(-1, 2)


def _strips(points: np.ndarray, half_width: float) -> list[np.ndarray]:
    """The rectangles [4, 2] of half width `half_width` around each non-empty segment of a polyline [K, 2]."""
    direction = np.diff(points, axis=0)
    length = np.linalg.norm(direction, axis=1)
    keep = length > 0
    normal = np.stack([-direction[keep, 1], direction[keep, 0]], axis=1) / length[keep, None] * half_width
    a, b = points[:-1][keep], points[1:][keep]
    return list(np.stack([a - normal, b - normal, b + normal, a + normal], axis=1))
