"""Printing a metrics summary the way the devkit prints it."""

from __future__ import annotations

from typing import Any

from unikd.evaluation.summary import TP_SHORT_NAMES


def format_metrics(summary: dict[str, Any]) -> str:
    """mAP, the mean TP errors, NDS, then a per-class table of AP, ATE, ASE, AOE, AVE and AAE."""
    lines = [f"mAP: {summary['mean_ap']:.4f}"]
    lines += [f"m{short}: {summary['tp_errors'][metric]:.4f}" for metric, short in TP_SHORT_NAMES.items()]
    lines += [
        f"NDS: {summary['nd_score']:.4f}",
        f"Eval time: {summary['eval_time']:.1f}s",
        "",
        "Per-class results:",
    ]
    lines.append(
        "\t".join([f"{'Object Class':<20}"] + [f"{name:<6}" for name in ("AP", *TP_SHORT_NAMES.values())])
    )
    for name, ap in summary["mean_dist_aps"].items():
        errors = summary["label_tp_errors"][name]
        lines.append(
            "\t".join(
                [f"{name:<20}", f"{ap:<6.3f}"] + [f"{errors[metric]:<6.3f}" for metric in TP_SHORT_NAMES]
            )
        )
    return "\n".join(lines)


def print_metrics(summary: dict[str, Any]) -> None:
    """Print `format_metrics(summary)`."""
    print(format_metrics(summary))


def format_map_metrics(summary: dict[str, Any]) -> str:
    """Map segmentation (`map_segmentation.map_summary`): per class the best IoU and the IoU at each threshold,
    then mIoU."""
    thresholds = [f"{t:.2f}" for t in summary["thresholds"]]
    header = [f"{'Map Class':<20}", f"{'IoU':<6}"] + [f"@{t:<5}" for t in thresholds]
    lines = ["Map segmentation IoU:", "\t".join(header)]
    for name, iou in summary["class_iou"].items():
        at = summary["class_iou_at"][name]
        lines.append("\t".join([f"{name:<20}", f"{iou:<6.3f}"] + [f"{at[t]:<6.3f}" for t in thresholds]))
    lines.append(f"mIoU: {summary['mean_iou']:.4f} ({summary['num_samples']} samples)")
    return "\n".join(lines)
