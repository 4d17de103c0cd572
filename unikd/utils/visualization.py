"""Pictures of predictions: points, ground truth and detections seen from above, and boxes projected
into the camera images (through the batch's `lidar2cam`, `cam2img`, `img_aug`, `bda`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unikd.data.classes import CLASSES
from unikd.data.nuscenes_dataset import IMAGENET_MEAN, IMAGENET_STD
from unikd.ops.boxes import bev_corners

# The 12 edges of a box between its corners: 0-3 the bottom face (bev_corners' order), 4-7 the top face.
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def draw_boxes(ax, boxes: np.ndarray, color: str, linewidth: float = 1.0) -> None:
    corners_of_boxes = bev_corners(torch.from_numpy(boxes)).numpy()  # front-left, rear-left, rear-right, front-right
    for corners, box in zip(corners_of_boxes, boxes, strict=True):
        closed = np.vstack([corners, corners[:1]])
        ax.plot(closed[:, 0], closed[:, 1], color=color, linewidth=linewidth)
        front = (corners[0] + corners[3]) / 2  # heading tick from the centre to the front edge
        ax.plot([box[0], front[0]], [box[1], front[1]], color=color, linewidth=linewidth)


def confident(detection: dict, score_threshold: float) -> tuple[np.ndarray, list[int], list[float]]:
    """(boxes, labels, scores) of one sample's detections scoring at least `score_threshold`."""
    keep = detection["scores"] >= score_threshold
    boxes = detection["boxes"][keep].detach().cpu().numpy()
    return boxes, detection["labels"][keep].tolist(), detection["scores"][keep].tolist()


def plot_bev(
    ax,
    batch: dict,
    detection: dict,
    point_cloud_range: tuple[float, ...],
    sample: int = 0,
    score_threshold: float = 0.3,
    title: str | None = None,
) -> None:
    """One sample seen from above on `ax`: LiDAR points (grey), GT boxes (green), detections (red)."""
    points = batch["points"][sample].detach().cpu().numpy()
    if len(points) > 60000:
        points = points[np.random.default_rng(0).choice(len(points), 60000, replace=False)]
    ax.scatter(points[:, 0], points[:, 1], s=0.2, c="0.6", linewidths=0)
    draw_boxes(ax, batch["gt_boxes"][sample].detach().cpu().numpy(), "tab:green", 1.5)
    boxes, labels, scores = confident(detection, score_threshold)
    draw_boxes(ax, boxes, "tab:red", 1.0)
    for box, label, score in zip(boxes, labels, scores, strict=True):
        ax.text(box[0], box[1], f"{CLASSES[label]} {score:.2f}", fontsize=5, color="tab:red")
    x_min, y_min, _, x_max, y_max, _ = point_cloud_range
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(y_min, y_max)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title or f"{batch['sample_token'][sample][:12]}  GT green, predictions red (score >= {score_threshold})")


def box_corners_3d(boxes: np.ndarray) -> np.ndarray:
    """Corners [M, 8, 3] of boxes [M, >=7]: the bottom face in `bev_corners` order, then the top face."""
    bev = bev_corners(torch.from_numpy(boxes)).numpy()  # [M, 4, 2]
    bottom = boxes[:, 2:3] - boxes[:, 5:6] / 2
    top = boxes[:, 2:3] + boxes[:, 5:6] / 2
    z = np.concatenate([np.repeat(bottom, 4, axis=1), np.repeat(top, 4, axis=1)], axis=1)
    return np.concatenate([np.concatenate([bev, bev], axis=1), z[..., None]], axis=-1)


def project_to_image(points: np.ndarray, batch: dict, sample: int, camera: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [N, 2] in the batch's (augmented) image of `camera` for points [N, 3] in the batch's
    (augmented) LiDAR frame, and the depth [N] in front of the camera (a point behind it has depth <= 0)."""

    def matrix(key: str, *index: int) -> np.ndarray:
        return batch[key][(sample, *index)].detach().cpu().double().numpy()

    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1).T  # [4, N]
    in_camera = matrix("lidar2cam", camera) @ np.linalg.inv(matrix("bda")) @ homogeneous
    depth = in_camera[2]
    pixels = (matrix("cam2img", camera) @ in_camera)[:2] / np.maximum(depth, 1e-6)
    original = np.vstack([pixels, np.zeros(len(points)), np.ones(len(points))])
    return (matrix("img_aug", camera) @ original)[:2].T, depth


def plot_camera(
    ax, batch: dict, detection: dict, camera: int, sample: int = 0, score_threshold: float = 0.3, title: str = ""
) -> None:
    """The batch's image of `camera` (as the network saw it) with the detections' boxes drawn into it."""
    image = batch["imgs"][sample, camera].detach().cpu().permute(1, 2, 0).double().numpy()
    ax.imshow(np.clip(image * IMAGENET_STD + IMAGENET_MEAN, 0, 1))
    boxes, _, _ = confident(detection, score_threshold)
    for corners in box_corners_3d(boxes):
        pixels, depth = project_to_image(corners, batch, sample, camera)
        if (depth <= 0.1).any():  # partly behind the camera
            continue
        for a, b in BOX_EDGES:
            ax.plot(pixels[[a, b], 0], pixels[[a, b], 1], color="tab:red", linewidth=0.8)
    height, width = image.shape[:2]
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)


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
    plot_bev(ax, batch, detections[sample], point_cloud_range, sample, score_threshold)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
