"""Batching of dataset items with variable numbers of points and boxes."""

from __future__ import annotations

import torch

LIST_KEYS = ("points", "gt_boxes", "gt_labels", "sample_token")
STACK_KEYS = ("imgs", "cam2img", "lidar2cam", "img_aug", "bda", "lidar2global", "gt_masks_bev")


def collate_batch(items: list[dict]) -> dict:
    """Lists for per-sample variable-size entries, stacked tensors for the rest (see ARCHITECTURE.md)."""
    batch: dict = {key: [item[key] for item in items] for key in LIST_KEYS if key in items[0]}
    for key in STACK_KEYS:
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.int64)
    return batch
