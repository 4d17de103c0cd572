"""The study's figure, report.png: the paired plots of mAP and NDS (one line per seed from the plain to
the distilled student, per variant), validation mAP per epoch of every student run, one validation
sample seen from above with the plain and the distilled student's boxes, and (for camera students)
the sample's camera images with the distilled student's boxes projected into them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from unikd.data.classes import CAMERAS
from unikd.data.collate import collate_batch
from unikd.exps.exp_files import load_exp_class
from unikd.exps.options import parse_options
from unikd.utils.visualization import plot_bev, plot_camera

PLAIN_COLOR = "tab:blue"
DISTILLED_COLORS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def predict_sample(
    exp_file: Path, checkpoints: list[Path], data_root: Path, options: list[str], sample: int = 0
) -> tuple[dict, list[dict], tuple[float, ...]]:
    """One validation sample of the experiment as a batch, each checkpoint's detections on it (loaded
    in turn into the experiment), and the experiment's point cloud range."""
    exp = load_exp_class(exp_file)(batch_size_per_device=1, data_root=str(data_root), exp_options=parse_options(options))
    exp.eval()
    batch = collate_batch([exp.datamodule.val_dataset()[sample]])
    detections = []
    for checkpoint in checkpoints:
        exp.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
        with torch.no_grad():
            detections.append(exp.detect(batch)[0])
    return batch, detections, tuple(exp.model_config["point_cloud_range"])


def paired_plot(ax: object, variants: list[dict], metric: str) -> None:
    """One line per seed and variant from the plain student's `metric` (x = 0) to the distilled one's (x = the
    variant's place), coloured by seed; the mean paired difference above each variant."""
    seeds_drawn = set()
    for place, variant in enumerate(variants, start=1):
        stats = variant["paired"][metric]
        for index, (seed, plain, distilled) in enumerate(zip(stats["seeds"], stats["plain"], stats["distilled"], strict=True)):
            label = None if seed in seeds_drawn else f"seed {seed}"
            seeds_drawn.add(seed)
            ax.plot([0, place], [plain, distilled], marker="o", color=f"C{index % 10}", label=label)
        ax.annotate(f"{stats['mean']:+.4f}", (place, max(stats["distilled"])), textcoords="offset points",
                    xytext=(0, 8), ha="center")
    ax.set_xticks(range(len(variants) + 1), ["plain", *(textwrap.fill(v["name"], 18) for v in variants)])
    ax.set_xlim(-0.3, len(variants) + 0.3)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: plain -> distilled, one line per seed (mean paired difference)")
    ax.legend()


def save_report_figure(
    path: Path,
    curves: list[tuple[str, str, int, list[tuple[int, float]]]],
    variants: list[dict],
    batch: dict,
    detections: dict[str, dict],
    distilled_name: str,
    point_cloud_range: tuple[float, ...],
    score_threshold: float,
) -> Path:
    """Write report.png. `curves`: (role, group, seed, [(epoch, mAP)]) per student run (group: "plain" or the
    variant's name); `variants`: the report's variants (their paired mAP and NDS); `detections`: the plain
    and the distilled student's (of variant `distilled_name`) detections on `batch`'s one sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cameras = "imgs" in batch
    fig = plt.figure(figsize=(18, 19 if cameras else 13), dpi=100)
    grid = fig.add_gridspec(4 if cameras else 2, 6, height_ratios=[1, 1.4, 1, 1] if cameras else [1, 1.4])
    for column, metric in enumerate(("mAP", "NDS")):
        paired_plot(fig.add_subplot(grid[0, 2 * column:2 * column + 2]), variants, metric)
    ax = fig.add_subplot(grid[0, 4:])
    group_colors = {"plain": PLAIN_COLOR} | {
        v["name"]: DISTILLED_COLORS[i % len(DISTILLED_COLORS)] for i, v in enumerate(variants)}
    for _, group, seed, points in curves:
        epochs, values = zip(*points, strict=True) if points else ((), ())
        ax.plot(epochs, values, marker="o", color=group_colors[group], label=f"{group} seed {seed}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP")
    ax.set_title("validation mAP per epoch")
    ax.legend(fontsize="small")
    for column, role in enumerate(("plain", "distilled")):
        name = "plain" if role == "plain" else f"distilled ({distilled_name})"
        title = f"{name} student: GT green, predictions red (score >= {score_threshold})"
        plot_bev(fig.add_subplot(grid[1, 3 * column:3 * column + 3]), batch, detections[role], point_cloud_range, 0,
                 score_threshold, title)
    if cameras:
        for camera, name in enumerate(CAMERAS):
            ax = fig.add_subplot(grid[2 + camera // 3, 2 * (camera % 3):2 * (camera % 3) + 2])
            plot_camera(ax, batch, detections["distilled"], camera, 0, score_threshold, f"{name}: distilled student")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
