"""Writing a nuScenes detection submission (results JSON) from per-sample prediction records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unikd.data.classes import CLASSES
from unikd.evaluation.predictions import as_arrays, attribute_name

MAX_BOXES_PER_SAMPLE = 500


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
