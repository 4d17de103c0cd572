"""Comparison of a converted model with the answers of its source framework (parity fixtures): the
relative-error check every parity test uses, and the level-by-level and box comparison of the mmdet3d
CenterPoint and UniDistill LiDAR tests (voxels, each level at fixed cells, head maps, decoded boxes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from unikd.data.classes import CLASSES


def with_overrides(config: dict, overrides: Mapping[str, Any] | None) -> dict:
    """`config` with the value of each dotted path of `overrides` set (in place; returned)."""
    for path, value in (overrides or {}).items():
        *parents, leaf = path.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> None:
    scale = theirs.abs().max().clamp(min=1e-6)
    error = (ours - theirs).abs().max() / scale
    assert error < 1e-4, f"{name}: relative error {error:.2e}"


def at_cells(maps: torch.Tensor, cells: torch.Tensor, stride: int, width: int) -> torch.Tensor:
    rows, cols = cells // width // stride, cells % width // stride
    return maps[0][:, rows, cols]


def by_label_and_place(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.lexsort((np.round(boxes[:, 1], 2), np.round(boxes[:, 0], 2), labels))


def assert_levels_match(outputs: dict, fixture: dict, head_names: Mapping[str, str] | None = None) -> None:
    """Voxels (in coordinate order), sparse encoder, backbone levels, neck and every head map (at the
    fixture's cells, the source's head names renamed by `head_names`) within 1e-4 relative."""
    head_names = head_names or {}
    voxels = outputs["voxel_encoder"]
    order_ours = np.lexsort(voxels.coords.numpy().T[::-1])
    order_theirs = np.lexsort(fixture["voxel_coords"].numpy().T[::-1])
    assert torch.equal(voxels.coords[order_ours].int(), fixture["voxel_coords"][order_theirs].int())
    assert_close(voxels.features[order_ours], fixture["voxel_features"][order_theirs], "voxel_encoder")

    cells, width = fixture["cells"], outputs["middle_encoder"].shape[-1]
    assert_close(at_cells(outputs["middle_encoder"], cells, 1, width), fixture["middle_encoder"], "middle_encoder")
    for level, (ours, theirs, stride) in enumerate(
        zip(outputs["backbone"], fixture["backbone"], fixture["backbone_strides"], strict=True)
    ):
        assert_close(at_cells(ours, cells, stride, width), theirs, f"backbone[{level}]")
    assert_close(at_cells(outputs["neck"], cells, 1, width), fixture["neck"], "neck")
    for task, (ours, theirs) in enumerate(zip(outputs["head"], fixture["head"], strict=True)):
        for name, maps in theirs.items():
            assert_close(at_cells(ours[head_names.get(name, name)], cells, 1, width), maps, f"head[{task}].{name}")


def assert_boxes_match(detections: dict, their_boxes: np.ndarray, fixture: dict, min_count: int) -> None:
    """The decoded boxes, scores and labels equal the source's (`their_boxes` in unikd's convention),
    both sides in the order (label, x, y) so that equal scores cannot pair different boxes."""
    ours = np.concatenate([detections["boxes"].numpy(), detections["scores"].numpy()[:, None]], axis=1)
    theirs = np.concatenate([their_boxes, fixture["scores"].numpy()[:, None]], axis=1)
    our_labels = detections["labels"].numpy()
    their_labels = np.array([CLASSES.index(fixture["class_names"][label]) for label in fixture["labels"]])
    assert len(ours) == len(theirs) > min_count
    ours, our_labels = ours[by_label_and_place(ours, our_labels)], np.sort(our_labels)
    theirs, their_labels = theirs[by_label_and_place(theirs, their_labels)], np.sort(their_labels)
    assert our_labels.tolist() == their_labels.tolist()
    np.testing.assert_allclose(ours[:, :6], theirs[:, :6], atol=1e-3)
    assert np.abs(np.angle(np.exp(1j * (ours[:, 6] - theirs[:, 6])))).max() < 1e-3
    np.testing.assert_allclose(ours[:, 7:], theirs[:, 7:], atol=1e-3, rtol=1e-4)
