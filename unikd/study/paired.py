"""Paired differences of a study: the distilled minus the plain student of the same seed, per metric, with
the mean over seeds, its 95% interval (Student t with n - 1 degrees of freedom; none with one seed) and the
number of seeds on which distillation improved the metric (a higher mAP or NDS, a lower error)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from scipy.stats import t as student_t

LEVEL = 0.95
HIGHER_IS_BETTER = ("mAP", "NDS")  # every other main figure is an error (mATE, mASE, mAOE, mAVE, mAAE)


def t_quantile(probability: float, dof: int) -> float:
    """The `probability` quantile of Student's t distribution with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"Student t needs at least 1 degree of freedom, got {dof}")
    return float(student_t.ppf(probability, dof))


def paired_difference(plain: dict[int, float], distilled: dict[int, float], lower_is_better: bool) -> dict[str, Any]:
    """Seed -> value of the plain and the distilled students (the same seeds) -> the paired statistics:
    `seeds`, `plain`, `distilled` (the values in seed order), `differences` (distilled - plain), `mean`, `std` (sample; None for one seed),
    `interval` (the mean's 95% t interval; None for one seed), `improved` (seeds whose difference is
    better: negative when `lower_is_better`, else positive) and `n`. A NaN value makes the mean, deviation
    and interval NaN; its seed does not count as improved."""
    if sorted(plain) != sorted(distilled):
        raise ValueError(f"paired seeds differ: plain {sorted(plain)}, distilled {sorted(distilled)}")
    seeds = sorted(plain)
    if not seeds:
        raise ValueError("no seeds to pair")
    differences = [distilled[seed] - plain[seed] for seed in seeds]
    n = len(differences)
    improved = sum((d < 0) if lower_is_better else (d > 0) for d in differences)
    stats: dict[str, Any] = {"seeds": seeds, "plain": [plain[seed] for seed in seeds],
                             "distilled": [distilled[seed] for seed in seeds], "differences": differences, "n": n,
                             "improved": improved, "lower_is_better": lower_is_better, "level": LEVEL}
    if any(math.isnan(d) for d in differences):
        undefined = math.nan if n > 1 else None
        return stats | {"mean": math.nan, "std": undefined, "interval": None if n == 1 else [math.nan, math.nan]}
    mean = statistics.fmean(differences)
    if n == 1:
        return stats | {"mean": mean, "std": None, "interval": None}
    std = statistics.stdev(differences)
    half = t_quantile(0.5 + LEVEL / 2, n - 1) * std / math.sqrt(n)
    return stats | {"mean": mean, "std": std, "interval": [mean - half, mean + half]}


def paired_metrics(plain_runs: list[dict[str, Any]], distilled_runs: list[dict[str, Any]],
                   metrics: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Metric -> `paired_difference` of the runs' `-e` figures, the runs paired by their seed."""
    def by_seed(runs: list[dict[str, Any]], metric: str) -> dict[int, float]:
        return {run["seed"]: run["metrics"][metric] for run in runs}

    return {metric: paired_difference(by_seed(plain_runs, metric), by_seed(distilled_runs, metric),
                                      lower_is_better=metric not in HIGHER_IS_BETTER)
            for metric in metrics}
