"""nuScenes detection submissions (results JSON): writing them from per-sample prediction records, reading them back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unikd.data.classes import CLASSES
from unikd.evaluation.predictions import ATTRIBUTE_NAMES, as_arrays, attribute_index, attribute_name

MAX_BOXES_PER_SAMPLE = 500
# Box fields the devkit reads (it takes a missing `detection_score` as -1, which its evaluation then refuses).
BOX_FIELDS = (
    "sample_token",
    "translation",
    "size",
    "rotation",
    "velocity",
    "detection_name",
    "detection_score",
    "attribute_name",
)


def submission_results(predictions: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Prediction records -> the submission's `results`: sample token -> list of box dicts, in record order."""
    results: dict[str, list[dict[str, Any]]] = {}
    for record in predictions:
        token = record["sample_token"]
        if token in results:
            raise ValueError(f"sample {token} appears in more than one prediction record")
        boxes = as_arrays(record, MAX_BOXES_PER_SAMPLE)
        results[token] = [
            {
                "sample_token": token,
                "translation": translation,
                "size": size,
                "rotation": rotation,
                "velocity": velocity,
                "detection_name": CLASSES[label],
                "detection_score": score,
                "attribute_name": attribute_name(attribute),
            }
            for translation, size, rotation, velocity, label, score, attribute in zip(
                boxes["translation"].tolist(),
                boxes["size"].tolist(),
                boxes["rotation"].tolist(),
                boxes["velocity"].tolist(),
                boxes["label"].tolist(),
                boxes["score"].tolist(),
                boxes["attribute"].tolist(),
                strict=True,
            )
        ]
    return results


def write_submission(
    predictions: Sequence[dict[str, Any]], path: str | Path, *, use_camera: bool, use_lidar: bool
) -> Path:
    """Write a nuScenes detection submission JSON (meta + results) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "use_camera": use_camera,
        "use_lidar": use_lidar,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    with open(path, "w") as file:
        json.dump({"meta": meta, "results": submission_results(predictions)}, file)
    return path


def read_submission(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a submission JSON -> (its meta, validated prediction records in the file's sample order).

    Refuses, naming the file, the sample and the box, what the devkit's loader and evaluation refuse
    or would read differently: no `results` object (sample token -> list of boxes) or no `meta`
    object, boxes lacking a field of `BOX_FIELDS` or under another sample's token, unknown class or
    attribute names, `num_pts` 0 (the devkit silently drops such boxes), and what prediction records
    may not hold (more than 500 boxes in a sample, negative or nan scores, sizes <= 0, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission {path} does not exist")
    try:
        with open(path) as file:
            data = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"submission {path} is not JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"submission {path} has no `results` object (sample token -> list of boxes)")
    if not isinstance(data.get("meta"), dict):
        raise ValueError(f"submission {path} has no `meta` object, which the devkit requires")
    try:
        records = [_read_record(token, boxes) for token, boxes in data["results"].items()]
    except ValueError as error:
        raise ValueError(f"submission {path}: {error}") from None
    return data["meta"], records


def _read_record(token: str, boxes: Any) -> dict[str, Any]:
    """One sample's submission boxes -> its validated prediction record."""
    if not isinstance(boxes, list):
        raise ValueError(f"sample {token}: expected a list of boxes, got {type(boxes).__name__}")
    for index, box in enumerate(boxes):
        missing = [key for key in BOX_FIELDS if key not in box] if isinstance(box, dict) else list(BOX_FIELDS)
        if missing:
            raise ValueError(f"sample {token}: box {index} lacks {', '.join(missing)}")
        if box["sample_token"] != token:
            raise ValueError(f"sample {token}: box {index} has sample_token {box['sample_token']!r}")
        if box["detection_name"] not in CLASSES:
            raise ValueError(
                f"sample {token}: box {index} has unknown detection_name {box['detection_name']!r}"
            )
        if box["attribute_name"] not in ("", *ATTRIBUTE_NAMES):
            raise ValueError(
                f"sample {token}: box {index} has unknown attribute_name {box['attribute_name']!r}"
            )
        if box.get("num_pts") == 0:
            raise ValueError(f"sample {token}: box {index} has num_pts 0, for which the devkit drops it")
    record = {
        "sample_token": token,
        "label": np.array([CLASSES.index(box["detection_name"]) for box in boxes], dtype=np.int64),
        "attribute": np.array([attribute_index(box["attribute_name"]) for box in boxes], dtype=np.int64),
    }
    try:
        record["score"] = np.array([float(box["detection_score"]) for box in boxes], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"sample {token}: every box's detection_score must be a number") from None
    for key, width in (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2)):
        try:
            values = np.array([box[key] for box in boxes], dtype=np.float64).reshape(-1, width)
        except (TypeError, ValueError):
            values = None
        if values is None or len(values) != len(boxes):
            raise ValueError(f"sample {token}: every box's {key} must be {width} numbers")
        record[key] = values
    return {"sample_token": token, **as_arrays(record, MAX_BOXES_PER_SAMPLE)}
