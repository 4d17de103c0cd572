"""NuScenesDetectionMetric against the devkit's own filtering and evaluation code, on in-memory scenes."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_prediction
from nuscenes.eval.common.utils import center_distance
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from unikd.data.classes import CLASSES
from unikd.evaluation import (
    ATTRIBUTE_NAMES,
    GroundTruth,
    NuScenesDetectionMetric,
    flatten_summary,
    format_metrics,
    make_prediction,
    write_metrics_summary,
    write_submission,
)
from unikd.evaluation.geometry import box_corners, points_in_boxes, quaternions_to_yaw, row_norms
from unikd.evaluation.predictions import attribute_index, default_attributes

CONFIG = config_factory("detection_cvpr_2019")
CLASS_ATTRIBUTES = {
    "car": ["vehicle.moving", "vehicle.parked", "vehicle.stopped"],
    "truck": ["vehicle.moving", "vehicle.parked", "vehicle.stopped"],
    "bus": ["vehicle.moving", "vehicle.parked", "vehicle.stopped"],
    "trailer": ["vehicle.moving", "vehicle.parked", "vehicle.stopped"],
    "construction_vehicle": ["vehicle.moving", "vehicle.parked", "vehicle.stopped"],
    "pedestrian": ["pedestrian.moving", "pedestrian.sitting_lying_down", "pedestrian.standing"],
    "motorcycle": ["cycle.with_rider", "cycle.without_rider"],
    "bicycle": ["cycle.with_rider", "cycle.without_rider"],
    "traffic_cone": [""],
    "barrier": [""],
}


def yaw_quaternion(yaw: float, tilt: float = 0.0) -> list[float]:
    """A heading about z, optionally tilted a little about x (the devkit projects to the x-y plane)."""
    q = Quaternion(axis=[0, 0, 1], radians=yaw) * Quaternion(axis=[1, 0, 0], radians=tilt)
    return [float(v) for v in q.elements]


class FakeScenes:
    """The tables of a NuScenes object that the devkit's `add_center_dist` and `filter_eval_boxes` read."""

    def __init__(self, gt: GroundTruth) -> None:
        self.tables: dict[tuple[str, str], dict] = {}
        for index, token in enumerate(gt.sample_tokens):
            anns = []
            for rack in np.flatnonzero(gt.rack_sample == index):
                ann_token = f"{token}_rack{rack}"
                anns.append(ann_token)
                self.tables["sample_annotation", ann_token] = {
                    "category_name": "static_object.bicycle_rack",
                    "translation": gt.rack_translation[rack].tolist(),
                    "size": gt.rack_size[rack].tolist(),
                    "rotation": gt.rack_rotation[rack].tolist(),
                }
            for box in np.flatnonzero(gt.box_sample == index):
                ann_token = f"{token}_box{box}"
                anns.append(ann_token)
                self.tables["sample_annotation", ann_token] = {"category_name": "vehicle.car"}
            self.tables["sample", token] = {"data": {"LIDAR_TOP": f"{token}_lidar"}, "anns": anns}
            self.tables["sample_data", f"{token}_lidar"] = {"ego_pose_token": f"{token}_pose"}
            self.tables["ego_pose", f"{token}_pose"] = {"translation": gt.ego_translation[index].tolist()}

    def get(self, table: str, token: str) -> dict:
        return self.tables[table, token]


def make_ground_truth(seed: int, num_samples: int = 14) -> GroundTruth:
    """Random annotated samples around random ego positions: every class, some far, some without
    points or velocity or attribute, tilted boxes, and bicycles / motorcycles in and beside racks."""
    rng = np.random.default_rng(seed)
    ego = np.c_[rng.uniform(300, 1500, (num_samples, 2)), np.zeros(num_samples)]
    columns: dict[str, list] = {k: [] for k in ("sample", "t", "s", "r", "v", "label", "attr", "pts")}
    racks: dict[str, list] = {k: [] for k in ("sample", "t", "s", "r")}

    def add(sample: int, translation, label: int, rng=rng) -> None:
        name = CLASSES[label]
        columns["sample"].append(sample)
        columns["t"].append(list(translation))
        columns["s"].append(list(rng.uniform(0.4, 5.0, 3)))
        columns["r"].append(yaw_quaternion(rng.uniform(-np.pi, np.pi), tilt=rng.choice([0.0, 0.05])))
        # Construction vehicles never have a velocity, trailers never an attribute (all-nan errors).
        no_velocity = name == "construction_vehicle" or rng.random() < 0.1
        columns["v"].append([np.nan, np.nan] if no_velocity else list(rng.normal(0, 3, 2)))
        options = CLASS_ATTRIBUTES[name]
        no_attribute = name == "trailer" or rng.random() < 0.1
        attribute = "" if no_attribute else options[rng.integers(len(options))]
        columns["attr"].append(attribute_index(attribute))
        columns["pts"].append(0 if rng.random() < 0.08 else int(rng.integers(1, 500)))
        columns["label"].append(label)

    for sample in range(num_samples):
        # Sample 3 has no annotation at all.
        count = 0 if sample == 3 else int(rng.integers(5, 30))
        for _ in range(count):
            label = int(rng.integers(len(CLASSES)))
            radius = rng.uniform(0, 65)
            angle = rng.uniform(0, 2 * np.pi)
            z = rng.uniform(-1, 2)
            add(sample, ego[sample] + [radius * np.cos(angle), radius * np.sin(angle), z], label)
        if sample % 3 == 0:
            rack_center = ego[sample] + [rng.uniform(-20, 20), rng.uniform(-20, 20), 0.5]
            racks["sample"].append(sample)
            racks["t"].append(list(rack_center))
            racks["s"].append([2.0, 6.0, 1.2])
            racks["r"].append(yaw_quaternion(rng.uniform(-np.pi, np.pi)))
            rack = Box(rack_center, [2.0, 6.0, 1.2], Quaternion(racks["r"][-1]))
            # Two cycles inside the rack, one just outside it.
            for offset in ([0.3, 1.5, 0.1], [-0.2, -2.0, -0.3], [0.0, 3.5, 0.0]):
                add(sample, rack.center + rack.orientation.rotate(offset), CLASSES.index("bicycle"))
            add(sample, rack.center + rack.orientation.rotate([0.1, 0.5, 0.0]), CLASSES.index("motorcycle"))
    return GroundTruth(
        version="v1.0-mini",
        eval_set="in_memory",
        sample_tokens=tuple(f"sample{i:03d}" for i in range(num_samples)),
        ego_translation=ego,
        box_sample=np.array(columns["sample"], dtype=np.int64),
        translation=np.array(columns["t"], dtype=np.float64),
        size=np.array(columns["s"], dtype=np.float64),
        rotation=np.array(columns["r"], dtype=np.float64),
        velocity=np.array(columns["v"], dtype=np.float64),
        label=np.array(columns["label"], dtype=np.int64),
        attribute=np.array(columns["attr"], dtype=np.int64),
        num_pts=np.array(columns["pts"], dtype=np.int64),
        rack_sample=np.array(racks["sample"], dtype=np.int64),
        rack_translation=np.array(racks["t"], dtype=np.float64).reshape(-1, 3),
        rack_size=np.array(racks["s"], dtype=np.float64).reshape(-1, 3),
        rack_rotation=np.array(racks["r"], dtype=np.float64).reshape(-1, 4),
    )


NO_RACKS = ([], np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)))


def small_ground_truth(ego: np.ndarray, box_sample, translation, label, racks=NO_RACKS) -> GroundTruth:
    """Samples s0, s1, ... with their ego at `ego` [S, 3]; boxes of 1 x 2 x 1.5 m, heading 0, with points, no
    attribute; racks: (rack_sample, translation, size, rotation)."""
    n = len(label)
    rack_sample, rack_translation, rack_size, rack_rotation = racks
    return GroundTruth(
        version="v1.0-mini",
        eval_set="in_memory",
        sample_tokens=tuple(f"s{i}" for i in range(len(ego))),
        ego_translation=np.asarray(ego, dtype=np.float64),
        box_sample=np.asarray(box_sample, dtype=np.int64),
        translation=np.asarray(translation, dtype=np.float64).reshape(-1, 3),
        size=np.tile([1.0, 2.0, 1.5], (n, 1)),
        rotation=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)),
        velocity=np.zeros((n, 2)),
        label=np.asarray(label, dtype=np.int64),
        attribute=np.full(n, -1),
        num_pts=np.full(n, 10),
        rack_sample=np.asarray(rack_sample, dtype=np.int64),
        rack_translation=np.asarray(rack_translation, dtype=np.float64),
        rack_size=np.asarray(rack_size, dtype=np.float64),
        rack_rotation=np.asarray(rack_rotation, dtype=np.float64),
    )


def gt_records(gt: GroundTruth) -> list[dict]:
    """The ground truth as perfect prediction records (score 0.5, attribute as annotated)."""
    records = []
    for index, token in enumerate(gt.sample_tokens):
        mask = gt.box_sample == index
        records.append(
            {
                "sample_token": token,
                "translation": gt.translation[mask],
                "size": gt.size[mask],
                "rotation": gt.rotation[mask],
                "velocity": np.nan_to_num(gt.velocity[mask]),
                "label": gt.label[mask],
                "score": np.full(int(mask.sum()), 0.5),
                "attribute": gt.attribute[mask],
            }
        )
    return records


def transform(records: list[dict], seed: int, fn) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        fn({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in r.items()}, rng) for r in records
    ]


def take(record: dict, index: np.ndarray) -> dict:
    return {k: (v if k == "sample_token" else v[index]) for k, v in record.items()}


def cat(a: dict, b: dict) -> dict:
    return {k: (a[k] if k == "sample_token" else np.concatenate([a[k], b[k]])) for k in a}


def jitter(record: dict, rng: np.random.Generator, position=0.0, size=0.0, yaw=0.0, velocity=0.0) -> dict:
    n = len(record["label"])
    record["translation"] = record["translation"] + rng.normal(0, position, (n, 3))
    record["size"] = record["size"] * np.exp(rng.normal(0, size, (n, 3)))
    record["rotation"] = np.array(
        [
            (Quaternion(axis=[0, 0, 1], radians=d) * Quaternion(q)).elements
            for d, q in zip(rng.normal(0, yaw, n), record["rotation"], strict=True)
        ]
    ).reshape(-1, 4)
    record["velocity"] = record["velocity"] + rng.normal(0, velocity, (n, 2))
    record["score"] = rng.uniform(0.05, 1.0, n)
    return record


def prediction_sets(gt: GroundTruth) -> dict[str, list[dict]]:
    """Named prediction sets covering every rule of the evaluation."""
    base = gt_records(gt)
    sets = {"perfect_equal_scores": base}
    sets["perfect_random_scores"] = transform(
        base, 1, lambda r, g: {**r, "score": g.uniform(0, 1, len(r["label"]))}
    )
    sets["jitter_position"] = transform(base, 2, lambda r, g: jitter(r, g, position=0.8))
    sets["jitter_all"] = transform(
        base, 3, lambda r, g: jitter(r, g, position=0.5, size=0.2, yaw=0.6, velocity=1.0)
    )
    sets["jitter_large"] = transform(
        base, 4, lambda r, g: jitter(r, g, position=2.5, size=0.5, yaw=2.0, velocity=4.0)
    )
    sets["missing"] = transform(
        base, 5, lambda r, g: take(jitter(r, g, position=0.3), g.random(len(r["label"])) < 0.6)
    )

    def false_positives(r, g):
        n = int(g.integers(0, 40))
        center = r["translation"].mean(axis=0) if len(r["label"]) else np.array([900.0, 900.0, 0.0])
        extra = {
            "sample_token": r["sample_token"],
            "translation": center + g.uniform(-45, 45, (n, 3)),
            "size": g.uniform(0.3, 4, (n, 3)),
            "rotation": np.array([yaw_quaternion(a) for a in g.uniform(-3, 3, n)]).reshape(-1, 4),
            "velocity": g.normal(0, 2, (n, 2)),
            "label": g.integers(0, len(CLASSES), n),
            "score": g.uniform(0, 0.6, n),
            "attribute": g.integers(-1, len(ATTRIBUTE_NAMES), n),
        }
        return cat(jitter(r, g, position=0.4), extra)

    sets["false_positives"] = transform(base, 6, false_positives)
    sets["duplicates"] = transform(
        base, 7, lambda r, g: cat(jitter(dict(r), g, position=0.2), jitter(r, g, position=0.6))
    )
    sets["duplicates_equal_scores"] = transform(
        base,
        8,
        lambda r, g: {**cat(r, jitter(dict(r), g, position=0.3)), "score": np.full(2 * len(r["label"]), 0.7)},
    )
    sets["class_confusion"] = transform(
        base,
        9,
        lambda r, g: {
            **jitter(r, g, position=0.3),
            "label": np.where(
                g.random(len(r["label"])) < 0.3, g.integers(0, len(CLASSES), len(r["label"])), r["label"]
            ),
        },
    )
    sets["wrong_attributes"] = transform(
        base, 10, lambda r, g: {**r, "attribute": g.integers(-1, len(ATTRIBUTE_NAMES), len(r["label"]))}
    )
    sets["default_attributes"] = transform(
        base, 11, lambda r, g: {k: v for k, v in jitter(r, g, velocity=0.5).items() if k != "attribute"}
    )
    sets["empty_samples"] = transform(
        base,
        12,
        lambda r, g: take(jitter(r, g, position=0.3), slice(0, 0) if g.random() < 0.5 else slice(None)),
    )
    sets["all_empty"] = transform(base, 13, lambda r, g: take(r, slice(0, 0)))

    def out_of_range(r, g):
        n = len(r["label"])
        r = jitter(r, g, position=0.2)
        ego = gt.ego_translation[gt.sample_index[r["sample_token"]]]
        direction = r["translation"][:, :2] - ego[:2]
        direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-6)
        far = g.random(n) < 0.5
        r["translation"][far, :2] = ego[:2] + direction[far] * g.uniform(29, 52, (int(far.sum()), 1))
        return r

    sets["out_of_range"] = transform(base, 14, out_of_range)
    sets["bike_racks"] = transform(
        base,
        15,
        lambda r, g: {
            **jitter(r, g, position=0.05),
            "label": np.where(np.isin(r["label"], [6, 7]), g.choice([6, 7], len(r["label"])), r["label"]),
        },
    )
    sets["score_ties_across_samples"] = transform(
        base,
        16,
        lambda r, g: {**jitter(r, g, position=0.7), "score": g.choice([0.2, 0.4, 0.9], len(r["label"]))},
    )
    sets["zero_scores"] = transform(
        base,
        17,
        lambda r, g: {
            **jitter(r, g, position=0.3),
            "score": np.where(g.random(len(r["label"])) < 0.3, 0.0, 0.5),
        },
    )
    sets["reversed_samples"] = transform(base, 18, lambda r, g: jitter(r, g, position=0.5, yaw=0.3))[::-1]
    return sets


def devkit_summary(gt: GroundTruth, predictions: list[dict], tmp_path) -> dict:
    """The devkit's result on the submission of `predictions`."""
    path = write_submission(predictions, tmp_path / "submission.json", use_camera=False, use_lidar=True)
    return devkit_summary_of_file(gt, path)


def devkit_summary_of_file(gt: GroundTruth, path: Path) -> dict:
    """The devkit's result: its submission loader, `add_center_dist`, `filter_eval_boxes`, `evaluate`."""
    pred_boxes, _ = load_prediction(str(path), CONFIG.max_boxes_per_sample, DetectionBox)
    gt_boxes = EvalBoxes()
    for index, token in enumerate(gt.sample_tokens):
        boxes = []
        for i in np.flatnonzero(gt.box_sample == index):
            boxes.append(
                DetectionBox(
                    sample_token=token,
                    translation=tuple(gt.translation[i].tolist()),
                    size=tuple(gt.size[i].tolist()),
                    rotation=tuple(gt.rotation[i].tolist()),
                    velocity=tuple(gt.velocity[i].tolist()),
                    num_pts=int(gt.num_pts[i]),
                    detection_name=CLASSES[gt.label[i]],
                    attribute_name="" if gt.attribute[i] < 0 else ATTRIBUTE_NAMES[gt.attribute[i]],
                )
            )
        gt_boxes.add_boxes(token, boxes)
    nusc = FakeScenes(gt)
    pred_boxes = filter_eval_boxes(nusc, add_center_dist(nusc, pred_boxes), CONFIG.class_range)
    gt_boxes = filter_eval_boxes(nusc, add_center_dist(nusc, gt_boxes), CONFIG.class_range)
    evaluation = SimpleNamespace(cfg=CONFIG, gt_boxes=gt_boxes, pred_boxes=pred_boxes, verbose=False)
    metrics, _ = DetectionEval.evaluate(evaluation)
    return metrics.serialize()


def assert_same_figures(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-6, rel=0), key


@pytest.fixture(scope="module")
def gt() -> GroundTruth:
    return make_ground_truth(seed=0)


@pytest.fixture(scope="module")
def predictions(gt) -> dict[str, list[dict]]:
    return prediction_sets(gt)


def test_in_memory_scene_exercises_the_filters(gt):
    keep = gt.keep_mask(gt.box_sample, gt.translation, gt.label, CONFIG.class_range, gt.num_pts)
    cycles = np.isin(gt.label, [6, 7])
    in_racks = cycles & ~keep & (gt.num_pts > 0)
    assert in_racks.sum() >= 4 and (~keep & ~cycles).sum() >= 10 and keep.sum() > 100


@pytest.mark.parametrize(
    "name",
    [
        "perfect_equal_scores",
        "perfect_random_scores",
        "jitter_position",
        "jitter_all",
        "jitter_large",
        "missing",
        "false_positives",
        "duplicates",
        "duplicates_equal_scores",
        "class_confusion",
        "wrong_attributes",
        "default_attributes",
        "empty_samples",
        "out_of_range",
        "bike_racks",
        "score_ties_across_samples",
        "zero_scores",
        "reversed_samples",
    ],
)
def test_metric_matches_devkit(gt, predictions, name, tmp_path):
    records = predictions[name]
    metric = NuScenesDetectionMetric(gt)
    # Several updates, like validation batches.
    for start in range(0, len(records), 4):
        metric.update(records[start : start + 4])
    ours = {key: value.item() for key, value in metric.compute().items()}
    theirs = flatten_summary(devkit_summary(gt, records, tmp_path))
    assert_same_figures(ours, theirs)
    assert len(ours) == 7 + 10 * 10


def test_metric_matches_devkit_on_other_scenes(tmp_path):
    for seed in (1, 2):
        gt = make_ground_truth(seed=seed, num_samples=10)
        for name in ("jitter_all", "false_positives", "duplicates"):
            records = prediction_sets(gt)[name]
            metric = NuScenesDetectionMetric(gt)
            metric.update(records)
            ours = {key: value.item() for key, value in metric.compute().items()}
            assert_same_figures(ours, flatten_summary(devkit_summary(gt, records, tmp_path)))


def test_exact_distance_ties_and_thresholds(tmp_path):
    """Equal distances go to the first ground-truth box; a distance equal to a threshold is no match."""
    ego = np.array([[100.0, 100.0, 0.0], [300.0, 100.0, 0.0]])
    car, pedestrian = CLASSES.index("car"), CLASSES.index("pedestrian")
    gt = GroundTruth(
        version="v1.0-mini",
        eval_set="in_memory",
        sample_tokens=("a", "b"),
        ego_translation=ego,
        box_sample=np.array([0, 0, 0, 1, 1]),
        translation=np.array([[110.0, 100, 1], [112, 100, 1], [100, 120, 1], [310, 100, 1], [300, 110, 1]]),
        size=np.array([[2.0, 4, 1.5], [1.5, 3, 1.5], [0.5, 0.5, 1.8], [2, 4, 1.5], [0.6, 0.6, 1.7]]),
        rotation=np.array([yaw_quaternion(a) for a in (0.0, 1.0, 0.0, 0.5, 2.0)]),
        velocity=np.array([[0.0, 0], [3, 0], [1, 1], [0, 0], [0, 1]]),
        label=np.array([car, car, pedestrian, car, pedestrian]),
        attribute=np.array([5, 6, 0, 7, 2]),
        num_pts=np.full(5, 10),
        rack_sample=np.zeros(0, dtype=np.int64),
        rack_translation=np.zeros((0, 3)),
        rack_size=np.zeros((0, 3)),
        rack_rotation=np.zeros((0, 4)),
    )
    records = [
        {
            "sample_token": "a",
            # Two cars midway between the ground-truth cars; a pedestrian exactly 1 m and 2 m away.
            "translation": np.array([[111.0, 100, 1], [111, 100, 1], [100, 121, 1], [100, 118, 1]]),
            "size": np.array([[2.0, 4, 1.5], [2, 4, 1.5], [0.5, 0.5, 1.8], [0.5, 0.5, 1.8]]),
            "rotation": np.array([yaw_quaternion(0.2)] * 4),
            "velocity": np.zeros((4, 2)),
            "label": np.array([car, car, pedestrian, pedestrian]),
            "score": np.array([0.9, 0.8, 0.7, 0.6]),
            "attribute": np.array([5, 5, 0, 0]),
        },
        {
            "sample_token": "b",
            "translation": np.array([[311.0, 100, 1], [300, 112, 1]]),
            "size": np.array([[2.0, 4, 1.5], [0.6, 0.6, 1.7]]),
            "rotation": np.array([yaw_quaternion(0.4)] * 2),
            "velocity": np.zeros((2, 2)),
            "label": np.array([car, pedestrian]),
            "score": np.array([0.8, 0.7]),
            "attribute": np.array([6, 2]),
        },
    ]
    metric = NuScenesDetectionMetric(gt)
    metric.update(records)
    ours = {key: value.item() for key, value in metric.compute().items()}
    assert_same_figures(ours, flatten_summary(devkit_summary(gt, records, tmp_path)))
    assert ours["AP@1.0/pedestrian"] < ours["AP@2.0/pedestrian"]


def test_centre_distances_are_the_devkits_bits():
    """Centre distances equal the devkit's `center_distance` (`np.linalg.norm` of each pair's difference)
    bit for bit, on pairs where the elementwise sqrt(dx * dx + dy * dy) is one ulp off."""
    rng = np.random.default_rng(0)
    gt_xy = rng.uniform(-2000, 2000, (20000, 2))
    pred_xy = gt_xy + rng.normal(0, 3, gt_xy.shape)
    devkit = np.array(
        [
            center_distance(SimpleNamespace(translation=g), SimpleNamespace(translation=p))
            for g, p in zip(gt_xy.tolist(), pred_xy.tolist(), strict=True)
        ]
    )
    delta = pred_xy - gt_xy
    assert row_norms(delta).tobytes() == devkit.tobytes()
    elementwise = np.sqrt(delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1])
    assert (elementwise != devkit).mean() > 0.01


def test_prediction_exactly_at_a_threshold(tmp_path):
    """A car at 2 m from its ground truth by one rounding and under 2 m by the other: it matches at the
    2 m threshold exactly when the devkit's distance is under 2 m."""
    gt_xy = np.array([110.0, 100.0])
    for angle in np.linspace(0.1, 1.4, 2000):
        pred_xy = gt_xy + 2.0 * np.array([np.cos(angle), np.sin(angle)])
        delta = pred_xy - gt_xy
        devkit = center_distance(
            SimpleNamespace(translation=gt_xy.tolist()), SimpleNamespace(translation=pred_xy.tolist())
        )
        if (devkit < 2.0) != (np.sqrt(delta[0] * delta[0] + delta[1] * delta[1]) < 2.0):
            break
    else:
        raise AssertionError("no centre found where the two roundings disagree on being under 2 m")
    car = CLASSES.index("car")
    gt = small_ground_truth(np.array([[100.0, 100.0, 0.0]]), [0], [[*gt_xy, 1.0]], [car])
    record = {
        "sample_token": "s0",
        "translation": np.array([[*pred_xy, 1.0]]),
        "size": gt.size,
        "rotation": gt.rotation,
        "velocity": np.zeros((1, 2)),
        "label": np.array([car]),
        "score": np.array([0.8]),
    }
    metric = NuScenesDetectionMetric(gt)
    metric.update([record])
    ours = {key: value.item() for key, value in metric.compute().items()}
    assert_same_figures(ours, flatten_summary(devkit_summary(gt, [record], tmp_path)))
    assert ours["AP@2.0/car"] == pytest.approx(float(devkit < 2.0))
    assert ours["AP@4.0/car"] == pytest.approx(1.0)


def test_no_predictions_at_all(gt, predictions, tmp_path):
    """The devkit cannot evaluate a submission without any box; the metric reports AP 0 and errors 1."""
    records = predictions["all_empty"]
    with pytest.raises(Exception, match="Invalid box type"):
        devkit_summary(gt, records, tmp_path)
    metric = NuScenesDetectionMetric(gt)
    metric.update(records)
    figures = {key: value.item() for key, value in metric.compute().items()}
    assert figures["mAP"] == 0.0 and figures["NDS"] == 0.0 and figures["mATE"] == 1.0
    assert math.isnan(figures["AAE/barrier"]) and figures["AAE/car"] == 1.0


def test_perfect_predictions_score_one(gt):
    """Predicting exactly the boxes that are evaluated (those with points) gives AP 1 and no translation error."""
    metric = NuScenesDetectionMetric(gt)
    has_points = [gt.num_pts[gt.box_sample == i] > 0 for i in range(len(gt.sample_tokens))]
    metric.update([take(r, mask) for r, mask in zip(gt_records(gt), has_points, strict=True)])
    figures = metric.compute()
    assert figures["mAP"].item() == pytest.approx(1.0)
    assert figures["mATE"].item() == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(figures["AOE/traffic_cone"].item()) and math.isnan(figures["AVE/barrier"].item())
    assert not math.isnan(figures["AOE/barrier"].item())


def test_summary_json_and_table(gt, predictions, tmp_path):
    metric = NuScenesDetectionMetric(gt)
    metric.update(predictions["jitter_all"])
    metric.compute()
    devkit = devkit_summary(gt, predictions["jitter_all"], tmp_path)
    path = write_metrics_summary(metric.summary, tmp_path / "metrics_summary.json", meta={"use_lidar": True})
    written = json.loads(path.read_text())
    expected_keys = list(devkit) + ["meta"]
    assert list(written) == expected_keys
    assert list(written["label_aps"]["car"]) == ["0.5", "1.0", "2.0", "4.0"]
    assert written["cfg"] == devkit["cfg"]
    assert_same_figures(flatten_summary(written), flatten_summary(devkit))
    table = format_metrics(metric.summary).splitlines()
    assert table[0] == f"mAP: {devkit['mean_ap']:.4f}"
    assert table[6] == f"NDS: {devkit['nd_score']:.4f}"
    car = next(line for line in table if line.startswith("car "))
    assert car.split("\t")[1].strip() == f"{devkit['mean_dist_aps']['car']:.3f}"
    cone = next(line for line in table if line.startswith("traffic_cone"))
    assert cone.split("\t")[4].strip() == "nan"


def test_missing_samples(gt, predictions, tmp_path):
    records = predictions["jitter_position"]
    metric = NuScenesDetectionMetric(gt)
    metric.update(records[:-2])
    with pytest.raises(ValueError, match="cover 12 of the 14 samples"):
        metric.compute()
    # On the samples given, equal to the devkit evaluating a ground truth of those samples only.
    subset = NuScenesDetectionMetric(gt, require_all_samples=False)
    subset.update(records[:-2])
    ours = {key: value.item() for key, value in subset.compute().items()}
    keep = gt.box_sample < len(gt.sample_tokens) - 2
    box_fields = (
        "box_sample",
        "translation",
        "size",
        "rotation",
        "velocity",
        "label",
        "attribute",
        "num_pts",
    )
    reduced = dataclasses.replace(
        gt,
        sample_tokens=gt.sample_tokens[:-2],
        ego_translation=gt.ego_translation[:-2],
        **{key: getattr(gt, key)[keep] for key in box_fields},
    )
    assert_same_figures(ours, flatten_summary(devkit_summary(reduced, records[:-2], tmp_path)))


def test_repeated_samples_count_once(gt, predictions):
    """A distributed sampler pads with repeated samples: only the first record of a sample counts."""
    records = predictions["false_positives"]
    reference = NuScenesDetectionMetric(gt)
    reference.update(records)
    padded = NuScenesDetectionMetric(gt)
    padded.update(records)
    padded.update([jitter(dict(records[0]), np.random.default_rng(0), position=3.0)] + records[1:3])
    assert_same_figures(
        {k: v.item() for k, v in padded.compute().items()},
        {k: v.item() for k, v in reference.compute().items()},
    )


def test_state_is_synced_by_concatenation(gt, predictions):
    """Two metrics' states concatenated (what distributed sync does) equal one metric given both halves."""
    records = predictions["duplicates"]
    whole = NuScenesDetectionMetric(gt)
    whole.update(records[:7])
    whole.update(records[7:])
    first, second = NuScenesDetectionMetric(gt), NuScenesDetectionMetric(gt)
    first.update(records[:7])
    second.update(records[7:])
    assert first._reductions["boxes"].__name__ == "dim_zero_cat"
    first.boxes = [torch.cat(first.boxes + second.boxes)]
    first.records = [torch.cat(first.records + second.records)]
    assert_same_figures(
        {k: v.item() for k, v in first.compute().items()}, {k: v.item() for k, v in whole.compute().items()}
    )
    assert whole.boxes[0].dtype == torch.float64


def _distributed_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    gt = make_ground_truth(seed=0)
    records = prediction_sets(gt)["score_ties_across_samples"]
    # Each process gets every other sample; the second pads with the first sample again.
    split = NuScenesDetectionMetric(gt)
    split.update(records[rank::2])
    if rank == 1:
        split.update(records[:1])
    # The second process gives nothing at all.
    lopsided = NuScenesDetectionMetric(gt)
    if rank == 0:
        lopsided.update(records)
    figures = {
        name: {k: v.item() for k, v in metric.compute().items()}
        for name, metric in (("split", split), ("lopsided", lopsided))
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(figures))
    torch.distributed.destroy_process_group()


def test_distributed_sync(tmp_path):
    """Two processes (gloo): states are gathered, padding repeats count once, an empty process is fine."""
    torch.multiprocessing.spawn(
        _distributed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    gt = make_ground_truth(seed=0)
    records = prediction_sets(gt)["score_ties_across_samples"]
    reference = NuScenesDetectionMetric(gt)
    reference.update(records[0::2] + records[1::2])
    expected = {k: v.item() for k, v in reference.compute().items()}
    whole = NuScenesDetectionMetric(gt)
    whole.update(records)
    expected_whole = {k: v.item() for k, v in whole.compute().items()}
    for result in results:
        assert_same_figures(result["split"], expected)
        assert_same_figures(result["lopsided"], expected_whole)


def test_update_rejects_invalid_records(gt, predictions):
    metric = NuScenesDetectionMetric(gt)
    record = predictions["perfect_equal_scores"][0]
    with pytest.raises(KeyError, match="not in the"):
        metric.update([{**record, "sample_token": "unknown"}])
    with pytest.raises(ValueError, match="at most 500"):
        many = {k: (v if k == "sample_token" else np.repeat(v, 100, axis=0)) for k, v in record.items()}
        metric.update([many])
    with pytest.raises(ValueError, match="sizes must be > 0"):
        metric.update([{**record, "size": np.zeros_like(record["size"])}])
    with pytest.raises(ValueError, match="labels must index"):
        metric.update([{**record, "label": record["label"] + 10}])
    with pytest.raises(RuntimeError, match="before any prediction"):
        metric.compute()


def test_scores_must_be_probabilities(gt, predictions, tmp_path):
    """Raw logits as scores: the devkit's evaluation fails on them, so the metric, the submission writer and
    `make_prediction` refuse them, naming the sample and the score; scores of 0 and above 1 are fine."""
    records = predictions["jitter_all"]
    path = write_submission(records, tmp_path / "logits.json", use_camera=False, use_lidar=True)
    submission = json.loads(path.read_text())
    for boxes in submission["results"].values():
        for box in boxes:
            box["detection_score"] = math.log(box["detection_score"] / (1 - box["detection_score"]))
    path.write_text(json.dumps(submission))
    with pytest.raises(AssertionError):
        devkit_summary_of_file(gt, path)
    logits = [{**r, "score": np.log(r["score"] / (1 - r["score"]))} for r in records]
    metric = NuScenesDetectionMetric(gt)
    with pytest.raises(
        ValueError, match=r"sample sample000: box \d+ has score -[0-9.]+ .* in \[0, 1\], not logits"
    ):
        metric.update(logits)
    with pytest.raises(ValueError, match="not logits"):
        write_submission(logits, tmp_path / "refused.json", use_camera=False, use_lidar=True)
    with pytest.raises(ValueError, match="sample sample000: box 0 has score nan"):
        metric.update([{**records[0], "score": np.full(len(records[0]["label"]), np.nan)}])
    boxes = np.tile([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], (2, 1))
    with pytest.raises(ValueError, match="sample tok: box 1 has score -0.5"):
        make_prediction("tok", boxes, np.eye(4), [0, 0], [0.9, -0.5])
    scaled = [{**r, "score": np.where(r["score"] < 0.2, 0.0, 3 * r["score"])} for r in records]
    metric = NuScenesDetectionMetric(gt)
    metric.update(scaled)
    ours = {key: value.item() for key, value in metric.compute().items()}
    assert_same_figures(ours, flatten_summary(devkit_summary(gt, scaled, tmp_path)))


def test_make_prediction_from_lidar_boxes():
    lidar2global = np.eye(4)
    lidar2global[:3, :3] = Quaternion(axis=[0, 0, 1], radians=0.5).rotation_matrix
    lidar2global[:3, 3] = [100.0, 200.0, 1.0]
    boxes = torch.tensor(
        [[10.0, 0.0, 0.5, 4.0, 2.0, 1.5, 0.2, 1.0, 0.0], [5.0, 5.0, 0.0, 0.5, 0.5, 1.7, 0.0, 0.0, 0.1]]
    )
    record = make_prediction(
        "tok", boxes, torch.from_numpy(lidar2global), torch.tensor([0, 5]), torch.tensor([0.9, 0.3])
    )
    assert record["sample_token"] == "tok"
    np.testing.assert_allclose(
        record["translation"][0], [100 + 10 * np.cos(0.5), 200 + 10 * np.sin(0.5), 1.5], atol=1e-6
    )
    np.testing.assert_allclose(record["size"][0], [2.0, 4.0, 1.5])
    np.testing.assert_allclose(quaternions_to_yaw(record["rotation"]), [0.7, 0.5], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(record["velocity"], axis=1), [1.0, 0.1], atol=1e-6)
    assert [ATTRIBUTE_NAMES[i] for i in record["attribute"]] == ["vehicle.moving", "pedestrian.standing"]
    named = make_prediction("tok", boxes, lidar2global, [0, 5], [0.9, 0.3], attributes=["vehicle.parked", ""])
    assert named["attribute"].tolist() == [ATTRIBUTE_NAMES.index("vehicle.parked"), -1]
    with pytest.raises(ValueError, match="unknown attribute"):
        make_prediction("tok", boxes, lidar2global, [0, 5], [0.9, 0.3], attributes=["parked", ""])


def test_default_attributes():
    labels = np.array(
        [
            CLASSES.index(n)
            for n in ("car", "bus", "bus", "bicycle", "motorcycle", "pedestrian", "barrier", "traffic_cone")
        ]
    )
    velocity = np.array(
        [[0.1, 0.0], [1.0, 0.0], [0.0, 0.1], [0.3, 0.0], [0.0, 0.0], [0.2, 0.2], [3.0, 0.0], [0.0, 0.0]]
    )
    names = ["" if i < 0 else ATTRIBUTE_NAMES[i] for i in default_attributes(labels, velocity)]
    assert names == [
        "vehicle.parked",
        "vehicle.moving",
        "vehicle.stopped",
        "cycle.with_rider",
        "cycle.without_rider",
        "pedestrian.moving",
        "",
        "",
    ]


def test_geometry_matches_devkit():
    rng = np.random.default_rng(0)
    n = 2000
    centers = rng.uniform(-50, 50, (n, 3))
    sizes = rng.uniform(0.5, 5, (n, 3))
    rotations = np.array([Quaternion(q / np.linalg.norm(q)).elements for q in rng.normal(size=(n, 4))])
    points = centers + rng.uniform(-3, 3, (n, 3))
    expected = [
        bool(points_in_box(Box(c, s, Quaternion(r)), p[:, None])[0])
        for c, s, r, p in zip(centers, sizes, rotations, points, strict=True)
    ]
    assert points_in_boxes(points, box_corners(centers, sizes, rotations)).tolist() == expected
    assert 100 < sum(expected) < n - 100
    yaws = [np.arctan2(*(Quaternion(r).rotation_matrix[:, 0][[1, 0]])) for r in rotations]
    np.testing.assert_allclose(quaternions_to_yaw(rotations * 3.0), yaws, atol=1e-12)


def test_points_on_box_edges_like_devkit():
    """Points exactly on corners, edges and faces of boxes (and corners moved one ulp either way): inside
    or outside exactly as the devkit's `points_in_box` decides, also as bicycles in bicycle racks."""
    rng = np.random.default_rng(1)
    n = 150
    centers = rng.uniform(-500, 1500, (n, 3))
    sizes = rng.uniform(0.5, 8, (n, 3))
    rotations = np.array(
        [
            yaw_quaternion(a, tilt=t)
            for a, t in zip(rng.uniform(-3, 3, n), rng.choice([0, 0.1], n), strict=True)
        ]
    )
    rotations[: n // 3] = rng.normal(size=(n // 3, 4))  # not normalised
    corners = box_corners(centers, sizes, rotations)
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]
    faces = [(0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (2, 3, 7, 6), (0, 3, 7, 4), (1, 2, 6, 5)]
    points = [corners[:, :, c] for c in range(8)]
    points += [np.nextafter(corners[:, :, c], towards) for c in range(8) for towards in (-np.inf, np.inf)]
    points += [(corners[:, :, a] + corners[:, :, b]) / 2 for a, b in edges]
    points += [corners[:, :, list(face)].mean(axis=2) for face in faces]
    box = np.repeat(np.arange(n), len(points))
    points = np.stack(points, axis=1).reshape(-1, 3)
    expected = [
        bool(points_in_box(Box(centers[b], sizes[b], Quaternion(rotations[b])), p[:, None])[0])
        for b, p in zip(box, points, strict=True)
    ]
    assert points_in_boxes(points, corners[box]).tolist() == expected
    assert 0.2 < np.mean(expected) < 0.8
    # The same boxes as bicycle racks (one a sample) and the points as bicycles: dropped when in the rack.
    gt = small_ground_truth(
        centers,
        box,
        points,
        np.full(len(box), CLASSES.index("bicycle")),
        (np.arange(n), centers, sizes, rotations),
    )
    keep = gt.keep_mask(box, points, gt.label, CONFIG.class_range)
    assert keep.tolist() == [not inside for inside in expected]
