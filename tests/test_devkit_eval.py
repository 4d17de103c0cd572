"""End to end on the synthetic nuScenes-format dataset: the metric and the ground-truth preparation against
the devkit's `DetectionEval` and `load_gt`, and the devkit backend itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_gt
from nuscenes.eval.detection.data_classes import DetectionBox
from pyquaternion import Quaternion

from unikd.benchmarks.metric import benchmark_metric
from unikd.data.classes import CLASSES
from unikd.evaluation import (
    ATTRIBUTE_NAMES,
    GroundTruth,
    NuScenesDetectionMetric,
    flatten_summary,
    prepare_ground_truth,
    write_metrics_summary,
    write_submission,
)
from unikd.evaluation.devkit_eval import evaluate_with_devkit
from unikd.evaluation.ground_truth import ground_truth_cache_path
from unikd.evaluation.predictions import attribute_index

VERSION, EVAL_SET = "v1.0-mini", "mini_val"
CONFIG = config_factory("detection_cvpr_2019")
BICYCLE, MOTORCYCLE = CLASSES.index("bicycle"), CLASSES.index("motorcycle")


@pytest.fixture(scope="module")
def nusc(synthetic_root) -> NuScenes:
    return NuScenes(version=VERSION, dataroot=str(synthetic_root), verbose=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gt_cache")


@pytest.fixture(scope="module")
def gt(nusc, cache_dir) -> GroundTruth:
    return prepare_ground_truth(nusc, EVAL_SET, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def devkit_gt(nusc):
    """The devkit's own ground truth (`load_gt`), unfiltered."""
    return load_gt(nusc, EVAL_SET, DetectionBox)


@pytest.fixture(scope="module")
def base_records(devkit_gt) -> list[dict]:
    """The devkit's ground truth as prediction records (random scores)."""
    rng = np.random.default_rng(0)
    records = []
    for token in devkit_gt.sample_tokens:
        boxes = devkit_gt[token]
        records.append(
            {
                "sample_token": token,
                "translation": np.array([b.translation for b in boxes]).reshape(-1, 3),
                "size": np.array([b.size for b in boxes]).reshape(-1, 3),
                "rotation": np.array([b.rotation for b in boxes]).reshape(-1, 4),
                "velocity": np.nan_to_num(np.array([b.velocity for b in boxes]).reshape(-1, 2)),
                "label": np.array([CLASSES.index(b.detection_name) for b in boxes], dtype=np.int64),
                "score": rng.uniform(0.1, 1.0, len(boxes)),
                "attribute": np.array([attribute_index(b.attribute_name) for b in boxes], dtype=np.int64),
            }
        )
    return records


def edit(records: list[dict], seed: int, fn) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        fn({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in r.items()}, rng) for r in records
    ]


def take(record: dict, index) -> dict:
    return {k: (v if k == "sample_token" else v[index]) for k, v in record.items()}


def cat(a: dict, b: dict) -> dict:
    return {k: (a[k] if k == "sample_token" else np.concatenate([a[k], b[k]])) for k in a}


def jitter(r: dict, g: np.random.Generator, position=0.0, size=0.0, yaw=0.0, velocity=0.0) -> dict:
    n = len(r["label"])
    r["translation"] = r["translation"] + g.normal(0, position, (n, 3))
    r["size"] = r["size"] * np.exp(g.normal(0, size, (n, 3)))
    turns = [Quaternion(axis=[0, 0, 1], radians=a) for a in g.normal(0, yaw, n)]
    r["rotation"] = np.array(
        [(t * Quaternion(q)).elements for t, q in zip(turns, r["rotation"], strict=True)]
    )
    r["rotation"] = r["rotation"].reshape(-1, 4)
    r["velocity"] = r["velocity"] + g.normal(0, velocity, (n, 2))
    r["score"] = g.uniform(0.05, 1.0, n)
    return r


def prediction_sets(records: list[dict], gt: GroundTruth) -> dict[str, list[dict]]:
    sets = {"perfect": records}
    sets["jittered"] = edit(
        records, 1, lambda r, g: jitter(r, g, position=0.6, size=0.15, yaw=0.4, velocity=0.8)
    )
    sets["missing"] = edit(
        records, 2, lambda r, g: take(jitter(r, g, position=0.3), g.random(len(r["label"])) < 0.5)
    )

    def false_positives(r, g):
        n = int(g.integers(10, 80))
        ego = gt.ego_translation[gt.sample_index[r["sample_token"]]]
        extra = {
            "sample_token": r["sample_token"],
            "translation": ego + g.uniform(-55, 55, (n, 3)),
            "size": g.uniform(0.3, 5, (n, 3)),
            "rotation": np.array(
                [Quaternion(axis=[0, 0, 1], radians=a).elements for a in g.uniform(-3, 3, n)]
            ),
            "velocity": g.normal(0, 2, (n, 2)),
            "label": g.integers(0, len(CLASSES), n),
            "score": g.uniform(0, 0.8, n),
            "attribute": g.integers(-1, len(ATTRIBUTE_NAMES), n),
        }
        return cat(jitter(r, g, position=0.5), extra)

    sets["false_positives"] = edit(records, 3, false_positives)
    sets["duplicates"] = edit(
        records, 4, lambda r, g: cat(jitter(dict(r), g, position=0.2), jitter(r, g, position=0.8))
    )

    def confuse(r, g):
        r = jitter(r, g, position=0.3)
        flip = g.random(len(r["label"])) < 0.3
        r["label"] = np.where(flip, g.integers(0, len(CLASSES), len(r["label"])), r["label"])
        return r

    sets["class_confusion"] = edit(records, 5, confuse)
    sets["wrong_attributes"] = edit(
        records, 6, lambda r, g: {**r, "attribute": g.integers(-1, len(ATTRIBUTE_NAMES), len(r["label"]))}
    )
    sets["empty_samples"] = edit(
        records, 7, lambda r, g: take(jitter(r, g, position=0.3), slice(0, 0 if g.random() < 0.4 else None))
    )

    def out_of_range(r, g):
        r = jitter(r, g, position=0.2)
        ego = gt.ego_translation[gt.sample_index[r["sample_token"]]]
        direction = r["translation"][:, :2] - ego[:2]
        direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-6)
        far = g.random(len(r["label"])) < 0.5
        r["translation"][far, :2] = ego[:2] + direction[far] * g.uniform(28, 55, (int(far.sum()), 1))
        return r

    sets["out_of_range"] = edit(records, 8, out_of_range)

    def in_bike_racks(r, g):
        r = jitter(r, g, position=0.1)
        racks = np.flatnonzero(gt.rack_sample == gt.sample_index[r["sample_token"]])
        n = 3 * len(racks)
        extra = {
            "sample_token": r["sample_token"],
            "translation": np.repeat(gt.rack_translation[racks], 3, axis=0) + g.normal(0, 0.6, (n, 3)),
            "size": np.tile([0.6, 1.8, 1.2], (n, 1)),
            "rotation": np.repeat(gt.rack_rotation[racks], 3, axis=0),
            "velocity": np.zeros((n, 2)),
            "label": g.choice([BICYCLE, MOTORCYCLE], n),
            "score": g.uniform(0.2, 1.0, n),
            "attribute": np.full(n, attribute_index("cycle.without_rider")),
        }
        return cat(r, extra)

    sets["bicycles_in_racks"] = edit(records, 9, in_bike_racks)
    sets["score_ties"] = edit(
        records,
        10,
        lambda r, g: {**jitter(r, g, position=0.7), "score": g.choice([0.3, 0.6], len(r["label"]))},
    )
    return sets


def figures_equal(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert abs(ours[key] - value) <= 1e-6, (key, ours[key], value)


def test_ground_truth_matches_devkit(nusc, gt, devkit_gt):
    assert gt.sample_tokens == tuple(devkit_gt.sample_tokens)
    add_center_dist(nusc, devkit_gt)
    for index, token in enumerate(gt.sample_tokens):
        boxes = devkit_gt[token]
        mask = gt.box_sample == index
        np.testing.assert_array_equal(
            gt.translation[mask], np.array([b.translation for b in boxes]).reshape(-1, 3)
        )
        np.testing.assert_array_equal(gt.size[mask], np.array([b.size for b in boxes]).reshape(-1, 3))
        np.testing.assert_array_equal(gt.rotation[mask], np.array([b.rotation for b in boxes]).reshape(-1, 4))
        np.testing.assert_array_equal(gt.velocity[mask], np.array([b.velocity for b in boxes]).reshape(-1, 2))
        assert [CLASSES[i] for i in gt.label[mask]] == [b.detection_name for b in boxes]
        assert ["" if i < 0 else ATTRIBUTE_NAMES[i] for i in gt.attribute[mask]] == [
            b.attribute_name for b in boxes
        ]
        assert gt.num_pts[mask].tolist() == [b.num_pts for b in boxes]
        ego = np.array([b.ego_translation for b in boxes]).reshape(-1, 3)
        np.testing.assert_array_equal(gt.translation[mask] - gt.ego_translation[index], ego)
    # The devkit's filtering keeps exactly the same boxes.
    keep = gt.keep_mask(gt.box_sample, gt.translation, gt.label, CONFIG.class_range, gt.num_pts)
    filtered = filter_eval_boxes(nusc, devkit_gt, CONFIG.class_range)
    for index, token in enumerate(gt.sample_tokens):
        kept = gt.translation[keep & (gt.box_sample == index)]
        np.testing.assert_array_equal(kept, np.array([b.translation for b in filtered[token]]).reshape(-1, 3))
    # The dataset exercises every filter: range, no points, bicycles in racks.
    assert len(gt.rack_sample) > 0 and (gt.num_pts == 0).any() and (~keep & (gt.num_pts > 0)).any()
    racked = ~keep & np.isin(gt.label, [BICYCLE, MOTORCYCLE]) & (gt.num_pts > 0)
    assert racked.any()


def test_ground_truth_cache(nusc, gt, cache_dir, synthetic_root, monkeypatch):
    path = ground_truth_cache_path(VERSION, str(synthetic_root), EVAL_SET, cache_dir)
    assert path.exists()

    class NoScenes(NuScenes):
        def __init__(self, *args, **kwargs):
            raise AssertionError("a cached ground truth must not load the dataset")

    # From (version, dataroot) with a cached file: no NuScenes object is built, the content is equal.
    with monkeypatch.context() as patch:
        patch.setattr("unikd.evaluation.ground_truth.NuScenes", NoScenes)
        loaded = prepare_ground_truth((VERSION, str(synthetic_root)), EVAL_SET, cache_dir=cache_dir)
    for name in GroundTruth.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(gt, name))
    assert ground_truth_cache_path(VERSION, str(synthetic_root), "mini_train", cache_dir) != path
    with pytest.raises(ValueError, match="needs a v1.0-trainval dataset"):
        prepare_ground_truth(nusc, "val", cache_dir=cache_dir)


def test_metric_matches_detection_eval(nusc, gt, base_records, tmp_path):
    sets = prediction_sets(base_records, gt)
    for name, records in sets.items():
        path = write_submission(records, tmp_path / f"{name}.json", use_camera=False, use_lidar=True)
        theirs = evaluate_with_devkit(nusc, path, EVAL_SET, tmp_path / name)
        metric = NuScenesDetectionMetric(gt)
        for start in range(0, len(records), 3):
            metric.update(records[start : start + 3])
        ours = {key: value.item() for key, value in metric.compute().items()}
        figures_equal(ours, flatten_summary(theirs))
    assert len(sets) == 11


def test_metrics_summary_file_like_devkit(nusc, gt, base_records, tmp_path):
    records = prediction_sets(base_records, gt)["jittered"]
    path = write_submission(records, tmp_path / "submission.json", use_camera=True, use_lidar=False)
    returned = evaluate_with_devkit((VERSION, nusc.dataroot), path, EVAL_SET, tmp_path / "devkit")
    devkit_file = json.loads((tmp_path / "devkit" / "metrics_summary.json").read_text())
    assert devkit_file["meta"] == {**json.loads(path.read_text())["meta"]} == returned["meta"]
    metric = NuScenesDetectionMetric(gt)
    metric.update(records)
    metric.compute()
    ours = json.loads(
        write_metrics_summary(metric.summary, tmp_path / "ours.json", meta=devkit_file["meta"]).read_text()
    )
    assert list(ours) == list(devkit_file)
    assert ours["cfg"] == devkit_file["cfg"] and ours["meta"] == devkit_file["meta"]
    assert list(ours["label_aps"]["car"]) == list(devkit_file["label_aps"]["car"])
    figures_equal(flatten_summary(ours), flatten_summary(devkit_file))


def test_benchmark_metric(synthetic_root, base_records, gt):
    records = prediction_sets(base_records, gt)["false_positives"]
    result = benchmark_metric(synthetic_root, VERSION, EVAL_SET, records)
    assert result["max_abs_diff"] <= 1e-6
    assert (
        result["ours_s"] > 0
        and result["devkit_s"] > 0
        and result["speedup"] == result["devkit_s"] / result["ours_s"]
    )
