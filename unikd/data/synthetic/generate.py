"""Builds a synthetic dataset in the nuScenes format: scenes named like the real split's scenes,
2 Hz key frames with LiDAR sweeps in between, six camera images per key frame, and annotations."""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from nuscenes.utils import splits

from unikd.data.synthetic.appearance import REFLECTIVITY, SIDEWALK_EDGE
from unikd.data.synthetic.calibration import (
    CAMERA_SPECS,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    LIDAR_CHANNEL,
    LIDAR_TRANSLATION,
    LIDAR_YAW,
    camera_calibration,
    lidar_calibration,
    yaw_quaternion,
)
from unikd.data.synthetic.camera import CameraRenderer
from unikd.data.synthetic.lidar import LidarScan, cast_lidar, count_points_in_boxes
from unikd.data.synthetic.road_map import MappedRoad, write_map_expansion
from unikd.data.synthetic.scene import GUARANTEED_OBJECTS, SceneLayout, sample_layout
from unikd.data.synthetic.writer import DatasetWriter

# version -> (train scene pool, val scene pool, default number of train scenes, of val scenes)
VERSIONS = {
    "v1.0-mini": (splits.mini_train, splits.mini_val, 8, 2),
    "v1.0-trainval": (splits.train, splits.val, 20, 10),
}
# (location, vehicle, UTC offset in hours, left-hand traffic)
LOCATIONS = (
    ("singapore-onenorth", "n015", 8, True),
    ("singapore-queenstown", "n015", 8, True),
    ("singapore-hollandvillage", "n015", 8, True),
    ("boston-seaport", "n008", -4, False),
)
KEYFRAME_INTERVAL_US = 500_000  # key frames at 2 Hz
FIRST_SCENE_START_US = 1_532_402_927_000_000  # 2018-07-24 03:28:47 UTC
SCENE_SPACING_US = 3_600_000_000  # one scene per hour


def generate_synthetic_nuscenes(
    root: str | Path,
    version: str = "v1.0-mini",
    seed: int = 0,
    *,
    train_scenes: int | None = None,
    val_scenes: int | None = None,
    keyframes_per_scene: int = 10,
    sweeps_per_keyframe: int = 4,
    objects_per_scene: int = 60,
    lidar_noise: float = 0.02,
    workers: int = 1,
) -> Path:
    """Write a synthetic nuScenes-format dataset to `root` (which must be empty or new); return it.

    Scenes take the names of the version's real train and val scenes (v1.0-mini: 8 + 2 by
    default and at most; v1.0-trainval: 20 + 10 by default, at most 700 + 150), so that
    `nuscenes.utils.splits.create_splits_scenes()` applies. Each scene has `keyframes_per_scene`
    key frames (samples) 0.5 s apart and `sweeps_per_keyframe` LiDAR sweeps evenly between two key
    frames (nuScenes has 9), and about `objects_per_scene` annotated objects. `lidar_noise` is the
    range noise in metres (0: exact). Scenes are built by `workers` processes. The same arguments
    (whatever `workers`) always give the same bytes. Each location's semantic map is written to
    `maps/expansion/<location>.json` (`road_map`); its scenes are placed apart (`place_scenes`).
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown nuScenes version {version!r}; expected one of {sorted(VERSIONS)}")
    if keyframes_per_scene < 2:
        raise ValueError(f"keyframes_per_scene must be >= 2 (velocities need two), got {keyframes_per_scene}")
    if sweeps_per_keyframe < 0:
        raise ValueError(f"sweeps_per_keyframe must be >= 0, got {sweeps_per_keyframe}")
    if objects_per_scene < GUARANTEED_OBJECTS:
        raise ValueError(f"objects_per_scene must be >= {GUARANTEED_OBJECTS}, got {objects_per_scene}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    names = _scene_names(version, train_scenes, val_scenes)
    root = Path(root)
    _check_target(root, version)

    writer = DatasetWriter(root, version, seed)
    writer.start()
    duration = (keyframes_per_scene - 1) * KEYFRAME_INTERVAL_US / 1e6
    worlds = [sample_world(seed, index, duration, objects_per_scene) for index in range(len(names))]
    offsets = place_scenes(worlds)
    jobs = [
        _SceneJob(
            root,
            version,
            seed,
            index,
            name,
            world,
            offset,
            keyframes_per_scene,
            sweeps_per_keyframe,
            lidar_noise,
        )
        for index, (name, world, offset) in enumerate(zip(names, worlds, offsets, strict=True))
    ]
    if workers == 1:
        results = [_build_scene(job) for job in jobs]
    else:
        # Fresh interpreters ("spawn"): safe whatever the caller has imported (torch, threads).
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            results = list(pool.map(_build_scene, jobs))
    for tables in results:
        writer.extend(tables)
    writer.add_maps()
    for location in sorted({world.location for world in worlds}):
        roads = [
            MappedRoad(world.layout.road, world.layout.mapped_s, (float(offset[0]), float(offset[1])))
            for world, offset in zip(worlds, offsets, strict=True)
            if world.location == location
        ]
        write_map_expansion(root, location, roads, writer.token)
    writer.write_tables()
    return root


@dataclass(frozen=True)
class SceneWorld:
    """Where a scene is recorded, by which car, and what is in it (in the scene's own frame)."""

    location: str
    vehicle: str
    utc_offset: int
    layout: SceneLayout


def sample_world(seed: int, index: int, duration: float, objects: int) -> SceneWorld:
    """Scene `index`'s location, car and layout, drawn from (seed, index) alone."""
    rng = np.random.default_rng([seed, index])
    location, vehicle, utc_offset, left_hand = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
    return SceneWorld(location, vehicle, utc_offset, sample_layout(rng, duration, objects, left_hand))


def place_scenes(worlds: list[SceneWorld]) -> list[np.ndarray]:
    """Translation [2] of each scene's frame into the global frame, so that the mapped roads of the
    scenes of one location keep apart: none where a scene's footprint (a disc holding its mapped road)
    misses those placed before it, else onto the first free cell of a grid of the footprint's size.
    Apart footprints keep every other scene's map more than MAP_MARGIN from a scene's LiDAR."""
    placed: dict[str, list[tuple[np.ndarray, float]]] = {}
    offsets = []
    for world in worlds:
        centre, radius = _footprint(world.layout)
        others = placed.setdefault(world.location, [])
        position = next(
            candidate
            for candidate in _candidate_centres(centre, radius)
            if all(np.hypot(*(candidate - other)) >= radius + other_radius for other, other_radius in others)
        )
        others.append((position, radius))
        offsets.append(position - centre)
    return offsets


def _footprint(layout: SceneLayout) -> tuple[np.ndarray, float]:
    """Centre [2] and radius of a disc holding the mapped road: a chord is never longer than its arc."""
    low, high = layout.mapped_s
    centre, _ = layout.road.pose(np.array((low + high) / 2), np.array(0.0))
    return centre, (high - low) / 2 + SIDEWALK_EDGE


def _candidate_centres(centre: np.ndarray, radius: float) -> Iterator[np.ndarray]:
    """The scene's own centre, then the cells of a grid of pitch 2 * radius, square ring by square ring."""
    yield centre
    pitch = 2.0 * radius
    for ring in itertools.count():
        for i in range(ring + 1):
            for j in range(ring + 1):
                if max(i, j) == ring:
                    yield np.array([(i + 0.5) * pitch, (j + 0.5) * pitch])


@dataclass(frozen=True)
class _SceneJob:
    root: Path
    version: str
    seed: int
    index: int
    name: str
    world: SceneWorld
    offset: np.ndarray  # scene frame -> global frame (a translation in x, y)
    keyframes: int
    sweeps: int
    lidar_noise: float


def _build_scene(job: _SceneJob) -> dict[str, list[dict]]:
    """Write one scene's files and return its table records (run in a worker process or not)."""
    writer = DatasetWriter(job.root, job.version, job.seed)
    world = job.world
    start_us = FIRST_SCENE_START_US + job.index * SCENE_SPACING_US
    log = _add_log(writer, job.index, world.vehicle, world.location, world.utc_offset, start_us)
    offset = np.array([job.offset[0], job.offset[1], 0.0])
    scene = _Scene(writer, world.layout, offset, job.index, log, start_us)
    tables = _SceneTables(scene)
    lidar_calibration = tables.add_calibrations()
    samples = tables.add_scene(job.name, job.keyframes)
    frames = _SensorFrames(scene, _camera_renderers(), lidar_calibration)
    rng = np.random.default_rng([job.seed, job.index, 1])
    per_keyframe = frames.write_lidar(samples, job.sweeps, rng, job.lidar_noise)
    frames.write_cameras(samples)
    tables.add_annotations(samples, per_keyframe)
    return writer.tables


@functools.cache
def _camera_renderers() -> tuple[CameraRenderer, ...]:
    """The six renderers (their per-pixel ground rays take a moment), made once per process."""
    return tuple(CameraRenderer(spec) for spec in CAMERA_SPECS)


def _scene_names(version: str, train_scenes: int | None, val_scenes: int | None) -> list[str]:
    train_pool, val_pool, default_train, default_val = VERSIONS[version]
    num_train = default_train if train_scenes is None else train_scenes
    num_val = default_val if val_scenes is None else val_scenes
    for kind, count, pool in (("train", num_train, train_pool), ("val", num_val, val_pool)):
        if not 0 <= count <= len(pool):
            raise ValueError(f"{version} has {len(pool)} {kind} scenes; asked for {count}")
    if num_train + num_val == 0:
        raise ValueError("asked for no scenes")
    return list(train_pool[:num_train]) + list(val_pool[:num_val])


def _check_target(root: Path, version: str) -> None:
    """The target must be a new or empty folder: files of two builds would mix."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    if not root.exists() or not any(root.iterdir()):
        return
    present = sorted(p.name for p in root.iterdir() if (p / "scene.json").is_file())
    if present and version not in present:
        raise FileExistsError(
            f"{root} already holds nuScenes version(s) {present}, not {version}; choose an empty folder"
        )
    raise FileExistsError(
        f"{root} is not empty (holds {present or 'other files'}); delete it or choose an empty folder"
    )


def _add_log(
    writer: DatasetWriter, index: int, vehicle: str, location: str, utc_offset: int, start_us: int
) -> dict:
    """One log per scene, named like nuScenes logs after the vehicle and the local start time."""
    local = datetime.fromtimestamp(start_us / 1e6, tz=timezone(timedelta(hours=utc_offset)))
    return writer.add(
        "log",
        {
            "token": writer.token("log", index),
            "logfile": f"{vehicle}-{local:%Y-%m-%d-%H-%M-%S%z}",
            "vehicle": vehicle,
            "date_captured": f"{local:%Y-%m-%d}",
            "location": location,
        },
    )


@dataclass(frozen=True)
class _Scene:
    """What the writers of one scene share: the dataset writer, the layout, the scene's place in the
    global frame, its index (in every token), its log and its start time."""

    writer: DatasetWriter
    layout: SceneLayout
    offset: np.ndarray  # [3], scene frame -> global frame: added to every global position written
    index: int
    log: dict
    start_us: int

    @property
    def annotated(self) -> list[int]:
        """Indices of the layout's annotated objects (those with a category), in layout order."""
        return [i for i, obj in enumerate(self.layout.objects) if obj.category]

    def box(self, centre: np.ndarray, yaw: float, index: int) -> tuple[list, list, list]:
        """nuScenes translation (global), size (w, l, h) and rotation of a box at a scene-frame centre."""
        length, width, height = self.layout.sizes[index]
        return (
            [float(v) for v in centre + self.offset],
            [float(width), float(length), float(height)],
            yaw_quaternion(float(yaw)),
        )


class _SceneTables:
    """Adds a scene's records that belong to no single sensor frame: the sensors' calibrations, the
    scene and its samples, and its instances with their annotations."""

    def __init__(self, scene: _Scene) -> None:
        self.scene = scene

    def add_calibrations(self) -> dict:
        """Add the LiDAR's and the six cameras' calibrated_sensor records; return the LiDAR's."""
        w, index = self.scene.writer, self.scene.index
        lidar = {
            "token": w.token("calibrated_sensor", index, LIDAR_CHANNEL),
            "sensor_token": w.token("sensor", LIDAR_CHANNEL),
            **lidar_calibration(),
        }
        w.add("calibrated_sensor", lidar)
        for spec in CAMERA_SPECS:
            w.add(
                "calibrated_sensor",
                {
                    "token": w.token("calibrated_sensor", index, spec.channel),
                    "sensor_token": w.token("sensor", spec.channel),
                    **camera_calibration(spec),
                },
            )
        return lidar

    def add_scene(self, name: str, num_keyframes: int) -> list[str]:
        """Add the scene record and its `num_keyframes` samples; return the sample tokens."""
        w, index, layout = self.scene.writer, self.scene.index, self.scene.layout
        samples = [w.token("sample", index, k) for k in range(num_keyframes)]
        moving = "parked" if layout.ego.speed == 0 else ("slow" if layout.ego.speed < 4.5 else "driving")
        road = "straight" if layout.road.curvature == 0 else "curved"
        w.add(
            "scene",
            {
                "token": w.token("scene", index),
                "log_token": self.scene.log["token"],
                "nbr_samples": num_keyframes,
                "first_sample_token": samples[0],
                "last_sample_token": samples[-1],
                "name": name,
                "description": f"synthetic, ego {moving}, {road} road",
            },
        )
        for k, token in enumerate(samples):
            w.add(
                "sample",
                {
                    "token": token,
                    "timestamp": self.scene.start_us + k * KEYFRAME_INTERVAL_US,
                    "prev": samples[k - 1] if k > 0 else "",
                    "next": samples[k + 1] if k + 1 < num_keyframes else "",
                    "scene_token": w.token("scene", index),
                },
            )
        return samples

    def add_annotations(self, samples: list[str], per_keyframe: list[list[tuple[int, str]]]) -> None:
        """Add an instance per annotated object and its annotation at every sample; `per_keyframe`
        holds per key frame and annotated object its LiDAR points and visibility token."""
        w, index, layout = self.scene.writer, self.scene.index, self.scene.layout
        times = [k * KEYFRAME_INTERVAL_US / 1e6 for k in range(len(samples))]
        states = [layout.boxes(t) for t in times]
        for n, i in enumerate(self.scene.annotated):
            obj = layout.objects[i]
            instance = w.token("instance", index, i)
            tokens = [w.token("sample_annotation", index, i, k) for k in range(len(samples))]
            w.add(
                "instance",
                {
                    "token": instance,
                    "category_token": w.token("category", obj.category),
                    "nbr_annotations": len(samples),
                    "first_annotation_token": tokens[0],
                    "last_annotation_token": tokens[-1],
                },
            )
            for k, sample in enumerate(samples):
                centres, yaws = states[k]
                translation, size, rotation = self.scene.box(centres[i], yaws[i], i)
                points, visibility = per_keyframe[k][n]
                attribute = layout.attribute(i, times[k])
                w.add(
                    "sample_annotation",
                    {
                        "token": tokens[k],
                        "sample_token": sample,
                        "instance_token": instance,
                        "visibility_token": visibility,
                        "attribute_tokens": [w.token("attribute", attribute)] if attribute else [],
                        "translation": translation,
                        "size": size,
                        "rotation": rotation,
                        "prev": tokens[k - 1] if k > 0 else "",
                        "next": tokens[k + 1] if k + 1 < len(samples) else "",
                        "num_lidar_pts": points,
                        "num_radar_pts": 0,
                    },
                )


class _SensorFrames:
    """Writes a scene's sensor frames: for each, its ego pose and sample_data records and its file, a
    LiDAR point file (key frames and sweeps between them) or a camera image."""

    def __init__(self, scene: _Scene, renderers: tuple[CameraRenderer, ...], lidar_calibration: dict) -> None:
        self.scene = scene
        self.renderers = renderers
        self.lidar_calibration = lidar_calibration
        self.reflectivity = np.array([REFLECTIVITY[obj.kind] for obj in scene.layout.objects])

    def write_lidar(
        self, samples: list[str], sweeps: int, rng: np.random.Generator, noise: float
    ) -> list[list[tuple[int, str]]]:
        """All LiDAR frames, key frames every `sweeps + 1` frames; returns per key frame and annotated
        object (points inside, visibility token). A sweep belongs to the next key frame's sample."""
        scene = self.scene
        period = sweeps + 1
        count = (len(samples) - 1) * period + 1
        stamps = [scene.start_us + round(j * KEYFRAME_INTERVAL_US / period) for j in range(count)]
        tokens = [scene.writer.token("sample_data", scene.index, LIDAR_CHANNEL, t) for t in stamps]
        per_keyframe = []
        for j, timestamp in enumerate(stamps):
            key = j % period == 0
            pose = self._ego_pose(LIDAR_CHANNEL, timestamp)
            filename = self._sample_data(
                LIDAR_CHANNEL,
                timestamp,
                samples[(j + period - 1) // period],
                key,
                pose,
                tokens[j - 1] if j > 0 else "",
                tokens[j + 1] if j + 1 < count else "",
            )
            scan = self._scan((timestamp - scene.start_us) / 1e6, rng, noise)
            scene.writer.write_points(filename, scan.points)
            if key:
                per_keyframe.append(self._keyframe_annotations(timestamp, pose, scan))
        return per_keyframe

    def write_cameras(self, samples: list[str]) -> None:
        """One image per camera and key frame, taken at the camera's offset from the key frame."""
        scene = self.scene
        layout = scene.layout
        solid = layout.solid
        for renderer in self.renderers:
            spec = renderer.spec
            stamps = [
                scene.start_us + k * KEYFRAME_INTERVAL_US + spec.timestamp_offset_us
                for k in range(len(samples))
            ]
            tokens = [scene.writer.token("sample_data", scene.index, spec.channel, t) for t in stamps]
            for k, timestamp in enumerate(stamps):
                pose = self._ego_pose(spec.channel, timestamp)
                filename = self._sample_data(
                    spec.channel,
                    timestamp,
                    samples[k],
                    True,
                    pose,
                    tokens[k - 1] if k > 0 else "",
                    tokens[k + 1] if k + 1 < len(stamps) else "",
                )
                t = (timestamp - scene.start_us) / 1e6
                ego_xy, ego_yaw = layout.ego_pose(t)
                centres, yaws = layout.boxes(t)
                image = renderer.render(
                    layout.road,
                    ego_xy,
                    ego_yaw,
                    centres[solid],
                    layout.sizes[solid],
                    yaws[solid],
                    layout.colours[solid],
                )
                scene.writer.write_image(filename, image)

    def _ego_pose(self, channel: str, timestamp: int) -> dict:
        scene = self.scene
        xy, yaw = scene.layout.ego_pose((timestamp - scene.start_us) / 1e6)
        record = {
            "token": scene.writer.token("ego_pose", scene.index, channel, timestamp),
            "timestamp": timestamp,
            "rotation": yaw_quaternion(yaw),
            "translation": [float(xy[0] + scene.offset[0]), float(xy[1] + scene.offset[1]), 0.0],
        }
        return scene.writer.add("ego_pose", record)

    def _sample_data(
        self, channel: str, timestamp: int, sample_token: str, key: bool, pose: dict, prev: str, next_: str
    ) -> str:
        """Add a sample_data record and return its file name."""
        w, index = self.scene.writer, self.scene.index
        folder = "samples" if key else "sweeps"
        extension = "pcd.bin" if channel == LIDAR_CHANNEL else "jpg"
        filename = f"{folder}/{channel}/{self.scene.log['logfile']}__{channel}__{timestamp}.{extension}"
        camera = channel != LIDAR_CHANNEL
        w.add(
            "sample_data",
            {
                "token": w.token("sample_data", index, channel, timestamp),
                "sample_token": sample_token,
                "ego_pose_token": pose["token"],
                "calibrated_sensor_token": w.token("calibrated_sensor", index, channel),
                "timestamp": timestamp,
                "fileformat": "jpg" if camera else "pcd",
                "is_key_frame": key,
                "height": IMAGE_HEIGHT if camera else 0,
                "width": IMAGE_WIDTH if camera else 0,
                "filename": filename,
                "prev": prev,
                "next": next_,
            },
        )
        return filename

    def _scan(self, t: float, rng: np.random.Generator, noise: float) -> LidarScan:
        """Ray-cast the LiDAR at time t; boxes are moved into the sensor frame first."""
        layout = self.scene.layout
        ego_xy, ego_yaw = layout.ego_pose(t)
        yaw = ego_yaw + LIDAR_YAW
        cos, sin = np.cos(ego_yaw), np.sin(ego_yaw)
        position = ego_xy + np.array(
            [
                cos * LIDAR_TRANSLATION[0] - sin * LIDAR_TRANSLATION[1],
                sin * LIDAR_TRANSLATION[0] + cos * LIDAR_TRANSLATION[1],
            ]
        )
        to_sensor = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])  # row form: xy @ this
        centres, yaws = layout.boxes(t)
        local = np.concatenate(
            [(centres[:, :2] - position) @ to_sensor, centres[:, 2:] - LIDAR_TRANSLATION[2]], axis=1
        )

        def ground_reflectivity(xy: np.ndarray) -> np.ndarray:
            global_xy = position + xy @ to_sensor.T
            return layout.road.surface(global_xy)[1]

        return cast_lidar(
            local,
            layout.sizes,
            yaws - yaw,
            layout.solid,
            self.reflectivity,
            LIDAR_TRANSLATION[2],
            ground_reflectivity,
            rng,
            noise,
        )

    def _keyframe_annotations(self, timestamp: int, pose: dict, scan: LidarScan) -> list[tuple[int, str]]:
        """Per annotated object at a key frame: its LiDAR points and its visibility token (the share of
        its rays not blocked by another object)."""
        scene = self.scene
        annotated = scene.annotated
        centres, yaws = scene.layout.boxes((timestamp - scene.start_us) / 1e6)
        boxes = [scene.box(centres[i], yaws[i], i) for i in annotated]
        counts = count_points_in_boxes(scan.points, self.lidar_calibration, pose, boxes)
        result = []
        for i, points in zip(annotated, counts, strict=True):
            potential = scan.potential_rays[i]
            fraction = scan.visible_rays[i] / potential if potential > 0 else 0.0
            visibility = (
                "1" if fraction <= 0.4 else "2" if fraction <= 0.6 else "3" if fraction <= 0.8 else "4"
            )
            result.append((points, visibility))
        return result
