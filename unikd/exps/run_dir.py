"""Run folders: outputs/<exp_name>/<run>/, the `latest` link beside them, and which process owns them.

Every process of a run must agree on its folder. The name comes from, in order: the folder the
launching process chose (passed to the DDP processes Lightning starts), `--run_name`, the SLURM job
id (stable across a requeue, so that Lightning finds its `hpc_ckpt` and resumes), the torchrun
rendezvous id, else the launch time (one process per node only).
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

RUN_DIR_ENV = "UNIKD_RUN_DIR"  # shared with the DDP processes Lightning starts
RANK_ENV_VARS = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK", "GROUP_RANK")
RESULT_GLOBS = ("checkpoints/*.ckpt", "eval/*", "submission.json", "hpc_ckpt_*.ckpt")


def is_launch_rank_zero() -> bool:
    """True in the one process of a (multi-node) launch that owns the run folder: every rank variable
    the launchers set is 0 or absent."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_ENV_VARS)


def resolve_run_dir(output_root: str | os.PathLike, exp_name: str, explicit_name: str | None = None) -> Path:
    """outputs/<exp_name>/<name>/ (module docstring), created if needed; `latest` is not moved here."""
    if os.environ.get(RUN_DIR_ENV) and not is_launch_rank_zero():
        return Path(os.environ[RUN_DIR_ENV])
    run_dir = Path(output_root) / exp_name / run_name(explicit_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def run_name(explicit: str | None) -> str:
    """The run folder's name; a process that is not rank zero and has no agreed name is an error
    (else every node or process would write a folder of its own)."""
    if explicit:
        if "/" in explicit or explicit in (".", "..", "latest"):
            raise ValueError(f"--run_name {explicit!r}: expected a plain folder name other than 'latest'")
        return explicit
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    rendezvous = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if rendezvous != "none":
        return f"torchrun-{rendezvous}"
    if not is_launch_rank_zero():
        raise ValueError(
            "this process is not rank 0 of its launch: pass the same --run_name to every node (or launch "
            "with SLURM, or torchrun --standalone / --rdzv-id) so that all processes share one run folder"
        )
    return datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def point_latest(run_dir: Path) -> None:
    """Point outputs/<exp_name>/latest at `run_dir` (atomically: a new link renamed over the old one)."""
    latest = run_dir.parent / "latest"
    if latest.exists() and latest.resolve() == run_dir.resolve():
        return
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    tmp.replace(latest)


def has_results(run_dir: Path) -> bool:
    """Whether the run wrote anything worth keeping: a checkpoint, evaluation output or a submission."""
    return any(any(run_dir.glob(pattern)) for pattern in RESULT_GLOBS)


def discard_if_empty(run_dir: Path) -> bool:
    """Remove a run folder that holds no results (a run that failed before its first checkpoint)."""
    if run_dir.is_dir() and not has_results(run_dir):
        shutil.rmtree(run_dir)
        return True
    return False
