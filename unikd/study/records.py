"""Finished shared runs (teachers, depth pretrainings, plain students), identified by their settings: a record
in the run folder lets a later study with the same settings reuse the run instead of training it again."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

RECORD_NAME = "study_run.json"


class SharedRunBusy(RuntimeError):
    """Another study, still running, is training the shared run."""


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
                 eval_dir: Path | None, eval_seconds: float | None, logs: dict[str, str]) -> dict[str, Any]:
    """Record a finished run (trained, and evaluated when it has an `eval_dir`; `logs`: run name -> log
    file); returns the record."""
    record = {
        "settings": settings,
        "checkpoint": str(checkpoint),
        "eval_dir": None if eval_dir is None else str(eval_dir),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "logs": logs,
        "finished": datetime.now().isoformat(timespec="seconds"),
    }
    (run_dir / RECORD_NAME).write_text(json.dumps(record, indent=2))
    return record


def lock_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".lock")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def claim_run(run_dir: Path) -> None:
    """Mark an unfinished shared run as trained by this process: a lock file beside its folder. A claim by
    another live process (or one on another host, which cannot be checked) is SharedRunBusy; the claim of a
    process that has ended (a study that failed or was stopped) is taken over."""
    lock, me = lock_path(run_dir), {"host": socket.gethostname(), "pid": os.getpid()}
    if lock.is_file():
        owner = json.loads(lock.read_text())
        if owner != me and (owner["host"] != me["host"] or process_alive(owner["pid"])):
            raise SharedRunBusy(f"{run_dir} is being trained by another study (process {owner['pid']} on "
                                f"{owner['host']}, {lock}); wait for it to finish, or remove the lock if it has ended")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps(me))


def release_run(run_dir: Path) -> None:
    """Remove this process's claim (`claim_run`) once the run is recorded."""
    lock_path(run_dir).unlink(missing_ok=True)
