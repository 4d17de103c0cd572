"""Ground truth of one nuScenes split as the devkit's detection evaluation sees it, prepared once and cached.

`prepare_ground_truth` reads what the devkit's `load_gt` and `add_center_dist` read (global-frame
boxes, `nusc.box_velocity`, lidar + radar point counts, the ego position at the LIDAR_TOP key frame)
plus the bicycle racks of every sample, so that evaluation needs no devkit objects afterwards.
`GroundTruth.keep_mask` applies the devkit's `filter_eval_boxes` to ground truth and predictions.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
from nuscenes import NuScenes
from nuscenes.eval.common.loaders import get_samples_of_custom_split
from nuscenes.eval.detection.data_classes import DetectionConfig
from nuscenes.utils.splits import create_splits_scenes

from unikd.data.checks import raise_findings, scene_order_findings
from unikd.data.classes import CATEGORY_TO_CLASS, CLASSES
from unikd.data.file_stamps import table_stamps
from unikd.data.infos import load_nuscenes
from unikd.evaluation.algorithm import BoxArrays, expand_ranges
from unikd.evaluation.geometry import box_corners, points_in_boxes, quaternions_to_yaw
from unikd.evaluation.predictions import attribute_index

BIKE_RACK = "static_object.bicycle_rack"
CYCLES = (CLASSES.index("motorcycle"), CLASSES.index("bicycle"))
# Bump when the cached content changes.
CACHE_FORMAT = 1
# Tables whose content the ground truth depends on (the cache key includes their size and mtime).
_TABLES = (
    "scene",
    "sample",
    "sample_data",
    "ego_pose",
    "sample_annotation",
    "attribute",
    "category",
    "instance",
)
# Which dataset version each predefined split needs (the devkit's `load_gt` check).
_SPLIT_VERSIONS = {
    "train": "trainval",
    "val": "trainval",
    "train_detect": "trainval",
    "train_track": "trainval",
    "mini_train": "mini",
    "mini_val": "mini",
    "test": "test",
}


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Annotations of one split, unfiltered, in the devkit's order (samples, then annotations).

    Boxes: box_sample [N] (index into sample_tokens), translation [N, 3], size [N, 3] (w, l, h),
    rotation [N, 4] (w, x, y, z), velocity [N, 2] (nan where the devkit cannot estimate it),
    label [N] (index into CLASSES), attribute [N] (index into ATTRIBUTE_NAMES, -1 for none),
    num_pts [N] (lidar + radar points). Bicycle racks: rack_sample [M], rack_translation,
    rack_size, rack_rotation. ego_translation [S, 3]: the ego position at each sample's LIDAR_TOP.
    """

    version: str
    eval_set: str
    sample_tokens: tuple[str, ...]
    ego_translation: np.ndarray
    box_sample: np.ndarray
    translation: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    velocity: np.ndarray
    label: np.ndarray
    attribute: np.ndarray
    num_pts: np.ndarray
    rack_sample: np.ndarray
    rack_translation: np.ndarray
    rack_size: np.ndarray
    rack_rotation: np.ndarray

    @cached_property
    def sample_index(self) -> dict[str, int]:
        """Sample token -> index into sample_tokens."""
        return {token: index for index, token in enumerate(self.sample_tokens)}

    @cached_property
    def rack_corners(self) -> np.ndarray:
        """[M, 3, 8] corners of the bicycle racks, as the devkit's `Box.corners` gives them."""
        return box_corners(self.rack_translation, self.rack_size, self.rack_rotation)

    def keep_mask(
        self,
        sample: np.ndarray,
        translation: np.ndarray,
        label: np.ndarray,
        class_range: dict[str, float],
        num_pts: np.ndarray | None = None,
    ) -> np.ndarray:
        """The devkit's `filter_eval_boxes`: which boxes it keeps.

        A box is kept when its 2D distance to the ego is below its class range, it has points
        (predictions, num_pts None, always do) and, for bicycles and motorcycles, its centre is in
        no bicycle rack of its sample.
        """
        ranges = np.array([class_range[name] for name in CLASSES], dtype=np.float64)
        ego = translation[:, :2] - self.ego_translation[sample, :2]
        keep = np.sqrt(ego[:, 0] ** 2 + ego[:, 1] ** 2) < ranges[label]
        if num_pts is not None:
            keep &= num_pts != 0
        cycles = np.flatnonzero(keep & np.isin(label, CYCLES))
        keep[cycles[self._in_bike_rack(sample[cycles], translation[cycles])]] = False
        return keep

    def _in_bike_rack(self, sample: np.ndarray, points: np.ndarray) -> np.ndarray:
        starts = np.searchsorted(self.rack_sample, sample, side="left")
        counts = np.searchsorted(self.rack_sample, sample, side="right") - starts
        point, rack = expand_ranges(starts, counts)
        inside = points_in_boxes(points[point], self.rack_corners[rack])
        result = np.zeros(len(sample), dtype=bool)
        result[point[inside]] = True
        return result

    def eval_boxes(self, config: DetectionConfig) -> BoxArrays:
        """The ground-truth boxes the devkit evaluates under `config` (after its filtering)."""
        keep = self.keep_mask(self.box_sample, self.translation, self.label, config.class_range, self.num_pts)
        return BoxArrays(
            sample=self.box_sample[keep],
            translation=self.translation[keep],
            size=self.size[keep],
            yaw=quaternions_to_yaw(self.rotation[keep]),
            velocity=self.velocity[keep],
            label=self.label[keep],
            attribute=self.attribute[keep],
            score=np.full(int(keep.sum()), -1.0),
        )

    def save(self, path: str | Path) -> None:
        """Write to an .npz file (atomically, so that concurrent readers never see a partial file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        arrays["sample_tokens"] = np.array(self.sample_tokens, dtype=str)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | Path) -> GroundTruth:
        """Read a file written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            values = {f.name: data[f.name] for f in fields(cls)}
        values["version"] = str(values["version"])
        values["eval_set"] = str(values["eval_set"])
        values["sample_tokens"] = tuple(str(token) for token in values["sample_tokens"])
        return cls(**values)


def prepare_ground_truth(
    source: NuScenes | tuple[str, str],
    eval_set: str,
    cache_dir: str | Path | None = None,
) -> GroundTruth:
    """The ground truth of `eval_set` ('val', 'mini_val', ... or a custom split), cached per dataset and split.

    source: a NuScenes object or (version, dataroot); with the latter and a cached file, no
    NuScenes object is built, and a folder that is no nuScenes database of `version` is an error naming
    what is missing (`check_dataroot`). cache_dir defaults to `default_cache_dir()`.
    """
    version, dataroot = (source.version, source.dataroot) if isinstance(source, NuScenes) else source
    path = ground_truth_cache_path(version, dataroot, eval_set, cache_dir)
    if path.exists():
        return GroundTruth.load(path)
    nusc = source if isinstance(source, NuScenes) else load_nuscenes(dataroot, version)
    gt = read_ground_truth(nusc, eval_set)
    gt.save(path)
    return gt


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/unikd/nuscenes_gt (~/.cache/unikd/nuscenes_gt by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unikd" / "nuscenes_gt"


def ground_truth_cache_path(
    version: str, dataroot: str, eval_set: str, cache_dir: str | Path | None = None
) -> Path:
    """Cache file of one dataset (path and table files' size and mtime), version and split."""
    root = Path(dataroot).resolve()
    key = [str(CACHE_FORMAT), str(root), version, eval_set, *table_stamps(root / version, _TABLES)]
    digest = hashlib.sha1("\n".join(key).encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / f"{version}_{eval_set}_{digest}.npz"


def split_sample_tokens(nusc: NuScenes, eval_set: str) -> list[str]:
    """Sample tokens of a split in the devkit's order, with the devkit's version checks."""
    splits = create_splits_scenes()
    if eval_set not in splits:
        return get_samples_of_custom_split(split_name=eval_set, nusc=nusc)
    required = _SPLIT_VERSIONS.get(eval_set)
    if required is None:
        raise ValueError(f"split {eval_set!r} cannot be mapped to a nuScenes version")
    if not nusc.version.endswith(required):
        raise ValueError(f"split {eval_set!r} needs a v1.0-{required} dataset, got {nusc.version}")
    if eval_set == "test" and len(nusc.sample_annotation) == 0:
        raise ValueError("the test split has no annotations in this dataset")
    scenes = set(splits[eval_set])
    return [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]


def read_ground_truth(nusc: NuScenes, eval_set: str) -> GroundTruth:
    """Read the ground truth of `eval_set` from a NuScenes object (what `prepare_ground_truth` caches)."""
    attribute_names = {a["token"]: a["name"] for a in nusc.attribute}
    tokens = split_sample_tokens(nusc, eval_set)
    scenes = dict.fromkeys(nusc.get("sample", token)["scene_token"] for token in tokens)
    raise_findings(scene_order_findings(nusc, scenes), f"the sample table of {nusc.dataroot}/{nusc.version}")
    ego, boxes, racks = [], [], []
    for index, token in enumerate(tokens):
        sample = nusc.get("sample", token)
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ego.append(nusc.get("ego_pose", lidar["ego_pose_token"])["translation"])
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            if ann["category_name"] == BIKE_RACK:
                racks.append((index, ann["translation"], ann["size"], ann["rotation"]))
            name = CATEGORY_TO_CLASS.get(ann["category_name"])
            if name is None:
                continue
            if len(ann["attribute_tokens"]) > 1:
                raise ValueError(f"annotation {ann_token} has more than one attribute")
            attribute = attribute_names[ann["attribute_tokens"][0]] if ann["attribute_tokens"] else ""
            boxes.append(
                (
                    index,
                    ann["translation"],
                    ann["size"],
                    ann["rotation"],
                    nusc.box_velocity(ann_token)[:2],
                    CLASSES.index(name),
                    attribute_index(attribute),
                    ann["num_lidar_pts"] + ann["num_radar_pts"],
                )
            )
    box_columns = list(zip(*boxes, strict=True)) or [()] * 8
    rack_columns = list(zip(*racks, strict=True)) or [()] * 4
    return GroundTruth(
        version=nusc.version,
        eval_set=eval_set,
        sample_tokens=tuple(tokens),
        ego_translation=np.array(ego, dtype=np.float64).reshape(-1, 3),
        box_sample=np.array(box_columns[0], dtype=np.int64),
        translation=np.array(box_columns[1], dtype=np.float64).reshape(-1, 3),
        size=np.array(box_columns[2], dtype=np.float64).reshape(-1, 3),
        rotation=np.array(box_columns[3], dtype=np.float64).reshape(-1, 4),
        velocity=np.array(box_columns[4], dtype=np.float64).reshape(-1, 2),
        label=np.array(box_columns[5], dtype=np.int64),
        attribute=np.array(box_columns[6], dtype=np.int64),
        num_pts=np.array(box_columns[7], dtype=np.int64),
        rack_sample=np.array(rack_columns[0], dtype=np.int64),
        rack_translation=np.array(rack_columns[1], dtype=np.float64).reshape(-1, 3),
        rack_size=np.array(rack_columns[2], dtype=np.float64).reshape(-1, 3),
        rack_rotation=np.array(rack_columns[3], dtype=np.float64).reshape(-1, 4),
    )
