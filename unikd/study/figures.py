"""The study's figure, report.png: validation mAP per epoch of every student run, one validation
sample seen from above with the plain and the distilled student's boxes, and (for camera students)
the sample's camera images with the distilled student's boxes projected into them."""

from __future__ import annotations

from pathlib import Path

import torch

from unikd.data.classes import CAMERAS
from unikd.data.collate import collate_batch
from unikd.exps.distill_exp import load_exp_class
from unikd.exps.options import parse_options
from unikd.utils.visualization import plot_bev, plot_camera

ROLE_COLORS = {"plain": "tab:blue", "distilled": "tab:red"}


def predict_sample(
    exp_file: Path, checkpoints: list[Path], data_root: Path, options: list[str], sample: int = 0
) -> tuple[dict, list[dict], tuple[float, ...]]:
    """One validation sample of the experiment as a batch, each checkpoint's detections on it (loaded
    in turn into the experiment), and the experiment's point cloud range."""
    exp = load_exp_class(exp_file)(batch_size_per_device=1, data_root=str(data_root), exp_options=parse_options(options))
    exp.eval()
    batch = collate_batch([exp.dataset(exp.val_split, training=False)[sample]])
    detections = []
    for checkpoint in checkpoints:
        exp.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
        with torch.no_grad():
            detections.append(exp.detect(batch)[0])
    return batch, detections, tuple(exp.model_config["point_cloud_range"])


def save_report_figure(
    path: Path,
    curves: list[tuple[str, int, list[tuple[int, float]]]],
    batch: dict,
    detections: dict[str, dict],
    point_cloud_range: tuple[float, ...],
    score_threshold: float,
) -> Path:
    """Write report.png. `curves`: (role, seed, [(epoch, mAP)]) per student run; `detections`: the plain
    and distilled student's detections on `batch`'s one sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cameras = "imgs" in batch
    fig = plt.figure(figsize=(18, 13 if cameras else 6.5), dpi=100)
    grid = fig.add_gridspec(3 if cameras else 1, 3, height_ratios=[2, 1, 1] if cameras else [1])
    ax = fig.add_subplot(grid[0, 0])
    for role, seed, points in curves:
        epochs, values = zip(*points, strict=True) if points else ((), ())
        ax.plot(epochs, values, marker="o", color=ROLE_COLORS[role], label=f"{role} seed {seed}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP")
    ax.set_title("validation mAP per epoch")
    ax.legend()
    for column, role in enumerate(("plain", "distilled"), start=1):
        title = f"{role} student: GT green, predictions red (score >= {score_threshold})"
        plot_bev(fig.add_subplot(grid[0, column]), batch, detections[role], point_cloud_range, 0, score_threshold, title)
    if cameras:
        for camera, name in enumerate(CAMERAS):
            ax = fig.add_subplot(grid[1 + camera // 3, camera % 3])
            plot_camera(ax, batch, detections["distilled"], camera, 0, score_threshold, f"{name}: distilled student")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
