"""Finished teachers, identified by their settings: a record beside the teacher's run folder lets a
later study with the same settings reuse it instead of training it again."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

RECORD_NAME = "study_teacher.json"


def teacher_run_name(settings: dict[str, Any]) -> str:
    """The teacher's run folder name: a digest of its settings."""
    text = json.dumps(settings, sort_keys=True)
    return "teacher-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def read_teacher(run_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished teacher in `run_dir` trained with exactly `settings`, else None."""
    path = run_dir / RECORD_NAME
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record["settings"] == settings else None


def write_teacher(
    run_dir: Path, settings: dict[str, Any], checkpoint: Path, eval_dir: Path, train_seconds: float
) -> dict[str, Any]:
    """Record a finished (trained and evaluated) teacher; returns the record."""
    record = {
        "settings": settings,
        "checkpoint": str(checkpoint),
        "eval_dir": str(eval_dir),
        "train_seconds": train_seconds,
        "finished": datetime.now().isoformat(timespec="seconds"),
    }
    (run_dir / RECORD_NAME).write_text(json.dumps(record, indent=2))
    return record
