"""Writes a dataset in the nuScenes on-disk format: the 13 JSON tables and the sensor files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

from unikd.data.infos import NUSCENES_TABLES
from unikd.data.synthetic.calibration import CAMERA_SPECS, LIDAR_CHANNEL

ATTRIBUTES = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)
# The nuScenes category taxonomy (all 23 categories, including those the generator never places).
CATEGORY_NAMES = (
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
)
# nuScenes visibility levels: the fraction of an annotation that is visible.
VISIBILITY_LEVELS = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
JPEG_QUALITY = 90


class DatasetWriter:
    """Collects table records and writes sensor files under `root` for one dataset version."""

    def __init__(self, root: Path, version: str, seed: int) -> None:
        self.root = root
        self.version = version
        self._namespace = f"unikd-synthetic/{version}/{seed}"
        self.tables: dict[str, list[dict]] = {name: [] for name in NUSCENES_TABLES}

    def start(self) -> None:
        """Make the folders and add the tables that do not depend on the scenes."""
        for channel in (LIDAR_CHANNEL, *(spec.channel for spec in CAMERA_SPECS)):
            (self.root / "samples" / channel).mkdir(parents=True, exist_ok=True)
        (self.root / "sweeps" / LIDAR_CHANNEL).mkdir(parents=True, exist_ok=True)
        (self.root / "maps").mkdir(parents=True, exist_ok=True)
        (self.root / self.version).mkdir(parents=True, exist_ok=True)
        for name in ATTRIBUTES:
            self.add("attribute", {"token": self.token("attribute", name), "name": name, "description": name})
        for name in CATEGORY_NAMES:
            self.add("category", {"token": self.token("category", name), "name": name, "description": name})
        for token, level in VISIBILITY_LEVELS:
            description = f"visibility of whole object is {level[1:]}%"
            self.add("visibility", {"token": token, "level": level, "description": description})
        self.add(
            "sensor",
            {"token": self.token("sensor", LIDAR_CHANNEL), "channel": LIDAR_CHANNEL, "modality": "lidar"},
        )
        for spec in CAMERA_SPECS:
            self.add(
                "sensor",
                {"token": self.token("sensor", spec.channel), "channel": spec.channel, "modality": "camera"},
            )

    def token(self, *key: object) -> str:
        """A 32-hex-digit token, the same for the same key, version and seed."""
        text = "/".join([self._namespace, *(str(part) for part in key)])
        return hashlib.md5(text.encode()).hexdigest()

    def add(self, table: str, record: dict) -> dict:
        self.tables[table].append(record)
        return record

    def extend(self, tables: dict[str, list[dict]]) -> None:
        """Append the records of another writer (one scene built elsewhere)."""
        for name, records in tables.items():
            self.tables[name].extend(records)

    def write_points(self, filename: str, points: np.ndarray) -> None:
        """A `.pcd.bin` file: float32 (x, y, z, intensity, ring index) per point."""
        (self.root / filename).write_bytes(np.ascontiguousarray(points, dtype=np.float32).tobytes())

    def write_image(self, filename: str, rgb: np.ndarray) -> None:
        ok, encoded = cv2.imencode(
            ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {filename}")
        (self.root / filename).write_bytes(encoded.tobytes())

    def add_maps(self) -> None:
        """One map record per location of the logs. The devkit opens each map's mask PNG when it
        loads the dataset; that raster prior is a small empty image here (the semantic map is the
        map expansion, `road_map`)."""
        ok, encoded = cv2.imencode(".png", np.zeros((64, 64), dtype=np.uint8))
        if not ok:
            raise RuntimeError("PNG encoding failed for the map mask")
        logs_by_location: dict[str, list[str]] = {}
        for log in self.tables["log"]:
            logs_by_location.setdefault(log["location"], []).append(log["token"])
        for location, log_tokens in logs_by_location.items():
            token = self.token("map", location)
            filename = f"maps/{token}.png"
            (self.root / filename).write_bytes(encoded.tobytes())
            self.add(
                "map",
                {
                    "token": token,
                    "log_tokens": log_tokens,
                    "category": "semantic_prior",
                    "filename": filename,
                },
            )

    def write_tables(self) -> None:
        for name, records in self.tables.items():
            with open(self.root / self.version / f"{name}.json", "w") as f:
                json.dump(records, f, indent=1)
