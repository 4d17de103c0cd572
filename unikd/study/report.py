"""A study's report: the summary over seeds, the tables (markdown, also printed) and the files
report.json / report.md written beside the figure report.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unikd.data.classes import CLASSES
from unikd.study.results import mean_std

ROLES = ("teacher", "plain", "distilled")
MAIN_COLUMNS = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")


def summarise(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """role -> figure (every metric, and train_seconds) -> mean_std over the role's runs."""
    runs_by_role = {"teacher": [report["teacher"]]}
    for role in ROLES[1:]:
        runs_by_role[role] = [run for run in report["runs"] if run["role"] == role]
    summary = {}
    for role, runs in runs_by_role.items():
        summary[role] = {key: mean_std([run["metrics"][key] for run in runs]) for key in runs[0]["metrics"]}
        summary[role]["train_seconds"] = mean_std([run["train_seconds"] for run in runs])
    return summary


def cell(stats: dict[str, Any], seconds: bool = False) -> str:
    """'mean' or 'mean ± std' (seconds as whole numbers)."""
    text = (lambda value: f"{value:.0f} s") if seconds else (lambda value: f"{value:.4f}")
    return text(stats["mean"]) if stats["std"] is None else f"{text(stats['mean'])} ± {text(stats['std'])}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def format_tables(report: dict[str, Any]) -> str:
    """The main figures and per-class AP per role (mean ± std over seeds), then every run's numbers."""
    summary = report["summary"]
    count = {"teacher": 1} | {role: sum(run["role"] == role for run in report["runs"]) for role in ROLES[1:]}
    main = markdown_table(
        ["model", "runs", *MAIN_COLUMNS, "train time"],
        [
            [role, str(count[role]), *(cell(summary[role][key]) for key in MAIN_COLUMNS),
             cell(summary[role]["train_seconds"], seconds=True)]
            for role in ROLES
        ],
    )
    per_class = markdown_table(
        ["AP", *CLASSES], [[role, *(cell(summary[role][f"AP/{name}"]) for name in CLASSES)] for role in ROLES]
    )
    every_run = markdown_table(
        ["model", "seed", "mAP", "NDS", "train time", "run folder"],
        [[run["role"], str(run["seed"]), f"{run['metrics']['mAP']:.4f}", f"{run['metrics']['NDS']:.4f}",
          f"{run['train_seconds']:.0f} s", run["train_dir"]] for run in [report["teacher"], *report["runs"]]],
    )
    return "\n\n".join([main, per_class, every_run])


def pretrain_line(pretrain: dict[str, Any]) -> str:
    how = "reused" if pretrain["reused"] else f"trained by this study in {pretrain['train_seconds']:.0f} s"
    return (f"Both students start from the depth pretraining {pretrain['experiment']} ({pretrain['epochs']} epochs, "
            f"{how}): {pretrain['checkpoint']}")


def format_markdown(report: dict[str, Any]) -> str:
    teacher = report["teacher"]
    how = "reused" if teacher["reused"] else "trained by this study"
    logs = "\n".join(f"- {run['role']} seed {run['seed']}: {run['log']}, {run['eval_log']}" for run in report["runs"])
    return "\n\n".join([
        f"# {report['study']}: {report['pairing']}",
        f"`{' '.join(report['command'])}` ({report['wall_seconds'] / 60:.1f} min)",
        f"Teacher {teacher['experiment']} ({how}): {teacher['checkpoint']}",
        *([pretrain_line(report["camera_pretrain"])] if "camera_pretrain" in report else []),
        format_tables(report),
        "![validation mAP per epoch, one validation sample](report.png)",
        "Logs:\n" + logs,
    ]) + "\n"


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write report.json (everything, every run) and report.md (the tables); returns both paths."""
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(format_markdown(report))
    return json_path, md_path
