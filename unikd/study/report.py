"""A study's report: each variant's paired differences against the plain students (`unikd.study.paired`),
the summary over seeds, the tables (markdown, also printed) and the files report.json / report.md written
beside the figure report.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unikd.data.classes import CLASSES
from unikd.study.paired import LEVEL, paired_metrics
from unikd.study.results import mean_std

MAIN_COLUMNS = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")


def group_runs(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The teacher, the plain students and each variant's distilled students (by the variant's name)."""
    groups = {"teacher": [report["teacher"]], "plain": [run for run in report["runs"] if run["role"] == "plain"]}
    for variant in report["variants"]:
        groups[variant["name"]] = [run for run in report["runs"] if run["variant"] == variant["name"]]
    return groups


def summarise(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Group (`group_runs`) -> figure (every metric, and train_seconds) -> mean_std over the group's runs."""
    summary = {}
    for group, runs in group_runs(report).items():
        summary[group] = {key: mean_std([run["metrics"][key] for run in runs]) for key in runs[0]["metrics"]}
        summary[group]["train_seconds"] = mean_std([run["train_seconds"] for run in runs])
    return summary


def compare_variants(runs: list[dict[str, Any]], variants: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """Per variant (name, options): the paired differences of its distilled students against the plain
    students of the same seeds (`paired_metrics`, every main figure) and the train-time ratio, the mean
    training wall time of its distilled students over that of the plain ones."""
    plain = [run for run in runs if run["role"] == "plain"]
    compared = []
    for name, options in variants:
        distilled = [run for run in runs if run["variant"] == name]
        ratio = (sum(run["train_seconds"] for run in distilled) / len(distilled)) / (
            sum(run["train_seconds"] for run in plain) / len(plain))
        compared.append({"name": name, "options": options, "paired": paired_metrics(plain, distilled, MAIN_COLUMNS),
                         "train_time_ratio": ratio})
    return compared


def cell(stats: dict[str, Any], seconds: bool = False) -> str:
    """'mean' or 'mean ± std' (seconds as whole numbers)."""
    text = (lambda value: f"{value:.0f} s") if seconds else (lambda value: f"{value:.4f}")
    return text(stats["mean"]) if stats["std"] is None else f"{text(stats['mean'])} ± {text(stats['std'])}"


def interval_text(interval: list[float] | None) -> str:
    return "none (1 seed)" if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]"


def gain_cell(stats: dict[str, Any]) -> str:
    """'mean [low, high]' of a paired difference."""
    return f"{stats['mean']:+.4f} {interval_text(stats['interval'])}"


def improved_cell(stats: dict[str, Any]) -> str:
    return f"{stats['improved']}/{stats['n']}"


PAIRED_NOTE = (
    "Paired: distilled - plain on the same seed, then the mean over seeds with its {level:.0%} interval (Student t, "
    "n - 1 degrees of freedom; none with one seed). Improved: seeds on which distillation raised mAP / NDS or "
    "lowered an error. Train-time ratio: mean training wall time of the distilled students over that of the plain "
    "ones (validation every epoch included; a reused plain student's time is from the study that trained it)."
)


def variants_table(report: dict[str, Any]) -> str:
    """One row per variant: seeds, plain and distilled mAP (means), the paired mAP gain with its interval,
    the seeds it improved, the paired NDS gain and the train-time ratio."""
    rows = []
    for variant in report["variants"]:
        ap, nds = variant["paired"]["mAP"], variant["paired"]["NDS"]
        rows.append([variant["name"], " ".join(map(str, ap["seeds"])), f"{sum(ap['plain']) / ap['n']:.4f}",
                     f"{sum(ap['distilled']) / ap['n']:.4f}", gain_cell(ap), improved_cell(ap), gain_cell(nds),
                     f"{variant['train_time_ratio']:.2f}"])
    return markdown_table(["variant", "seeds", "plain mAP", "distilled mAP", f"mAP gain [{LEVEL:.0%} interval]",
                           "seeds improved", f"NDS gain [{LEVEL:.0%} interval]", "train-time ratio"], rows)


def paired_table(variant: dict[str, Any]) -> str:
    """Every main figure's paired difference per seed, mean, standard deviation, interval and seeds improved."""
    rows = []
    for metric, stats in variant["paired"].items():
        per_seed = ", ".join(f"{seed}: {d:+.4f}" for seed, d in zip(stats["seeds"], stats["differences"], strict=True))
        std = "-" if stats["std"] is None else f"{stats['std']:.4f}"
        better = "lower" if stats["lower_is_better"] else "higher"
        rows.append([metric, per_seed, f"{stats['mean']:+.4f}", std, interval_text(stats["interval"]),
                     f"{improved_cell(stats)} ({better})"])
    return f"Paired differences, {variant['name']}:\n\n" + markdown_table(
        ["figure", "distilled - plain per seed", "mean", "std", f"{LEVEL:.0%} interval", "seeds improved"], rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def format_tables(report: dict[str, Any]) -> str:
    """The variants' paired gains, each variant's paired differences per figure, the main figures and
    per-class AP per group (mean ± std over seeds), then every run's numbers."""
    summary = report["summary"]
    groups = group_runs(report)
    main = markdown_table(
        ["model", "runs", *MAIN_COLUMNS, "train time"],
        [
            [group, str(len(groups[group])), *(cell(summary[group][key]) for key in MAIN_COLUMNS),
             cell(summary[group]["train_seconds"], seconds=True)]
            for group in summary
        ],
    )
    per_class = markdown_table(
        ["AP", *CLASSES], [[group, *(cell(summary[group][f"AP/{name}"]) for name in CLASSES)] for group in summary]
    )
    every_run = markdown_table(
        ["model", "seed", "mAP", "NDS", "train time", "run folder"],
        [[run.get("variant") or run["role"], str(run["seed"]), f"{run['metrics']['mAP']:.4f}",
          f"{run['metrics']['NDS']:.4f}", f"{run['train_seconds']:.0f} s", run["train_dir"]]
         for run in [report["teacher"], *report["runs"]]],
    )
    paired = [variants_table(report), PAIRED_NOTE.format(level=LEVEL),
              *(paired_table(variant) for variant in report["variants"])]
    return "\n\n".join([*paired, main, per_class, every_run])


def pretrain_line(pretrain: dict[str, Any]) -> str:
    how = "reused" if pretrain["reused"] else f"trained by this study in {pretrain['train_seconds']:.0f} s"
    return (f"Both students start from the depth pretraining {pretrain['experiment']} ({pretrain['epochs']} epochs, "
            f"{how}): {pretrain['checkpoint']}")


def students_lines(report: dict[str, Any]) -> list[str]:
    """Where the plain students come from, and the options of the distilled ones."""
    plain = [run for run in report["runs"] if run["role"] == "plain"]
    reused = [str(run["seed"]) for run in plain if run["reused"]]
    how = f"reused (same settings) for seeds {' '.join(reused)}" if reused else "none reused"
    variants = "; ".join(f"{v['name']}: {' '.join(v['options']) or '(no more)'}" for v in report["variants"])
    return [f"Plain students: {len(plain)}, shared runs in {Path(plain[0]['train_dir']).parents[1]}, {how}.",
            f"Distilled students: `{' '.join(report['distill_options'])}`, then each variant's options ({variants})."]


def format_markdown(report: dict[str, Any]) -> str:
    teacher = report["teacher"]
    how = "reused" if teacher["reused"] else "trained by this study"
    logs = "\n".join(f"- {run.get('variant') or run['role']} seed {run['seed']}: {run['log']}, {run['eval_log']}"
                     for run in report["runs"])
    return "\n\n".join([
        f"# {report['study']}: {report['pairing']}",
        f"`{' '.join(report['command'])}` ({report['wall_seconds'] / 60:.1f} min)",
        f"Teacher {teacher['experiment']} ({how}): {teacher['checkpoint']}",
        *([pretrain_line(report["camera_pretrain"])] if "camera_pretrain" in report else []),
        *students_lines(report),
        format_tables(report),
        "![paired mAP and NDS per seed, validation mAP per epoch, one validation sample](report.png)",
        "Logs:\n" + logs,
    ]) + "\n"


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write report.json (everything, every run) and report.md (the tables); returns both paths."""
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(format_markdown(report))
    return json_path, md_path
