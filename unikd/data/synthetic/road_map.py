"""The semantic map of the synthetic roads, in the nuScenes map-expansion format that the devkit's
`NuScenesMap` reads (`maps/expansion/<location>.json`).

Each scene's road is mapped over its `mapped_s` interval and moved into the global frame by the
scene's placement, in the layers that the renderers paint (`appearance`):

- drivable_area and road_segment: the carriageway, |d| < PARKING_EDGE (lanes, bike lanes, parking strips);
- carpark_area: the parking strips, BIKE_LANE_EDGE < |d| < PARKING_EDGE;
- walkway: the sidewalks, PARKING_EDGE < |d| < SIDEWALK_EDGE;
- ped_crossing: each zebra crossing, curb to curb; stop_line: each painted stop line;
- road_divider: the yellow centre line; lane_divider: the white lines along the road (`LANE_LINES`),
  dashed or not; both are cut where the paint stops at a crossing.

The synthetic roads have no lane graph: lane, road_block, traffic_light, lane_connector,
arcline_path_3 and connectivity are empty. Curved edges are polylines whose chords stay within
SAG of the arc.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unikd.data.synthetic.appearance import (
    BIKE_LANE_EDGE,
    CROSSING_LENGTH,
    LANE_LINES,
    LANES_EDGE,
    PARKING_EDGE,
    SIDEWALK_EDGE,
    STOP_LINE_GAP,
    STOP_LINE_WIDTH,
)
from unikd.data.synthetic.scene import Road

MAP_VERSION = "1.3"  # the devkit refuses maps older than 1.3
SAG = 0.02  # metres: the most a polyline chord strays from the arc it stands for
EMPTY_LIST_LAYERS = ("lane", "road_block", "traffic_light", "lane_connector")
EMPTY_DICT_LAYERS = ("arcline_path_3", "connectivity")


@dataclass(frozen=True)
class MappedRoad:
    """The road of one scene, mapped over `s_range`, and the translation of its scene into the global frame."""

    road: Road
    s_range: tuple[float, float]
    offset: tuple[float, float]


def write_map_expansion(
    root: Path, location: str, roads: Sequence[MappedRoad], token: Callable[..., str]
) -> Path:
    """Write `maps/expansion/<location>.json` under `root` for the given roads; return its path."""
    path = root / "maps" / "expansion" / f"{location}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        json.dump(map_expansion(roads, lambda *key: token("map_expansion", location, *key)), file)
    return path


def map_expansion(roads: Sequence[MappedRoad], token: Callable[..., str]) -> dict:
    """The map-expansion JSON object of the given roads; `token(*key)` names every record."""
    tables = _MapTables(token)
    for mapped in roads:
        _add_road(tables, mapped)
    return tables.finished()


class _MapTables:
    """The geometric tables (node, line, polygon) and the layers of one map, being filled."""

    def __init__(self, token: Callable[..., str]) -> None:
        self._token = token
        self.layers: dict[str, list[dict]] = {"node": [], "line": [], "polygon": []}

    def add(self, layer: str, **fields: object) -> str:
        """Add a record to `layer`; return its token."""
        records = self.layers.setdefault(layer, [])
        record = {"token": self._token(layer, len(records)), **fields}
        records.append(record)
        return record["token"]

    def _nodes(self, xy: np.ndarray) -> list[str]:
        return [self.add("node", x=float(x), y=float(y)) for x, y in xy]

    def polygon(self, ring: np.ndarray) -> str:
        """A polygon of the ring's vertices [K, 2] (not repeating the first), without holes."""
        return self.add("polygon", exterior_node_tokens=self._nodes(ring), holes=[])

    def line(self, xy: np.ndarray) -> str:
        return self.add("line", node_tokens=self._nodes(xy))

    def finished(self) -> dict:
        xy = np.array([[node["x"], node["y"]] for node in self.layers["node"]]).reshape(-1, 2)
        extent = np.ceil(xy.max(axis=0)) if len(xy) else np.zeros(2)
        return {
            "version": MAP_VERSION,
            "canvas_edge": [float(extent[0]), float(extent[1])],
            **{name: [] for name in EMPTY_LIST_LAYERS},
            **{name: {} for name in EMPTY_DICT_LAYERS},
            **self.layers,
        }


def _add_road(tables: _MapTables, mapped: MappedRoad) -> None:
    road, (low, high) = mapped.road, mapped.s_range

    def band(s0: float, s1: float, d0: float, d1: float) -> str:
        """Polygon of the road-coordinate rectangle [s0, s1] x [d0, d1]."""
        s = _stations(road, s0, s1)
        near = road.pose(s, np.full_like(s, d0))[0]
        far = road.pose(s[::-1], np.full_like(s, d1))[0]
        return tables.polygon(np.concatenate([near, far]) + mapped.offset)

    def line(s0: float, s1: float, d: float) -> str:
        s = _stations(road, s0, s1)
        return tables.line(road.pose(s, np.full_like(s, d))[0] + mapped.offset)

    carriageway = band(low, high, -PARKING_EDGE, PARKING_EDGE)
    drivable = tables.add("drivable_area", polygon_tokens=[carriageway])
    segment = tables.add(
        "road_segment", polygon_token=carriageway, is_intersection=False, drivable_area_token=drivable
    )
    middle_heading = float(road.pose(np.array((low + high) / 2), np.array(0.0))[1])
    for side in (-1.0, 1.0):
        tables.add(
            "carpark_area",
            polygon_token=band(low, high, side * BIKE_LANE_EDGE, side * PARKING_EDGE),
            orientation=middle_heading,
            road_block_token="",
        )
        tables.add("walkway", polygon_token=band(low, high, side * PARKING_EDGE, side * SIDEWALK_EDGE))

    half = CROSSING_LENGTH / 2
    for centre in road.crossings:
        crossing = tables.add(
            "ped_crossing",
            polygon_token=band(centre - half, centre + half, -PARKING_EDGE, PARKING_EDGE),
            road_segment_token=segment,
        )
        # The traffic toward +s (on the drive side) stops before the crossing, the other after it.
        for direction in (1.0, -1.0):
            near = centre - direction * (half + STOP_LINE_GAP)
            far = near - direction * STOP_LINE_WIDTH
            tables.add(
                "stop_line",
                polygon_token=band(
                    min(near, far), max(near, far), 0.0, direction * road.drive_side * LANES_EDGE
                ),
                stop_line_type="PED_CROSSING",
                ped_crossing_tokens=[crossing],
                traffic_light_tokens=[],
                road_block_token="",
            )

    for s0, s1 in _between_crossings(low, high, road.crossings):
        tables.add("road_divider", line_token=line(s0, s1, 0.0), road_segment_token=segment)
        for offset, _ in LANE_LINES:
            for side in (-1.0, 1.0):
                tables.add("lane_divider", line_token=line(s0, s1, side * offset), lane_divider_segments=[])


def _stations(road: Road, s0: float, s1: float) -> np.ndarray:
    """Positions along s from s0 to s1 at which polylines at any mapped offset keep within SAG of the arc:
    an arc of length L and radius R strays L^2 / (8 R) from its chord."""
    if road.curvature == 0.0:
        return np.array([s0, s1])
    curvature = abs(road.curvature)
    widest = 1.0 / curvature + SIDEWALK_EDGE  # the radius of the outermost mapped edge
    # A step along s is an arc of step * widest * curvature on that edge.
    step = math.sqrt(8.0 * SAG / (curvature**2 * widest))
    return np.linspace(s0, s1, max(1, math.ceil((s1 - s0) / step)) + 1)


def _between_crossings(low: float, high: float, crossings: Sequence[float]) -> list[tuple[float, float]]:
    """The stretches of [low, high] outside the crossings, where lines are painted."""
    half = CROSSING_LENGTH / 2
    stretches, start = [], low
    for centre in crossings:
        stretches.append((start, centre - half))
        start = centre + half
    stretches.append((start, high))
    return [(s0, s1) for s0, s1 in stretches if s1 > s0]
