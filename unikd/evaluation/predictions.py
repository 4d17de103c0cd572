"""Per-sample prediction records in the nuScenes global frame, shared by both evaluation backends.

A record is a dict with `sample_token` and, for K boxes (numpy arrays or torch tensors):
translation [K, 3], size [K, 3] (w, l, h), rotation [K, 4] (w, x, y, z), velocity [K, 2],
label [K] (index into `CLASSES`), score [K] and, optionally, attribute [K] (index into
`ATTRIBUTE_NAMES`, -1 for none, or names; missing means `default_attributes`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unikd.data.classes import CLASSES
from unikd.data.nuscenes_boxes import lidar_boxes_to_global

# The devkit's attribute names, in its order.
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "pedestrian.moving",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "cycle.with_rider",
    "cycle.without_rider",
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
)
NO_ATTRIBUTE = -1

# Speed (m/s) above which a box is taken to be moving when choosing its default attribute.
MOVING_SPEED = 0.2
_VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle")
_CYCLES = ("motorcycle", "bicycle")


def _attribute_table(moving: bool) -> np.ndarray:
    """Default attribute index per class for moving or still boxes."""
    names = {
        "pedestrian": "pedestrian.moving" if moving else "pedestrian.standing",
        "traffic_cone": "",
        "barrier": "",
    }
    for name in _VEHICLES:
        still = "vehicle.stopped" if name == "bus" else "vehicle.parked"
        names[name] = "vehicle.moving" if moving else still
    for name in _CYCLES:
        names[name] = "cycle.with_rider" if moving else "cycle.without_rider"
    return np.array([attribute_index(names[name]) for name in CLASSES], dtype=np.int64)


def attribute_index(name: str) -> int:
    """Attribute name ('' for none) -> index into `ATTRIBUTE_NAMES` (`NO_ATTRIBUTE` for none)."""
    if name == "":
        return NO_ATTRIBUTE
    if name not in ATTRIBUTE_NAMES:
        raise ValueError(f"unknown attribute {name!r}; expected '' or one of {ATTRIBUTE_NAMES}")
    return ATTRIBUTE_NAMES.index(name)


def attribute_name(index: int) -> str:
    """Index into `ATTRIBUTE_NAMES` (`NO_ATTRIBUTE` for none) -> attribute name ('' for none)."""
    return "" if index == NO_ATTRIBUTE else ATTRIBUTE_NAMES[index]


_MOVING = _attribute_table(moving=True)
_STILL = _attribute_table(moving=False)


def default_attributes(labels: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """Common-practice attribute per box from its class and speed.

    Moving (speed > 0.2 m/s): vehicles 'vehicle.moving', cycles 'cycle.with_rider', pedestrians
    'pedestrian.moving'. Still: buses 'vehicle.stopped', other vehicles 'vehicle.parked', cycles
    'cycle.without_rider', pedestrians 'pedestrian.standing'. Cones and barriers have none.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    speed = np.linalg.norm(np.asarray(velocity, dtype=np.float64).reshape(-1, 2), axis=1)
    return np.where(speed > MOVING_SPEED, _MOVING[labels], _STILL[labels])


def make_prediction(
    sample_token: str,
    boxes: np.ndarray | torch.Tensor,
    lidar2global: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor,
    attributes: np.ndarray | torch.Tensor | None = None,
) -> dict[str, Any]:
    """Build a prediction record from [K, 9] key-frame LiDAR boxes and the sample's LiDAR -> global matrix."""
    fields = lidar_boxes_to_global(_numpy(boxes), _numpy(lidar2global))
    labels = _numpy(labels).astype(np.int64).reshape(-1)
    scores = _numpy(scores).astype(np.float64).reshape(-1)
    check_scores(sample_token, scores)
    if attributes is None:
        attributes = default_attributes(labels, fields["velocity"])
    return {
        "sample_token": sample_token,
        **fields,
        "label": labels,
        "score": scores,
        "attribute": _attribute_indices(attributes, len(labels)),
    }


def check_scores(sample_token: str, scores: np.ndarray) -> None:
    """Refuse the scores that the devkit's evaluation refuses, nan and negative ones, and infinite ones.

    The devkit asserts that no score is nan when it reads a submission, and that the confidences it
    interpolates along recall are descending; its padding past the highest recall reached is 0, so
    negative scores (raw logits) break that assertion, and where it happens to hold, its TP errors
    count the recall points of negative confidence as never reached. Infinite scores are no
    probabilities and standard JSON cannot hold them. Scores above 1 are accepted, as the devkit
    accepts them (only their order matters).
    """
    bad = np.flatnonzero(~np.isfinite(scores) | (scores < 0))
    if len(bad):
        raise ValueError(
            f"sample {sample_token}: box {bad[0]} has score {float(scores[bad[0]])} ({len(bad)} of the "
            f"{len(scores)} scores are negative, nan or infinite); detection scores must be probabilities "
            "in [0, 1], not logits (apply a sigmoid): the nuScenes devkit refuses negative and nan scores"
        )


def as_arrays(record: dict[str, Any], max_boxes: int) -> dict[str, np.ndarray]:
    """Validate a record and return its fields as float64 / int64 numpy arrays (attribute as indices)."""
    token = record["sample_token"]
    label = _numpy(record["label"]).astype(np.int64).reshape(-1)
    count = len(label)
    if count > max_boxes:
        raise ValueError(f"sample {token}: {count} boxes, the devkit allows at most {max_boxes} per sample")
    out = {"label": label}
    for key, width in (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2)):
        value = _numpy(record[key]).astype(np.float64)
        if value.size != count * width:
            raise ValueError(f"sample {token}: {key} has shape {value.shape}, expected ({count}, {width})")
        out[key] = value.reshape(count, width)
    out["score"] = _numpy(record["score"]).astype(np.float64).reshape(-1)
    if len(out["score"]) != count:
        raise ValueError(f"sample {token}: {len(out['score'])} scores for {count} boxes")
    if "attribute" in record:
        out["attribute"] = _attribute_indices(record["attribute"], count)
    else:
        out["attribute"] = default_attributes(label, out["velocity"])
    if count and (label.min() < 0 or label.max() >= len(CLASSES)):
        raise ValueError(f"sample {token}: labels must index CLASSES (0..{len(CLASSES) - 1}), got {label}")
    check_scores(token, out["score"])
    for key in ("translation", "size", "rotation"):
        if not np.all(np.isfinite(out[key])):
            raise ValueError(f"sample {token}: {key} must be finite")
    if np.any(out["size"] <= 0):
        raise ValueError(f"sample {token}: box sizes must be > 0, as the devkit requires")
    return out


def _attribute_indices(attributes: Any, count: int) -> np.ndarray:
    values = _numpy(attributes).reshape(-1)
    if values.dtype.kind in "USO":
        values = np.array([attribute_index(str(name)) for name in values], dtype=np.int64)
    values = values.astype(np.int64)
    if len(values) != count:
        raise ValueError(f"{len(values)} attributes for {count} boxes")
    if count and (values.min() < NO_ATTRIBUTE or values.max() >= len(ATTRIBUTE_NAMES)):
        raise ValueError(f"attribute indices must be in [-1, {len(ATTRIBUTE_NAMES) - 1}], got {values}")
    return values


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.double() if value.is_floating_point() else value).numpy()
    return np.asarray(value)
