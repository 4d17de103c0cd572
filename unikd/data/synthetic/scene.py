"""The world of one synthetic scene: a road, the ego car driving along it, and objects around it.

Everything lives on the flat ground plane z = 0 of the scene's frame, which the written dataset
shifts into the global frame so that the scenes of one location do not overlap (`generate`), and
whose road, with its zebra crossings, the semantic map describes (`road_map`). Positions along the road
are given in road coordinates (s, d): s is the arc length along the centre line, d the lateral
offset to the left of it. Objects move along "tracks" (a lane, the bike lane, a sidewalk strip,
...) at a fixed lateral offset; all objects of a track share its motion, so they never collide,
and the tracks' lateral bands are disjoint, so objects of different tracks never overlap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from unikd.data.synthetic.appearance import CROSSING_LENGTH, ground_surface, object_colour

SCENE_RADIUS = 70.0  # objects are placed so that they pass within this distance of the ego car
EGO_LATERAL = 1.75  # the ego car drives in the inner lane of its side
EGO_BODY = (-2.0, 5.0)  # extent of the ego car along the road around its pose (rear axle)
STOPPED_SPEED = 0.3  # m/s: slower vehicles are "stopped", slower pedestrians "standing"

# |d| of each track on one side of the road (metres from the centre line). The bands they can
# hold (track lateral +- the widest object it takes) do not overlap.
TRACK_OFFSETS = {
    "lane_inner": 1.75,
    "lane_outer": 5.25,
    "bike": 7.8,
    "parking": 10.0,
    "curb": 12.3,
    "walk_near": 13.5,
    "walk_far": 14.7,
    "yard": 16.6,
}
BUILDING_SETBACK = 19.5  # buildings start this far from the centre line
MAP_MARGIN = 100.0  # metres of road mapped beyond the ego's first and last positions
CROSSING_SPACING = (60.0, 110.0)  # metres between the centres of two zebra crossings

# nuScenes category of each object kind (detection class, or bicycle rack).
CATEGORIES = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "construction_vehicle": "vehicle.construction",
    "pedestrian": "human.pedestrian.adult",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "traffic_cone": "movable_object.trafficcone",
    "barrier": "movable_object.barrier",
    "bicycle_rack": "static_object.bicycle_rack",
}

# (length, width, height) ranges in metres; length is along the object's heading.
SIZE_RANGES = {
    "car": ((3.9, 5.0), (1.7, 2.0), (1.4, 1.8)),
    "truck": ((5.5, 9.0), (2.2, 2.6), (2.6, 3.6)),
    "bus": ((10.0, 12.5), (2.6, 2.9), (3.0, 3.5)),
    "trailer": ((7.0, 12.0), (2.4, 2.8), (3.0, 3.8)),
    "construction_vehicle": ((5.0, 7.0), (2.4, 2.8), (2.6, 3.4)),
    "pedestrian": ((0.6, 0.9), (0.55, 0.75), (1.55, 1.9)),
    "motorcycle": ((1.9, 2.3), (0.7, 0.9), (1.1, 1.3)),
    "bicycle": ((1.6, 1.9), (0.5, 0.7), (1.0, 1.2)),
    "traffic_cone": ((0.35, 0.5), (0.35, 0.5), (0.7, 1.0)),
    "barrier": ((0.4, 0.6), (1.8, 2.5), (0.9, 1.1)),
}
RIDER_HEIGHT = (1.55, 1.8)  # a cycle with its rider
SITTING_HEIGHT = (1.0, 1.3)

# Which kinds each track takes when it is filled at random, with their weights.
TRACK_KINDS = {
    "lane_inner": {"car": 0.78, "truck": 0.1, "bus": 0.06, "motorcycle": 0.06},
    "lane_outer": {"car": 0.78, "truck": 0.1, "bus": 0.06, "motorcycle": 0.06},
    "bike": {"bicycle": 0.7, "motorcycle": 0.3},
    "parking": {"car": 0.72, "truck": 0.1, "trailer": 0.08, "motorcycle": 0.06, "construction_vehicle": 0.04},
    "curb": {"pedestrian": 0.5, "traffic_cone": 0.25, "barrier": 0.25},
    "walk_near": {"pedestrian": 1.0},
    "walk_far": {"pedestrian": 1.0},
    "yard": {"pedestrian": 0.55, "bicycle_rack": 0.25, "bicycle": 0.2},
}
TRACK_WEIGHTS = {
    "lane_inner": 0.14,
    "lane_outer": 0.2,
    "bike": 0.08,
    "parking": 0.2,
    "curb": 0.12,
    "walk_near": 0.08,
    "walk_far": 0.08,
    "yard": 0.1,
}
GUARANTEED_OBJECTS = 13  # one of each class, a bicycle rack with two bicycles (see `_place_guaranteed`)


@dataclass(frozen=True)
class Road:
    """A centre line that starts at `origin` with `heading` and bends with constant `curvature`,
    with zebra crossings centred at `crossings` (sorted positions along s)."""

    origin: tuple[float, float]
    heading: float
    curvature: float  # 1/m, positive bends left; 0 is straight
    crossings: tuple[float, ...] = ()
    drive_side: float = -1.0  # sign of d of the lanes whose traffic goes toward +s (-1: right-hand traffic)

    def surface(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colour [N, 3] and LiDAR reflectivity [N] of the ground at xy [N, 2]."""
        return ground_surface(*self.coords(xy), np.asarray(self.crossings), self.drive_side)

    def pose(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates -> global xy [..., 2] and the road heading there."""
        s, d = np.asarray(s, dtype=np.float64), np.asarray(d, dtype=np.float64)
        heading = self.heading + self.curvature * s
        normal = np.stack([-np.sin(heading), np.cos(heading)], axis=-1)
        if self.curvature == 0.0:
            tangent = np.array([np.cos(self.heading), np.sin(self.heading)])
            xy = np.asarray(self.origin) + s[..., None] * tangent + d[..., None] * normal
        else:
            xy = self._centre() + (d - 1.0 / self.curvature)[..., None] * normal
        return xy, heading

    def coords(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global xy [..., 2] -> road coordinates (s, d)."""
        cos, sin = np.cos(self.heading), np.sin(self.heading)
        if self.curvature == 0.0:
            rel = np.asarray(xy) - np.asarray(self.origin)
            return rel[..., 0] * cos + rel[..., 1] * sin, -rel[..., 0] * sin + rel[..., 1] * cos
        rel = np.asarray(xy) - self._centre()
        # In a frame turned by the start heading, the angle travelled along the arc is direct.
        along, across = rel[..., 0] * cos + rel[..., 1] * sin, -rel[..., 0] * sin + rel[..., 1] * cos
        sign = np.sign(self.curvature)
        turned = np.arctan2(sign * along, -sign * across)
        return turned / self.curvature, 1.0 / self.curvature - sign * np.hypot(along, across)

    def _centre(self) -> np.ndarray:
        normal = np.array([-np.sin(self.heading), np.cos(self.heading)])
        return np.asarray(self.origin) + normal / self.curvature


@dataclass(frozen=True)
class Motion:
    """Motion along the road: s(t) = s0 + speed * t + accel * t^2 / 2 at a fixed lateral offset d."""

    s0: float
    lateral: float
    speed: float
    accel: float

    def s(self, t: float) -> float:
        return self.s0 + self.speed * t + 0.5 * self.accel * t * t


@dataclass(frozen=True)
class SceneObject:
    """A box in the world: an annotated object (category set) or unannotated scenery."""

    kind: str  # detection class name, "bicycle_rack", "building" or "pole"
    size: tuple[float, float, float]  # length, width, height
    motion: Motion
    yaw_offset: float  # heading relative to the road tangent
    colour: tuple[float, float, float]  # RGB in [0, 1]
    attribute: str  # nuScenes attribute ("" for none); vehicle.moving may become vehicle.stopped
    solid: bool = True  # seen by the sensors (a bicycle rack is only an annotation)

    @property
    def category(self) -> str:
        """nuScenes category name; "" for scenery."""
        return CATEGORIES.get(self.kind, "")


@dataclass
class SceneLayout:
    """A sampled scene: its road, the ego motion and all boxes. The semantic map covers the road
    over `mapped_s` (an interval of s): MAP_MARGIN beyond where the ego starts and ends."""

    road: Road
    ego: Motion
    objects: list[SceneObject]
    mapped_s: tuple[float, float]

    def __post_init__(self) -> None:
        motions = [obj.motion for obj in self.objects]
        self._s0 = np.array([m.s0 for m in motions])
        self._lateral = np.array([m.lateral for m in motions])
        self._speed = np.array([m.speed for m in motions])
        self._accel = np.array([m.accel for m in motions])
        self._yaw_offset = np.array([obj.yaw_offset for obj in self.objects])
        self.sizes = np.array([obj.size for obj in self.objects], dtype=np.float64).reshape(-1, 3)
        self.colours = np.array([obj.colour for obj in self.objects], dtype=np.float64).reshape(-1, 3)
        self.solid = np.array([obj.solid for obj in self.objects], dtype=bool)

    def ego_pose(self, t: float) -> tuple[np.ndarray, float]:
        """Ego position [x, y] and heading at time t (seconds from the scene start)."""
        xy, heading = self.road.pose(self.ego.s(t), self.ego.lateral)
        return xy, float(heading)

    def boxes(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Box centres [N, 3] (z = geometric centre) and headings [N] of all objects at time t."""
        s = self._s0 + self._speed * t + 0.5 * self._accel * t * t
        xy, heading = self.road.pose(s, self._lateral)
        centres = np.concatenate([xy, self.sizes[:, 2:3] / 2], axis=1)
        return centres, heading + self._yaw_offset

    def attribute(self, index: int, t: float) -> str:
        """The object's nuScenes attribute at time t."""
        obj = self.objects[index]
        speed = abs(obj.motion.speed + obj.motion.accel * t)
        if obj.attribute == "vehicle.moving" and speed < STOPPED_SPEED:
            return "vehicle.stopped"
        return obj.attribute


@dataclass
class _Track:
    """A lateral strip whose objects share one motion; keeps the s-intervals already taken."""

    name: str
    lateral: float
    speed: float
    accel: float
    heading: float  # 0 or pi: the way objects in it face, relative to the road tangent
    gap: float
    stretch: float  # >= 1: arc length at this offset can be shorter than s on a curve
    s_range: tuple[float, float]
    taken: list[tuple[float, float]] = field(default_factory=list)

    def motion(self, s0: float) -> Motion:
        return Motion(s0, self.lateral, self.speed, self.accel)

    def shift(self, t: float) -> float:
        return self.speed * t + 0.5 * self.accel * t * t

    def place(
        self, half_extent: float, rng: np.random.Generator, target: float | None = None
    ) -> float | None:
        """Reserve an interval of the given half length; near `target` if given, else anywhere."""
        half = half_extent * self.stretch + self.gap / 2
        if target is None:
            candidates = rng.uniform(self.s_range[0] + half, self.s_range[1] - half, size=30)
        else:
            steps = np.arange(31) * 1.5
            candidates = target + np.stack([steps, -steps], axis=1).reshape(-1)
        for s in candidates:
            low, high = s - half, s + half
            inside = self.s_range[0] <= low and high <= self.s_range[1]
            if inside and all(high <= a or low >= b for a, b in self.taken):
                self.taken.append((low, high))
                return float(s)
        return None


def sample_layout(
    rng: np.random.Generator, duration: float, num_objects: int, left_hand_traffic: bool
) -> SceneLayout:
    """Sample a scene lasting `duration` seconds with about `num_objects` (>= GUARANTEED_OBJECTS)
    annotated objects; fewer when the tracks are full."""
    road = Road(
        origin=(float(rng.uniform(200.0, 1800.0)), float(rng.uniform(200.0, 1800.0))),
        heading=float(rng.uniform(-np.pi, np.pi)),
        curvature=0.0 if rng.random() < 0.5 else float(rng.choice([-1.0, 1.0]) / rng.uniform(250.0, 600.0)),
    )
    # Lateral sign of the ego's side of the road: right of the centre line with right-hand traffic.
    ego_side = 1.0 if left_hand_traffic else -1.0
    ego = _sample_ego(rng, duration, ego_side)
    tracks = _make_tracks(rng, road, ego, duration, ego_side)
    objects = _scenery(rng, road, ego, duration, ego_side, tracks)
    _place_guaranteed(rng, ego, duration, tracks, objects)
    _fill(rng, num_objects, tracks, objects)
    mapped_s = (ego.s(0.0) - MAP_MARGIN, ego.s(duration) + MAP_MARGIN)
    # Drawn last: nothing else in the layout depends on them.
    crossings = _crossings(rng, mapped_s)
    road = dataclasses.replace(road, crossings=crossings, drive_side=ego_side)
    return SceneLayout(road, ego, objects, mapped_s)


def _crossings(rng: np.random.Generator, s_range: tuple[float, float]) -> tuple[float, ...]:
    """Crossing centres every CROSSING_SPACING metres (at random) along s_range, clear of its ends."""
    low, high = s_range[0] + CROSSING_LENGTH, s_range[1] - CROSSING_LENGTH
    centres = []
    s = low + rng.uniform(0.0, CROSSING_SPACING[1])
    while s < high:
        centres.append(float(s))
        s += rng.uniform(*CROSSING_SPACING)
    return tuple(centres)


def _sample_ego(rng: np.random.Generator, duration: float, ego_side: float) -> Motion:
    """Parked (waiting), slow or normal driving; smooth, never reversing."""
    mode = rng.choice(3, p=[0.2, 0.2, 0.6])
    if mode == 0:
        return Motion(0.0, ego_side * EGO_LATERAL, 0.0, 0.0)
    speed = float(rng.uniform(1.0, 4.0) if mode == 1 else rng.uniform(5.0, 13.0))
    accel = float(rng.uniform(-0.6, 0.6))
    accel = max(accel, -speed / duration)
    return Motion(0.0, ego_side * EGO_LATERAL, speed, accel)


def _make_tracks(
    rng: np.random.Generator, road: Road, ego: Motion, duration: float, ego_side: float
) -> dict[tuple[str, int], _Track]:
    """Both sides' tracks keyed by (name, side) with side 0 = ego side, 1 = the other side."""
    tracks = {}
    for side in (0, 1):
        lateral_sign = ego_side if side == 0 else -ego_side
        direction = 1.0 if side == 0 else -1.0  # traffic on the ego side goes toward +s
        for name, offset in TRACK_OFFSETS.items():
            heading, accel = (0.0 if side == 0 else np.pi), 0.0  # facing the traffic of its side
            if name == "lane_inner" and side == 0:  # the ego's lane moves with the ego
                speed, accel, gap = ego.speed, ego.accel, 3.0
            elif name.startswith("lane"):  # 1 in 5 lanes is stopped traffic
                speed, gap = (0.0 if rng.random() < 0.2 else direction * float(rng.uniform(4.0, 14.0))), 3.0
            elif name == "bike":
                speed, gap = direction * float(rng.uniform(3.0, 6.0)), 2.0
            elif name.startswith("walk"):  # people walk toward +s on the near strip, toward -s on the far one
                walking = 1.0 if name == "walk_near" else -1.0
                speed, heading, gap = (
                    walking * float(rng.uniform(1.0, 1.6)),
                    (0.0 if walking > 0 else np.pi),
                    0.6,
                )
            else:  # static: parking strip, curb, yard
                speed, gap = 0.0, 0.8
            track = _Track(
                name=name,
                lateral=lateral_sign * offset,
                speed=speed,
                accel=accel,
                heading=heading,
                gap=gap,
                stretch=1.0 / (1.0 - abs(road.curvature) * (offset + 1.5)),
                s_range=_reach(ego, duration, speed, accel, SCENE_RADIUS),
            )
            if name == "lane_inner" and side == 0:
                track.taken.append((ego.s0 + EGO_BODY[0] - track.gap, ego.s0 + EGO_BODY[1] + track.gap))
            tracks[(name, side)] = track
    return tracks


def _reach(ego: Motion, duration: float, speed: float, accel: float, radius: float) -> tuple[float, float]:
    """Start positions s0 of a track's objects that come within `radius` (along s) of the ego."""
    times = np.linspace(0.0, duration, 64)
    relative = ego.s0 + (ego.speed - speed) * times + 0.5 * (ego.accel - accel) * times**2
    return float(relative.min() - radius), float(relative.max() + radius)


def _half_extent_along_road(length: float, width: float, yaw_offset: float) -> float:
    return abs(length / 2 * np.cos(yaw_offset)) + abs(width / 2 * np.sin(yaw_offset))


def _scenery(
    rng: np.random.Generator,
    road: Road,
    ego: Motion,
    duration: float,
    ego_side: float,
    tracks: dict[tuple[str, int], _Track],
) -> list[SceneObject]:
    """Unannotated buildings along both sides and street-light poles on the curbs."""
    objects = []
    low, high = _reach(ego, duration, 0.0, 0.0, SCENE_RADIUS + 30.0)
    for side in (0, 1):
        lateral_sign = ego_side if side == 0 else -ego_side
        s = low
        while s < high:
            length, depth, height = rng.uniform(10.0, 35.0), rng.uniform(8.0, 16.0), rng.uniform(5.0, 22.0)
            lateral = lateral_sign * (BUILDING_SETBACK + depth / 2)
            stretch = 1.0 / (1.0 - abs(road.curvature) * (BUILDING_SETBACK + depth))
            centre = s + length / 2 * stretch
            objects.append(
                SceneObject(
                    "building",
                    (length, depth, height),
                    Motion(centre, lateral, 0.0, 0.0),
                    0.0,
                    object_colour("building", rng),
                    "",
                )
            )
            empty_lot = rng.random() < 0.15
            s = (
                centre
                + length / 2 * stretch
                + (rng.uniform(10.0, 25.0) if empty_lot else rng.uniform(3.0, 8.0))
            )
        curb = tracks[("curb", side)]
        s = curb.s_range[0] + rng.uniform(0.0, 20.0)
        while s < curb.s_range[1]:
            placed = curb.place(0.15, rng, target=s)
            if placed is not None:
                objects.append(
                    SceneObject(
                        "pole", (0.3, 0.3, 7.5), curb.motion(placed), 0.0, object_colour("pole", rng), ""
                    )
                )
            s += rng.uniform(25.0, 35.0)
    return objects


def _place_guaranteed(
    rng: np.random.Generator,
    ego: Motion,
    duration: float,
    tracks: dict[tuple[str, int], _Track],
    objects: list[SceneObject],
) -> None:
    """One object of every class (and a bicycle rack holding two bicycles) near the ego's
    mid-scene position, so that every scene holds every class within evaluation range."""
    middle = duration / 2
    ego_middle = ego.s(middle)

    def track_near(name: str, spread: float) -> tuple[_Track, float]:
        track = tracks[(name, int(rng.integers(2)))]
        return track, ego_middle - track.shift(middle) + rng.uniform(-spread, spread)

    _add(rng, "car", *track_near(str(rng.choice(["lane_inner", "lane_outer"])), 25.0), objects)
    _add(rng, "truck", *track_near("parking", 20.0), objects)
    _add(rng, "bus", *track_near("lane_outer", 25.0), objects)
    _add(rng, "trailer", *track_near("parking", 20.0), objects)
    parking, site = track_near("parking", 12.0)
    _add(rng, "construction_vehicle", parking, site, objects)
    _add(rng, "traffic_cone", parking, site + 6.0, objects)
    _add(rng, "bicycle", *track_near("bike", 15.0), objects)
    _add(rng, "motorcycle", *track_near("bike", 15.0), objects)
    _add(rng, "pedestrian", *track_near(str(rng.choice(["walk_near", "walk_far"])), 15.0), objects)
    _add(rng, "barrier", *track_near("curb", 12.0), objects)
    _add_bicycle_rack(rng, *track_near("yard", 12.0), objects, num_bicycles=2)


def _fill(
    rng: np.random.Generator,
    num_objects: int,
    tracks: dict[tuple[str, int], _Track],
    objects: list[SceneObject],
) -> None:
    """Add random objects on random tracks until there are `num_objects` annotations (or no room)."""
    names = list(TRACK_WEIGHTS)
    weights = np.array([TRACK_WEIGHTS[name] for name in names])
    for _ in range(4 * num_objects):
        annotated = sum(1 for obj in objects if obj.category)
        if annotated >= num_objects:
            return
        track = tracks[(names[rng.choice(len(names), p=weights)], int(rng.integers(2)))]
        kinds = TRACK_KINDS[track.name]
        kind = str(rng.choice(list(kinds), p=list(kinds.values())))
        if kind == "bicycle_rack":
            bicycles = min(int(rng.integers(1, 4)), num_objects - annotated - 1)
            if bicycles > 0:
                _add_bicycle_rack(rng, track, None, objects, num_bicycles=bicycles)
        else:
            _add(rng, kind, track, None, objects)


def _add(
    rng: np.random.Generator, kind: str, track: _Track, target: float | None, objects: list[SceneObject]
) -> None:
    """Size, orient and place one object of `kind` on `track`; skipped when the track is full."""
    (l_min, l_max), (w_min, w_max), (h_min, h_max) = SIZE_RANGES[kind]
    length, width, height = rng.uniform(l_min, l_max), rng.uniform(w_min, w_max), rng.uniform(h_min, h_max)
    static = track.speed == 0.0 and track.accel == 0.0
    yaw_offset = track.heading
    if kind in ("pedestrian", "traffic_cone") and static:
        yaw_offset = rng.uniform(-np.pi, np.pi)
    elif kind == "barrier" or (kind == "bicycle" and track.name == "yard"):
        yaw_offset = track.heading + np.pi / 2
    elif track.name == "parking":
        yaw_offset = track.heading + np.deg2rad(rng.uniform(-1.0, 1.0))
    attribute = ""
    if kind in ("car", "truck", "bus", "trailer", "construction_vehicle"):
        attribute = "vehicle.parked" if track.name == "parking" else "vehicle.moving"
    elif kind in ("motorcycle", "bicycle"):
        riding = track.name.startswith("lane") or track.name == "bike"
        attribute = "cycle.with_rider" if riding else "cycle.without_rider"
        if riding:
            height = rng.uniform(*RIDER_HEIGHT)
    elif kind == "pedestrian":
        if not static:
            attribute = "pedestrian.moving"
        elif track.name == "yard" and rng.random() < 0.4:
            attribute, height = "pedestrian.sitting_lying_down", rng.uniform(*SITTING_HEIGHT)
        else:
            attribute = "pedestrian.standing"
    s0 = track.place(_half_extent_along_road(length, width, yaw_offset - track.heading), rng, target)
    if s0 is not None:
        objects.append(
            SceneObject(
                kind,
                (float(length), float(width), float(height)),
                track.motion(s0),
                float(yaw_offset),
                object_colour(kind, rng),
                attribute,
            )
        )


def _add_bicycle_rack(
    rng: np.random.Generator,
    track: _Track,
    target: float | None,
    objects: list[SceneObject],
    num_bicycles: int,
) -> None:
    """A bicycle rack (annotation only) holding parked bicycles side by side."""
    spacing = 0.9
    length = num_bicycles * spacing + 0.4
    s0 = track.place(length / 2, rng, target)
    if s0 is None:
        return
    objects.append(
        SceneObject(
            "bicycle_rack",
            (length, 2.0, 1.0),
            track.motion(s0),
            track.heading,
            (0.0, 0.0, 0.0),
            "",
            solid=False,
        )
    )
    for i in range(num_bicycles):
        (l_min, l_max), (w_min, w_max), (h_min, h_max) = SIZE_RANGES["bicycle"]
        size = (
            float(rng.uniform(l_min, l_max)),
            float(rng.uniform(w_min, w_max)),
            float(rng.uniform(h_min, h_max)),
        )
        s = s0 + (i - (num_bicycles - 1) / 2) * spacing
        objects.append(
            SceneObject(
                "bicycle",
                size,
                track.motion(s),
                track.heading + np.pi / 2,
                object_colour("bicycle", rng),
                "cycle.without_rider",
            )
        )
