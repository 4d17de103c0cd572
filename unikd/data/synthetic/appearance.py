"""How the synthetic world looks to the sensors: colours for the cameras, reflectivity for the LiDAR.

Both come from the same surfaces (a lane marking is bright in the image and in LiDAR intensity), so
that camera and LiDAR see one consistent scene.
"""

from __future__ import annotations

import numpy as np

# Base RGB colour of each object kind: one hue per detection class, spread around the colour wheel
# (barriers are white).
CLASS_COLOURS: dict[str, tuple[float, float, float]] = {
    "car": (0.15, 0.32, 0.88),
    "truck": (0.80, 0.12, 0.12),
    "bus": (0.92, 0.82, 0.10),
    "trailer": (0.50, 0.58, 0.12),
    "construction_vehicle": (0.95, 0.50, 0.05),
    "pedestrian": (0.55, 0.22, 0.88),
    "motorcycle": (0.10, 0.75, 0.80),
    "bicycle": (0.15, 0.72, 0.25),
    "traffic_cone": (0.95, 0.20, 0.70),
    "barrier": (0.93, 0.93, 0.93),
}
BUILDING_COLOURS = ((0.62, 0.58, 0.52), (0.52, 0.50, 0.50), (0.70, 0.66, 0.60), (0.45, 0.42, 0.40))
POLE_COLOUR = (0.35, 0.35, 0.37)

# LiDAR reflectivity in [0, 1] of each object kind (retro-reflective cones and barriers are bright).
REFLECTIVITY: dict[str, float] = {
    "car": 0.35,
    "truck": 0.3,
    "bus": 0.35,
    "trailer": 0.3,
    "construction_vehicle": 0.45,
    "pedestrian": 0.15,
    "motorcycle": 0.3,
    "bicycle": 0.25,
    "traffic_cone": 0.9,
    "barrier": 0.6,
    "bicycle_rack": 0.4,
    "building": 0.4,
    "pole": 0.5,
}

SKY_TOP = np.array([0.42, 0.60, 0.88])
SKY_HORIZON = np.array([0.80, 0.85, 0.92])
FOG_DISTANCE = 180.0  # metres; surfaces fade toward the horizon colour with exp(-distance / this)
SUN = np.array([0.5, 0.3, 0.81]) / np.linalg.norm([0.5, 0.3, 0.81])

# The road's cross-section and markings in road coordinates (s along the centre line, d to its left),
# shared by the renderers and the semantic map (`road_map`). Zones by |d|: two lanes each way up to
# LANES_EDGE, a bike lane, a parking strip (the carriageway ends at the curb, PARKING_EDGE), a
# sidewalk, then grass.
LANES_EDGE, BIKE_LANE_EDGE, PARKING_EDGE, SIDEWALK_EDGE = 7.0, 8.6, 11.6, 18.5
_ZONE_EDGES = (LANES_EDGE, BIKE_LANE_EDGE, PARKING_EDGE, SIDEWALK_EDGE)
CENTRE_LINE_HALF_WIDTH = 0.12  # the yellow line between the two directions
# White lines along the road: |d| of the centre and the half width; the first (between the two lanes
# of a direction) is dashed: 3 m dashes every 9 m.
LANE_LINES = ((3.5, 0.075), (LANES_EDGE, 0.1), (BIKE_LANE_EDGE, 0.07))
# Zebra crossings span the carriageway (|d| < PARKING_EDGE) over CROSSING_LENGTH along s, with bars
# ZEBRA_BAR wide (along d) every 2 * ZEBRA_BAR. Before each crossing, the traffic of each direction
# has a stop line across its lanes (0 < |d| < LANES_EDGE), STOP_LINE_WIDTH deep, STOP_LINE_GAP short
# of the crossing.
CROSSING_LENGTH = 4.0
ZEBRA_BAR = 0.6
STOP_LINE_GAP = 1.5
STOP_LINE_WIDTH = 0.6
# Rows: asphalt, bike lane, parking strip, paving, grass (zones 0..4), then dark paving and markings.
_PAVING, _PAVING_DARK, _YELLOW, _WHITE = 3, 5, 6, 7
_GROUND_COLOURS = np.array(
    [
        (0.27, 0.27, 0.28),
        (0.45, 0.25, 0.21),
        (0.33, 0.33, 0.33),
        (0.62, 0.60, 0.56),
        (0.26, 0.42, 0.18),
        (0.53, 0.51, 0.48),
        (0.88, 0.72, 0.16),
        (0.90, 0.90, 0.88),
    ],
    dtype=np.float32,
)
_GROUND_REFLECTIVITY = np.array([0.08, 0.1, 0.1, 0.25, 0.3, 0.25, 0.8, 0.8], dtype=np.float32)


def object_colour(kind: str, rng: np.random.Generator) -> tuple[float, float, float]:
    """Colour of one object: its class colour (or a scenery colour) with a small brightness change."""
    if kind == "building":
        base = BUILDING_COLOURS[int(rng.integers(len(BUILDING_COLOURS)))]
    elif kind == "pole":
        base = POLE_COLOUR
    else:
        base = CLASS_COLOURS.get(kind, (0.0, 0.0, 0.0))
    scale = rng.uniform(0.85, 1.1)
    return tuple(float(min(1.0, c * scale)) for c in base)


_INDEX_OFFSET = 1 << 20  # keeps cell indices positive so that truncation is flooring


def _cells(values: np.ndarray, cell: float) -> np.ndarray:
    """Index of the `cell`-wide interval holding each value (for |value| < 2**20 * cell)."""
    return (values * (1.0 / cell) + _INDEX_OFFSET).astype(np.int32)


def hash_noise(a: np.ndarray, b: np.ndarray, cell: float) -> np.ndarray:
    """Deterministic noise in [0, 1): one value per (cell x cell) square of the (a, b) plane."""
    h = (_cells(a, cell) * np.int32(73856093)) ^ (_cells(b, cell) * np.int32(19349663))
    h = h * np.int32(-1640531535)  # integer overflow wraps: this mixes the bits
    return ((h >> 16) & 0xFF).astype(np.float32) * (1.0 / 256.0)


def ground_surface(
    s: np.ndarray, d: np.ndarray, crossings: np.ndarray, drive_side: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ground at road coordinates (s, d) [N]: RGB colour [N, 3] and LiDAR reflectivity [N].

    Two lanes each way with a yellow centre line, dashed white lane dividers and white edge lines;
    then a bike lane, a parking strip, a sidewalk of paving tiles and grass. Zebra crossings are
    centred at the sorted positions `crossings` along s; the traffic toward +s drives on the side
    of d's sign `drive_side` (its stop lines come before a crossing, the other direction's after).
    """
    s, d = np.asarray(s, dtype=np.float32), np.asarray(d, dtype=np.float32)
    a = np.abs(d)
    material = (a >= _ZONE_EDGES[0]).astype(np.int32)
    for edge in _ZONE_EDGES[1:]:
        material += a >= edge
    dark_tile = ((_cells(s, 1.5) + _cells(d, 1.5)) & 1).astype(bool)
    material[(material == _PAVING) & dark_tile] = _PAVING_DARK
    offset = _offset_to_nearest(s, np.asarray(crossings, dtype=np.float32))
    on_crossing = (np.abs(offset) < CROSSING_LENGTH / 2) & (a < PARKING_EDGE)
    dashed = _cells(s, 3.0) % 3 == 0  # 3 m dashes every 9 m
    (dashed_line, dashed_half), *solid_lines = LANE_LINES
    white = (np.abs(a - dashed_line) < dashed_half) & dashed
    for line, half in solid_lines:
        white |= np.abs(a - line) < half
    material[white & ~on_crossing] = _WHITE
    material[(a < CENTRE_LINE_HALF_WIDTH) & ~on_crossing] = _YELLOW
    material[on_crossing & (_cells(d, ZEBRA_BAR) % 2 == 0)] = _WHITE
    # A stop line lies before the crossing for the traffic toward +s, after it for the other side's.
    beyond = np.abs(offset) - (CROSSING_LENGTH / 2 + STOP_LINE_GAP)
    approaching = (offset < 0) == (d * np.float32(drive_side) > 0)
    material[(beyond >= 0) & (beyond < STOP_LINE_WIDTH) & (a < LANES_EDGE) & approaching] = _WHITE
    colour = _GROUND_COLOURS[material] * (0.85 + 0.3 * hash_noise(s, d, 0.35))[:, None]
    return colour, _GROUND_REFLECTIVITY[material]


def _offset_to_nearest(s: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """s minus the nearest of the sorted `centres` (+inf where there are none)."""
    if len(centres) == 0:
        return np.full_like(s, np.inf)
    index = np.searchsorted(centres, s)
    to_before = s - centres[np.maximum(index - 1, 0)]
    to_after = s - centres[np.minimum(index, len(centres) - 1)]
    return np.where(np.abs(to_before) <= np.abs(to_after), to_before, to_after)


def fog_keep(distance: np.ndarray) -> np.ndarray:
    """Fraction of a surface's own colour left after `distance` metres of haze."""
    return np.exp(-np.asarray(distance, dtype=np.float32) / FOG_DISTANCE)
