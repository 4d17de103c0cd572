"""One run per run folder: `run.lock` (PID, host, launch) while a run writes its folder.

The process that owns the folder (`run_dir.is_launch_rank_zero`) takes the lock; the other processes of
its run (the DDP processes Lightning starts, the other nodes) write under it. A second run given the
same folder is refused, naming the holder. A lock left by a process that no longer exists on this host
(killed with SIGKILL, the machine's power cut) is taken over with a warning, and so is one left by an
earlier attempt of the same cluster launch (a requeued SLURM job, a restarted torchrun rendezvous).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

LOCK_NAME = "run.lock"
# a cluster launch's id, which its restarts keep, and the variable that counts its attempts
LAUNCH_ENV_VARS = (("SLURM_JOB_ID", "SLURM_RESTART_COUNT"), ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"))


class RunFolderLocked(RuntimeError):
    """Another live run writes this run folder."""


def launch_attempt() -> tuple[str, str]:
    """(the cluster launch this process belongs to, e.g. 'SLURM_JOB_ID=123', its attempt number); ('', '')
    outside one."""
    for name, attempts in LAUNCH_ENV_VARS:
        value = os.environ.get(name, "none")
        if value not in ("", "none"):
            return f"{name}={value}", os.environ.get(attempts, "0")
    return "", ""


class RunLock:
    """The lock of `run_dir`, held from `acquire` to `release` by this process."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        launch, attempt = launch_attempt()
        self.holder = {"pid": os.getpid(), "host": socket.gethostname(), "launch": launch, "attempt": attempt,
                       "since": datetime.now().isoformat(timespec="seconds")}

    def acquire(self) -> None:
        """Take the lock, or raise RunFolderLocked naming the live run that holds it."""
        for _ in range(2):  # a stale lock is removed once, then taken like a free one
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if not self._stale(other):
                    raise RunFolderLocked(
                        f"run folder {self.path.parent} is in use by another run: process {other.get('pid')} on "
                        f"{other.get('host')} (since {other.get('since')}, lock {self.path}); pass another "
                        "--run_name, or wait for that run to end"
                    ) from None
                print(f"warning: taking over the lock {self.path} of process {other.get('pid')} on "
                      f"{other.get('host')}, which no longer runs (or was an earlier attempt of this launch)",
                      file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.holder, f)
            return
        raise RunFolderLocked(f"run folder {self.path.parent}: another run took the lock {self.path} at the same time")

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if self._read() == self.holder:
            self.path.unlink(missing_ok=True)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}  # gone, or being written this instant

    def _stale(self, other: dict[str, Any]) -> bool:
        """Whether `other`'s run is gone: an earlier attempt of our launch, or a process of this host that does
        not exist."""
        if other.get("launch") and other["launch"] == self.holder["launch"] and other.get("attempt") != self.holder["attempt"]:
            return True
        if other.get("host") != self.holder["host"] or not isinstance(other.get("pid"), int):
            return False
        try:
            os.kill(other["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, as another user's process
            return False
        return False
