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

# Ground materials: colour and LiDAR reflectivity. Zones by |d| (distance from the centre line):
# lanes < 7 m, bike lane < 8.6 m, parking strip < 11.6 m, sidewalk < 18.5 m, then grass.
_ZONE_EDGES = (7.0, 8.6, 11.6, 18.5)
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


def ground_surface(s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground at road coordinates (s, d) [N]: RGB colour [N, 3] and LiDAR reflectivity [N].

    Two lanes each way with a yellow centre line, dashed white lane dividers and white edge lines;
    then a bike lane, a parking strip, a sidewalk of paving tiles and grass.
    """
    s, d = np.asarray(s, dtype=np.float32), np.asarray(d, dtype=np.float32)
    a = np.abs(d)
    material = (a >= _ZONE_EDGES[0]).astype(np.int32)
    for edge in _ZONE_EDGES[1:]:
        material += a >= edge
    dark_tile = ((_cells(s, 1.5) + _cells(d, 1.5)) & 1).astype(bool)
    material[(material == _PAVING) & dark_tile] = _PAVING_DARK
    dashed = _cells(s, 3.0) % 3 == 0  # 3 m dashes every 9 m
    white = ((np.abs(a - 3.5) < 0.075) & dashed) | (np.abs(a - 7.0) < 0.1) | (np.abs(a - 8.6) < 0.07)
    material[white] = _WHITE
    material[a < 0.12] = _YELLOW
    colour = _GROUND_COLOURS[material] * (0.85 + 0.3 * hash_noise(s, d, 0.35))[:, None]
    return colour, _GROUND_REFLECTIVITY[material]


def fog_keep(distance: np.ndarray) -> np.ndarray:
    """Fraction of a surface's own colour left after `distance` metres of haze."""
    return np.exp(-np.asarray(distance, dtype=np.float32) / FOG_DISTANCE)
