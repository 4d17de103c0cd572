"""What a study reads back from its runs: the `-e` metrics summary, the per-epoch validation mAP of
a training run's CSV log, and the mean and standard deviation over seeds."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from unikd.evaluation.summary import flatten_summary


def eval_metrics(eval_run_dir: Path) -> dict[str, float]:
    """Flat figures (`flatten_summary`) of the one metrics summary an `-e` run folder holds."""
    files = sorted((eval_run_dir / "eval").glob("metrics_summary_epoch*.json"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one eval/metrics_summary_epoch*.json in {eval_run_dir}, found {len(files)}")
    return flatten_summary(json.loads(files[0].read_text()))


def val_map_per_epoch(train_run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, val/mAP) of every validation in a training run's CSV log, in epoch order."""
    path = train_run_dir / "csv" / "version_0" / "metrics.csv"
    with open(path, newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/mAP")]
    return sorted((int(row["epoch"]), float(row["val/mAP"])) for row in rows)


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value) and the values themselves. A figure that some
    run leaves undefined (NaN, e.g. the devkit's orientation error of a class it does not score) has an
    undefined mean and deviation (NaN)."""
    if any(math.isnan(value) for value in values):
        return {"mean": math.nan, "std": math.nan if len(values) > 1 else None, "values": list(values)}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "values": list(values)}
