"""Finished shared runs (teachers, depth pretrainings), identified by their settings: a record beside the
run folder lets a later study with the same settings reuse the run instead of training it again."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

RECORD_NAME = "study_run.json"


def shared_run_name(prefix: str, settings: dict[str, Any]) -> str:
    """The run folder name: `prefix`, then a digest of the settings."""
    text = json.dumps(settings, sort_keys=True)
    return f"{prefix}-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def read_record(run_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished run in `run_dir` trained with exactly `settings`, else None."""
    path = run_dir / RECORD_NAME
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record["settings"] == settings else None


def write_record(run_dir: Path, settings: dict[str, Any], checkpoint: Path, train_seconds: float,
                 eval_dir: Path | None = None) -> dict[str, Any]:
    """Record a finished run (trained, and evaluated when it has an `eval_dir`); returns the record."""
    record = {
        "settings": settings,
        "checkpoint": str(checkpoint),
        "eval_dir": None if eval_dir is None else str(eval_dir),
        "train_seconds": train_seconds,
        "finished": datetime.now().isoformat(timespec="seconds"),
    }
    (run_dir / RECORD_NAME).write_text(json.dumps(record, indent=2))
    return record
