"""The metrics summary (the devkit's `metrics_summary.json` layout): flattening for logging, and writing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# TP error key -> short name (per class) and the mean's name with an "m" prefix.
TP_SHORT_NAMES: dict[str, str] = {
    "trans_err": "ATE",
    "scale_err": "ASE",
    "orient_err": "AOE",
    "vel_err": "AVE",
    "attr_err": "AAE",
}


def flatten_summary(summary: dict[str, Any]) -> dict[str, float]:
    """Summary (ours or the devkit's, also as read back from JSON) -> flat figures.

    Keys: mAP, NDS, mATE, mASE, mAOE, mAVE, mAAE, and per class: AP@<threshold>/<class> at each
    distance threshold, AP/<class> (mean over thresholds), ATE/<class>, ASE/<class>, AOE/<class>,
    AVE/<class>, AAE/<class> (nan where the devkit does not report it).
    """
    flat = {"mAP": float(summary["mean_ap"]), "NDS": float(summary["nd_score"])}
    for metric, short in TP_SHORT_NAMES.items():
        flat[f"m{short}"] = float(summary["tp_errors"][metric])
    for name, aps in summary["label_aps"].items():
        for threshold, ap in aps.items():
            flat[f"AP@{float(threshold)}/{name}"] = float(ap)
        flat[f"AP/{name}"] = float(summary["mean_dist_aps"][name])
        for metric, short in TP_SHORT_NAMES.items():
            flat[f"{short}/{name}"] = float(summary["label_tp_errors"][name][metric])
    return flat


def write_metrics_summary(
    summary: dict[str, Any], path: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """Write the summary as the devkit's `metrics_summary.json` (same keys, `meta` last)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        json.dump({**summary, "meta": dict(meta or {})}, file, indent=2)
    return path
