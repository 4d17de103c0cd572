"""Pictures of BEV predictions: points, ground truth and detections seen from above."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unikd.data.classes import CLASSES
from unikd.ops.boxes import bev_corners


def draw_boxes(ax, boxes: np.ndarray, color: str, linewidth: float = 1.0) -> None:
    corners_of_boxes = bev_corners(torch.from_numpy(boxes)).numpy()  # front-left, rear-left, rear-right, front-right
    for corners, box in zip(corners_of_boxes, boxes, strict=True):
        closed = np.vstack([corners, corners[:1]])
        ax.plot(closed[:, 0], closed[:, 1], color=color, linewidth=linewidth)
        front = (corners[0] + corners[3]) / 2  # heading tick from the centre to the front edge
        ax.plot([box[0], front[0]], [box[1], front[1]], color=color, linewidth=linewidth)


def save_bev_prediction(
    batch: dict,
    detections: list[dict],
    point_cloud_range: tuple[float, ...],
    path: str | Path,
    sample: int = 0,
    score_threshold: float = 0.3,
) -> Path:
    """Write a PNG of one sample: LiDAR points (grey), GT boxes (green), detections (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
    points = batch["points"][sample].detach().cpu().numpy()
    if len(points) > 60000:
        points = points[np.random.default_rng(0).choice(len(points), 60000, replace=False)]
    ax.scatter(points[:, 0], points[:, 1], s=0.2, c="0.6", linewidths=0)
    draw_boxes(ax, batch["gt_boxes"][sample].detach().cpu().numpy(), "tab:green", 1.5)
    det = detections[sample]
    keep = det["scores"] >= score_threshold
    boxes = det["boxes"][keep].detach().cpu().numpy()
    draw_boxes(ax, boxes, "tab:red", 1.0)
    for box, label, score in zip(boxes, det["labels"][keep].tolist(), det["scores"][keep].tolist(), strict=True):
        ax.text(box[0], box[1], f"{CLASSES[label]} {score:.2f}", fontsize=5, color="tab:red")
    x_min, y_min, _, x_max, y_max, _ = point_cloud_range
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(y_min, y_max)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(f"{batch['sample_token'][sample][:12]}  GT green, predictions red (score >= {score_threshold})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
